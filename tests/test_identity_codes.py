"""identity_codes: fixed unit codes whose cosine is 1 for the same id and near 0 for different ids."""

import torch

from eventrec.model.identity_codes import identity_codes


def test_codes_are_fixed_unit_vectors_of_signs():
    ids = torch.tensor([[0, 7], [123_456_789, 7]])
    codes = identity_codes(ids, 16)
    assert codes.shape == (2, 2, 16)
    assert torch.equal(codes.abs(), torch.full_like(codes, 0.25))
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(codes[0, 1], codes[1, 1])  # the same id, the same code
    assert torch.equal(identity_codes(ids, 16), codes)  # no state: every call agrees
    # a fixed function of the id: these values are part of saved models' behaviour
    assert identity_codes(torch.tensor([1]), 8).mul(8**0.5).round().tolist() == [[-1, 1, -1, -1, -1, -1, 1, -1]]


def test_different_ids_are_nearly_orthogonal():
    dim = 16
    codes = identity_codes(torch.arange(2000), dim)  # consecutive ids: the hardest case for a weak hash
    cosines = codes @ codes.T
    off_diagonal = cosines[~torch.eye(2000, dtype=torch.bool)]
    assert abs(off_diagonal.mean().item()) < 0.01
    assert abs(off_diagonal.std().item() - dim**-0.5) < 0.01  # as for independent random signs
    assert (off_diagonal > 0.99).float().mean().item() < 1e-3  # two ids with one code: rare (2^-16 each)
    balance = codes.sum(dim=0) * dim**0.5 / 2000  # each entry's mean sign over the ids
    assert balance.abs().max().item() < 0.1
