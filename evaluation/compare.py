"""Side-by-side comparison of evaluations (e.g. our trainer vs stock nnUNetTrainer on the same cases).

Each input is an output folder of `evaluate` (its `per_case.csv`). Cases are paired by (case, class), so a prediction
folder and a cross-validation (where each case is in one fold) pair up as well; the first
folder is the baseline, every other one is compared with it: per-case differences (other - baseline), their mean
and median, win/tie/loss counts (a win is a better value: higher, or lower for distances and MSE), and the two-sided
Wilcoxon signed-rank p-value of the differences. A "(mean)" class holds each case's mean over its classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from nnunet_ext.evaluation.report import fmt, markdown_table, write_json

LOWER_IS_BETTER = {"hd95", "assd", "mse"}
MEAN_CLASS = "(mean)"


def paired_wilcoxon(differences: np.ndarray) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired differences, NaNs dropped. All differences zero means no
    evidence of a difference: p = 1 (scipy would raise). No pairs: p = NaN."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return {"n": 0, "p_value": float("nan")}
    if not np.any(d != 0):
        return {"n": int(d.size), "p_value": 1.0}
    return {"n": int(d.size), "p_value": float(wilcoxon(d).pvalue)}


def _unique_names(dirs: Sequence[str]) -> list[str]:
    names = []
    for d in dirs:
        base = os.path.basename(os.path.normpath(d))
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


def load_per_case(result_dir: str, metrics: Sequence[str]) -> pd.DataFrame:
    path = os.path.join(result_dir, "per_case.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `nnunet_ext evaluate` with -o {result_dir} first")
    frame = pd.read_csv(path)
    metrics = [m for m in metrics if m in frame]
    frame = frame[["case", "class", *metrics]]
    means = frame.groupby("case", sort=False)[metrics].mean().reset_index()
    means["class"] = MEAN_CLASS
    return pd.concat([frame, means], ignore_index=True).melt(id_vars=["case", "class"], var_name="metric")


def compare_results(result_dirs: Sequence[str], output_dir: str, names: Sequence[str] | None = None,
                    metrics: Sequence[str] = ("dice", "hd95", "nsd"), plots: bool = True) -> dict:
    if len(result_dirs) < 2:
        raise ValueError("compare needs at least two result folders")
    names = list(names) if names else _unique_names(result_dirs)
    if len(names) != len(result_dirs) or len(set(names)) != len(names):
        raise ValueError(f"need one distinct name per result folder, got {names}")
    keys = ["case", "class", "metric"]
    table = None
    for name, d in zip(names, result_dirs, strict=True):
        frame = load_per_case(d, metrics).rename(columns={"value": name})
        table = frame if table is None else table.merge(frame, on=keys, how="inner")
    if table.empty:
        raise ValueError("the result folders have no (case, class) in common")
    baseline = names[0]
    comparisons = {}
    for other in names[1:]:
        label = f"{other} - {baseline}"
        table[label] = table[other] - table[baseline]
        per_class = {}
        for (cls, metric), group in table.groupby(["class", "metric"], sort=False):
            diff = group[label].to_numpy(dtype=float)
            valid = diff[~np.isnan(diff)]
            better = -valid if metric in LOWER_IS_BETTER else valid
            per_class.setdefault(cls, {})[metric] = {
                baseline: float(group[baseline].mean()), other: float(group[other].mean()),
                "mean_difference": float(valid.mean()) if valid.size else float("nan"),
                "median_difference": float(np.median(valid)) if valid.size else float("nan"),
                "wins": int((better > 0).sum()), "ties": int((better == 0).sum()), "losses": int((better < 0).sum()),
                **paired_wilcoxon(diff),
            }
        comparisons[label] = per_class
    os.makedirs(output_dir, exist_ok=True)
    table.to_csv(os.path.join(output_dir, "comparison_per_case.csv"), index=False)
    result = {"baseline": baseline, "methods": names, "result_dirs": [str(d) for d in result_dirs],
              "n_pairs": int(table["case"].nunique()), "comparisons": comparisons}
    if plots:
        result["plots"] = [os.path.basename(plot_differences(table, names, metric, output_dir))
                           for metric in metrics if (table["metric"] == metric).any()]
    write_json(result, os.path.join(output_dir, "comparison.json"))
    with open(os.path.join(output_dir, "comparison.md"), "w") as f:
        f.write(comparison_markdown(result))
    return result


def comparison_markdown(result: dict) -> str:
    parts = [f"# Comparison against `{result['baseline']}` ({result['n_pairs']} paired cases)"]
    for label, per_class in result["comparisons"].items():
        other = label.split(" - ")[0]
        rows = []
        for cls, by_metric in per_class.items():
            for metric, s in by_metric.items():
                rows.append([cls, metric, fmt(s[result["baseline"]]), fmt(s[other]), fmt(s["mean_difference"]),
                             f"{s['wins']}/{s['ties']}/{s['losses']}", fmt(s["p_value"]), s["n"]])
        parts.append(f"## {label}\n\n" + markdown_table(
            ["class", "metric", result["baseline"], other, "mean difference", "wins/ties/losses", "Wilcoxon p", "n"],
            rows))
    return "\n\n".join(parts) + "\n"


def plot_differences(table: pd.DataFrame, names: Sequence[str], metric: str, output_dir: str) -> str:
    """Box plots of the paired per-case differences of one metric, one panel per compared method."""
    from nnunet_ext.evaluation.plots import plt

    rows = table[table["metric"] == metric]
    classes = list(dict.fromkeys(rows["class"]))
    others = names[1:]
    fig, axes = plt.subplots(1, len(others), figsize=(max(4.0, 0.9 * len(classes) + 1.5) * len(others), 4),
                             squeeze=False)
    for ax, other in zip(axes[0], others, strict=True):
        label = f"{other} - {names[0]}"
        ax.boxplot([rows.loc[rows["class"] == c, label].dropna().to_numpy() for c in classes], showmeans=True)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(1, len(classes) + 1), classes, rotation=30, ha="right")
        ax.set_title(f"{metric}: {label}")
    fig.tight_layout()
    path = os.path.join(output_dir, f"comparison_{metric}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
