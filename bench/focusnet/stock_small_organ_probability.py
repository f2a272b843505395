"""How far stock nnU-Net is from finding the small organs it scores Dice 0 on: its softmax probability of each small
organ inside that organ's reference voxels on the held-out cases, for stock models that bench_focusnet_hn3d.py trained.

    python bench/focusnet/stock_small_organ_probability.py /tmp/fn3d/nnunet/nnUNet_raw/Dataset795_PhantomHeadNeckCT \
        /tmp/fn3d/Dataset795_PhantomHeadNeckCT_3d_fullres_E150x25 \
        /tmp/fn3d/Dataset795_PhantomHeadNeckCT_3d_fullres_E400x25

RAW is the nnU-Net raw data set (imagesTs/labelsTs held out, labelsTr for the small-organ selection); each WORK is a
bench work folder (<dataset>_<configuration>_E<epochs>x<iterations>[_tag]) whose stock_seed<N>/ folders hold trained
stock models. Small organs are chosen as FocusNetV2Trainer chooses them (nnunet_ext.methods.focusnet.organs, on the
raw training labels), or given with --organs. Retrains nothing; each model predicts the held-out cases once, with
the mirroring its checkpoint names. Per budget, seed and organ, averaged over the held-out cases that contain the
organ: the largest and the mean probability inside the organ, the share of its voxels where it wins the argmax, and
the class that wins most of them. A trend over budgets says whether a longer run would let stock find the organ.
Writes bench/results/focusnet/stock_small_organ_probability_<dataset>_<configuration>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_ext.methods.focusnet.organs import case_stats, parse_override, select_small_organs
from nnunet_ext.paths import ext_trainer_path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "focusnet"
WORK_NAME = re.compile(r"^(Dataset\d+_\w+?)_(2d|3d_fullres|3d_lowres)_E(\d+)x(\d+)(?:_(\w+))?$")


def small_organs(raw: Path, labels: dict, override: str | None) -> list[str]:
    files = sorted((raw / "labelsTr").glob("*.nii.gz"))
    if not files:
        raise SystemExit(f"error: {raw / 'labelsTr'} holds no .nii.gz label maps")
    values = [int(v) for k, v in labels.items() if k != "background"]
    stats = [case_stats(sitk.GetArrayFromImage(sitk.ReadImage(str(f))), values) for f in files]
    chosen = select_small_organs(stats, labels, override=parse_override(override, labels))
    return list(chosen.names)


def probabilities(model: Path, images: Path, out: Path) -> dict[str, np.ndarray]:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=True, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model.parents[1]), use_folds=(0,))
    predictor.predict_from_files_sequential(str(images), str(out), save_probabilities=True, overwrite=True)
    return {f.name[:-4]: np.load(f)["probabilities"] for f in sorted(out.glob("*.npz"))}


def organ_rows(probs: dict[str, np.ndarray], labels_ts: Path, labels: dict, organs: list[str]) -> dict:
    names = {int(v): k for k, v in labels.items()}
    per_organ = {o: [] for o in organs}
    for case, p in probs.items():
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_ts / f"{case}.nii.gz")))
        if p.shape[1:] != ref.shape:
            raise SystemExit(f"error: {case}: probabilities {p.shape[1:]} and reference {ref.shape} differ in shape")
        winner = p.argmax(0)
        for organ in organs:
            inside = ref == labels[organ]
            if not inside.any():
                continue
            q = p[labels[organ]][inside]
            won = np.bincount(winner[inside], minlength=p.shape[0])
            per_organ[organ].append({"case": case, "voxels": int(inside.sum()), "max_p": float(q.max()),
                                     "mean_p": float(q.mean()), "argmax_share": float(won[labels[organ]] / q.size),
                                     "most_predicted": names[int(won.argmax())]})
    summary = {}
    for organ, rows in per_organ.items():
        if rows:
            summary[organ] = {k: float(np.mean([r[k] for r in rows])) for k in ("max_p", "mean_p", "argmax_share")}
            kinds = [r["most_predicted"] for r in rows]
            summary[organ].update(n_cases=len(rows), most_predicted=max(set(kinds), key=kinds.count))
    return {"per_case": per_organ, "summary": summary}


def markdown(report: dict) -> str:
    lines = [f"# Stock's probability of the small organs on the held-out cases ({report['dataset']}, "
             f"{report['configuration']})", "",
             "`python bench/focusnet/stock_small_organ_probability.py` (written by the script). Per budget (epochs x "
             "iterations), seed and small organ, means over the held-out cases that contain the organ: the largest "
             "and the mean softmax probability of the organ inside its reference voxels, the share of those voxels "
             "where it wins the argmax (its recall), and the class that wins most of them.", "",
             "| budget | seed | organ | max p inside | mean p inside | argmax share | most voxels go to |",
             "|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        for organ, s in run["summary"].items():
            lines.append(f"| {run['budget']} | {run['seed']} | {organ} | {s['max_p']:.2g} | {s['mean_p']:.2g} "
                         f"| {s['argmax_share']:.3f} | {s['most_predicted']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", type=Path, help="nnU-Net raw data set folder with imagesTs, labelsTs and labelsTr")
    p.add_argument("work", type=Path, nargs="+", help="bench_focusnet_hn3d.py work folders with stock_seed<N>/ models")
    p.add_argument("--organs", default=None, help="small organs by name, comma-separated (default: the trainer's rule)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    for sub in ("imagesTs", "labelsTs", "labelsTr"):
        if not (args.raw / sub).is_dir():
            raise SystemExit(f"error: {args.raw} has no {sub}/ folder")
    labels = {k: int(v) for k, v in json.loads((args.raw / "dataset.json").read_text())["labels"].items()}
    # the bench's stock rows are nnUNetTrainer subclasses in bench/focusnet/trainers, found by class name
    os.environ["nnUNet_extTrainer"] = os.pathsep.join([ext_trainer_path(os.environ.get("nnUNet_extTrainer")),
                                                       str(HERE / "trainers")])
    organs = small_organs(args.raw, labels, args.organs)
    runs, key = [], None
    for work in args.work:
        m = WORK_NAME.match(work.name)
        if not m:
            raise SystemExit(f"error: {work}: not a bench work folder (<dataset>_<configuration>_E<epochs>x<iters>)")
        if key not in (None, m.group(1, 2)):
            raise SystemExit(f"error: {work}: another data set or configuration than {args.work[0]}")
        key = m.group(1, 2)
        models = sorted(work.glob("stock_seed*/*/*/fold_0/checkpoint_final.pth"))
        if not models:
            raise SystemExit(f"error: {work} holds no trained stock model (stock_seed*/*/*/fold_0/checkpoint_final)")
        for model in models:
            seed = int(model.parents[3].name.removeprefix("stock_seed"))
            with tempfile.TemporaryDirectory() as tmp:
                probs = probabilities(model, args.raw / "imagesTs", Path(tmp))
            rows = organ_rows(probs, args.raw / "labelsTs", labels, organs)
            runs.append({"budget": f"E{m.group(3)}x{m.group(4)}", "epochs": int(m.group(3)),
                         "iterations": int(m.group(4)), "seed": seed, "model": str(model), **rows})
            print(json.dumps({"budget": runs[-1]["budget"], "seed": seed, "summary": rows["summary"]}), flush=True)
    report = {"dataset": key[0], "configuration": key[1], "raw": str(args.raw), "small_organs": organs, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"stock_small_organ_probability_{key[0]}_{key[1]}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    print(stem.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
