"""Tables (CSV, JSON, markdown) and plots (PNG) of an evaluation.

Files written to the output folder:
- `per_case.csv`: one row per case and class (overlap, surface and probability metrics, volumes in mm^3 or mm^2)
- `lesions.csv`, `detection_per_case.csv` (with lesion classes), `av_per_case.csv` (the A/V protocol's paper mode)
  and `av_cases.json` (every A/V figure of every case: both modes, intra-segment misclassification)
- `summary.json`: settings, mean/std/median per class, the foreground mean, the per-organ table, detection and A/V
- `summary.md`: the same as markdown tables
- `boxplots.png`, `overlay_{best,median,worst}.png`, `detection_by_size.png` (with lesion classes)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from nnunet_ext.evaluation.av_protocol import AV_METRICS, summarise_av
from nnunet_ext.evaluation.detection import pool_detection
from nnunet_ext.evaluation.metrics import OVERLAP_METRICS, SURFACE_METRICS, describe

PROBABILITY_METRICS = ("auc_roc", "auc_pr", "mse")
REPORTED_METRICS = OVERLAP_METRICS + SURFACE_METRICS + PROBABILITY_METRICS
# the columns of the markdown per-class table: the ones the five papers report
TABLE_METRICS = ("dice", "iou", "sensitivity", "precision", "hd95", "assd", "nsd", "auc_roc", "auc_pr")


def per_case_frame(results: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for r in results for row in r["rows"]])


def case_scores(results: Sequence[dict], metric: str = "dice") -> pd.Series:
    """Mean of a metric over the classes of each case (the ranking used for best/median/worst overlays)."""
    frame = per_case_frame(results)
    return frame.groupby("case", sort=False)[metric].mean()


def organ_table(frame: pd.DataFrame, foreground_volumes: Sequence[float], small_fraction: float = 0.01,
                small_threshold: float | None = None) -> list[dict]:
    """One record per class; `small` is set when the class's mean reference volume is below `small_threshold`
    (mm^3, mm^2 for 2D) or, without one, below `small_fraction` of the mean foreground volume per case."""
    threshold = small_threshold if small_threshold is not None else small_fraction * float(np.mean(foreground_volumes))
    table = []
    for (key, name), group in frame.groupby(["key", "class"], sort=False):
        record = {"class": name, "key": key, "n_cases": int(len(group)),
                  "mean_ref_volume": float(group["ref_volume"].mean())}
        for metric in ("dice", "hd95", "nsd"):
            if metric in group:
                stats = describe(group[metric])
                record[f"{metric}_mean"], record[f"{metric}_std"] = stats["mean"], stats["std"]
        record["small"] = bool(record["mean_ref_volume"] < threshold)
        table.append(record)
    return table


def summarise(results: Sequence[dict], settings) -> dict:
    frame = per_case_frame(results)
    metrics = [m for m in REPORTED_METRICS if m in frame]
    per_class = {}
    for name, group in frame.groupby("class", sort=False):
        per_class[name] = {m: describe(group[m]) for m in metrics}
    foreground = {m: float(np.nanmean([per_class[c][m]["mean"] for c in per_class]))
                  if any(per_class[c][m]["n"] for c in per_class) else float("nan") for m in metrics}
    scores = case_scores(results)
    summary = {
        "n_cases": len(results),
        "folds": sorted({r["fold"] for r in results if r["fold"] is not None}),
        "settings": settings.to_json(),
        "per_class": per_class,
        "foreground_mean": foreground,
        "organs": organ_table(frame, [r["foreground_volume"] for r in results], settings.small_fraction,
                              settings.small_threshold),
        "cases_by_mean_dice": {"best": scores.idxmax(), "median": _median_case(scores), "worst": scores.idxmin()},
    }
    lesion_classes = results[0]["detection"].keys() if results else []
    summary["detection"] = {c: pool_detection([r["detection"][c] for r in results]) for c in lesion_classes}
    if results and results[0]["av"] is not None:
        summary["av_protocol"] = summarise_av([r["av"] for r in results])
    return summary


def _median_case(scores: pd.Series) -> str:
    ordered = scores.sort_values(kind="mergesort")
    return str(ordered.index[(len(ordered) - 1) // 2])


def _json_safe(value):
    """NaN and infinity are not JSON: write null (and strings for infinite bin edges)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else (str(value) if math.isinf(value) else float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def fmt(mean: float, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(summary: dict) -> str:
    parts = [f"# Evaluation ({summary['n_cases']} cases"
             + (f", folds {summary['folds']}" if summary["folds"] else "") + ")"]
    missing = summary.get("missing_predictions") or []
    if missing:
        parts.append(f"**{len(missing)} reference cases have no prediction and are not scored** (--allow-missing): "
                     + ", ".join(f"`{c}`" for c in missing))
    first = next(iter(summary["per_class"].values()), {})
    metrics = [m for m in TABLE_METRICS if m in first]
    small = {o["class"]: o["small"] for o in summary["organs"]}
    volumes = {o["class"]: o["mean_ref_volume"] for o in summary["organs"]}
    rows = [[name + (" (small)" if small.get(name) else ""), f"{volumes[name]:.1f}"]
            + [fmt(s[m]["mean"], s[m]["std"]) for m in metrics] for name, s in summary["per_class"].items()]
    rows.append(["**mean**", ""] + [fmt(summary["foreground_mean"][m]) for m in metrics])
    parts.append("## Per class (mean ± std over cases)\n\n" + markdown_table(["class", "mean ref volume"] + metrics,
                                                                             rows))
    if summary.get("detection"):
        rows = []
        for name, d in summary["detection"].items():
            bins = ", ".join(f"{b}: {v['n_detected']}/{v['n_lesions']}" for b, v in d["by_size"].items())
            rows.append([name, d["n_ref_lesions"], fmt(d["lesion_sensitivity"]), fmt(d["lesion_precision"]),
                         fmt(d["lesion_f1"]), fmt(d["false_positives_per_case"]), bins])
        parts.append("## Lesion-wise detection\n\n" + markdown_table(
            ["class", "lesions", "sensitivity", "precision", "F1", "FP per case", "detected by size"], rows))
    if summary.get("av_protocol"):
        av = summary["av_protocol"]
        for mode, title in (("paper", "paper mode: hard labels, as the original's evaluation code"),
                            ("probability", "probability mode: AUC and MSE of the softmax maps, not the paper's")):
            if not av.get(mode):
                continue
            table = av[mode]
            rows = [["weighted"] + [fmt(table["weighted"][m]["mean"], table["weighted"][m]["std"])
                                    for m in AV_METRICS]]
            rows += [[c] + [fmt(s[m]["mean"], s[m]["std"]) for m in AV_METRICS] for c, s in table["per_class"].items()]
            parts.append(f"## A/V protocol, {title} (inside the FOV, mean ± std over images)\n\n"
                         + markdown_table(["class", *AV_METRICS], rows))
        if av.get("segments"):
            seg = av["segments"]
            parts.append("## Intra-segment misclassification (reference skeleton between junctions and crossings)\n\n"
                         + markdown_table(["mixed A/V segments", "misclassified segment pixels", "segments",
                                           "missed segments"],
                                          [[fmt(seg["mixed_fraction"]["mean"], seg["mixed_fraction"]["std"]),
                                            fmt(seg["misclassified_pixel_fraction"]["mean"],
                                                seg["misclassified_pixel_fraction"]["std"]),
                                            seg["pooled"]["n_segments"], seg["pooled"]["n_missed"]]]))
    cases = summary["cases_by_mean_dice"]
    parts.append(f"Cases by mean Dice: best `{cases['best']}`, median `{cases['median']}`, worst `{cases['worst']}`.")
    return "\n\n".join(parts) + "\n"


def write_json(data: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(_json_safe(data), f, indent=2)


def write_report(results: Sequence[dict], summary: dict, output_dir: str, info=None, images_dir: str | None = None,
                 plots: bool = True) -> None:
    os.makedirs(output_dir, exist_ok=True)
    frame = per_case_frame(results)
    frame.to_csv(os.path.join(output_dir, "per_case.csv"), index=False)
    if summary.get("detection"):
        lesions = [{"case": r["case"], "fold": r["fold"], "class": c, **lesion}
                   for r in results for c, d in r["detection"].items() for lesion in d["lesions"]]
        pd.DataFrame(lesions, columns=["case", "fold", "class", "size", "iou", "detected"]).to_csv(
            os.path.join(output_dir, "lesions.csv"), index=False)
        per_case = [{"case": r["case"], "fold": r["fold"], "class": c,
                     **{k: v for k, v in d.items() if k not in ("lesions", "by_size")}}
                    for r in results for c, d in r["detection"].items()]
        pd.DataFrame(per_case).to_csv(os.path.join(output_dir, "detection_per_case.csv"), index=False)
    if summary.get("av_protocol"):
        rows = []
        for r in results:
            rows.append({"case": r["case"], "fold": r["fold"], "class": "weighted", **r["av"]["weighted"]})
            rows += [{"case": r["case"], "fold": r["fold"], "class": c, **m} for c, m in r["av"]["per_class"].items()]
        pd.DataFrame(rows).to_csv(os.path.join(output_dir, "av_per_case.csv"), index=False)
        write_json([{"case": r["case"], "fold": r["fold"], **r["av"]} for r in results],
                   os.path.join(output_dir, "av_cases.json"))
    if plots:
        from nnunet_ext.evaluation.plots import plot_boxplots, plot_detection_by_size, plot_overlays

        summary["plots"] = [plot_boxplots(frame, os.path.join(output_dir, "boxplots.png"))]
        if info is not None:
            by_case = {r["case"]: r for r in results}
            for which, case in summary["cases_by_mean_dice"].items():
                summary["plots"].append(plot_overlays(by_case[case], info, images_dir,
                                                      os.path.join(output_dir, f"overlay_{which}.png"), which))
        if summary.get("detection"):
            summary["plots"].append(plot_detection_by_size(summary["detection"],
                                                           os.path.join(output_dir, "detection_by_size.png")))
        summary["plots"] = [os.path.basename(p) for p in summary["plots"]]
    write_json(summary, os.path.join(output_dir, "summary.json"))
    with open(os.path.join(output_dir, "summary.md"), "w") as f:
        f.write(summary_markdown(summary))
