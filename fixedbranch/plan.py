"""How a bank is computed: :func:`bank_plan` reports, filter by filter, whether it runs as a sum of separable terms
(a column pass along H shared across the bank, then a row pass along W) or as a direct correlation, and what that
costs in multiply-adds per output pixel.

The plan is made once per bank content and dtype by the C++ extension (``csrc/bank_plan.cpp``): per filter an SVD in
float64, the numerical rank at a relative tolerance, column factors that agree to a tolerance shared across the bank,
rows re-solved against the shared columns and verified to rebuild the filter to a tolerance of its largest tap, and,
of all choices of filters to factor, the one with the fewest multiply-adds per pixel (counting one extra tap per
intermediate pass; a tie goes direct). Filters of one row or one column, zero filters and filters with a non-finite
tap run direct.

The three tolerances (rank, column match, reconstruction; ``PlanTolerances`` in ``csrc/bank_plan.h``) are one value
chosen by the bank's dtype, the dtype the operators round it to (the input's), so pass the bank in that dtype:

=================  =====  ===============================================================================
dtype              tol    why
=================  =====  ===============================================================================
float64            1e-12  a hundred times under float64's 1e-10
float32            1e-6   above the ~1e-8 that rounding to float32 leaves in a separable filter, so a rounded
                          DCT, Gaussian or Sobel bank keeps its float64 plan; ten times under float32's 1e-5
float16, bfloat16  1e-6   computed in float32: the half-rounded bank is the filter applied, and only its
                          exactly low-rank filters (to float32 precision) are factored
=================  =====  ===============================================================================

``torch.ops.fixedbranch._bank_plan(bank)`` returns a (K, 5) int64 table, one row per filter (the layout is
``PlanTableColumn`` in ``csrc/bank_plan.cpp``):

====  ===========  =============================================================================================
col   name         meaning
====  ===========  =============================================================================================
0     factored     1 if the filter runs factored, 0 if direct
1     terms        its number of separable terms (0 when direct)
2     first        column index of its first term, -1 when direct
3     new columns  column passes whose first user (in filter order) it is; they sum to the plan's column count
4     rank         its numerical rank (0 for a zero filter, -1 with a non-finite tap), whichever path it runs on
====  ===========  =============================================================================================

``torch.ops.fixedbranch._bank_plan_reconstruct(bank)`` returns the (K, S1, S2) float64 bank rebuilt from the plan.
Both plan the bank in its own dtype, accept a bank on any device (copying it to the CPU) and are diagnostics, off the
hot path.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["BankPlan", "bank_plan"]

# Columns of the table returned by torch.ops.fixedbranch._bank_plan (PlanTableColumn in csrc/bank_plan.cpp).
_FACTORED, _TERMS, _FIRST_COLUMN, _NEW_COLUMNS, _RANK = range(5)


@dataclasses.dataclass(frozen=True)
class BankPlan:
    """The plan of a (K, S1, S2) bank.

    Attributes:
        shape: the bank's (K, S1, S2).
        dtype: the bank's dtype, whose tolerances the plan meets.
        filters: per filter, ``"separable(r)"`` (r separable terms) or ``"direct"``.
        ranks: per filter, its numerical rank (0 for a zero filter, -1 with a non-finite tap).
        columns: number of distinct column passes the factored filters share.
        direct_taps: multiply-adds per output pixel of the direct path for the whole bank, K·S1·S2.
        plan_taps: multiply-adds per output pixel of this plan: columns·S1 + S2 per separable term + S1·S2 per
            direct filter.
        cpu_path: "factored" if the CPU kernels run this plan, "direct" if they correlate every filter directly
            (their estimate of what a row-pass tap and an intermediate pass cost says the plan does not pay).
    """

    shape: tuple[int, int, int]
    dtype: torch.dtype
    filters: tuple[str, ...]
    ranks: tuple[int, ...]
    columns: int
    direct_taps: int
    plan_taps: int
    cpu_path: str

    def __str__(self) -> str:
        k, s1, s2 = self.shape
        dtype = str(self.dtype).removeprefix("torch.")
        lines = [
            f"BankPlan({k} filters {s1}x{s2} {dtype}, CPU path {self.cpu_path}: {self.columns} column passes, "
            f"{self.plan_taps} of {self.direct_taps} multiply-adds per pixel)"
        ]
        width = len(str(k - 1))
        for i, (path, rank) in enumerate(zip(self.filters, self.ranks)):
            lines.append(f"  {i:>{width}}: {path:<14} rank {rank}")
        return "\n".join(lines)

    __repr__ = __str__


def bank_plan(bank: torch.Tensor) -> BankPlan:
    """The plan by which a bank's filters are computed: separable terms with shared column passes, or direct.

    Args:
        bank: (K, S1, S2) floating-point tensor, any device, in the dtype the kernels will compute it in (they
            round the bank to the input's dtype). Values are read in float64 and planned with the tolerances of the
            bank's dtype: a float32-rounded DCT or Gaussian bank plans like its float64 original, while a
            half-rounded one, no longer separable to float32 precision, runs mostly direct.

    Returns:
        A frozen :class:`BankPlan`.

    Raises:
        RuntimeError: ``bank`` is not 3-D, not floating point, or empty (the message names the argument).

    Example:
        >>> from fixedbranch import filters
        >>> bank_plan(filters.bank("sobel_x", "sobel_y", "laplacian4"))
        BankPlan(3 filters 3x3 float64, CPU path direct: 2 column passes, 21 of 27 multiply-adds per pixel)
          0: separable(1)   rank 1
          1: separable(1)   rank 1
          2: direct         rank 2
    """
    if not isinstance(bank, torch.Tensor):
        raise TypeError(f"bank: expected a torch.Tensor, got {type(bank).__name__}")
    table = torch.ops.fixedbranch._bank_plan.default(bank.detach()).tolist()
    k, s1, s2 = (int(n) for n in bank.shape)
    filters = tuple(f"separable({row[_TERMS]})" if row[_FACTORED] else "direct" for row in table)
    columns = sum(row[_NEW_COLUMNS] for row in table)
    plan_taps = columns * s1 + sum(row[_TERMS] * s2 if row[_FACTORED] else s1 * s2 for row in table)
    return BankPlan(
        shape=(k, s1, s2),
        dtype=bank.dtype,
        filters=filters,
        ranks=tuple(row[_RANK] for row in table),
        columns=columns,
        direct_taps=k * s1 * s2,
        plan_taps=plan_taps,
        cpu_path="factored" if torch.ops.fixedbranch._bank_plan_pays_on_cpu.default(bank.detach()) else "direct",
    )
