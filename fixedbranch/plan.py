"""How a bank is computed: :func:`bank_plan` reports, filter by filter, whether it runs as a sum of separable terms
(a column pass along H shared across the bank, then a row pass along W) or as a direct correlation, and what that
costs in multiply-adds per output pixel.

The plan is made once per bank content and dtype by the C++ extension (``csrc/bank_plan/``): per filter an SVD in
float64, the numerical rank at a relative tolerance, column factors that agree to a tolerance shared across the bank,
rows re-solved against the shared columns and verified to rebuild the filter to a tolerance of its largest tap, and,
of all choices of filters to factor, the one with the fewest multiply-adds per pixel (counting one extra tap per
intermediate pass; a tie goes direct). Filters of one row or one column, zero filters and filters with a non-finite
tap run direct.

The three tolerances (rank, column match, reconstruction; ``PlanTolerances`` in ``csrc/bank_plan/bank_plan.h``,
whose comments say why they are what they are) are chosen by the bank's dtype, the dtype the operators round it to
(the input's), so pass the bank in that dtype. :func:`plan_tolerances` reads them from the extension: float64's sit
a hundred times under float64's equivalence tolerance; float32 and the half types (computed in float32) share one
set, above the rounding that float32 leaves in a separable filter and ten times under float32's tolerance.

``torch.ops.fixedbranch._bank_plan(bank)`` returns a (K, len(columns)) int64 table, one row per filter, whose
columns ``torch.ops.fixedbranch._bank_plan_columns()`` names (``PlanTableColumn`` in
``csrc/bank_plan/diagnostics.cpp`` says what each holds): factored (1 or 0), terms, first_column, new_columns (the
column passes whose first user it is), rank and taps (the multiply-adds per pixel it adds, its new columns' passes
included: they sum to the plan's).

``torch.ops.fixedbranch._bank_plan_reconstruct(bank)`` returns the (K, S1, S2) float64 bank rebuilt from the plan.
Both plan the bank in its own dtype, accept a bank on any device (copying it to the CPU) and are diagnostics, off the
hot path.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["BankPlan", "bank_plan", "plan_tolerances"]

# The table's columns by name, as the extension names them.
_COLUMN = {name: i for i, name in enumerate(torch.ops.fixedbranch._bank_plan_columns())}


def plan_tolerances(dtype: torch.dtype) -> dict[str, float]:
    """The tolerances a bank of ``dtype`` is planned with, as the extension states them.

    Returns:
        ``{"rank": ..., "column_match": ..., "reconstruction": ...}``: singular values at or under ``rank`` times
        the largest are dropped; two unit column factors within ``column_match`` in every entry are shared; a
        factored filter must rebuild to within ``reconstruction`` of its largest tap, or it runs direct.

    Example:
        >>> plan_tolerances(torch.float64)["reconstruction"] < plan_tolerances(torch.float32)["reconstruction"]
        True
    """
    rank, column_match, reconstruction = torch.ops.fixedbranch._bank_plan_tolerances(dtype)
    return {"rank": rank, "column_match": column_match, "reconstruction": reconstruction}


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
            direct filter (counted by the extension).
        cpu_paths: (forward, backward): for each pass of the CPU kernels, "factored" if it runs this plan,
            "direct" if it correlates every filter directly (their estimate of what a row-pass tap and an
            intermediate pass cost says the plan does not pay there).
        cpu_path: the two in one phrase: "factored", "direct", or e.g. "direct forward, factored backward".
    """

    shape: tuple[int, int, int]
    dtype: torch.dtype
    filters: tuple[str, ...]
    ranks: tuple[int, ...]
    columns: int
    direct_taps: int
    plan_taps: int
    cpu_paths: tuple[str, str]

    @property
    def cpu_path(self) -> str:
        forward, backward = self.cpu_paths
        return forward if forward == backward else f"{forward} forward, {backward} backward"

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
        TypeError: ``bank`` is not a tensor.
        ValueError: ``bank`` is not 3-D, not floating point, or empty (the message names the argument).

    Example:
        >>> from fixedbranch import filters
        >>> bank_plan(filters.bank("sobel_x", "sobel_y", "laplacian4"))
        BankPlan(3 filters 3x3 float64, CPU path direct: 2 column passes, 21 of 27 multiply-adds per pixel)
          0: separable(1)   rank 1
          1: separable(1)   rank 1
          2: direct         rank 2
    """
    if not isinstance(bank, torch.Tensor):
        raise TypeError(f"fixedbranch.bank_plan: expected bank to be a torch.Tensor, got {type(bank).__name__}")
    table = torch.ops.fixedbranch._bank_plan.default(bank.detach()).tolist()
    k, s1, s2 = (int(n) for n in bank.shape)
    factored, terms = _COLUMN["factored"], _COLUMN["terms"]
    return BankPlan(
        shape=(k, s1, s2),
        dtype=bank.dtype,
        filters=tuple(f"separable({row[terms]})" if row[factored] else "direct" for row in table),
        ranks=tuple(row[_COLUMN["rank"]] for row in table),
        columns=sum(row[_COLUMN["new_columns"]] for row in table),
        direct_taps=k * s1 * s2,
        plan_taps=sum(row[_COLUMN["taps"]] for row in table),
        cpu_paths=tuple("factored" if torch.ops.fixedbranch._bank_plan_pays_on_cpu.default(bank.detach(), backward)
                        else "direct" for backward in (False, True)),
    )
