"""Exact top-k through group maxima (``cache.topk.row_topk``) against ``torch.topk``, and the cache's targets built
on it against a log-softmax computed directly."""

from __future__ import annotations

import pytest
import torch

from kdflow.cache.format import sparse_targets
from kdflow.cache.topk import GROUP, row_topk
from kdflow.device_audit import DeviceAudit


def distinct(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Entries that are all different (a shuffled range, scaled): the top-k's columns are then unique."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    return (torch.randperm(n, generator=g).float() / n * 20 - 10).view(shape)


@pytest.mark.parametrize("columns", [64 * GROUP * 4, 64 * GROUP * 4 + 7])  # a whole number of sets; a tail
@pytest.mark.parametrize("k", [1, 16, 64])
def test_row_topk_equals_torch_topk(columns, k):
    x = distinct((3, 5, columns), seed=columns + k)
    got, want = row_topk(x, k), x.topk(k, dim=-1)
    assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)


def test_row_topk_when_the_largest_entries_share_one_set_or_sit_in_the_tail():
    """Set j holds columns j, j + s, j + 2s, ... (s = n // GROUP): all top entries in one set, or in the columns
    past the last whole set, must still be found."""
    k, sets = 8, 40
    n = sets * GROUP + 5
    x = distinct((4, n), seed=1)
    x[0, 3 + sets * torch.arange(GROUP)] += 100  # one set holds the row's 16 largest
    x[1, sets * GROUP :] += 100  # the tail holds the 5 largest
    x[2, torch.arange(0, sets * GROUP, sets)] += 100  # set 0: columns 0, s, 2s, ...
    got, want = row_topk(x, k), x.topk(k, dim=-1)
    assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)


def test_row_topk_with_ties_and_minus_infinity_keeps_the_values():
    """Equal entries (repeated values, -inf over most of a row) may be picked at other columns than torch.topk's;
    the values are equal, and the columns are distinct and hold those values."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 50, (6, 4096), generator=g).float()
    x[0, 10:] = float("-inf")  # fewer finite entries than k
    got, want = row_topk(x, 32), x.topk(32, dim=-1)
    assert torch.equal(got[0], want.values)
    assert torch.equal(x.gather(1, got[1]), got[0])
    assert all(len(set(row.tolist())) == 32 for row in got[1])


def test_row_topk_of_narrow_rows_is_torch_topk():
    x = distinct((2, 100), seed=3)
    got, want = row_topk(x, 40), x.topk(40, dim=-1)
    assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)


@pytest.mark.parametrize("overwrite", [False, True])
def test_sparse_targets_over_a_wide_vocabulary_match_a_direct_log_softmax(overwrite):
    """Targets through the group-maxima top-k (4,099 columns) against lp = log_softmax(z), lp.topk(k) and
    c_T = logsumexp(lp / T) computed directly; the normaliser of every temperature, in any order."""
    z = distinct((7, 4099), seed=4) * 1.5
    lp = torch.log_softmax(z.double(), -1)
    temperatures = [15.0, 1.0, 2.0]
    got = sparse_targets(z.clone(), 12, temperatures, overwrite=overwrite)
    want = lp.topk(12, dim=-1)
    assert torch.equal(got["ids"], want.indices)
    assert torch.allclose(got["values"].double(), want.values, atol=1e-5)
    for i, t in enumerate(temperatures):
        assert torch.allclose(got["log_norm"][:, i].double(), torch.logsumexp(lp / t, -1), atol=1e-5)


def test_the_group_maxima_path_keeps_every_tensor_on_the_logits_device():
    """Under the device audit (``kdflow.device_audit``: CUDA's same-device rule on a CPU machine) the column ids
    the wide path makes are on the logits' device."""
    with DeviceAudit() as audit:
        logits = audit.mark(distinct((4, 4099), seed=5))
        sparse_targets(logits, 8, [1.0, 15.0])
    assert audit.violations == [], "\n".join(audit.violations)
