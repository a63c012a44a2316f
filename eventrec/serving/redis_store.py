"""Redis-backed user-state store and event log, shared by several :class:`RankingService` replicas.

Keys (``namespace`` default ``eventrec``):

* ``{ns}:state:{model version}:{user}`` → one :class:`EncodedState` as safetensors bytes with a JSON
  header (:mod:`eventrec.serving.codec`), written with ``SET ... EX ttl`` when a TTL is set; entries
  above ``max_entry_bytes`` are not stored in Redis (kept by the replica that computed them only). A
  cache: an unreadable entry, one of another model version or user, counts as ``corrupt`` and is
  recomputed (and overwritten).
* ``{ns}:state-id:{model version}:{user}`` → the write id of that state (a random hex string, also in
  the blob's header), written in the same ``MULTI`` as the state. Each replica keeps decoded copies of
  the states it wrote or read (an LRU of ``local_bytes``) and reuses a copy while Redis holds its
  write id: one small ``GET`` per request instead of the whole state (a user of 100,000 events has a
  state of 22 MB in int8, 74 MB in fp32); a state another replica rewrote has another id and is read
  again.
* ``{ns}:events:{store fingerprint}:{user}`` → a hash ``{version, blob}`` holding the user's events
  (the store's history plus appends) as safetensors bytes. *Data*: no TTL. Appends are a
  compare-and-set on ``version`` (``WATCH``/``MULTI``), so concurrent appends on two replicas never
  lose one; the loser re-reads and re-validates. Each replica keeps a decoded copy per user and
  re-reads the blob only when the version changed (one ``HGET`` per request otherwise).

Redis down: reading or appending events raises :class:`StoreUnavailable` (HTTP 503; the appended
events live only in Redis, so ranking without them could silently be wrong); a failing state
``get``/``put`` alone is counted in ``errors`` and the state is computed locally.

For a memory bound on the Redis side use ``maxmemory`` with ``maxmemory-policy volatile-lru`` and a
TTL on states: then only states (which have a TTL) are evicted, never events.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import redis

from eventrec.serving.codec import CorruptEntry, decode_events, decode_state_and_header, encode_events, encode_state, store_fingerprint
from eventrec.serving.errors import StoreUnavailable
from eventrec.serving.state import EncodedState, EventLog, LruByBytes, UserEvents, UserStateStore
from eventrec.store.reader import EventStore

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def connect(url: str, timeout_s: float = 1.0) -> redis.Redis:
    """A client that fails fast (``timeout_s`` to connect and per command) instead of hanging."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, health_check_interval=30)


@dataclass(frozen=True)
class _Copy:
    """A replica's decoded copy of a Redis state and the write id it was written with."""

    write_id: str
    state: EncodedState

    @property
    def nbytes(self) -> int:
        return self.state.nbytes


class RedisStateStore(UserStateStore):
    """Derived user states in Redis; ``ttl_s`` (None: no expiry), ``max_entry_bytes`` per entry,
    ``local_bytes``: the bound of this replica's decoded copies (see the module's doc)."""

    def __init__(self, client: redis.Redis, namespace: str = "eventrec", ttl_s: int | None = 3600, max_entry_bytes: int = 64 << 20,
                 local_bytes: int = 256 << 20):
        self.client, self.namespace = client, namespace
        self.ttl_s, self.max_entry_bytes = ttl_s, max_entry_bytes
        self.local = LruByBytes(local_bytes)
        self.hits = self.local_hits = self.misses = self.corrupt = self.errors = self.too_large = 0

    def _key(self, key: tuple[str, str]) -> str:
        user, version = key
        return f"{self.namespace}:state:{version}:{user}"

    def _id_key(self, key: tuple[str, str]) -> str:
        user, version = key
        return f"{self.namespace}:state-id:{version}:{user}"

    def get(self, key: tuple[str, str]) -> EncodedState | None:
        try:
            copy = self.local.get(key)
            if copy is None:  # nothing to compare: the id and the state in one round trip (MGET is atomic)
                write_id, blob = self.client.mget(self._id_key(key), self._key(key))
            else:
                write_id = self.client.get(self._id_key(key))
                if write_id is not None and copy.write_id == write_id.decode():
                    self.hits += 1
                    self.local_hits += 1
                    return copy.state
                blob = self.client.get(self._key(key))
        except REDIS_ERRORS:
            self.errors += 1
            return None
        if blob is None:
            self.misses += 1
            return None
        try:
            state, header = decode_state_and_header(blob, key[0], key[1])
        except CorruptEntry:
            self.corrupt += 1
            return None
        self.hits += 1
        if isinstance(header.get("write_id"), str):
            self.local.put(key, _Copy(header["write_id"], state))
        return state

    def put(self, key: tuple[str, str], item: EncodedState) -> None:
        write_id = uuid.uuid4().hex
        large = item.nbytes > self.max_entry_bytes  # its tensors alone are over the bound: not encoded at all
        blob = None if large else encode_state(item, key[0], key[1], write_id)
        large = large or len(blob) > self.max_entry_bytes
        self.too_large += large
        try:
            with self.client.pipeline(transaction=True) as pipe:
                if large:  # only this replica keeps it: Redis holds its id, not an older state
                    pipe.delete(self._key(key))
                else:
                    pipe.set(self._key(key), blob, ex=self.ttl_s)
                pipe.set(self._id_key(key), write_id, ex=self.ttl_s)
                pipe.execute()
        except REDIS_ERRORS:
            self.errors += 1
            self.local.pop(key)
            return
        self.local.put(key, _Copy(write_id, item))

    def pop(self, key: tuple[str, str]) -> None:
        self.local.pop(key)
        try:
            self.client.delete(self._key(key), self._id_key(key))
        except REDIS_ERRORS:
            self.errors += 1

    def __len__(self) -> int:
        """Keys in the Redis database (states and events of all replicas; ``DBSIZE``, O(1))."""
        try:
            return int(self.client.dbsize())
        except REDIS_ERRORS:
            return 0

    @property
    def nbytes(self) -> int:
        """Redis ``used_memory`` (the whole database)."""
        try:
            return int(self.client.info("memory")["used_memory"])
        except REDIS_ERRORS:
            return 0


class RedisEventLog(EventLog):
    """Users' events in Redis, with a per-replica decoded copy (at most ``local_users`` users)."""

    def __init__(self, client: redis.Redis, store: EventStore, namespace: str = "eventrec", local_users: int = 10_000):
        self.client, self.store = client, store
        self.store_id = store_fingerprint(store)
        self.namespace, self.local_users = namespace, local_users
        self._local: OrderedDict[str, UserEvents] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, user: str) -> str:
        return f"{self.namespace}:events:{self.store_id}:{user}"

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        kwargs = self.client.connection_pool.connection_kwargs
        where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        return StoreUnavailable(f"the shared user-state store (Redis at {where}) is unavailable: {error}")

    def get(self, user: str) -> UserEvents | None:
        try:
            version = self.client.hget(self._key(user), "version")
            if version is None:
                return None
            with self._lock:
                cached = self._local.get(user)
            if cached is not None and cached.version == int(version):
                return cached
            version, blob = self.client.hmget(self._key(user), ["version", "blob"])
        except REDIS_ERRORS as error:
            raise self._unavailable(error) from error
        if blob is None:
            return None
        try:
            events = decode_events(blob, user, self.store_id, self.store)
        except CorruptEntry as error:
            raise StoreUnavailable(f"user {user!r}: unreadable events entry in Redis ({error}); delete key {self._key(user)!r} to reset") from error
        with self._lock:
            self._local[user] = events
            self._local.move_to_end(user)
            while len(self._local) > self.local_users:
                self._local.popitem(last=False)
        return events

    def replace(self, user: str, expected_version: int, events: UserEvents) -> bool:
        key = self._key(user)
        blob = encode_events(events, user, self.store_id)
        try:
            with self.client.pipeline() as pipe:
                pipe.watch(key)
                current = pipe.hget(key, "version")
                if (int(current) if current is not None else 0) != expected_version:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(key, mapping={"version": events.version, "blob": blob})
                pipe.execute()
        except redis.exceptions.WatchError:
            return False
        except REDIS_ERRORS as error:
            raise self._unavailable(error) from error
        return True

    def __contains__(self, user: object) -> bool:
        try:
            return bool(self.client.exists(self._key(str(user))))
        except REDIS_ERRORS as error:
            raise self._unavailable(error) from error

    def __len__(self) -> int:
        return len(self._local)


def redis_stores(url: str, store: EventStore, namespace: str = "eventrec", ttl_s: int | None = 3600,
                 max_entry_bytes: int = 64 << 20, local_bytes: int = 256 << 20) -> tuple[RedisStateStore, RedisEventLog]:
    """The state store and the event log on one Redis (checked with a ``PING``: a clear error at start-up)."""
    client = connect(url)
    try:
        client.ping()
    except REDIS_ERRORS as error:
        raise StoreUnavailable(f"cannot reach Redis at {url}: {error}") from error
    return RedisStateStore(client, namespace, ttl_s, max_entry_bytes, local_bytes), RedisEventLog(client, store, namespace)
