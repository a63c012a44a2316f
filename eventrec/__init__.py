"""eventrec: ranking from raw event sequences.

Importing eventrec before Polars sets Polars' allocator (jemalloc) to return freed memory to the
system within 200 ms (``dirty_decay_ms:200,muzzy_decay_ms:0``; Polars' own default keeps freed pages
resident, lazily freed, until memory is short). The partitioned build holds one partition at a time,
and pages it freed but kept were ~50 MB of its ~500 MB peak on the 1M-user world at no measurable
speed difference (``bench/results/build_store.md``). An explicit ``_RJEM_MALLOC_CONF`` wins (set it
empty for Polars' defaults); where Polars was imported first, this changes nothing.
"""

import os

os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:200,muzzy_decay_ms:0")
