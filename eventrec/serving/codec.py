"""Byte encodings of user states and user events for a shared store: safetensors + a JSON header.

Never pickle: a blob is a safetensors file whose metadata holds one JSON header (``"eventrec"``)
naming the format, the model version (states) or the store fingerprint (events), and the user. A
blob that does not parse, names another format, model version, store or user, or has tensors of the
wrong shape, is refused with :class:`CorruptEntry`; the caller treats it as absent.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy
from safetensors.torch import load as load_torch
from safetensors.torch import save as save_torch

from eventrec.serving.state import EncodedState, UserEvents
from eventrec.serving.state_precision import KV_CACHE_PRECISIONS, GroupwiseInt4, RowwiseInt8, Stored, check_state_precision
from eventrec.store.reader import EventStore, Ragged, StreamData

STATE_FORMAT = "eventrec.user_state.v2"  # v2: keys/values [P, H, d] and match_keys once; encoded only when read
EVENTS_FORMAT = "eventrec.user_events.v1"


class CorruptEntry(ValueError):
    """A stored blob that is not a readable entry for this model version / store / user."""


def _header(blob: bytes, parse) -> tuple[dict[str, Any], dict]:
    try:
        tensors = parse(blob)
        if len(blob) < 8:
            raise ValueError("too short")
        size = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + size]).get("__metadata__") or {}
        return json.loads(metadata["eventrec"]), tensors
    except Exception as error:  # noqa: BLE001 - any parse failure is a corrupt entry
        raise CorruptEntry(f"unreadable entry: {error}") from error


def encode_state(state: EncodedState, user: str, model_version: str, write_id: str | None = None) -> bytes:
    """``EncodedState`` → bytes. Tensors: ``keys``/``values [P, H, d]``, ``match_keys [P, V·E]`` (with
    match attention), ``encoded [P, D]`` (when the model reads it), ``timestamps [P]``, ``match_ids
    [P, V]`` (with ``candidate_search`` or the match features), a linear encoder's
    ``layer{i}.state [1, H, d, d]`` (float32; header ``layer_cache: recurrent``), or per encoder layer ``layer{i}.k``/``layer{i}.v [P, H, d]``; at the state's
    precision (header ``precision``, written only when not fp32; the layers' keys/values at header
    ``kv_precision``, written only when it differs): bf16 tensors under the same names, for int8 each as
    ``{name}.codes`` (int8) and ``{name}.scales [P]`` (float32), for int4 as ``{name}.packed [P, H, d/2]``
    (uint8) and ``{name}.scales [P, H]`` (float16)."""
    parts: dict[str, Stored] = {"keys": state.keys, "values": state.values}
    parts |= {name: t for name, t in (("encoded", state.encoded), ("match_keys", state.match_keys)) if t is not None}
    tensors = {"timestamps": state.timestamps}
    recurrent = bool(state.layer_kv) and len(state.layer_kv[0]) == 1
    for i, layer in enumerate(state.layer_kv or []):
        if recurrent:  # a linear encoder's fixed state, float32 (EncodedState.kept)
            tensors[f"layer{i}.state"] = layer[0]
        else:
            parts |= {f"layer{i}.k": layer[0], f"layer{i}.v": layer[1]}
    if state.match_ids is not None:
        tensors["match_ids"] = state.match_ids
    for name, part in parts.items():
        if isinstance(part, RowwiseInt8):
            tensors |= {f"{name}.codes": part.codes, f"{name}.scales": part.scales}
        elif isinstance(part, GroupwiseInt4):
            tensors |= {f"{name}.packed": part.packed, f"{name}.scales": part.scales}
        else:
            tensors[name] = part
    header = {
        "format": STATE_FORMAT, "model_version": model_version, "user": user,
        "window": [list(w) for w in state.window], "signature": None if state.signature is None else state.signature.hex(),
        "events_version": state.events_version, "layers": None if state.layer_kv is None else len(state.layer_kv),
    }
    if recurrent:
        header["layer_cache"] = "recurrent"
    if write_id is not None:  # which write this blob is (RedisStateStore's replica copies compare it)
        header["write_id"] = write_id
    if state.precision != "fp32":  # only then: fp32 blobs are unchanged
        header["precision"] = state.precision
    if not recurrent and state.kv_precision is not None and state.kv_precision != state.precision:
        header["kv_precision"] = state.kv_precision
    return save_torch({k: t.detach().contiguous() for k, t in tensors.items()}, metadata={"eventrec": json.dumps(header)})


def _stored_part(tensors: dict, name: str, precision: str) -> Stored | None:
    """One kept tensor of a decoded state at the header's ``precision`` (None when absent)."""
    if precision == "int4":
        if f"{name}.packed" not in tensors:
            return None
        packed, scales = tensors[f"{name}.packed"], tensors[f"{name}.scales"]
        if packed.dtype != torch.uint8 or scales.dtype != torch.float16 or scales.shape != packed.shape[:-1]:
            raise ValueError(f"{name}: int4 codes {tuple(packed.shape)} {packed.dtype} with scales {tuple(scales.shape)} {scales.dtype}")
        return GroupwiseInt4(packed, scales)
    if precision != "int8":
        part = tensors.get(name)
        if part is not None and part.dtype != {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]:
            raise ValueError(f"{name}: {part.dtype}, the header says {precision}")
        return part
    if f"{name}.codes" not in tensors:
        return None
    codes, scales = tensors[f"{name}.codes"], tensors[f"{name}.scales"]
    if codes.dtype != torch.int8 or scales.dtype != torch.float32 or scales.shape != codes.shape[:1]:
        raise ValueError(f"{name}: int8 codes {tuple(codes.shape)} {codes.dtype} with scales {tuple(scales.shape)} {scales.dtype}")
    return RowwiseInt8(codes, scales)


def decode_state(blob: bytes, user: str, model_version: str) -> EncodedState:
    return decode_state_and_header(blob, user, model_version)[0]


def decode_state_and_header(blob: bytes, user: str, model_version: str) -> tuple[EncodedState, dict[str, Any]]:
    """:func:`decode_state` and the blob's JSON header (its ``write_id``, when written with one)."""
    header, tensors = _header(blob, load_torch)
    if header.get("format") != STATE_FORMAT or header.get("model_version") != model_version or header.get("user") != user:
        raise CorruptEntry(f"entry for {header.get('format')}/{header.get('model_version')}/{header.get('user')!r}, "
                           f"wanted {STATE_FORMAT}/{model_version}/{user!r}")
    try:
        precision = check_state_precision(header.get("precision", "fp32"))
        kv_precision = header.get("kv_precision", precision)
        if kv_precision not in KV_CACHE_PRECISIONS:
            raise ValueError(f"kv_precision {kv_precision!r}")
        part = lambda name: _stored_part(tensors, name, precision)  # noqa: E731
        kv_part = lambda name: _stored_part(tensors, name, kv_precision)  # noqa: E731
        encoded, keys, values, match_keys, timestamps = part("encoded"), part("keys"), part("values"), part("match_keys"), tensors["timestamps"]
        if keys is None or values is None:
            raise KeyError("keys and values")
        layers = header["layers"]
        recurrent = header.get("layer_cache") == "recurrent"
        if recurrent:
            layer_kv = None if layers is None else [(tensors[f"layer{i}.state"],) for i in range(layers)]
            if any(state.dim() != 4 or state.shape[0] != 1 or state.shape[2] != state.shape[3] or state.dtype != torch.float32
                   for (state,) in layer_kv or []):
                raise ValueError("a recurrent layer state is not float32 [1, H, d, d]")
        else:
            layer_kv = None if layers is None else [(kv_part(f"layer{i}.k"), kv_part(f"layer{i}.v")) for i in range(layers)]
        positions = len(timestamps)
        match_ids = tensors.get("match_ids")
        per_position = [] if recurrent else [t for kv in layer_kv or [] for t in kv]
        parts = [keys, values, *(t for t in (encoded, match_keys, match_ids) if t is not None), *per_position]
        if any(t is None or len(t) != positions for t in parts):
            raise ValueError("tensors missing or disagreeing on the number of positions")
        state = EncodedState(
            tuple(tuple(int(x) for x in w) for w in header["window"]),
            None if header["signature"] is None else bytes.fromhex(header["signature"]),
            encoded, keys, values, timestamps, layer_kv, int(header["events_version"]), match_ids, match_keys,
        )
        return state, header
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptEntry(f"malformed state entry: {error}") from error


def encode_events(events: UserEvents, user: str, store_id: str) -> bytes:
    """``UserEvents`` → bytes: per stream ``{s}.timestamps [n]`` and per attribute ``{s}.{a}`` or, for
    multi-valued ones, ``{s}.{a}.values [T]`` and ``{s}.{a}.offsets [n+1]``; for a stream with a value
    sampling policy also ``{s}/sampling_values [n]`` float32 (listed in the header's ``sampling_values``)."""
    arrays: dict[str, np.ndarray] = {}
    ragged: list[str] = []
    valued: list[str] = []
    for name, data in events.streams.items():
        arrays[f"{name}.timestamps"] = np.ascontiguousarray(data.timestamps)
        if data.sampling_values is not None:  # a value policy's per-event values ("/": never in a name)
            valued.append(name)
            arrays[f"{name}/sampling_values"] = np.ascontiguousarray(data.sampling_values)
        for attribute, column in data.attributes.items():
            if isinstance(column, Ragged):
                ragged.append(f"{name}.{attribute}")
                arrays[f"{name}.{attribute}.values"] = np.ascontiguousarray(column.values)
                arrays[f"{name}.{attribute}.offsets"] = np.ascontiguousarray(column.offsets)
            else:
                arrays[f"{name}.{attribute}"] = np.ascontiguousarray(column)
    header = {"format": EVENTS_FORMAT, "store": store_id, "user": user, "version": events.version,
              "streams": {name: list(data.attributes) for name, data in events.streams.items()}, "ragged": ragged}
    if valued:  # only then: the blobs of stores without value sampling are unchanged
        header["sampling_values"] = valued
    return save_numpy(arrays, metadata={"eventrec": json.dumps(header)})


def decode_events(blob: bytes, user: str, store_id: str, store: EventStore) -> UserEvents:
    header, arrays = _header(blob, load_numpy)
    if header.get("format") != EVENTS_FORMAT or header.get("store") != store_id or header.get("user") != user:
        raise CorruptEntry(f"events entry for {header.get('format')}/{header.get('store')}/{header.get('user')!r}, "
                           f"wanted {EVENTS_FORMAT}/{store_id}/{user!r}")
    try:
        ragged = set(header["ragged"])
        streams = {}
        for name, base in store.streams.items():
            if list(header["streams"][name]) != list(base.attributes):
                raise ValueError(f"stream {name!r}: attributes differ from the store's")
            timestamps = arrays[f"{name}.timestamps"]
            attributes: dict[str, np.ndarray | Ragged] = {}
            for attribute in base.attributes:
                key = f"{name}.{attribute}"
                column = Ragged(arrays[f"{key}.values"], arrays[f"{key}.offsets"]) if key in ragged else arrays[key]
                if (len(column.offsets) - 1 if isinstance(column, Ragged) else len(column)) != len(timestamps):
                    raise ValueError(f"{key}: length differs from the timestamps'")
                attributes[attribute] = column
            values = None
            if base.sampling_values is not None:
                if name not in header.get("sampling_values", []):
                    raise ValueError(f"stream {name!r}: no per-event sampling values")
                values = arrays[f"{name}/sampling_values"]
                if len(values) != len(timestamps):
                    raise ValueError(f"{name}/sampling_values: length differs from the timestamps'")
            streams[name] = StreamData(name, base.max_length, base.sampling, np.array([0, len(timestamps)], dtype=np.int64), timestamps,
                                       attributes, dict(base.looked_up), values)
        return UserEvents(streams, int(header["version"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptEntry(f"malformed events entry: {error}") from error


def store_fingerprint(store: EventStore) -> str:
    """Identity of the store whose encodings (vocabularies, statistics) events were encoded with."""
    import hashlib

    return hashlib.sha256(json.dumps(store.manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]


__all__ = ["CorruptEntry", "decode_events", "decode_state", "encode_events", "encode_state", "store_fingerprint"]
