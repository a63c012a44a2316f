"""k-means (Lloyd's algorithm with k-means++ seeding) in NumPy float64: the readable reference that
the residual quantizer (:mod:`eventrec.content.residual_vq`) fits each level's codebook with.

Deterministic: the same points, ``k`` and ``seed`` give the same centroids and assignments (every
random draw comes from ``numpy.random.default_rng(seed)``; ties in the nearest centroid go to the
lowest index; an empty cluster is refilled with the point farthest from its centroid, lowest row
first). The points are few here (one per item: thousands), so clarity wins over speed: one
``[n, k]`` distance matrix per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KMeansResult:
    """``centroids [k, d]`` float64, ``assignment [n]`` int64 (each point's nearest centroid),
    ``inertia`` (sum of squared distances to the assigned centroids), ``iterations`` run."""

    centroids: np.ndarray
    assignment: np.ndarray
    inertia: float
    iterations: int


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``points [n, d]``, ``centroids [k, d]`` → ``[n, k]`` squared Euclidean distances (≥ 0)."""
    cross = points @ centroids.T
    out = (points * points).sum(axis=1)[:, None] - 2.0 * cross + (centroids * centroids).sum(axis=1)[None, :]
    return np.maximum(out, 0.0)


def nearest(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's nearest centroid: (``index [n]`` int64, lowest on ties; ``squared distance [n]``)."""
    distances = squared_distances(points, centroids)
    index = distances.argmin(axis=1)
    return index.astype(np.int64), distances[np.arange(len(points)), index]


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: the first centroid uniformly, each next one with probability ∝ the squared
    distance to the nearest centroid chosen so far. Once every point coincides with a centroid (fewer
    distinct points than ``k``), the rest are copies of uniformly drawn points: duplicate centroids,
    which :func:`nearest` never picks (the lowest index wins the tie). Returns ``[k, d]``."""
    n = len(points)
    chosen = [int(rng.integers(n))]
    closest = squared_distances(points, points[chosen[0]][None, :])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total > 0:
            pick = int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
            pick = min(pick, n - 1)
        else:
            pick = int(rng.integers(n))
        chosen.append(pick)
        closest = np.minimum(closest, squared_distances(points, points[pick][None, :])[:, 0])
    return points[chosen].copy()


def kmeans(points: np.ndarray, k: int, seed: int, max_iterations: int = 100) -> KMeansResult:
    """Fit ``k`` centroids to ``points [n, d]`` (n ≥ k ≥ 1): k-means++ seeding, then Lloyd iterations
    (assign each point to its nearest centroid, move each centroid to its points' mean) until the
    assignment stops changing or ``max_iterations`` have run."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points: expected a non-empty [n, d] array, got shape {points.shape}")
    if not 1 <= k <= len(points):
        raise ValueError(f"k: {k} centroids need 1..{len(points)} (the number of points)")
    if not np.isfinite(points).all():
        raise ValueError("points: not all finite")
    rng = np.random.default_rng(seed)
    centroids = kmeans_plus_plus(points, k, rng)
    assignment, distance = nearest(points, centroids)
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        counts = np.bincount(assignment, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assignment, points)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
        # an empty cluster is refilled with the point worst served (farthest first, lowest row on ties);
        # when every point already sits on a centroid there is nothing to refill with: it stays unused
        empty = np.flatnonzero(counts == 0)
        worst = np.argsort(-distance, kind="stable")[: len(empty)]
        worst = worst[distance[worst] > 0]
        moved[empty[: len(worst)]] = points[worst]
        centroids = moved
        new_assignment, distance = nearest(points, centroids)
        if np.array_equal(new_assignment, assignment) and not len(worst):
            break
        assignment = new_assignment
    return KMeansResult(centroids, assignment, float(distance.sum()), iterations)
