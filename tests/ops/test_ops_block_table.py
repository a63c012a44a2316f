import torch

from eventrec.ops.jagged_helpers import block_table, padded_index

from ops_cases import offsets_from, skewed_lengths


def test_block_table_covers_every_block_once():
    for _ in range(5):
        lengths = skewed_lengths(20, 300, include=(0, 1, 0))
        off = offsets_from(lengths, torch.device("cpu"))
        for block in (16, 64, 128):
            seq, blk = block_table(off, block, int(off[-1]))
            assert seq.numel() == int(off[-1]) // block + len(lengths)
            real = [(int(s), int(b)) for s, b in zip(seq, blk) if s >= 0]
            expected = [(s, b) for s, n in enumerate(lengths) for b in range((n + block - 1) // block)]
            assert sorted(real) == sorted(expected)
            # longest sequences first
            firsts = [lengths[s] for s, _ in real]
            assert firsts == sorted(firsts, reverse=True)


def test_padded_index():
    off = offsets_from([3, 0, 2], torch.device("cpu"))
    index, valid = padded_index(off, torch.tensor([2, 0, 1]), 3)
    assert valid.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    assert index[valid].tolist() == [3, 4, 0, 1, 2]
