"""What G_AB's attention looks like on fully labelled cases: image, reference, raw attention, CAM and the pseudo-mask
(per-image Otsu and opening, as at the phase switch), one row per case, with the numbers that tell a localising
attention from a flat one.

    python bench/weak_cycle/attention_maps.py FOLD PREPROCESSED -o bench/results/weak_cycle/attention_maps_phantom

FOLD is a trained WeakCycle fold folder (its checkpoint_final.pth, or --checkpoint), PREPROCESSED the data set's
nnUNet_preprocessed folder. The cases are the fold's fully labelled validation cases (splits_final.json), which is
where settings may be chosen; --cases names others. The generator's widths are read from the checkpoint. Writes
<output>.png and <output>.json: per case the mean raw attention on the lesion and on the rest of the body, their
difference in units of the attention's spread over the body (lesion contrast, the trainer's vital sign), the
attention's range over the body, and the pseudo-mask's Dice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from nnunet_ext.methods.weak_cycle.data import body_mask, case_kind, dice, threshold_image
from nnunet_ext.methods.weak_cycle.network import WeakCycleGenerator, attention_and_cam
from nnunet_ext.trainers.weak_cycle_trainers import lesion_and_rest, lesion_contrast


class InputError(Exception):
    pass


def load_generator(checkpoint: Path) -> WeakCycleGenerator:
    """G_AB with the architecture its state dict holds (features, downsamplings, blocks, input channels)."""
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such checkpoint")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    try:
        weights = state["nnunet_ext"]["aux_modules"]["gen_ab"]
    except (KeyError, TypeError):
        raise InputError(f"{checkpoint}: not a WeakCycle checkpoint (no generator gen_ab in it)") from None
    first = weights["encoder.0.weight"]
    if first.ndim != 4:
        raise InputError(f"{checkpoint}: a 3D generator; this script draws 2D configurations")
    convs = [k for k, v in weights.items() if k.startswith("encoder.") and k.count(".") == 2 and v.ndim == 4]
    blocks = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})
    generator = WeakCycleGenerator(first.shape[1], 2, first.shape[0], len(convs) - 1, blocks)
    generator.load_state_dict(weights)
    return generator.eval()


def validation_cases(preprocessed: Path, fold: int) -> list[str]:
    splits = preprocessed / "splits_final.json"
    if not splits.is_file():
        raise InputError(f"{splits}: no split file; name the cases with --cases")
    return sorted(json.loads(splits.read_text())[fold]["val"])


def maps(generator: WeakCycleGenerator, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(attention, CAM divided by its maximum) of one 2D case (C x 1 x H x W)."""
    out = attention_and_cam(generator, torch.from_numpy(data).permute(1, 0, 2, 3))
    return out["attention"][0, 0].numpy(), out["cam"][0, 0].numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fold", type=Path, help="trained WeakCycle fold folder")
    p.add_argument("preprocessed", type=Path, help="the data set's nnUNet_preprocessed folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="output stem (.png and .json are added)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--plans", default="nnUNetPlans")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--fold-index", type=int, default=0)
    p.add_argument("--cases", nargs="+", help="default: the fold's fully labelled validation cases")
    p.add_argument("--opening-radius", type=int, default=1, help="the trainer's opening_radius")
    args = p.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        generator = load_generator(args.fold / args.checkpoint)
        data_folder = args.preprocessed / f"{args.plans}_{args.configuration}"
        if not data_folder.is_dir():
            raise InputError(f"{data_folder}: no preprocessed data (plans {args.plans}, configuration "
                             f"{args.configuration})")
        dataset = infer_dataset_class(str(data_folder))(str(data_folder))
        labels = json.loads((args.preprocessed / "dataset.json").read_text())["labels"]
        ignore, lesion = labels.get("ignore"), min(v for k, v in labels.items() if k not in ("background", "ignore"))
        names = args.cases or validation_cases(args.preprocessed, args.fold_index)
        missing = sorted(set(names) - set(dataset.identifiers))
        if missing:
            raise InputError(f"{data_folder}: no preprocessed case {', '.join(missing)}")
        rows, drawn = [], []
        for case in names:
            data, seg, _, _ = dataset.load_case(case)
            data, seg = np.asarray(data[:], np.float32), np.asarray(seg[:])
            if case_kind(seg, ignore) != "full":
                continue
            attention, cam = maps(generator, data)
            body, reference = body_mask(seg, data)[0], seg[0, 0] == lesion
            mask, threshold = threshold_image(attention * body, body, None, args.opening_radius)
            inside, rest = lesion_and_rest(attention, body, reference)
            rows.append({"case": case, "attention_lesion": inside, "attention_rest_of_body": rest,
                         "lesion_contrast": lesion_contrast(attention, body, reference),
                         "attention_range": [float(attention[body].min()), float(attention[body].max())],
                         "otsu_threshold": threshold, "pseudo_mask_dice": dice(reference, mask)})
            drawn.append((case, data[0, 0], reference, attention, cam, mask))
        if not rows:
            raise InputError(f"none of the cases is fully labelled: {', '.join(names)}")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fig, axes = plt.subplots(len(drawn), 5, figsize=(10, 2.1 * len(drawn)), squeeze=False)
    for ax, (case, image, reference, attention, cam, mask), row in zip(axes, drawn, rows, strict=True):
        low, high = row["attention_range"]
        for a, (picture, title) in zip(ax, ((image, case), (reference, "reference"),
                                            (attention, f"attention {low:.2f}-{high:.2f}"), (cam, "CAM"),
                                            (mask, f"pseudo-mask, Dice {row['pseudo_mask_dice']:.2f}")), strict=True):
            a.imshow(picture, cmap="gray")
            a.set_title(title, fontsize=8)
            a.axis("off")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output.with_suffix(".png"), dpi=72)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in ("attention_lesion", "attention_rest_of_body",
                                                                    "lesion_contrast", "pseudo_mask_dice")}
    args.output.with_suffix(".json").write_text(json.dumps(
        {"fold": str(args.fold), "checkpoint": args.checkpoint, "mean": summary, "cases": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
