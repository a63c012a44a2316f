import torch

from eventrec.ops.time_buckets import MAX_GAP, relative_timestamps_int32, time_gap_bucket


def test_known_values():
    dt = torch.tensor([0, 1, 2, 3, 6, 7, -7, 1023, 1024, 86400, 10**9, 2**40])
    expected = [0, 1, 1, 2, 2, 3, 3, 10, 10, 16, 29, 31]
    assert time_gap_bucket(dt, 32).tolist() == expected
    assert time_gap_bucket(dt, 12).tolist() == [min(e, 11) for e in expected]


def test_matches_integer_log2_below_2_pow_24():
    dt = torch.randint(-(2**24) + 2, 2**24 - 2, (10000,))
    expected = torch.tensor([(abs(int(x)) + 1).bit_length() - 1 for x in dt])
    assert torch.equal(time_gap_bucket(dt, 64), expected)


def test_relative_timestamps_keep_differences():
    ts = torch.randint(10**9, 10**9 + 10**8, (500,))
    rel = relative_timestamps_int32(ts)
    assert rel.dtype == torch.int32 and int(rel.min()) == 0
    i, j = torch.randint(0, 500, (2, 1000))
    assert torch.equal(time_gap_bucket(rel[i].long() - rel[j].long()), time_gap_bucket(ts[i] - ts[j]))
    assert int(time_gap_bucket(torch.tensor([MAX_GAP + 10]))) == 31
