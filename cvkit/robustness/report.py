"""Reports of an ImageNet-C evaluation: JSON summary, CSV table, Markdown table, PNG heatmap
(corruption x severity error) and per-corruption bars against a baseline model (AlexNet's
published errors unless another evaluation is given). Benchmark and held-out corruptions are
kept apart everywhere. Every report says whether its numbers are comparable with published ones
(``comparable_with_published`` and ``comparability`` in summary.json).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from cvkit.robustness.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, HELD_OUT, SEVERITIES
from cvkit.robustness.evaluate import (FolderSource, OnTheFlySource, atomic_write_text, describe_uneven,
                                       error_table, uneven_sets)
from cvkit.robustness.folder import read_json_object
from cvkit.robustness.metrics import ALEXNET_ERRORS, summarize

RELEASE_CROP = 224  # the released ImageNet-C images, on which published mCEs were measured


def source_comparability(meta: dict) -> tuple[bool | None, str]:
    """Whether an evaluation's images (``results.json`` -> ``meta``) are those published mCEs were
    measured on, the released ImageNet-C files at 224 px (None: not recorded), and why (not)."""
    source, crop = meta.get("source"), meta.get("crop")
    if source == OnTheFlySource.kind:
        q = meta.get("jpeg_quality")
        return False, (f"on-the-fly corruptions (cvkit's imagecorruptions formulas, "
                       f"{'no JPEG step' if q is None else f'JPEG quality {q}'}) at {crop} px")
    if source == FolderSource.kind:
        if meta.get("rendered_by"):
            return False, (f"a folder rendered by cvkit's tools/make_imagenet_c.py (imagecorruptions "
                           f"formulas), not the released files, at {crop} px")
        if crop != RELEASE_CROP:
            return False, f"an ImageNet-C folder centre-cropped to {crop} px, not {RELEASE_CROP}"
        return True, (f"an ImageNet-C folder without cvkit's render marker (taken as the released "
                      f"files) at {RELEASE_CROP} px")
    return None, "the image source is not recorded"


def comparability(meta: dict, summary) -> tuple[bool | None, str]:
    """:func:`source_comparability`, and not comparable either when a benchmark corruption lacks
    a severity (``summary``: :func:`~cvkit.robustness.metrics.summarize`'s)."""
    ok, why = source_comparability(meta)
    if summary.complete:
        return ok, why
    short = f"only {len(summary.ce)} of the 15 benchmark corruptions complete"
    return False, short if ok else f"{short}; {why}"


def _over(summary, meta: dict) -> str:
    """What the mCE is over (the 15 benchmark corruptions, or how many of them) and, when it is
    not comparable with published mCEs, why."""
    ok, why = source_comparability(meta)
    over = ("15 benchmark corruptions" if summary.complete
            else f"only {len(summary.ce)} of the 15 benchmark corruptions")
    if ok and summary.complete:
        return over
    if ok is None and summary.complete:
        return f"{over}; {why}: comparability with published mCEs unknown"
    return f"{over}{f'; {why}' if ok is False else ''}: not comparable"


def _fmt(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


def describe_missing(gaps: dict[str, list[int]]) -> str:
    """What is not evaluated, from :func:`~cvkit.robustness.metrics.missing_severities`:
    ``"shot_noise, snow (all severities); fog (severities 2, 4, 5)"``."""
    whole = [c for c, s in gaps.items() if list(s) == list(SEVERITIES)]
    parts = [f"{', '.join(whole)} (all severities)"] if whole else []
    parts += [f"{c} (severit{'y' if len(s) == 1 else 'ies'} {', '.join(map(str, s))})"
              for c, s in gaps.items() if c not in whole]
    return "; ".join(parts)


def read_baseline(path) -> dict:
    """A previous run's ``results.json`` (the ``--baseline``), checked: errors of known corruptions,
    fractions, clean error a fraction or null. ValueError naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--baseline {str(path)!r} does not exist")
    state = read_json_object(path, f"--baseline {str(path)!r}", "errors", dict,
                             "tools/eval_corruption.py (its results.json)")
    try:
        for c, sevs in state["errors"].items():
            if c not in ALL_CORRUPTIONS or not isinstance(sevs, dict) \
                    or not set(sevs) <= {str(s) for s in SEVERITIES}:
                raise ValueError(f"errors[{c!r}] is not a known corruption with severities '1'..'5'")
        summarize(error_table(state), state.get("clean_error"))
    except ValueError as e:
        raise ValueError(f"--baseline {str(path)!r}: {e}") from None
    return state


def _versus_baseline(table: dict, clean_error, baseline_state: dict) -> dict:
    """CE / mCE (and relative, when both clean errors exist) normalised by a baseline run's mean
    errors instead of AlexNet's, over the benchmark corruptions complete in both."""
    bt = error_table(baseline_state)
    base = {c: float(np.mean(v)) for c, v in bt.items()
            if c in CORRUPTIONS and all(e is not None for e in v) and np.mean(v) > 0}
    common = {c: table[c] for c in CORRUPTIONS
              if c in base and c in table and all(e is not None for e in table[c])}
    s = summarize(common, clean_error, baseline=base,
                  baseline_clean_error=baseline_state.get("clean_error"))
    return {"corruptions": list(common), "complete": not s.missing, "mCE": s.mce,
            "relative_mCE": s.relative_mce, "CE": s.ce, "relative_CE": s.relative_ce,
            "relative_mCE_over": list(s.relative_ce), "relative_undefined": s.relative_undefined}


def write_reports(state: dict, out_dir, baseline_state: dict | None = None,
                  baseline_name: str | None = None) -> dict[str, Path]:
    """Write summary.json, errors.csv, report.md, heatmap.png, bars.png to ``out_dir``; with a
    ``baseline_state`` (a previous run's results.json) also CE / mCE normalised by it."""
    out_dir = Path(out_dir)
    table = error_table(state)
    summary = summarize(table, state.get("clean_error"))
    d = summary.as_dict()
    d["missing_reasons"] = state.get("missing", {})
    d["meta"] = state.get("meta", {})
    d["comparable_with_published"], d["comparability"] = comparability(d["meta"], summary)
    expected, uneven = uneven_sets(state)
    d["images_expected"], d["uneven_sets"] = expected, uneven  # {c: {severity: image count}}
    short = [c for c in CORRUPTIONS if c in uneven and c in summary.ce]
    if short:  # a benchmark CE over fewer (or other) images than the rest
        d["comparable_with_published"] = False
        d["comparability"] = (f"{', '.join(short)}: set(s) with another image count than "
                              f"{expected}; {d['comparability']}")
    if baseline_state is not None:
        d["versus_baseline"] = {"baseline": baseline_name,
                                **_versus_baseline(table, state.get("clean_error"), baseline_state)}
    files = {"summary": out_dir / "summary.json", "csv": out_dir / "errors.csv",
             "markdown": out_dir / "report.md", "heatmap": out_dir / "heatmap.png",
             "bars": out_dir / "bars.png"}
    atomic_write_text(files["summary"], json.dumps(d, indent=1))

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["corruption", "group"] + [f"error_s{s}_percent" for s in SEVERITIES]
               + ["mean_error_percent", "CE", "relative_CE", "missing_severities",
                  "comparable_with_published"])
    comparable_cell = {True: "true", False: "false", None: ""}[d["comparable_with_published"]]
    for group, names in (("benchmark", CORRUPTIONS), ("held_out", HELD_OUT)):
        for c in names:  # every corruption, so gaps of either group show
            errs = [None if e is None else 100 * e for e in table.get(c, [None] * 5)]
            full = all(e is not None for e in errs)
            w.writerow([c, group] + ["" if e is None else repr(e) for e in errs]
                       + [f"{np.mean(errs):.4f}" if full else "",
                          f"{summary.ce[c]:.4f}" if c in summary.ce else "",
                          f"{summary.relative_ce[c]:.4f}" if c in summary.relative_ce else "",
                          " ".join(str(s) for s, e in zip(SEVERITIES, errs) if e is None),
                          comparable_cell])
    atomic_write_text(files["csv"], buf.getvalue())

    lines = ["# ImageNet-C report", ""]
    if d["comparable_with_published"] is False:
        lines += [f"**Not comparable with published ImageNet-C mCEs**: {d['comparability']} (published "
                  f"mCEs were measured on the released files at {RELEASE_CROP} px).", ""]
    else:
        lines += [f"Comparable with published ImageNet-C mCEs: "
                  f"{'yes' if d['comparable_with_published'] else 'unknown'} ({d['comparability']}).", ""]
    gaps = summary.missing_severities
    if not summary.complete:
        lines += [f"**Incomplete**: mCE needs all 5 severities of the 15 benchmark corruptions; not "
                  f"evaluated: {describe_missing({c: gaps[c] for c in summary.missing})} — mCE is "
                  f"over the complete benchmark corruptions only.", ""]
    if summary.held_out_missing:
        lines += [f"Held-out corruption(s) not evaluated (not part of mCE): "
                  f"{describe_missing({c: gaps[c] for c in summary.held_out_missing})}.", ""]
    if uneven:
        lines += ["**Sets with another image count** (their errors are over the images they hold): "
                  + "; ".join(describe_uneven(expected, uneven, state.get("clean_images") is not None))
                  + ".", ""]
    lines += [f"- clean error: {_fmt(d['clean_error_percent'], 2)} %",
              f"- mCE (AlexNet-normalised, {_over(summary, d['meta'])}): {_fmt(summary.mce, 2)}",
              f"- relative mCE ({_over(summary, d['meta'])}): {_fmt(summary.relative_mce, 2)}",
              f"- mean error, benchmark corruptions: {_fmt(summary.mean_error_benchmark, 2)} %",
              f"- mean error, held-out corruptions: {_fmt(summary.mean_error_held_out, 2)} %"]
    if "versus_baseline" in d:
        vb = d["versus_baseline"]
        undefined = (f" (over {len(vb['relative_mCE_over'])}: undefined for "
                     f"{', '.join(vb['relative_undefined'])}, where the baseline's mean error does not "
                     f"exceed its clean error)" if vb["relative_undefined"] else "")
        lines += [f"- mCE normalised by the baseline ({baseline_name}, {len(vb['corruptions'])} "
                  f"benchmark corruptions): {_fmt(vb['mCE'], 2)}; relative: "
                  f"{_fmt(vb['relative_mCE'], 2)}{undefined}"]
    lines += [""]
    head = "| corruption | " + " | ".join(f"s{s}" for s in SEVERITIES) + " | mean | CE | rel. CE |"
    sep = "|---" * 9 + "|"
    for title, names in (("Benchmark corruptions (error %)", CORRUPTIONS),
                         ("Held-out corruptions (error %, not in mCE)", HELD_OUT)):
        rows = [c for c in names if c in table]
        if not rows:
            continue
        lines += [f"## {title}", "", head, sep]
        for c in rows:
            errs = [None if e is None else 100 * e for e in table[c]]
            mean = np.mean(errs) if all(e is not None for e in errs) else None
            lines.append(f"| {c} | " + " | ".join(_fmt(e) for e in errs)
                         + f" | {_fmt(mean)} | {_fmt(summary.ce.get(c))} | {_fmt(summary.relative_ce.get(c))} |")
        lines.append("")
    atomic_write_text(files["markdown"], "\n".join(lines))
    _plot_heatmap(table, files["heatmap"])
    _plot_bars(table, files["bars"], baseline_state, baseline_name)
    return files


def _save_figure(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    tmp.replace(path)


def coco_c_comparability(meta: dict, summary: dict) -> tuple[bool, str]:
    """Whether a COCO-C run followed the published protocol (mmcv's BGR array corrupted as is,
    all 15 benchmark corruptions complete), and why (not); runs that recorded no channel order
    corrupted as RGB."""
    order = meta.get("channel_order", "rgb")
    why = ("mmcv's BGR array corrupted as is, as the published COCO-C protocol does" if order == "bgr"
           else "corrupted as RGB, the published COCO-C protocol corrupts mmcv's BGR array (frost, "
                "snow, spatter and jpeg_compression differ; --coco-c-channel-order bgr follows it)")
    if not summary["complete"]:
        return False, f"not all 15 benchmark corruptions complete; {why}"
    return order == "bgr", why


def write_detection_reports(state: dict, out_dir) -> dict[str, Path]:
    """COCO-C reports: summary.json (mPC, rPC, per-corruption mean AP, channel order and
    comparability), ap.csv, report.md and heatmap.png (AP by corruption and severity), benchmark
    and held-out corruptions apart."""
    out_dir = Path(out_dir)
    table = {c: [state["AP"].get(c, {}).get(str(s)) for s in SEVERITIES] for c in state["AP"]}
    meta = state.get("meta", {})
    comparable, why = coco_c_comparability(meta, state["summary"])
    summary = {**state["summary"], "channel_order": meta.get("channel_order", "rgb"),
               "comparable_with_published": comparable, "comparability": why}
    files = {"summary": out_dir / "summary.json", "csv": out_dir / "ap.csv",
             "markdown": out_dir / "report.md", "heatmap": out_dir / "heatmap.png"}
    atomic_write_text(files["summary"], json.dumps(summary, indent=1))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["corruption", "group"] + [f"AP_s{s}" for s in SEVERITIES] + ["mean_AP"])
    lines = ["# COCO-C report", ""]
    if not summary["complete"]:
        lines += [f"**Incomplete**: not evaluated: {describe_missing(summary['missing_severities'])}"
                  f" — mPC is over the sets evaluated.", ""]
    lines += [f"- clean AP: {_fmt(100 * state['clean_AP'])}",
              f"- mPC (mean AP over the benchmark corruptions and severities): "
              f"{_fmt(None if summary['mPC'] is None else 100 * summary['mPC'])}",
              f"- rPC: {_fmt(summary['rPC_percent'])} %",
              f"- held-out mean AP: {_fmt(None if summary['held_out_mPC'] is None else 100 * summary['held_out_mPC'])}",
              f"- channel order: {summary['channel_order']}; "
              f"{'comparable' if comparable else 'not comparable'} with published COCO-C mPCs: {why}",
              "", "| corruption | group | " + " | ".join(f"s{s}" for s in SEVERITIES) + " |", "|---" * 7 + "|"]
    for group, names in (("benchmark", CORRUPTIONS), ("held_out", HELD_OUT)):
        for c in names:
            if c in table:
                w.writerow([c, group] + ["" if v is None else f"{v:.4f}" for v in table[c]]
                           + [f"{summary['per_corruption_mean_AP'].get(c, float('nan')):.4f}"])
                lines.append(f"| {c} | {group} | " + " | ".join(
                    _fmt(None if v is None else 100 * v) for v in table[c]) + " |")
    atomic_write_text(files["csv"], buf.getvalue())
    atomic_write_text(files["markdown"], "\n".join(lines) + "\n")
    _plot_heatmap(table, files["heatmap"], label="bbox AP (%)", title="COCO-C AP by corruption and severity")
    return files


def _plot_heatmap(table, path: Path, label: str = "top-1 error (%)",
                  title: str = "Error by corruption and severity") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in CORRUPTIONS + HELD_OUT if c in table]
    grid = np.array([[np.nan if e is None else 100 * e for e in table[c]] for c in names], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.5))
    im = ax.imshow(grid, cmap="magma_r", aspect="auto", vmin=0, vmax=100)
    ax.set_xticks(range(5), [f"s{s}" for s in SEVERITIES])
    ax.set_yticks(range(len(names)), names)
    n_bench = sum(c in CORRUPTIONS for c in names)
    if 0 < n_bench < len(names):
        ax.axhline(n_bench - 0.5, color="cyan", lw=2)  # held-out below the line
    for i in range(len(names)):
        for j in range(5):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] > 50 else "black")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(f"{title} (held-out below the line)")
    _save_figure(fig, path)
    plt.close(fig)


def _plot_bars(table, path: Path, baseline_state, baseline_name) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in CORRUPTIONS + HELD_OUT if c in table and all(e is not None for e in table[c])]
    ours = [100 * np.mean(table[c]) for c in names]
    if baseline_state is None:
        base = {c: 100 * ALEXNET_ERRORS[c] for c in CORRUPTIONS}
        baseline_name = baseline_name or "AlexNet (published)"
    else:
        bt = error_table(baseline_state)
        base = {c: 100 * np.mean(v) for c, v in bt.items() if all(e is not None for e in v)}
        baseline_name = baseline_name or "baseline"
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4))
    ax.bar(x - 0.2, ours, 0.4, label="model")
    ax.bar(x + 0.2, [base.get(c, np.nan) for c in names], 0.4, label=baseline_name)
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylabel("mean top-1 error over severities (%)")
    n_bench = sum(c in CORRUPTIONS for c in names)
    if 0 < n_bench < len(names):
        ax.axvline(n_bench - 0.5, color="gray", ls="--")
    ax.legend(loc="lower left")
    ax.set_title("Per-corruption error vs baseline (held-out right of the dashed line)")
    _save_figure(fig, path)
    plt.close(fig)
