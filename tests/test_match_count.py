"""The count-preserving path (eventrec/model/match_count.py): grouped form == one-candidate reference,
exact matches count ~1 each, empty histories count 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eventrec.model.match_count import MatchCount


def _unit(x: torch.Tensor, blocks: int) -> torch.Tensor:
    return F.normalize(x.view(len(x), blocks, -1), dim=-1).view(len(x), -1)


def test_grouped_form_equals_the_reference_forward_and_backward():
    torch.manual_seed(0)
    blocks, dim = 2, 4
    offsets = torch.tensor([0, 3, 3, 8, 9])  # history 1 is empty
    keys = _unit(torch.randn(9, blocks * dim), blocks).requires_grad_()
    queries = _unit(torch.randn(7, blocks * dim), blocks)
    queries[0, :dim] = keys[4, :dim].detach()  # candidate 0 equals an event of history 2 in block 0
    queries.requires_grad_()
    history_index = torch.tensor([2, 0, 1, 2, 3, 0, 2])
    counter = MatchCount(blocks)
    fast = counter(queries, keys, offsets, history_index)
    slow = counter.reference(queries, keys, offsets, history_index)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert fast[2].abs().max() == 0  # the empty history
    grads = torch.autograd.grad(fast.sum(), [queries, keys, counter.sharpness])
    grads_ref = torch.autograd.grad(slow.sum(), [queries, keys, counter.sharpness])
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_exact_matches_count_about_one_each():
    torch.manual_seed(1)
    blocks, dim = 1, 16
    item = _unit(torch.randn(1, dim), blocks)
    others = _unit(torch.randn(20, dim), blocks)
    for repeats in (0, 1, 5):
        keys = torch.cat([others, item.expand(repeats, -1)])
        count = MatchCount(blocks)(item, keys, torch.tensor([0, len(keys)]), torch.tensor([0]))
        assert abs(torch.expm1(count).item() - repeats) < 0.1, (repeats, torch.expm1(count).item())
