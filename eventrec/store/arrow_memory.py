"""Arrow memory that goes back to the operating system as soon as it is freed, for bounded builds.

pyarrow's default allocator (mimalloc) keeps freed pages for reuse; over a partitioned build, which
frees each partition's buffers before the next, that retained memory was 50-80 MB of a 500 MB peak
(1M-user world, ``bench/build_store.py``). :func:`returning_arrow_memory` makes pyarrow's jemalloc
pool the default, with a decay of 0 ms (freed pages are returned at once), for the duration of the
``with`` block, and restores the previous pool and decay after (Arrow buffers are freed into the
pool they came from, whatever the default is then). Where pyarrow was built without
jemalloc it changes nothing. Polars has its own allocator (jemalloc, 500 ms decay), untouched.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import pyarrow as pa

DEFAULT_DECAY_MS = 1_000  # pyarrow's own setting for its jemalloc pool


_lock = threading.Lock()
_depth = 0
_previous: pa.MemoryPool | None = None


@contextmanager
def returning_arrow_memory() -> Iterator[None]:
    """Within the block, pyarrow's default pool is jemalloc with a 0 ms decay (nested and concurrent
    blocks share it; the last one to leave restores the previous pool and decay)."""
    global _depth, _previous
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # no jemalloc in this pyarrow build
        yield
        return
    with _lock:
        if _depth == 0:
            _previous = pa.default_memory_pool()
            pa.jemalloc_set_decay_ms(0)
            pa.set_memory_pool(pool)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _previous is not None:
                pa.set_memory_pool(_previous)
                pa.jemalloc_set_decay_ms(DEFAULT_DECAY_MS)
                _previous = None
