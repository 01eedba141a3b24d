"""CE / mCE / relative mCE / COCO-C against by-hand computations from the published definitions."""
import numpy as np
import pytest

from cvkit.robustness import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, ALL_CORRUPTIONS, CORRUPTIONS, HELD_OUT,
                              coco_c_summary, mce, relative_mce, summarize)

# AlexNet mean errors exactly as papers.md prints them, in canonical order (typed in again here,
# so a re-ordered or mistyped table in the library fails).
# AlexNet's clean top-1 error, 43.5 % (Hendrycks & Dietterich 2019; not listed in papers.md), typed here.
ALEXNET_CLEAN = 0.435
PUBLISHED = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816,
             0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]


def table():
    """Errors that differ per corruption and severity (fractions)."""
    return {c: [round(0.1 + 0.03 * i + 0.05 * s + 0.001 * i * s, 6) for s in range(5)]
            for i, c in enumerate(ALL_CORRUPTIONS)}


def test_alexnet_table_in_canonical_order():
    assert list(ALEXNET_ERRORS) == list(CORRUPTIONS)
    assert list(ALEXNET_ERRORS.values()) == PUBLISHED


def test_mce_by_hand():
    errors = table()
    ces = []
    for i, name in enumerate(CORRUPTIONS):
        sev = errors[name]
        ces.append(100 * (sev[0] + sev[1] + sev[2] + sev[3] + sev[4]) / (5 * PUBLISHED[i]))
    assert mce(errors) == pytest.approx(sum(ces) / 15, rel=1e-12)
    # held-out corruptions do not enter mCE
    bench_only = {c: errors[c] for c in CORRUPTIONS}
    assert mce(bench_only) == mce(errors)


def test_relative_mce_by_hand():
    errors, clean = table(), 0.2385
    rel = []
    for i, name in enumerate(CORRUPTIONS):
        num = sum(e - clean for e in errors[name])
        den = 5 * (PUBLISHED[i] - ALEXNET_CLEAN)
        rel.append(100 * num / den)
    assert ALEXNET_CLEAN_ERROR == ALEXNET_CLEAN
    assert relative_mce(errors, clean) == pytest.approx(np.mean(rel), rel=1e-12)


def test_misordered_table_changes_mce():
    errors = table()
    swapped = dict(errors)
    swapped["gaussian_noise"], swapped["brightness"] = errors["brightness"], errors["gaussian_noise"]
    assert abs(mce(swapped) - mce(errors)) > 1.0


def test_alexnet_scores_100():
    alex = {c: [e] * 5 for c, e in zip(CORRUPTIONS, PUBLISHED)}
    assert mce(alex) == pytest.approx(100.0)
    assert relative_mce(alex, ALEXNET_CLEAN) == pytest.approx(100.0)


def test_resnet50_scale():
    """A model with 0.767 x AlexNet's error everywhere has mCE 76.7 (the paper's ResNet-50 figure)."""
    errors = {c: [0.767 * ALEXNET_ERRORS[c]] * 5 for c in CORRUPTIONS}
    assert mce(errors) == pytest.approx(76.7)


def test_incomplete_and_bad_inputs():
    errors = table()
    del errors["fog"]
    with pytest.raises(ValueError, match="missing: fog"):
        mce(errors)
    partial = mce(errors, allow_incomplete=True)
    assert partial == pytest.approx(np.mean([100 * np.sum(errors[c]) / (5 * ALEXNET_ERRORS[c])
                                             for c in CORRUPTIONS if c != "fog"]))
    with pytest.raises(ValueError, match="5 values"):
        mce({**table(), "fog": [0.1, 0.2]})
    with pytest.raises(ValueError, match="fractions"):
        mce({**table(), "fog": [10, 20, 30, 40, 50]})
    with pytest.raises(ValueError, match="unknown corruption"):
        mce({**table(), "foggy": [0.1] * 5})


def test_summary_keeps_held_out_apart_and_marks_incomplete():
    errors = table()
    errors["snow"] = [0.3, 0.4, None, 0.5, 0.6]  # a missing severity
    s = summarize(errors, clean_error=0.2)
    assert not s.complete and s.missing == ["snow"]
    assert "snow" not in s.ce and set(s.ce) == set(CORRUPTIONS) - {"snow"}
    assert s.mce == pytest.approx(mce({c: v for c, v in errors.items() if c != "snow"}, allow_incomplete=True))
    d = s.as_dict()
    assert set(d["held_out"]["errors_percent"]) == set(HELD_OUT)
    assert not set(d["benchmark"]["CE"]) & set(HELD_OUT)
    assert d["held_out"]["mean_error_percent"] == pytest.approx(100 * np.mean([np.mean(errors[c]) for c in HELD_OUT]))
    assert d["benchmark"]["mean_error_percent"] == pytest.approx(
        100 * np.mean([np.mean(errors[c]) for c in CORRUPTIONS if c != "snow"]))


def test_coco_c_by_hand():
    ap = {c: [0.30 - 0.01 * i - 0.02 * s for s in range(5)] for i, c in enumerate(ALL_CORRUPTIONS)}
    out = coco_c_summary(ap, clean_ap=0.40)
    mpc = np.mean([v for c in CORRUPTIONS for v in ap[c]])
    assert out["mPC"] == pytest.approx(mpc)
    assert out["rPC_percent"] == pytest.approx(100 * mpc / 0.40)
    assert out["held_out_mPC"] == pytest.approx(np.mean([v for c in HELD_OUT for v in ap[c]]))
    assert out["complete"]


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_none_or_nan_entry_is_an_error_naming_it(bad):
    """a None / NaN error is not silently NaN."""
    errors = table()
    errors["fog"] = [0.1, 0.2, bad, 0.4, 0.5]
    for fn in (lambda: mce(errors), lambda: relative_mce(errors, 0.2)):
        with pytest.raises(ValueError, match=r"errors\['fog'\] severity 3 is"):
            fn()


def test_relative_mce_without_benchmark_entry_is_an_error():
    held = {c: table()[c] for c in HELD_OUT}
    for fn in (lambda: mce(held, allow_incomplete=True),
               lambda: relative_mce(held, 0.2, allow_incomplete=True)):
        with pytest.raises(ValueError, match="no benchmark corruption"):
            fn()


def test_summarize_validates_clean_error_and_takes_baseline_clean_error():
    """clean error in percent is rejected; baseline_clean_error replaces AlexNet's."""
    with pytest.raises(ValueError, match="clean_error must be a fraction in \\[0, 1\\].*23.85"):
        summarize(table(), 23.85)
    with pytest.raises(ValueError, match="baseline_clean_error"):
        summarize(table(), 0.2, baseline_clean_error=43.5)
    errors, base = table(), {c: 0.5 + 0.01 * i for i, c in enumerate(CORRUPTIONS)}
    s = summarize(errors, 0.2, baseline=base, baseline_clean_error=0.3)
    by_hand = np.mean([100 * sum(e - 0.2 for e in errors[c]) / (5 * (base[c] - 0.3)) for c in CORRUPTIONS])
    assert s.relative_mce == pytest.approx(by_hand, rel=1e-12)
    assert summarize(errors, 0.2, baseline=base, baseline_clean_error=None).relative_mce is None


def test_completeness_is_over_the_benchmark_corruptions():
    """missing held-out corruptions do not make the mCE incomplete; they are listed apart."""
    errors = {c: v for c, v in table().items() if c in CORRUPTIONS}
    s = summarize(errors, 0.2)
    assert s.complete and s.missing == [] and s.mce is not None and s.held_out_missing == list(HELD_OUT)
    d = s.as_dict()
    assert d["complete"] is True and d["held_out"]["complete"] is False
    assert d["held_out"]["missing"] == list(HELD_OUT)


def test_relative_ce_undefined_where_the_baseline_does_not_degrade(tmp_path):
    """A baseline (--baseline) whose mean error on a corruption equals its clean error gave a
    relative CE of inf (a RuntimeWarning, `Infinity` in summary.json), one below it a sign-flipped
    one; relative CE is undefined there: a ValueError naming it, left out by summarize."""
    import json

    from cvkit.robustness import relative_corruption_error
    from cvkit.robustness.report import _versus_baseline

    errors = {c: table()[c] for c in CORRUPTIONS}
    base = {c: 0.5 + 0.01 * i for i, c in enumerate(CORRUPTIONS)}
    base["fog"], base["snow"] = 0.3, 0.25  # equal to / below the baseline's clean error
    with pytest.raises(ValueError, match=r"relative CE of 'fog' is undefined: the baseline's mean "
                                         r"error 0.3 does not exceed its clean error 0.3"):
        relative_corruption_error("fog", errors["fog"], 0.2, base, 0.3)
    s = summarize(errors, 0.2, baseline=base, baseline_clean_error=0.3)
    assert s.relative_undefined == ["snow", "fog"] and set(s.relative_ce) == set(CORRUPTIONS) - {"fog", "snow"}
    by_hand = np.mean([100 * sum(e - 0.2 for e in errors[c]) / (5 * (base[c] - 0.3))
                       for c in CORRUPTIONS if c not in ("fog", "snow")])
    assert s.relative_mce == pytest.approx(by_hand, rel=1e-12) and s.ce["fog"] > 0  # CE still defined
    state = {"clean_error": 0.3, "errors": {"fog": {str(k): 0.3 for k in range(1, 6)}}}
    vb = _versus_baseline({"fog": [0.4] * 5}, 0.2, state)
    assert vb["relative_mCE"] is None and vb["relative_undefined"] == ["fog"] and vb["mCE"] > 0
    json.dumps(vb, allow_nan=False)  # no inf / NaN in summary.json


def test_non_numeric_error_is_an_error_naming_it(tmp_path):
    """An error typed as text (a hand-edited --baseline) was a TypeError traceback from np.isfinite."""
    from cvkit.robustness.report import read_baseline

    with pytest.raises(ValueError, match=r"errors\['fog'\] severity 2 is '0.5'"):
        mce({**table(), "fog": [0.1, "0.5", 0.2, 0.3, 0.4]})
    path = tmp_path / "base.json"
    path.write_text('{"clean_error": 0.2, "errors": {"fog": {"1": 0.3, "2": "0.5", "3": 0.6, '
                    '"4": 0.7, "5": 0.8}}}')
    with pytest.raises(ValueError, match=rf"--baseline '{path}': errors\['fog'\] severity 2 is '0.5'"):
        read_baseline(path)
