"""Residual vector quantization: a content vector → a few integer codes.

Level 0's codebook is fitted by k-means on the vectors; level ``l`` on what the levels before it left
unexplained (the residuals ``x - c0 - ... - c(l-1)``). A vector is encoded greedily, level by level:
``code_l = nearest(residual_l, codebook_l)``, ``residual_(l+1) = residual_l - codebook_l[code_l]``;
its reconstruction is the sum of the chosen codewords. With 3 levels of 256 codes an item's 384
float32 numbers (1,536 bytes) become 3 codes of one byte each.

Codebooks are fitted on the training period's items only (the caller passes those vectors;
:mod:`eventrec.content.training_items`); items first seen later, cold ones included, are only
encoded. Everything is float64 NumPy and deterministic by seed (level ``l`` uses seed ``seed + l``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eventrec.content.kmeans import kmeans, nearest


@dataclass(frozen=True)
class ResidualVQ:
    """``codebooks [levels, codes, dim]`` float64."""

    codebooks: np.ndarray

    @property
    def levels(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codes(self) -> int:
        return self.codebooks.shape[1]

    @property
    def dim(self) -> int:
        return self.codebooks.shape[2]

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors: expected [n, {self.dim}], got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors: not all finite")
        return vectors

    def encode(self, vectors: np.ndarray, levels: int | None = None) -> np.ndarray:
        """``vectors [n, dim]`` → ``codes [n, levels]`` int64 in ``[0, codes)``, greedily level by level."""
        residual = self._check(vectors).copy()
        out = np.zeros((len(residual), self.levels if levels is None else levels), dtype=np.int64)
        for level in range(out.shape[1]):
            out[:, level], _ = nearest(residual, self.codebooks[level])
            residual -= self.codebooks[level][out[:, level]]
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``codes [n, l]`` (the first ``l`` levels) → reconstructions ``[n, dim]``: the sum of the codewords."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= self.levels:
            raise ValueError(f"codes: expected [n, 1..{self.levels}], got shape {codes.shape}")
        if len(codes) and (codes.min() < 0 or codes.max() >= self.codes):
            raise ValueError(f"codes: values must lie in [0, {self.codes})")
        return sum((self.codebooks[level][codes[:, level]] for level in range(codes.shape[1])), np.zeros((len(codes), self.dim)))

    def reconstruction_errors(self, vectors: np.ndarray) -> list[float]:
        """Mean squared error per vector (sum over dims, mean over vectors) after 0, 1, ..., levels
        levels: entry 0 is the mean squared norm (reconstruction by nothing)."""
        vectors = self._check(vectors)
        codes = self.encode(vectors)
        errors = [float((vectors**2).sum(axis=1).mean())]
        for level in range(1, self.levels + 1):
            errors.append(float(((vectors - self.decode(codes[:, :level])) ** 2).sum(axis=1).mean()))
        return errors

    def save(self, path: Path, metadata: dict) -> None:
        """Write ``codebooks`` and ``metadata`` (JSON) to ``path`` (``.npz``), atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        try:
            np.savez(tmp, codebooks=self.codebooks, metadata=np.array(json.dumps(metadata, sort_keys=True)))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> tuple["ResidualVQ", dict]:
        """The quantizer and the metadata :meth:`save` wrote."""
        with np.load(path, allow_pickle=False) as data:
            return cls(data["codebooks"].astype(np.float64)), json.loads(str(data["metadata"]))


def fit_residual_vq(vectors: np.ndarray, levels: int, codes: int, seed: int, max_iterations: int = 100) -> ResidualVQ:
    """Fit ``levels`` codebooks of ``codes`` codewords to ``vectors [n, dim]`` (n ≥ codes): level ``l``
    is k-means (seed ``seed + l``) on the residuals the levels before it leave."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if levels < 1:
        raise ValueError(f"levels: expected at least 1, got {levels}")
    if codes < 1:
        raise ValueError(f"codes: expected at least 1, got {codes}")
    if vectors.ndim != 2 or len(vectors) < codes:
        raise ValueError(f"codes: {codes} codes per level need at least {codes} training vectors, got {len(vectors) if vectors.ndim == 2 else 0}")
    residual = vectors.copy()
    books = []
    for level in range(levels):
        fitted = kmeans(residual, codes, seed + level, max_iterations)
        books.append(fitted.centroids)
        residual = residual - fitted.centroids[fitted.assignment]
    return ResidualVQ(np.stack(books))
