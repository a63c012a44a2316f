"""Fixed pseudo-random codes of ids: the exact-identity channel of the target attention.

The match attention compares a candidate with each event by the cosine of their *learned*
embeddings, which also draws attention to similar ids, and early in training to arbitrary ones.
``identity_codes`` gives every id a fixed unit vector of ``dim`` entries ±1/√dim, taken from a
hash of the id and the entry's index (no parameters, the same on every machine and device): the
cosine of two codes is 1 for the same id and, for two different ids, a sum of ``dim`` random signs
over ``dim`` (mean 0, std 1/√dim; exactly 1 with probability 2^-dim). With
``SequenceModelConfig.identity_match`` each match vocabulary gets such a block beside its learned
embedding, with its own learned weight per head: the model can learn how much "this very id
appears in the history" matters, and the pooled values tell it when and how often.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 in, values in [0, 2^32)); no product exceeds 2^59."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def identity_codes(ids: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes ``[*ids.shape, dim]`` of integer ids (any shape; int64 indices of a vocabulary or hash
    table), entries ±1/√dim. Ids that differ only above bit 32 get related codes (no vocabulary
    here comes near that size)."""
    entry = torch.arange(dim, device=ids.device, dtype=torch.int64)
    mixed = _hash32(_hash32(ids.to(torch.int64)).unsqueeze(-1) + entry * 0x9E3779B9)
    signs = (mixed >> 7) & 1  # a middle bit: the low bits of this mix are the weakest
    return (signs.to(dtype) * 2 - 1) * dim**-0.5
