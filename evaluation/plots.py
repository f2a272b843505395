"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

BOX_METRICS = ("dice", "hd95", "nsd")


def plot_boxplots(frame: pd.DataFrame, path: str, metrics=BOX_METRICS) -> str:
    """One panel per metric, one box per class over cases."""
    metrics = [m for m in metrics if m in frame]
    classes = list(dict.fromkeys(frame["class"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 0.9 * len(classes) + 1.5) * len(metrics), 4),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = [frame.loc[frame["class"] == c, metric].dropna().to_numpy() for c in classes]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(classes) + 1), classes, rotation=30, ha="right")
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label_cmap(n_labels: int) -> ListedColormap:
    colours = plt.get_cmap("tab10").colors
    return ListedColormap([colours[i % len(colours)] for i in range(max(n_labels, 1))])


def _display_image(image: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, dict]:
    """An image slice scaled to [0, 1]: RGB for 3/4 channels, the first channel in grey otherwise."""
    if image is None:
        return np.zeros(shape), {"cmap": "gray", "vmin": 0, "vmax": 1}
    if image.shape[0] in (3, 4) and image.ndim == 3:
        rgb = np.moveaxis(image[:3], 0, -1).astype(float)
        return (rgb - rgb.min()) / max(np.ptp(rgb), 1e-8), {}
    low, high = np.percentile(image[0], [0.5, 99.5])
    return np.clip((image[0] - low) / max(high - low, 1e-8), 0, 1), {"cmap": "gray"}


def _find_image(images_dir: str | None, case: str, file_ending: str) -> str | None:
    if images_dir is None:
        return None
    path = os.path.join(images_dir, f"{case}_0000{file_ending}")
    return path if os.path.isfile(path) else None


def plot_overlays(case_result: dict, info, images_dir: str | None, path: str, which: str = "") -> str:
    """Image, image + reference, image + prediction side by side; for 3D the axial slice (first array axis) with the
    most reference foreground (prediction foreground if the reference is empty)."""
    from nnunet_ext.evaluation.reading import read_image, read_label_map

    reference_map = read_label_map(info.reader_writer, case_result["reference"])
    reference, spacing = reference_map.array, reference_map.spacing
    prediction = read_label_map(info.reader_writer, case_result["prediction"]).array
    image = None
    image_path = _find_image(images_dir, case_result["case"], info.file_ending)
    if image_path is not None:
        image = read_image(info.reader_writer, image_path)
        if image.shape[1:] != reference.shape:
            image = None
    title_extra = ""
    if reference.ndim == 3:
        counts = (reference > 0).sum(axis=(1, 2))
        if not counts.any():
            counts = (prediction > 0).sum(axis=(1, 2))
        index = int(np.argmax(counts)) if counts.any() else reference.shape[0] // 2
        reference, prediction = reference[index], prediction[index]
        image = image[:, index] if image is not None else None
        spacing = spacing[1:]
        title_extra = f", slice {index}"
    if info.ignore_label is not None:
        reference = np.where(reference == info.ignore_label, 0, reference)
    shown, kwargs = _display_image(image, reference.shape)
    n_labels = int(max(reference.max(), prediction.max(), 1))
    cmap = _label_cmap(n_labels)
    dice = np.nanmean([row["dice"] for row in case_result["rows"]])

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    aspect = spacing[0] / spacing[1]
    for ax, labels, title in zip(axes, (None, reference, prediction), ("image", "reference", "prediction"),
                                 strict=True):
        ax.imshow(shown, aspect=aspect, **kwargs)
        if labels is not None:
            ax.imshow(np.ma.masked_equal(labels, 0), cmap=cmap, vmin=1, vmax=n_labels, alpha=0.5, aspect=aspect,
                      interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"{which} case {case_result['case']} (mean Dice {dice:.3f}{title_extra})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_detection_by_size(detection: dict, path: str) -> str:
    """Detection sensitivity per lesion size bin, one group of bars per lesion class."""
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(detection), 1)
    for i, (name, d) in enumerate(detection.items()):
        bins = list(d["by_size"])
        values = [d["by_size"][b]["sensitivity"] for b in bins]
        ax.bar(np.arange(len(bins)) + i * width, np.nan_to_num(values), width, label=name)
        ax.set_xticks(np.arange(len(bins)) + 0.4 - width / 2, bins)
    ax.set_xlabel("reference lesion size (mm^3, mm^2 in 2D)")
    ax.set_ylabel("detection sensitivity")
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
