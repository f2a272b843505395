"""FTSegNet ablation at one small, equal CPU budget: stock nnU-Net vs the transformer-only network vs transformer+CPB.

    python bench/ftsegnet/bench_ftsegnet_ablation.py --data tumor2d [--work /tmp/ftsegnet_ablation]
    python bench/ftsegnet/bench_ftsegnet_ablation.py --data isic [--source ../shared/data/ISIC2018_weak]

tumor2d: the fundus-tumour phantom (seed 0, 24 training / 6 held-out 96x96 images, its classification.json gives the
prior 3 classes), the stock 2d plans. isic: the ISIC 2018 sample's lesion images with masks (val/) and healthy-skin
crops (normal/, all-zero masks) converted with Dataset742_ISICWeak (roles val -> full), the last 2 of each held out
as the test set; no class table, so the prior learns "patch contains lesion"; planned with the `cpu` preset
(`nnunet_ext plan --preset cpu`, plans nnUNetPlans_cpu; the checked-in ISIC results used the AV benchmark's former
hand-written `2d_cpu128`: 128x128 patches, batch 2, 5 stages of 16-160 features). Every
trainer: the budget of bench/ftsegnet/trainers (5 epochs x 16 iterations; FTSegNet's prior trains its own
prior_iterations before epoch 0 since issue 20 - the checked-in 5 x 16 results predate that and spent epoch 0 on the
prior), fold 0, one training per seed (`--seeds`, default 0; nnUNet_ext_seed), checkpoint_final, stock
nnUNetv2_predict without mirroring, scored with `nnunet_ext evaluate` (Dice, HD95 per held-out image) and by the
issue's two measures: Dice on the held-out images with a lesion, false-positive rate on those without (share with
any predicted lesion pixel). The trained FTSegNet is also scored with its CPB closed at inference (the
transformer-only computation with its weights). `--demo-budget`: the _demo variants (24 epochs x 20 iterations)
instead. Results: bench/results/ftsegnet/ftsegnet_ablation_<data>[_demo].json and .md. A rerun with the same --work
keeps what it trained and scored (`--retrain` to train again); a result file written before `--seeds` existed (one
seed) is replaced, not merged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from trainers.ftsegnet_bench_trainers import BUDGET

from nnunet_ext import stock
from nnunet_ext.benchmark import machine_info
from nnunet_ext.phantoms import tumor2d
from nnunet_ext.training.variants import DEMO_BUDGET

HERE = Path(__file__).resolve().parent
ISIC_PRESET = "cpu"  # the stock 2d plans of the ISIC sample want a GPU
TRAINERS = ("nnUNetTrainer_ablation", "FTSegNetTrainer_NoCPB_ablation", "FTSegNetTrainer_ablation")
DEMO_TRAINERS = ("nnUNetTrainer_demo", "FTSegNetTrainer_NoCPB_demo", "FTSegNetTrainer_demo")


def prepare_isic(source: Path, raw_root: Path, holdout: int = 2) -> Path:
    from nnunet_ext.dataset_conversion.Dataset742_ISICWeak import convert

    raw = convert(source, out_root=raw_root, overwrite=True, roles={"val": "full"})
    cases = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTr").glob("*_0000.png"))
    normal = [c for c in cases if "health" in c]
    lesion = [c for c in cases if c not in normal]
    (raw / "imagesTs").mkdir(exist_ok=True)
    (raw / "labelsTs").mkdir(exist_ok=True)
    for case in lesion[-holdout:] + normal[-holdout:]:
        (raw / "imagesTr" / f"{case}_0000.png").rename(raw / "imagesTs" / f"{case}_0000.png")
        (raw / "labelsTr" / f"{case}.png").rename(raw / "labelsTs" / f"{case}.png")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    dataset_json["numTraining"] = len(cases) - 2 * holdout
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("tumor2d", "isic"), required=True)
    p.add_argument("--source", type=Path, default=HERE.parents[2] / "shared" / "data" / "ISIC2018_weak")
    p.add_argument("--work", type=Path, default=Path("/tmp/ftsegnet_ablation"))
    p.add_argument("--trainers", nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="nnUNet_ext_seed of each training (default 0)")
    p.add_argument("--retrain", action="store_true", help="train again a trainer and seed this --work already "
                   "trained and scored (default: keep it, and score only what is missing)")
    p.add_argument("--demo-budget", action="store_true", help="the _demo variants (24 x 20) instead, results in "
                   "ftsegnet_ablation_<data>_demo.*")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "ftsegnet")
    a = p.parse_args(argv)
    budget = DEMO_BUDGET if a.demo_budget else BUDGET
    a.trainers = a.trainers or list(DEMO_TRAINERS if a.demo_budget else TRAINERS)

    work = a.work.resolve() / a.data  # nnU-Net reads its folders from the environment: no relative paths there
    env = stock.work_environment(work / "nnunet", "cpu")
    raw_root, pre_root = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    log = work / "commands.log"
    configuration = "2d"
    dataset_id, plans = ((tumor2d.DEFAULT_ID, "nnUNetPlans") if a.data == "tumor2d"
                         else (742, f"nnUNetPlans_{ISIC_PRESET}"))
    if not any(pre_root.glob(f"Dataset{dataset_id}_*/{plans}.json")):
        raw_root.mkdir(parents=True, exist_ok=True)
        if a.data == "tumor2d":
            tumor2d.generate(raw_root, seed=0, overwrite=True)
            stock.plan_and_preprocess(dataset_id, configuration, env, log_file=log)
        else:
            prepare_isic(a.source, raw_root)
            stock.plan(dataset_id, ISIC_PRESET, env, [configuration], log_file=log)
    raw = next(raw_root.glob(f"Dataset{dataset_id}_*"))

    out_file = a.out / f"ftsegnet_ablation_{a.data}{'_demo' if a.demo_budget else ''}.json"
    report = json.loads(out_file.read_text()) if out_file.exists() else {}
    if "runs" not in report:  # nothing, or the one-seed format before --seeds: its numbers stay in git history
        report = {"runs": {}, "seconds": {}}
    report["budget"] = (f"{budget['epochs']} epochs x {budget['iterations']} iterations (FTSegNet's prior: its "
                        "prior_iterations before epoch 0, on top), configuration "
                        f"{configuration} of {plans}, fold 0, checkpoint_final, 2 CPU cores, prediction without "
                        "mirroring")
    report["test_cases"] = sorted(p.name[:-len(".png")] for p in (raw / "labelsTs").glob("*.png"))
    for seed in a.seeds:
        train_env = dict(env, nnUNet_n_proc_DA="0", nnUNet_ext_seed=str(seed))
        train_env["nnUNet_extTrainer"] = f"{env['nnUNet_extTrainer']}:{HERE / 'trainers'}"
        # one nnUNet_results per seed, so that a second seed never resumes the first one's checkpoint
        train_env["nnUNet_results"] = str(Path(env["nnUNet_results"]) / f"seed{seed}")
        for trainer in a.trainers:
            run = f"{trainer} seed {seed}"
            folder = Path(train_env["nnUNet_results"]) / raw.name / f"{trainer}__{plans}__{configuration}" / "fold_0"
            # trained and scored by an earlier call with this --work: kept, unless --retrain
            if a.retrain or run not in report["runs"] or not (folder / "checkpoint_final.pth").exists():
                report["runs"][run] = train_and_score(trainer, seed, dataset_id, configuration, plans, raw, work,
                                                      train_env, log, report["seconds"])
                write_report(out_file, report)
            if trainer.startswith("FTSegNetTrainer") and "NoCPB" not in trainer and \
                    "cpb_closed" not in report["runs"][run]:
                report["runs"][run]["cpb_closed"] = cpb_closed_scores(folder, raw, work / f"pred_{trainer}_seed{seed}"
                                                                      "_cpb_closed", train_env)
                write_report(out_file, report)
    return 0


def train_and_score(trainer: str, seed: int, dataset_id: int, configuration: str, plans: str, raw: Path, work: Path,
                    train_env: dict, log: Path, seconds: dict) -> dict:
    run = f"{trainer} seed {seed}"
    t0 = time.perf_counter()
    stock.train(dataset_id, configuration, 0, trainer, train_env, plans=plans, log_file=log)
    seconds[f"train {run}"] = round(time.perf_counter() - t0, 1)
    machine = machine_info()
    pred = work / f"pred_{trainer}_seed{seed}"
    if pred.exists():
        shutil.rmtree(pred)
    t0 = time.perf_counter()
    stock.run([stock.find_command("nnUNetv2_predict"), "-i", raw / "imagesTs", "-o", pred, "-d", str(dataset_id),
               "-c", configuration, "-p", plans, "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
               "--disable_tta"], train_env, log_file=log)
    seconds[f"predict {run}"] = round(time.perf_counter() - t0, 1)
    ev = work / f"eval_{trainer}_seed{seed}"
    stock.run([stock.find_command("nnunet_ext"), "evaluate", "-ref", raw / "labelsTs", "-pred", pred,
               "--images", raw / "imagesTs", "-o", ev], train_env, log_file=log)
    summary = json.loads((ev / "summary.json").read_text())
    return {"trainer": trainer, "seed": seed, **split_scores(raw / "labelsTs", pred),
            "foreground_mean": summary["foreground_mean"], "per_class": summary["per_class"],
            "n_cases": summary["n_cases"], "machine": machine}


def cpb_closed_scores(folder: Path, raw: Path, out: Path, env: dict) -> dict:
    """The trained FTSegNet with its CPB closed at inference (alpha, gate, class projection zeroed: the
    transformer-only computation with FTSegNet's segmenter weights), scored as the arms are: does the network use
    its prior?"""
    # the tumour bench's predictor (no mirroring, CPU) and CPB closing, imported here: it loads torch and nnU-Net
    from bench_ftsegnet_tumor2d import close_predictor_cpb, predictor_for

    os.environ.update(env)  # the predictor finds the trainer class through nnUNet_extTrainer
    predictor = predictor_for(folder)
    close_predictor_cpb(predictor)
    if out.exists():
        shutil.rmtree(out)
    predictor.predict_from_files(str(raw / "imagesTs"), str(out), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return split_scores(raw / "labelsTs", out)


def split_scores(reference: Path, prediction: Path) -> dict:
    """Dice on the held-out images with a lesion, false-positive rate on those without (any predicted pixel)."""
    dice, false_positive = {}, {}
    for ref_file in sorted(reference.glob("*.png")):
        ref = np.asarray(Image.open(ref_file)) > 0
        pred = np.asarray(Image.open(prediction / ref_file.name)) > 0
        if ref.any():
            dice[ref_file.stem] = float(2 * (ref & pred).sum() / (ref.sum() + pred.sum()))
        else:
            false_positive[ref_file.stem] = bool(pred.any())
    return {"dice_lesion_images": dice, "false_positive_images": false_positive,
            "dice_lesion_mean": statistics.fmean(dice.values()) if dice else None,
            "false_positive_rate": statistics.fmean(false_positive.values()) if false_positive else None}


def write_report(out_file: Path, report: dict) -> None:
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(report, indent=2))
    lines = [f"Held-out cases: {', '.join(report['test_cases'])}. Budget: {report['budget']}.", "",
             "| trainer | seed | Dice, all held-out (mean +- std) | Dice, lesion images | false-positive rate, "
             "images without lesion | HD95 (px, mean +- std) | train s | predict s |",
             "|---|---|---|---|---|---|---|---|"]
    for run, r in report["runs"].items():
        cls = next(iter(r["per_class"].values()))
        lines.append(f"| {r['trainer']} | {r['seed']} | {cls['dice']['mean']:.3f} +- {cls['dice']['std']:.3f} | "
                     f"{r['dice_lesion_mean']:.3f} | {r['false_positive_rate']:.2f} | "
                     f"{cls['hd95']['mean']:.1f} +- {cls['hd95']['std']:.1f} | "
                     f"{report['seconds'].get(f'train {run}')} | {report['seconds'].get(f'predict {run}')} |")
        if "cpb_closed" in r:
            c = r["cpb_closed"]
            lines.append(f"| {r['trainer']}, CPB closed at inference | {r['seed']} | | {c['dice_lesion_mean']:.3f} | "
                         f"{c['false_positive_rate']:.2f} | | | |")
    out_file.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
