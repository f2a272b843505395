"""A short report on a prediction folder: Dice per class with nnU-Net's own evaluation, overlays, markdown.

The full metric set of the papers lives in nnunet_ext.evaluation; the demo needs only what a person checks first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

OVERLAY_COLOURS = np.array([[0, 0, 0], [255, 215, 0], [0, 200, 255], [255, 0, 200], [80, 255, 80], [255, 120, 0],
                            [160, 90, 255], [255, 255, 255]], np.uint8)


def _reader(dataset_json: dict, example: Path):
    return determine_reader_writer_from_dataset_json(dataset_json, str(example), allow_nonmatching_filename=True,
                                                     verbose=False)()


def _foreground_labels(dataset_json: dict) -> dict[str, int]:
    return {name: int(v) for name, v in dataset_json["labels"].items()
            if name not in ("background", "ignore") and isinstance(v, int)}


def evaluate_folder(reference_dir: Path, prediction_dir: Path, dataset_json_file: Path) -> dict:
    """Dice and IoU per class and case for nnU-Net-format label maps (nnunetv2's compute_metrics_on_folder)."""
    dataset_json = json.loads(Path(dataset_json_file).read_text())
    labels = _foreground_labels(dataset_json)
    ending = dataset_json["file_ending"]
    example = next(Path(reference_dir).glob(f"*{ending}"))
    summary = compute_metrics_on_folder(
        str(reference_dir), str(prediction_dir), str(Path(prediction_dir) / "summary.json"),
        _reader(dataset_json, example), ending, list(labels.values()),
        ignore_label=dataset_json["labels"].get("ignore"), num_processes=1, chill=False)
    per_class = {name: {"Dice": float(summary["mean"][value]["Dice"]), "IoU": float(summary["mean"][value]["IoU"])}
                 for name, value in labels.items()}
    per_case = [{"case": Path(c["prediction_file"]).name,
                 **{name: float(c["metrics"][value]["Dice"]) for name, value in labels.items()}}
                for c in summary["metric_per_case"]]
    return {"per_class": per_class, "foreground_mean_dice": float(summary["foreground_mean"]["Dice"]),
            "num_cases": len(per_case), "per_case_dice": per_case}


def _display_slice(image: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, int]:
    """RGB-or-grey picture of the only slice (2D) or of the most labelled axial slice (3D), and its index."""
    z = int(np.argmax((seg[0] > 0).reshape(seg.shape[1], -1).sum(1))) if seg.shape[1] > 1 else 0
    img = image[:, z].astype(np.float32)
    if img.shape[0] == 3:
        rgb = np.moveaxis(img, 0, -1)
        rgb = rgb / max(float(rgb.max()), 1.0)
    else:
        lo, hi = np.percentile(img[0], (1, 99))
        grey = np.clip((img[0] - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.stack([grey] * 3, -1)
    return rgb, z


def write_overlays(images_dir: Path, reference_dir: Path, prediction_dir: Path, dataset_json_file: Path,
                   out_png: Path, max_cases: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset_json = json.loads(Path(dataset_json_file).read_text())
    ending = dataset_json["file_ending"]
    cases = sorted(Path(prediction_dir).glob(f"*{ending}"))[:max_cases]
    if not cases:
        raise FileNotFoundError(f"no predictions ending in {ending} in {prediction_dir}")
    rw = _reader(dataset_json, cases[0])
    n_channels = len(dataset_json["channel_names"])
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, pred_file in zip(axes, cases, strict=True):
        case_id = pred_file.name[: -len(ending)]
        image, _ = rw.read_images([str(Path(images_dir) / f"{case_id}_{c:04d}{ending}") for c in range(n_channels)])
        ref, _ = rw.read_seg(str(Path(reference_dir) / pred_file.name))
        pred, _ = rw.read_seg(str(pred_file))
        rgb, z = _display_slice(image, ref)
        shown_segs = (("image", None), ("reference", ref[0, z].astype(int)), ("prediction", pred[0, z].astype(int)))
        for ax, (title, seg) in zip(row, shown_segs, strict=True):
            shown = rgb if seg is None else np.where(seg[..., None] > 0, 0.45 * rgb + 0.55 * OVERLAY_COLOURS[
                seg % len(OVERLAY_COLOURS)] / 255.0, rgb)
            ax.imshow(shown, interpolation="nearest")
            ax.set_title(f"{case_id}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def write_report(path: Path, metrics: dict, seconds: dict, overlays: Path, title: str) -> Path:
    lines = [f"# {title}", "", "| class | Dice | IoU |", "|---|---|---|"]
    lines += [f"| {name} | {m['Dice']:.3f} | {m['IoU']:.3f} |" for name, m in metrics["per_class"].items()]
    lines += [f"| **foreground mean** | **{metrics['foreground_mean_dice']:.3f}** | |", "",
              f"{metrics['num_cases']} held-out cases. Stage times (s): "
              + ", ".join(f"{k} {v}" for k, v in seconds.items()), "", f"![overlays]({overlays.name})", ""]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
