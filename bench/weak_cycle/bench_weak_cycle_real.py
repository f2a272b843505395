"""WeakCycle (attention) vs its CAM-only baseline on the real BraTS 2018 FLAIR slices or ISIC 2018 images beside the
checkout, through the converter and the stock commands: phase-1 pseudo-mask quality on the weak cases and student
Dice on the fully labelled validation cases.

    python bench/weak_cycle/bench_weak_cycle_real.py --work /tmp/brats -o bench/results/weak_cycle/weak_cycle_brats_cpu
    python bench/weak_cycle/bench_weak_cycle_real.py --dataset isic --work /tmp/isic \\
        -o bench/results/weak_cycle/weak_cycle_isic_cpu

Each sample has 8 lesion images (each with its mask) and 8 without. The first `--n-weak` lesion images (sorted by
name) become weak training cases, whose masks only score the pseudo-masks; the rest are fold 0's validation cases,
which choose the pseudo-mask threshold and score the student. The lesion-free images are the normal domain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_weak_cycle_eval import evaluate
from PIL import Image

from nnunet_ext import stock

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"
# name: (sample folder, converter, data set id, data set name, {trainer: id of its pseudo-mask export})
DATASETS = {
    "brats": ("BraTS2018_slices", "brats_weak", 741, "BraTSWeak",
              {"WeakCycleTrainer_real": 743, "WeakCycleTrainer_CAM_real": 744}),
    "isic": ("ISIC2018_weak", "isic_weak", 742, "ISICWeak",
             {"WeakCycleTrainer_real": 745, "WeakCycleTrainer_CAM_real": 746}),
}


def sliced_layout(data: Path, out: Path, n_weak: int | None) -> None:
    """Symbolic links in the sliced layout; n_weak None puts every tumour slice in val/ (full masks: references)."""
    data = data.resolve()  # a link holding a relative path would resolve from the link's folder, not from here
    images = sorted((data / "val" / "images").glob("*.png"))
    for i, image in enumerate(images):
        weak = n_weak is not None and i < n_weak
        target = out / "train" if weak else out / "val" / "images"
        target.mkdir(parents=True, exist_ok=True)
        (target / image.name).symlink_to(image)
        if not weak:
            (out / "val" / "labels").mkdir(parents=True, exist_ok=True)
            label = data / "val" / "labels" / f"{image.stem}_segmentation.png"
            (out / "val" / "labels" / label.name).symlink_to(label)
    (out / "normal").mkdir(parents=True)
    for image in sorted((data / "normal").iterdir()):
        (out / "normal" / image.name).symlink_to(image)


def convert(converter: str, source: Path, raw: Path, env: dict) -> None:
    subprocess.run([sys.executable, "-m", "nnunet_ext.cli", "convert", converter, str(source), "-o", str(raw)],
                   env=env, check=True, capture_output=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="brats")
    p.add_argument("--data", default=None, help="sample folder (default: ../shared/data/<the data set's sample>)")
    p.add_argument("--work", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--n-weak", type=int, default=5)
    args = p.parse_args(argv)
    folder, converter, dataset_id, name, trainers = DATASETS[args.dataset]
    data = Path(args.data) if args.data else SHARED / folder
    work, out = Path(args.work), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    env = stock.work_environment(work / "nnunet", device="cpu")
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(HERE / "trainers")])
    raw = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id}_{name}"
    if not raw.exists():
        sliced_layout(data, work / "src", args.n_weak)
        sliced_layout(data, work / "src_reference", None)
        convert(converter, work / "src", Path(env["nnUNet_raw"]), env)
        convert(converter, work / "src_reference", work / "reference", env)
        stock.plan_and_preprocess(dataset_id, "2d", env)
    reference = work / "reference" / raw.name / "labelsTr"
    splits = json.loads((Path(env["nnUNet_preprocessed"]) / raw.name / "splits_final.json").read_text())[0]
    counts = json.loads((raw / "dataset.json").read_text())["case_counts"]
    weak = sorted(c for c in splits["train"] if (raw / "labelsTr" / f"{c}.png").is_file()
                  and np.all(np.asarray(Image.open(raw / "labelsTr" / f"{c}.png")) == 2))

    def run(trainer: str) -> dict:
        export = trainers[trainer]
        train_env = dict(env, nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_ext_seed="0",
                         nnUNet_ext_weak_export=str(export))
        t = time.time()
        stock.train(dataset_id, "2d", 0, trainer, train_env, log_file=out / f"{trainer}_train.log")
        fold = Path(env["nnUNet_results"]) / raw.name / f"{trainer}__nnUNetPlans__2d" / "fold_0"
        pseudo = Path(env["nnUNet_raw"]) / f"Dataset{export}_{name}Pseudo" / "labelsTr"
        return {"train_s": round(time.time() - t, 1),
                "pseudo_masks_on_weak_cases": evaluate(reference, pseudo, weak),
                "student_on_validation": evaluate(reference, fold / "validation", sorted(splits["val"]))}

    # one after the other: two trainings side by side on 2 cores oversubscribed the intra-op threads, and epochs of
    # 3.5 s took up to 430 s
    results = {trainer: run(trainer) for trainer in trainers}
    results["data"] = {"case_counts": counts, "weak_cases": weak, "validation_cases": sorted(splits["val"])}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
