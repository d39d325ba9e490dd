"""The bank plan (csrc/bank_plan/, fixedbranch/plan.py): which filters run as shared separable terms, what that
costs, and that the plan rebuilds every bank to its dtype's tolerance of its largest tap (plan_tolerances), so that a
float32-rounded bank keeps its float64 plan; a module's plan is the one the operator runs for its input's dtype."""

import doctest
import math
import threading

import pytest
import torch
import torch.nn.functional as F

import fixedbranch
from fixedbranch import filters, reference
from fixedbranch.plan import BankPlan, bank_plan, plan_tolerances

from .common import HALF_DTYPES, TOLERANCE, assert_close, backward_op, cpu_and_cuda, factoring

_ops = torch.ops.fixedbranch

# The plan's reconstruction bound per bank dtype, relative to each filter's largest tap, as the extension states it.
RECONSTRUCTION_TOLERANCE = {
    dtype: plan_tolerances(dtype)["reconstruction"]
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
}


def _outer(column, row):
    return torch.outer(torch.as_tensor(column, dtype=torch.float64), torch.as_tensor(row, dtype=torch.float64))


def _gabor_bank(size=11, orientations=8):
    return torch.stack([filters.gabor(size, 3.0, k * math.pi / orientations, 6.0) for k in range(orientations)])


def _random(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rank_two_3x3_pair():
    # Both filters span the columns e0 and e1 with well separated singular values, so both SVDs give exactly these
    # columns and the two filters share them.
    e0, e1 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    f0 = 2 * _outer(e0, [1.0, 0.0, 0.0]) + _outer(e1, [0.0, 1.0, 0.0])
    f1 = 3 * _outer(e0, [0.0, 0.0, 1.0]) + _outer(e1, [1.0, 0.0, 0.0])
    return torch.stack([f0, f1])


def _rank_two_5x5_pair():
    # As above, with orthogonal rows of distinct norms in each filter.
    e0, e1 = [1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]
    f0 = 2 * _outer(e0, [1.0, 2.0, 0.0, 0.0, 0.0]) + _outer(e1, [0.0, 0.0, 1.0, 0.0, 0.0])
    f1 = 3 * _outer(e0, [0.0, 0.0, 0.0, 1.0, 1.0]) + _outer(e1, [1.0, -1.0, 0.0, 0.0, 0.0])
    return torch.stack([f0, f1])


# name -> (bank, expected filters, expected columns, expected plan taps). The taps follow the plan's definition:
# columns * S1 + S2 per separable term + S1 * S2 per direct filter.
def _banks():
    sep1 = "separable(1)"
    g = filters.gaussian(7, 1.5)[:, 3]
    return {
        "dct3": (filters.dct(3), (sep1,) * 9, 3, 3 * 3 + 9 * 3),
        "dct5": (filters.dct(5), (sep1,) * 25, 5, 5 * 5 + 25 * 5),
        "dct7": (filters.dct(7), (sep1,) * 49, 7, 7 * 7 + 49 * 7),
        "dct8": (filters.dct(8), (sep1,) * 64, 8, 8 * 8 + 64 * 8),
        # [1, 2, 1] and [-1, 0, 1] columns: one each.
        "sobel": (filters.bank("sobel_x", "sobel_y"), (sep1, sep1), 2, 2 * 3 + 2 * 3),
        "scharr": (filters.bank("scharr_x", "scharr_y"), (sep1, sep1), 2, 2 * 3 + 2 * 3),
        # prewitt_x's column [1, 1, 1] is not sobel's, prewitt_y's [-1, 0, 1] is sobel_y's.
        "sobel+prewitt": (
            filters.bank("sobel_x", "sobel_y", "prewitt_x", "prewitt_y"),
            (sep1,) * 4,
            3,
            3 * 3 + 4 * 3,
        ),
        "gaussian3": (filters.gaussian(3, 1.0)[None], (sep1,), 1, 3 + 3),
        "gaussian5": (filters.gaussian(5, 1.0)[None], (sep1,), 1, 5 + 5),
        "gaussian7": (filters.gaussian(7, 1.5)[None], (sep1,), 1, 7 + 7),
        # Rank 2: 2 terms * (3 + 1) + 2 own columns * (3 + 1) = 16 >= 9 taps, direct.
        "laplacian4": (filters.laplacian4()[None], ("direct",), 0, 9),
        "laplacian8": (filters.laplacian8()[None], ("direct",), 0, 9),
        "sobel+laplacian4": (
            filters.bank("sobel_x", "sobel_y", "laplacian4"),
            (sep1, sep1, "direct"),
            2,
            2 * 3 + 2 * 3 + 9,
        ),
        "random7": (_random((4, 7, 7)), ("direct",) * 4, 0, 4 * 49),
        # The LoG is rank 3 (two Gaussian-weighted terms, plus the constant its mean removal subtracts):
        # 3 * (7 + 1) + 3 * (7 + 1) = 48 < 49 at 7x7, 60 < 81 at 9x9, 36 >= 25 at 5x5.
        "log5": (filters.log(5, 1.0)[None], ("direct",), 0, 25),
        "log7": (filters.log(7, 1.0)[None], ("separable(3)",), 3, 3 * 7 + 3 * 7),
        "log9": (filters.log(9, 1.4)[None], ("separable(3)",), 3, 3 * 9 + 3 * 9),
        # Rank 1 at 0 and 90 degrees (different columns), full rank 11 at the oblique angles: direct.
        "gabor11": (
            _gabor_bank(),
            (sep1, "direct", "direct", "direct", sep1, "direct", "direct", "direct"),
            2,
            2 * 11 + 2 * 11 + 6 * 121,
        ),
        # Even and non-square sizes.
        "4x6 rank 1": (_outer(_random(4, 1), _random(6, 2))[None], (sep1,), 1, 4 + 6),
        # Rank 2 at 4x6 ties: 2 * (6 + 1) + 2 * (4 + 1) = 24 = 4 * 6 taps, and a tie goes direct.
        "4x6 rank 2": (
            (_outer(_random(4, 1), _random(6, 2)) + _outer(_random(4, 3), _random(6, 4)))[None],
            ("direct",),
            0,
            24,
        ),
        "2x5 rank 1": (_outer([1.0, -3.0], [1.0, 4.0, 6.0, 4.0, 1.0])[None], (sep1,), 1, 2 + 5),
        "2x5 random": (_random((3, 2, 5)), ("direct",) * 3, 0, 3 * 10),
        # 2 + 2 + 2 passes = 6 > 4 taps.
        "2x2 rank 1": (_outer([1.0, 1.0], [1.0, -1.0])[None], ("direct",), 0, 4),
        "4x4 box": (torch.ones(1, 4, 4, dtype=torch.float64), (sep1,), 1, 4 + 4),
        "1x5": (_random((2, 1, 5)), ("direct", "direct"), 0, 10),
        "5x1": (_random((2, 5, 1)), ("direct", "direct"), 0, 10),
        "1x1": (_random((3, 1, 1)), ("direct",) * 3, 0, 3),
        "zero": (torch.zeros(2, 3, 3, dtype=torch.float64), ("direct", "direct"), 0, 18),
        "zero among dct": (
            torch.cat([filters.dct(3)[:2], torch.zeros(1, 3, 3, dtype=torch.float64), filters.dct(3)[2:4]]),
            (sep1, sep1, "direct", sep1, sep1),
            2,
            2 * 3 + 4 * 3 + 9,
        ),
        # A column shared up to sign: the sign goes into the row.
        "opposite signs": (
            torch.stack([_outer(g, g), -_outer(g, g), _outer(-g, 2 * g)]),
            (sep1,) * 3,
            1,
            7 + 3 * 7,
        ),
        # Each filter alone is cheaper factored (2 * (3 + 1) = 8 < 9 with the columns shared), the pair is not
        # (2 * 8 + 2 * (3 + 1) = 24 >= 18): the group goes direct.
        "rank-2 pair 3x3": (_rank_two_3x3_pair(), ("direct", "direct"), 0, 18),
        # At 5x5 the same sharing pays: 2 * 2 * (5 + 1) + 2 * (5 + 1) = 36 < 50.
        "rank-2 pair 5x5": (_rank_two_5x5_pair(), ("separable(2)", "separable(2)"), 2, 2 * 5 + 4 * 5),
        "gabor31 x16": (
            torch.stack([filters.gabor(31, 6.0, k * math.pi / 16, 10.0) for k in range(16)]),
            None,
            None,
            None,
        ),
    }


BANKS = _banks()


@pytest.mark.parametrize("name", list(BANKS))
def test_plan(name):
    bank, expected_filters, expected_columns, expected_taps = BANKS[name]
    plan = bank_plan(bank)
    k, s1, s2 = bank.shape
    assert plan.shape == (k, s1, s2)
    assert plan.direct_taps == k * s1 * s2
    if expected_filters is not None:
        assert plan.filters == expected_filters
        assert plan.columns == expected_columns
        assert plan.plan_taps == expected_taps
    # A plan never costs more than the direct path (it counts passes on top of taps).
    assert plan.plan_taps <= plan.direct_taps
    assert len(plan.filters) == len(plan.ranks) == k


@pytest.mark.parametrize("dtype", list(RECONSTRUCTION_TOLERANCE))
@pytest.mark.parametrize("name", list(BANKS))
def test_reconstruction(name, dtype):
    # The plan of the bank rounded to `dtype` rebuilds the rounded bank, the filter the kernels apply.
    bank = BANKS[name][0].to(dtype)
    rebuilt = _ops._bank_plan_reconstruct(bank)
    assert rebuilt.dtype == torch.float64 and rebuilt.shape == bank.shape
    exact = bank.double()
    error = (rebuilt - exact).abs().amax(dim=(1, 2))
    scale = exact.abs().amax(dim=(1, 2))
    assert (error <= RECONSTRUCTION_TOLERANCE[dtype] * scale).all(), (error / scale.clamp_min(1e-300)).max()
    # Direct filters are the bank's own values.
    table = _ops._bank_plan(bank)
    direct = table[:, 0] == 0
    assert torch.equal(rebuilt[direct], exact[direct])


def test_ranks():
    assert bank_plan(filters.laplacian4()[None]).ranks == (2,)
    assert bank_plan(filters.log(7, 1.0)[None]).ranks == (3,)
    assert bank_plan(filters.gaussian(7, 1.5)[None]).ranks == (1,)
    assert bank_plan(_random((2, 7, 7))).ranks == (7, 7)
    assert bank_plan(_random((2, 4, 6))).ranks == (4, 4)
    assert bank_plan(_random((2, 1, 5))).ranks == (1, 1)
    assert bank_plan(torch.zeros(1, 3, 3)).ranks == (0,)
    gabor = bank_plan(_gabor_bank()).ranks
    assert gabor[0] == gabor[4] == 1
    assert all(r > 1 for i, r in enumerate(gabor) if i % 4)


def test_dct_columns_are_shared_in_first_use_order():
    # Basis (u, v) sits at u * n + v and its column (along H) is the u-th cosine: filter u * n + v uses column u.
    n = 5
    table = _ops._bank_plan(filters.dct(n))
    assert table.shape == (n * n, len(_ops._bank_plan_columns())) and table.dtype == torch.int64
    assert table[:, 0].tolist() == [1] * n * n
    assert table[:, 1].tolist() == [1] * n * n
    assert table[:, 2].tolist() == [i // n for i in range(n * n)]
    assert table[:, 3].tolist() == [1 if i % n == 0 else 0 for i in range(n * n)]
    assert table[:, 4].tolist() == [1] * n * n


def test_table_layout_of_direct_filters():
    table = _ops._bank_plan(filters.bank("sobel_x", "laplacian4"))
    # sobel_x: one term (3 taps) and its new column (3 taps); laplacian4: 9 direct taps.
    assert table.tolist() == [[1, 1, 0, 1, 1, 6], [0, 0, -1, 0, 2, 9]]


def _permutation_bank(seed, k, s1, s2, max_rank):
    """Filters sum_j s_j e_{a_j} ⊗ e_{b_j} with distinct a's, b's and scales: the SVD's columns are exactly the
    e_{a_j}, so every filter's column set is known. Returns the bank and the column sets."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.zeros(k, s1, s2, dtype=torch.float64)
    column_sets = []
    for i in range(k):
        rank = int(torch.randint(1, max_rank + 1, (1,), generator=g))
        a = torch.randperm(s1, generator=g)[:rank].tolist()
        b = torch.randperm(s2, generator=g)[:rank].tolist()
        for j in range(rank):
            bank[i, a[j], b[j]] = (j + 1.0) * (-1.0) ** j
        column_sets.append(frozenset(a))
    return bank, column_sets


@pytest.mark.parametrize("seed", range(12))
def test_choice_is_the_cheapest_with_the_fewest_factored_filters(seed):
    # Brute force over every subset of factored filters, costing S2 + 1 per term, S1 + 1 per column pass used and
    # S1 * S2 per direct filter; the plan must be the unique smallest of the cheapest subsets.
    s1, s2 = (5, 5) if seed % 2 else (4, 6)
    k = 8
    bank, column_sets = _permutation_bank(seed, k, s1, s2, max_rank=4)

    def cost(subset):
        used = set().union(*(column_sets[i] for i in subset)) if subset else set()
        terms = sum(len(column_sets[i]) for i in subset)
        return terms * (s2 + 1) + len(used) * (s1 + 1) + (k - len(subset)) * s1 * s2

    subsets = [frozenset(i for i in range(k) if mask >> i & 1) for mask in range(1 << k)]
    best = min(cost(sub) for sub in subsets)
    minimal = frozenset.intersection(*(sub for sub in subsets if cost(sub) == best))
    assert cost(minimal) == best
    plan = bank_plan(bank)
    factored = frozenset(i for i, path in enumerate(plan.filters) if path != "direct")
    assert factored == minimal
    assert all(plan.filters[i] == f"separable({len(column_sets[i])})" for i in factored)
    assert plan.columns == len(set().union(*(column_sets[i] for i in factored)) if factored else set())


def test_rank_one_filters_of_a_mixed_bank_stay_separable():
    # lbcnn(64, 3): mostly rank 2 and 3 (direct at 3x3), with a few rank-1 filters that pay for their own columns.
    bank = filters.lbcnn(64, 3)
    plan = bank_plan(bank)
    assert plan.ranks.count(1) > 0
    assert all((path == "separable(1)") == (rank == 1) for path, rank in zip(plan.filters, plan.ranks))


def test_non_finite_filter_runs_direct():
    bank = filters.bank("sobel_x", "sobel_y", "sobel_x")
    bank[1, 0, 0] = float("nan")
    bank[2, 1, 1] = float("inf")
    plan = bank_plan(bank)
    assert plan.filters == ("separable(1)", "direct", "direct")
    assert plan.ranks == (1, -1, -1)


# Banks whose float32 rounding keeps the float64 plan: rank r before rounding, so rounding leaves singular values and
# column differences of ~1e-8, far under float32's 1e-6.
FLOAT32_KEEPS_PLAN = [
    "dct3",
    "dct5",
    "dct7",
    "dct8",
    "sobel",
    "scharr",
    "sobel+prewitt",
    "gaussian3",
    "gaussian5",
    "gaussian7",
    "laplacian4",
    "sobel+laplacian4",
    "log5",
    "log7",
    "log9",
    "gabor11",
    "4x6 rank 1",
    "4x4 box",
    "zero among dct",
    "opposite signs",
    "rank-2 pair 5x5",
]


@pytest.mark.parametrize("name", FLOAT32_KEEPS_PLAN)
def test_float32_rounding_keeps_the_float64_plan(name):
    bank = BANKS[name][0]
    rounded = bank.float()
    plan, plan64 = bank_plan(rounded), bank_plan(bank)
    assert plan.dtype == torch.float32 and plan64.dtype == torch.float64
    assert plan.filters == plan64.filters
    assert plan.columns == plan64.columns
    assert plan.plan_taps == plan64.plan_taps
    # The factored filters keep their rank; a direct one may lose the singular values under 1e-6 (the oblique
    # Gabor filters, rank 11 in float64, are rank 8 or 9 in float32), which its path does not use.
    assert all(r == r64 for path, r, r64 in zip(plan.filters, plan.ranks, plan64.ranks) if path != "direct")
    # The same filters use and introduce the same columns: the table agrees but for those ranks.
    assert torch.equal(_ops._bank_plan(rounded)[:, :4], _ops._bank_plan(bank)[:, :4])


def test_float32_dct7_keeps_its_sharing():
    # At float64's 1e-12 a float32-rounded dct(7) is neither rank 1 (sigma_1 ~ 1e-8 sigma_0) nor shares its columns:
    # planned as float64 values, it loses them.
    rounded = filters.dct(7, dtype=torch.float32)
    plan = bank_plan(rounded)
    assert plan.filters == ("separable(1)",) * 49
    assert (plan.columns, plan.plan_taps, plan.direct_taps) == (7, 7 * 7 + 49 * 7, 49 * 49)
    assert bank_plan(rounded.double()).plan_taps > plan.plan_taps


def test_plan_is_cached_per_dtype():
    # The same values in two dtypes are two plans: the float64 copy of a float32-rounded DCT has ~1e-8 residues that
    # float64's tolerance keeps. Planned in both orders (fresh values each time), so that a cache keyed by content
    # alone would return the first plan for the second dtype.
    for first, second in ((torch.float32, torch.float64), (torch.float64, torch.float32)):
        rounded = filters.dct(7, dtype=torch.float32) * (2.0 if first == torch.float32 else 3.0)
        plans = {dtype: bank_plan(rounded.to(dtype)) for dtype in (first, second)}
        assert plans[torch.float32].dtype == torch.float32 and plans[torch.float64].dtype == torch.float64
        assert plans[torch.float32].ranks == (1,) * 49
        assert plans[torch.float32].plan_taps == 7 * 7 + 49 * 7
        assert sum(rank > 1 for rank in plans[torch.float64].ranks) == 36  # all but the 13 with a constant factor
        assert plans[torch.float64].plan_taps > 4 * plans[torch.float32].plan_taps
        rebuilt = {dtype: _ops._bank_plan_reconstruct(rounded.to(dtype)) for dtype in (first, second)}
        assert not torch.equal(rebuilt[torch.float32], rebuilt[torch.float64])


def test_float32_plan_output_within_float32_tolerance():
    # A 31x31 Gabor bank has smooth filters whose singular values fall under 1e-6 before their rank: in float32 they
    # are truncated to the reconstruction bound. Correlating with the plan's filters instead of the rounded bank's
    # must stay well inside float32's tolerance (here a tenth of it), on white noise as on smooth input.
    bank = BANKS["gabor31 x16"][0].float()
    plan = bank_plan(bank)
    assert plan.plan_taps < bank_plan(bank.double()).plan_taps  # the truncation is taken
    rebuilt, exact = _ops._bank_plan_reconstruct(bank), bank.double()
    y = torch.randn(1, 1, 80, 80, generator=torch.Generator().manual_seed(0)).double()
    smooth = F.avg_pool2d(F.pad(y, (4, 4, 4, 4), mode="reflect"), 9, stride=1) + torch.linspace(0, 2, 80).double()
    for image in (y, smooth):
        padded = F.pad(image, (15, 15, 15, 15), mode="reflect")
        expected = F.conv2d(padded, exact[:, None])
        error = (F.conv2d(padded, rebuilt[:, None]) - expected).abs().amax(dim=(0, 2, 3))
        assert (error <= TOLERANCE[torch.float32] / 10 * expected.abs().amax(dim=(0, 2, 3))).all()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_banks_are_planned_at_float32_precision(dtype):
    # Half banks are computed in float32 from their half-rounded values, the filter the reference applies: the plan
    # factors only what is low rank to float32 precision (test_reconstruction checks 1e-6), never the half-ulp
    # residue that rounding leaves in a separable filter.
    # Small integers are exact in every dtype: Sobel and Prewitt keep their plan.
    exact = filters.bank("sobel_x", "sobel_y", "prewitt_x", "laplacian4")
    assert bank_plan(exact.to(dtype)).filters == bank_plan(exact).filters == ("separable(1)",) * 3 + ("direct",)
    # Rounding a separable Gaussian, LoG or Gabor filter to a half type adds a term of ~1e-3: direct.
    for bank in (filters.gaussian(7, 1.5)[None], filters.log(7, 1.0)[None], _gabor_bank(), _random((2, 7, 7))):
        plan = bank_plan(bank.to(dtype))
        assert plan.dtype == dtype
        assert plan.filters == ("direct",) * len(bank)
    assert bank_plan(filters.gaussian(7, 1.5, dtype=dtype)[None]).ranks[0] > 1
    # A rounded DCT keeps its even and odd symmetries, which bound each filter's rank exactly (4 at 7x7): it is
    # still factored, with more terms than rank 1 and more column passes.
    plan = bank_plan(filters.dct(7, dtype=dtype))
    assert 1 < max(plan.ranks) <= 4
    assert 7 < plan.columns and 392 < plan.plan_taps < plan.direct_taps


def test_deterministic_and_cached():
    bank = _gabor_bank(31, 16)
    first = _ops._bank_plan(bank)
    first_rebuilt = _ops._bank_plan_reconstruct(bank)
    # The same content in other storage (and a non-contiguous view of it) is the same plan.
    copy = bank.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(_ops._bank_plan(copy), first)
    assert torch.equal(_ops._bank_plan_reconstruct(copy), first_rebuilt)
    # Push well over the cache's 256 entries through it, then plan the bank again: evicted or not, same result.
    for seed in range(300):
        _ops._bank_plan(_random((1, 3, 3), seed))
    assert torch.equal(_ops._bank_plan(bank), first)
    assert torch.equal(_ops._bank_plan_reconstruct(bank), first_rebuilt)
    assert bank_plan(bank) == bank_plan(bank.clone())


def test_cpu_kernels_follow_the_bank_content():
    # The CPU kernels keep their form of a bank (plan, tap classes) cached by its bytes: a change in place, through
    # .data (no version bump) or through numpy (none either) must run the new values, as must a policy change, a
    # symmetric bank made asymmetric (its tap classes split) and the same values in another dtype.
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(2, 3, 17, 19, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3 * 9, 17, 19, generator=gen, dtype=torch.float64)
    symmetric = torch.stack([filters.gaussian(7, s) for s in (1.0, 1.5, 2.0, 2.5)]
                            + [filters.log(7, s) for s in (1.0, 1.5, 2.0, 2.5)])
    for bank in (symmetric.clone(), filters.dct(5)[:8].clone()):
        for change in (lambda b: None, lambda b: b[1].mul_(-2.0), lambda b: b.data[2, 0, 1].add_(0.5),
                       lambda b: b.numpy().__setitem__((3, 2, 2), 7.0)):
            change(bank)  # after the first calls with the bank, so that each change meets a cached form
            for policy in ("auto", "never", "always"):
                with factoring(policy):
                    for dtype in (torch.float64, torch.float32):
                        yd, gd, bd = y.to(dtype), g.to(dtype), bank.to(dtype)
                        assert_close(fixedbranch.fixed_branch(yd, bd), reference.fixed_branch(y, bd.double()), dtype,
                                     f"forward, {policy}, {dtype}")
                        expected = reference.fixed_branch_transpose(g, bd.double())
                        assert_close(backward_op(gd, bd), expected, dtype, f"backward, {policy}, {dtype}")


def test_threads_agree():
    banks = [_gabor_bank(15, 6), filters.dct(6), _random((8, 5, 5), 7)]
    expected = [_ops._bank_plan(b) for b in banks]
    # Fresh contents too, so that threads race on building the same plan.
    fresh = [filters.dct(6) * 3.0, _gabor_bank(13, 5)]
    results, errors = [], []

    def work():
        try:
            results.append([_ops._bank_plan(b) for b in banks + fresh])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for tables in results:
        for got, want in zip(tables, expected):
            assert torch.equal(got, want)
        for got, want in zip(tables[len(banks) :], results[0][len(banks) :]):
            assert torch.equal(got, want)


def test_bank_requiring_grad_and_non_contiguous():
    bank = filters.dct(3).requires_grad_()
    assert bank_plan(bank).filters == ("separable(1)",) * 9
    strided = filters.dct(3).transpose(1, 2)  # every basis transposed is another basis
    assert bank_plan(strided).columns == 3


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_any_device(device):
    bank = filters.bank("sobel_x", "sobel_y", "laplacian4", device=device)
    assert torch.equal(_ops._bank_plan(bank), _ops._bank_plan(bank.cpu()))
    assert _ops._bank_plan_reconstruct(bank).device.type == "cpu"


@pytest.mark.parametrize(
    "bank, message",
    [
        (torch.zeros(3, 3), "expected bank to have 3 dimensions (K, S1, S2), got 2"),
        (torch.zeros(1, 1, 3, 3), "expected bank to have 3 dimensions (K, S1, S2), got 4"),
        (torch.zeros(1, 3, 3, dtype=torch.int64),
         "expected bank to be float64, float32, float16 or bfloat16, got Long"),
        (torch.zeros(1, 3, 3, dtype=torch.complex64),
         "expected bank to be float64, float32, float16 or bfloat16, got ComplexFloat"),
        (torch.zeros(0, 3, 3), "expected a non-empty bank (K, S1, S2 >= 1), got shape [0, 3, 3]"),
        (torch.zeros(2, 0, 3), "expected a non-empty bank (K, S1, S2 >= 1), got shape [2, 0, 3]"),
    ],
)
def test_bad_bank(bank, message):
    for call in (bank_plan, _ops._bank_plan, _ops._bank_plan_reconstruct, _ops._bank_plan_pays_on_cpu):
        with pytest.raises(ValueError) as info:
            call(bank)
        assert "fixedbranch.bank_plan: " + message in str(info.value)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="fixedbranch.bank_plan: expected bank to be a torch.Tensor, got list"):
        bank_plan([[[1.0]]])


def test_str_has_one_line_per_filter():
    plan = bank_plan(filters.bank("sobel_x", "sobel_y", "laplacian4"))
    assert isinstance(plan, BankPlan)
    lines = str(plan).splitlines()
    assert lines[0] == "BankPlan(3 filters 3x3 float64, CPU path direct: 2 column passes, 21 of 27 multiply-adds per pixel)"
    assert lines[1:] == ["  0: separable(1)   rank 1", "  1: separable(1)   rank 1", "  2: direct         rank 2"]
    assert repr(plan) == str(plan)
    with pytest.raises(AttributeError):
        plan.columns = 0


def test_docstring_examples():
    from fixedbranch import plan

    result = doctest.testmod(plan, extraglobs={"torch": torch, "fb": fixedbranch})
    assert result.attempted > 0
    assert result.failed == 0


def test_tolerances_and_columns_come_from_the_extension():
    assert plan_tolerances(torch.float64) == {"rank": 1e-12, "column_match": 1e-12, "reconstruction": 1e-12}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert plan_tolerances(dtype) == plan_tolerances(torch.float32)
    with pytest.raises(ValueError, match="fixedbranch.bank_plan: expected a floating-point dtype, got Long"):
        plan_tolerances(torch.int64)
    names = _ops._bank_plan_columns()
    table = _ops._bank_plan(filters.dct(5))
    assert table.shape == (25, len(names))
    plan = bank_plan(filters.dct(5))
    assert plan.plan_taps == int(table[:, names.index("taps")].sum()) == 5 * 5 + 25 * 5


def _nearly_separable_bank():
    # Rank 1 to float32's tolerance but full rank to float64's: the plans of the two dtypes differ.
    bank = filters.dct(7)
    return bank + 1e-9 * torch.randn(bank.shape, generator=torch.Generator().manual_seed(0), dtype=bank.dtype)


def _shared_column_bank():
    # Eight rank-1 3x3 filters on one column: their forward row passes share every load (factored pays), their
    # backward row passes do not (direct pays).
    rows = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return torch.einsum("i,kj->kij", torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64), rows)


# (bank, (forward path, backward path)): Gaussians at four scales have a column each, so a forward row pass runs
# alone and direct pays there, while the backward's shared column accumulators make factored pay.
PASS_PATH_CASES = [
    (lambda: filters.bank(*(filters.gaussian(5, s) for s in (0.6, 0.9, 1.3, 2.0))), ("direct", "factored")),
    (_shared_column_bank, ("factored", "direct")),
]


@pytest.mark.parametrize("make_bank,paths", PASS_PATH_CASES)
def test_each_cpu_pass_runs_the_path_its_plan_names(make_bank, paths):
    """The pass whose plan is direct gives the direct correlation's result bit for bit; the factored one does not."""
    bank = make_bank().float()
    plan = bank_plan(bank)
    assert plan.cpu_paths == paths and plan.cpu_path == f"{paths[0]} forward, {paths[1]} backward"
    gen = torch.Generator().manual_seed(0)
    k = bank.shape[0]
    y, g = torch.randn(1, 2, 12, 12, generator=gen), torch.randn(1, 2 * (k + 1), 12, 12, generator=gen)

    def run():
        backward = torch.ops.fixedbranch._fixed_branch_backward(g, bank, "zeros", [], True, "branch", [1, 1], [12, 12])
        return fixedbranch.fixed_branch(y, bank), backward

    results = run()
    with factoring("never"):
        direct = run()
    for path, result, expected in zip(paths, results, direct):
        assert torch.equal(result, expected) == (path == "direct"), path


def test_a_strided_forward_weighs_its_column_passes_by_the_stride():
    """A Daubechies-2 bank runs factored at stride 1 and direct at a wavelet level's stride 2 (its column passes cover
    twice the columns per output there); bit for bit the direct correlation's result where it runs direct."""
    bank = filters.wavelet("db2").float()
    y = torch.randn(1, 2, 12, 12, generator=torch.Generator().manual_seed(0))

    def run(stride):
        return fixedbranch.fixed_branch(y, bank, identity=False, order="channel", stride=stride)

    results = {stride: run(stride) for stride in (1, 2)}
    with factoring("never"):
        direct = {stride: run(stride) for stride in (1, 2)}
    assert not torch.equal(results[1], direct[1]) and torch.equal(results[2], direct[2])


@pytest.mark.parametrize("kind", ["FixedBranch", "FixedBranchConv2d"])
def test_module_plan_is_the_plan_the_operator_runs(kind):
    bank = _nearly_separable_bank()
    assert bank_plan(bank).cpu_path == "direct" and bank_plan(bank.float()).cpu_path == "factored"
    if kind == "FixedBranch":
        module = fixedbranch.FixedBranch(bank)
        run = module
    else:
        module = fixedbranch.FixedBranchConv2d(2, 2, 1, bank=bank, dtype=torch.float64)
        run = module
    x = torch.randn(1, 2, 12, 12, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float64, torch.float32):
        plan = module.plan_for(dtype)
        assert plan == bank_plan(bank.to(dtype))
        # The plan says which path runs: forcing the direct path changes the output exactly when it is factored.
        if kind == "FixedBranchConv2d":
            module.to(dtype)
            assert module.plan == plan
        xd = x.to(dtype)
        previous = _ops._set_factoring("never")
        try:
            direct = run(xd)
        finally:
            _ops._set_factoring(previous)
        assert torch.equal(run(xd), direct) == (plan.cpu_paths[0] == "direct"), (dtype, plan)
    if kind == "FixedBranch":
        assert module.plan == module.plan_for(torch.get_default_dtype())
