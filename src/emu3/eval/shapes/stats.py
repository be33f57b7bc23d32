"""Means and standard errors of ShapesEval's scores: how far a score would move with other items.

Every score is a mean over sampled items (prompts, questions, clips), so its standard error is the
spread of the per-item values over the square root of their number. The fraction of claims that
hold is a ratio of sums over prompts (the claims of one picture stand or fall together), so its
standard error takes prompts as the sampled units (the usual linearisation of a ratio). Two
standard errors either side is about a 95% interval; two models' scores on different seeds differ
beyond noise when they are more than about 2.8 standard errors apart.

`mean` and `standard_error` leave NaN values out (a clip with no measurable step has no direction);
`ratio_standard_error` takes counts, which are never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if not math.isnan(v)]


def mean(values: Sequence[float]) -> float | None:
    """The mean of the values that are not NaN; None when there are none."""
    values = _finite(values)
    return sum(values) / len(values) if values else None


def standard_error(values: Sequence[float]) -> float | None:
    """The standard error of `mean(values)`; None with fewer than two values that are not NaN."""
    values = _finite(values)
    n = len(values)
    if n < 2:
        return None
    centre = sum(values) / n
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (n - 1) / n)


def ratio_standard_error(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    """The standard error of sum(numerators) / sum(denominators), item i giving numerators[i] and
    denominators[i] (counts, e.g. claims that hold and claims of prompt i); None with fewer than two
    items or nothing counted."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators")
    n, total = len(numerators), sum(denominators)
    if n < 2 or not total:
        return None
    ratio = sum(numerators) / total
    residuals = [a - ratio * b for a, b in zip(numerators, denominators)]
    return math.sqrt(sum(e * e for e in residuals) / (n - 1) / n) / (total / n)
