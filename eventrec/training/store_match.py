"""A checkpoint remembers the store it was trained on, and refuses another one.

A model reads ids: vocabulary positions, hash buckets and numbers normalised with training-period
statistics. The same raw logs rebuilt with another split give other vocabularies and statistics,
so the same ids mean other things and the model's scores are silently wrong. Each checkpoint
therefore records the store's :attr:`~eventrec.store.reader.EventStore.encoding_fingerprint` (and
its path, for the message); loading it with a store of another fingerprint raises
:class:`StoreMismatch` unless the caller passes ``allow_mismatch`` (for experts who know the
encodings agree). Checkpoints written before the fingerprint existed load with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from eventrec.store.reader import EventStore

STORE_KEY = "store"  # the checkpoint.json entry: {"encoding_fingerprint", "path"}


class StoreMismatch(ValueError):
    """A checkpoint loaded with a store whose encodings differ from those it was trained with."""


def store_record(store: EventStore) -> dict[str, str]:
    """What a checkpoint records of its training store."""
    return {"encoding_fingerprint": store.encoding_fingerprint, "path": str(Path(store.path).resolve())}


def check_store(info: dict, store: EventStore, checkpoint: Path | str, allow_mismatch: bool = False) -> None:
    """Raise :class:`StoreMismatch` (naming both fingerprints and both paths) when the checkpoint's
    ``info`` was trained on a store of another encoding fingerprint than ``store``'s; only warn with
    ``allow_mismatch`` or for a checkpoint that predates the record."""
    saved = info.get(STORE_KEY)
    if not isinstance(saved, dict) or "encoding_fingerprint" not in saved:
        warnings.warn(f"{checkpoint}: this checkpoint predates store fingerprints; cannot check that it was trained on "
                      f"{store.path} (retrain to record it)", stacklevel=2)
        return
    if saved["encoding_fingerprint"] == store.encoding_fingerprint:
        return
    message = (f"{checkpoint} was trained on the store {saved.get('path', '?')} (encoding fingerprint {saved['encoding_fingerprint']}), "
               f"but the store given is {Path(store.path).resolve()} (encoding fingerprint {store.encoding_fingerprint}): their "
               "vocabularies or statistics differ (e.g. the same logs built with another split), so its ids mean other things")
    if allow_mismatch:
        warnings.warn(message + "; used anyway (allow_store_mismatch)", stacklevel=2)
        return
    raise StoreMismatch(message + "; use the store it was trained on or retrain on this one (experts who know the encodings "
                        "agree: --allow-store-mismatch / allow_store_mismatch=True)")
