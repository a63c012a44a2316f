"""gather_rows / select_rows: the values and gradients of advanced indexing, through index_select."""

import pytest
import torch

from eventrec.ops.jagged_helpers import gather_rows, select_rows


def _value_and_grad(fn, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed)))
    return out.detach(), x.grad


@pytest.mark.parametrize("dim", [0, 1])
def test_gather_rows_equals_advanced_indexing(dim):
    x = torch.randn(7, 5, 3, dtype=torch.float64)
    index = torch.randint(0, x.shape[dim], (4, 6))  # repeated rows: gradients must accumulate
    index[0, :3] = 2
    reference = (lambda t: t[index]) if dim == 0 else (lambda t: t[:, index])
    out, grad = _value_and_grad(lambda t: gather_rows(t, index, dim), x, seed=1)
    ref_out, ref_grad = _value_and_grad(reference, x, seed=1)
    assert out.shape == ref_out.shape == ((4, 6, 5, 3) if dim == 0 else (7, 4, 6, 3))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(grad, ref_grad)


def test_select_rows_equals_boolean_mask():
    x = torch.randn(4, 6, 2, 3, dtype=torch.float64).permute(0, 1, 3, 2)  # not contiguous, as after a permute
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) < 0.6
    mask[2] = False  # an all-padding row
    out, grad = _value_and_grad(lambda t: select_rows(t, mask), x, seed=2)
    ref_out, ref_grad = _value_and_grad(lambda t: t[mask], x, seed=2)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(grad, ref_grad)


def test_select_rows_of_nothing():
    x = torch.randn(2, 3, 4)
    assert select_rows(x, torch.zeros(2, 3, dtype=torch.bool)).shape == (0, 4)
