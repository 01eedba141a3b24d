"""ImageNet-C metrics (Hendrycks & Dietterich, ICLR 2019) and COCO-C metrics (Michaelis et al. 2019).

Errors go in as fractions (0.25 = 25 % top-1 error), one per severity 1..5; metrics come out in
percent, like the papers (ResNet-50: mCE 76.7 at 23.85 % clean error).

- CE_c = 100 * sum_s E_{s,c} / sum_s E^{AlexNet}_{s,c}                         (paper Eq. 1)
- mCE = mean of CE_c over the 15 benchmark corruptions
- relative CE_c = 100 * sum_s (E_{s,c} - E_clean) / sum_s (E^{AlexNet}_{s,c} - E^{AlexNet}_clean)
- relative mCE = mean of relative CE_c over the 15
The 4 held-out corruptions are reported beside (their raw mean errors), never mixed into mCE:
no AlexNet normaliser for them is published with the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from cvkit.robustness.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, HELD_OUT

# AlexNet top-1 errors averaged over the 5 severities, canonical order (hendrycks/robustness).
ALEXNET_ERRORS: dict[str, float] = dict(zip(CORRUPTIONS, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572,
    0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500)))
"""AlexNet's mean error per benchmark corruption (fraction); CE's normaliser."""
ALEXNET_CLEAN_ERROR = 0.435
"""AlexNet's clean ImageNet top-1 error (fraction) for relative CE: 43.5 % as the paper prints it;
pass ``baseline_clean_error`` for another value."""


def _severity_errors(name: str, values) -> np.ndarray:
    values = list(values)
    if len(values) != 5:
        raise ValueError(f"errors[{name!r}] must hold 5 values (severities 1..5), got {len(values)}")
    for s, v in enumerate(values, 1):
        if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool) \
                or not np.isfinite(v):  # None, NaN, text ("0.5" in a hand-edited JSON file)
            raise ValueError(f"errors[{name!r}] severity {s} is {v!r}: a finite error is needed")
    arr = np.asarray(values, dtype=np.float64)
    if np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"errors[{name!r}] must be fractions in [0, 1] (not percent), got {arr.tolist()}")
    return arr


def _check_fraction(what: str, value) -> float:
    """``value`` as a float in [0, 1]; else a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not 0 <= value <= 1:
        raise ValueError(f"{what} must be a fraction in [0, 1] (not percent), got {value!r}")
    return float(value)


def _check_names(errors: Mapping) -> None:
    unknown = sorted(set(errors) - set(ALL_CORRUPTIONS))
    if unknown:
        raise ValueError(f"unknown corruption name(s) {unknown}; expected names from {list(ALL_CORRUPTIONS)}")


def corruption_error(name: str, errors, baseline: Mapping[str, float] | None = None) -> float:
    """CE of one benchmark corruption in percent: 100 * sum_s E_s / (5 * mean AlexNet error)."""
    baseline = ALEXNET_ERRORS if baseline is None else baseline
    if name not in baseline:
        raise ValueError(f"no baseline (AlexNet) error for {name!r}; CE is defined for {list(baseline)}")
    return float(100.0 * _severity_errors(name, errors).sum() / (5 * baseline[name]))


def relative_corruption_error(name: str, errors, clean_error: float,
                              baseline: Mapping[str, float] | None = None,
                              baseline_clean_error: float = ALEXNET_CLEAN_ERROR) -> float:
    """Relative CE in percent: 100 * sum_s (E_s - E_clean) / sum_s (E^AlexNet_s - E^AlexNet_clean).
    Undefined (ValueError) when the baseline's mean error on ``name`` does not exceed its clean
    error (a zero or negative degradation: infinite or sign-flipped)."""
    baseline = ALEXNET_ERRORS if baseline is None else baseline
    if name not in baseline:
        raise ValueError(f"no baseline (AlexNet) error for {name!r}")
    clean_error = _check_fraction("clean_error", clean_error)
    baseline_clean_error = _check_fraction("baseline_clean_error", baseline_clean_error)
    if not relative_defined(name, baseline, baseline_clean_error):
        raise ValueError(f"relative CE of {name!r} is undefined: the baseline's mean error "
                         f"{baseline[name]!r} does not exceed its clean error {baseline_clean_error!r}")
    num = (_severity_errors(name, errors) - clean_error).sum()
    return float(100.0 * num / (5 * (baseline[name] - baseline_clean_error)))


def relative_defined(name: str, baseline: Mapping[str, float],
                     baseline_clean_error: float) -> bool:
    """Whether the baseline degrades under ``name`` (its mean error above its clean error), so
    relative CE, normalised by that degradation, is defined (always for AlexNet's)."""
    return baseline[name] - baseline_clean_error > 0


def missing_severities(errors: Mapping[str, Sequence[float | None] | None],
                       names: Sequence[str] = ALL_CORRUPTIONS) -> dict[str, list[int]]:
    """{corruption: [severities not evaluated]} for those of ``names`` without all 5 (absent from
    ``errors``: all five); complete corruptions are left out."""
    out = {}
    for c in names:
        values = errors.get(c) or [None] * 5
        gaps = [s for s, v in enumerate(values, 1) if v is None]
        if gaps:
            out[c] = gaps
    return out


def _complete(errors: Mapping) -> list[str]:
    return [c for c in CORRUPTIONS if c not in errors]


def mce(errors: Mapping[str, Sequence[float]], baseline: Mapping[str, float] | None = None,
        allow_incomplete: bool = False) -> float:
    """mCE in percent: mean AlexNet-normalised CE over the 15 benchmark corruptions.

    ``errors``: {corruption: [e1..e5]} as fractions; held-out entries are ignored. Missing
    benchmark corruptions raise, unless ``allow_incomplete`` (then the mean over those present)."""
    _check_names(errors)
    missing = _complete(errors)
    if missing and not allow_incomplete:
        raise ValueError(f"mCE needs all 15 benchmark corruptions; missing: {', '.join(missing)}")
    present = [c for c in CORRUPTIONS if c in errors]
    if not present:
        raise ValueError("no benchmark corruption in errors")
    return float(np.mean([corruption_error(c, errors[c], baseline) for c in present]))


def relative_mce(errors: Mapping[str, Sequence[float]], clean_error: float,
                 baseline: Mapping[str, float] | None = None,
                 baseline_clean_error: float = ALEXNET_CLEAN_ERROR,
                 allow_incomplete: bool = False) -> float:
    """Relative mCE in percent (mean relative CE over the 15); ``clean_error`` a fraction."""
    _check_names(errors)
    _check_fraction("clean_error", clean_error)
    missing = _complete(errors)
    if missing and not allow_incomplete:
        raise ValueError(f"relative mCE needs all 15 benchmark corruptions; missing: {', '.join(missing)}")
    present = [c for c in CORRUPTIONS if c in errors]
    if not present:
        raise ValueError("no benchmark corruption in errors")
    return float(np.mean([relative_corruption_error(c, errors[c], clean_error, baseline,
                                                    baseline_clean_error) for c in present]))


@dataclass
class RobustnessSummary:
    """All ImageNet-C numbers of one model, benchmark and held-out corruptions kept apart.

    ``errors`` holds fractions; every derived number is in percent. ``complete`` / ``missing``
    concern the 15 benchmark corruptions (those mCE needs); ``held_out_missing`` the 4 others;
    ``missing_severities`` which severities each of them lacks."""
    errors: dict[str, list[float | None]]
    clean_error: float | None = None
    complete: bool = True
    missing: list[str] = field(default_factory=list)
    held_out_missing: list[str] = field(default_factory=list)
    missing_severities: dict[str, list[int]] = field(default_factory=dict)
    ce: dict[str, float] = field(default_factory=dict)
    relative_ce: dict[str, float] = field(default_factory=dict)
    mce: float | None = None
    relative_mce: float | None = None
    mean_error_benchmark: float | None = None
    held_out_mean_error: dict[str, float] = field(default_factory=dict)
    mean_error_held_out: float | None = None
    relative_undefined: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "clean_error_percent": None if self.clean_error is None else 100 * self.clean_error,
            "complete": self.complete, "missing": self.missing,
            "missing_severities": {c: v for c, v in self.missing_severities.items() if c in CORRUPTIONS},
            "benchmark": {
                "corruptions": list(CORRUPTIONS),
                "mCE": self.mce, "relative_mCE": self.relative_mce,
                "mCE_over": list(self.ce),  # all 15 only when complete
                "mean_error_percent": self.mean_error_benchmark,
                "CE": self.ce, "relative_CE": self.relative_ce,
                "relative_undefined": self.relative_undefined,  # baseline not degraded there
                "errors_percent": {c: _pct(self.errors[c]) for c in CORRUPTIONS if c in self.errors},
            },
            "held_out": {
                "corruptions": list(HELD_OUT),
                "complete": not self.held_out_missing, "missing": self.held_out_missing,
                "missing_severities": {c: v for c, v in self.missing_severities.items() if c in HELD_OUT},
                "mean_error_percent": self.mean_error_held_out,
                "per_corruption_mean_error_percent": self.held_out_mean_error,
                "errors_percent": {c: _pct(self.errors[c]) for c in HELD_OUT if c in self.errors},
            },
        }


def _pct(values):
    return [None if v is None else 100 * v for v in values]


def summarize(errors: Mapping[str, Sequence[float | None]], clean_error: float | None = None,
              baseline: Mapping[str, float] | None = None,
              baseline_clean_error: float | None = ALEXNET_CLEAN_ERROR) -> RobustnessSummary:
    """Full report from a (possibly incomplete) error table (fractions); ``baseline`` /
    ``baseline_clean_error`` replace AlexNet's (None: no relative CE).

    A corruption with a missing severity (``None``) gets no CE and counts as missing. mCE is over
    the complete benchmark corruptions; ``complete`` is False when one of the 15 is missing.
    Missing held-out corruptions are listed apart (``held_out_missing``). Relative CE is left out
    (``relative_undefined``) where the baseline's mean error does not exceed its clean error;
    relative mCE is over the others."""
    _check_names(errors)
    if clean_error is not None:
        clean_error = _check_fraction("clean_error", clean_error)
    if baseline_clean_error is not None:
        baseline_clean_error = _check_fraction("baseline_clean_error", baseline_clean_error)
    relative = clean_error is not None and baseline_clean_error is not None
    full = {c: v for c, v in errors.items() if v is not None and all(e is not None for e in v)}
    missing = [c for c in CORRUPTIONS if c not in full]
    out = RobustnessSummary(errors={c: list(v) for c, v in errors.items()}, clean_error=clean_error,
                            complete=not missing, missing=missing,
                            held_out_missing=[c for c in HELD_OUT if c not in full],
                            missing_severities=missing_severities(errors))
    bench = [c for c in CORRUPTIONS if c in full]
    for c in bench:
        out.ce[c] = corruption_error(c, full[c], baseline)
        if relative and not relative_defined(c, ALEXNET_ERRORS if baseline is None else baseline,
                                             baseline_clean_error):
            out.relative_undefined.append(c)
        elif relative:
            out.relative_ce[c] = relative_corruption_error(c, full[c], clean_error, baseline,
                                                           baseline_clean_error)
    if bench:
        out.mce = float(np.mean([out.ce[c] for c in bench]))
        out.mean_error_benchmark = float(100 * np.mean([full[c] for c in bench]))
        if out.relative_ce:
            out.relative_mce = float(np.mean(list(out.relative_ce.values())))
    held = [c for c in HELD_OUT if c in full]
    out.held_out_mean_error = {c: float(100 * np.mean(_severity_errors(c, full[c]))) for c in held}
    if held:
        out.mean_error_held_out = float(np.mean(list(out.held_out_mean_error.values())))
    return out


# ------------------------------------------------------------------------------------ COCO-C
def coco_c_summary(ap: Mapping[str, Sequence[float | None]], clean_ap: float) -> dict:
    """COCO-C (Michaelis et al. 2019): mPC = mean AP over the 15 benchmark corruptions and 5
    severities, rPC = mPC / clean AP (percent); held-out corruptions reported apart."""
    _check_names(ap)
    def mean_over(names):
        vals = [v for c in names if c in ap for v in ap[c] if v is not None]
        return float(np.mean(vals)) if vals else None
    bench_missing = [c for c in CORRUPTIONS if c not in ap or any(v is None for v in ap[c])]
    mpc = mean_over(CORRUPTIONS)
    return {
        "clean_AP": clean_ap,
        "mPC": mpc,
        "rPC_percent": None if mpc is None or not clean_ap else 100 * mpc / clean_ap,
        "complete": not bench_missing, "missing": bench_missing,
        "missing_severities": missing_severities(ap, CORRUPTIONS),
        "per_corruption_mean_AP": {c: float(np.mean([v for v in ap[c] if v is not None]))
                                   for c in ALL_CORRUPTIONS if c in ap and any(v is not None for v in ap[c])},
        "held_out_mPC": mean_over(HELD_OUT),
    }
