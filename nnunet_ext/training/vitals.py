"""Per-epoch vital signs of a method's mechanism, logged and plotted beside nnU-Net's progress.png.

nnU-Net's progress.png shows losses and pseudo Dice; it cannot show that a method's own machinery works (a heatmap
that localises, a quality control that accepts, an attention map that covers the lesion). A trainer returns such
values from `epoch_vital_signs()` as {"group/name": value}; the base trainer logs them every epoch, keeps their
history in the checkpoint (a resumed run plots the whole run) and draws one panel per group into
`<progress_plot>` in the fold folder. `vital_sign_warnings()` turns a collapsed mechanism into a logged WARNING, so
a run that silently degrades to stock nnU-Net is visible in the log.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence


def format_vitals(values: Mapping[str, float]) -> str:
    """'group: a 0.12, b 3.4; other: ...' with NaN shown as n/a (an organ absent from every validation patch)."""
    groups: dict[str, list[str]] = {}
    for key, value in values.items():
        group, _, name = key.partition("/")
        text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"
        groups.setdefault(group, []).append(f"{name} {text}" if name else text)
    return "; ".join(f"{g}: {', '.join(v)}" for g, v in groups.items())


def parse_vitals(text: str) -> dict[str, float]:
    """format_vitals' text back to {"group/name": value}, for reading a training log; n/a values are left out."""
    values = {}
    for group in text.split("; "):
        name, _, items = group.partition(": ")
        for item in items.split(", "):
            key, _, value = item.rpartition(" ")
            try:
                values[f"{name}/{key}" if key else name] = float(value)
            except ValueError:
                continue
    return values


READABLE = {"font.size": 10, "axes.titlesize": 12, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
            "legend.fontsize": 7}


def plot_vitals(history: Sequence[Mapping[str, float]], filename: str, title: str) -> None:
    """One panel per group ("group/name" keys), one line per name, epochs on x; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = {}
    for row in history:
        for key in row:
            if key == "epoch":
                continue
            group = key.partition("/")[0]
            if key not in groups.setdefault(group, []):
                groups[group].append(key)
    if not groups:
        return
    # nnU-Net's progress plot sets seaborn's font_scale 2.5 for the whole process, which cut the title and crowded
    # these panels (seen in every method's plot of the GPU demos, bench/results/gpu)
    with plt.rc_context(READABLE):
        fig, axes = plt.subplots(len(groups), 1, figsize=(9, 2.6 * len(groups)), sharex=True, squeeze=False)
        for ax, (group, keys) in zip(axes[:, 0], groups.items(), strict=True):
            for key in keys:
                points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker=".", label=key.partition("/")[2] or group)
            ax.set_ylabel(group)
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        axes[-1, 0].set_xlabel("epoch")
        axes[0, 0].set_title(title)
        fig.tight_layout()
        tmp = f"{filename}.tmp{os.getpid()}.png"
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, filename)
