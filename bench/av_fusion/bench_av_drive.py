"""AVFusionTrainer vs stock nnU-Net on real DRIVE-AV with a small, equal CPU budget; the A/V protocol on held-out cases.

    python bench/av_fusion/bench_av_drive.py [--source ../shared/data/DRIVE_AV] [--work /tmp/av_drive] [--holdout 4]

DRIVE-AV training images are converted (Dataset711), the last --holdout cases are moved to imagesTs/labelsTs/masksTs
(the test split: never seen in training or checkpoint choice), the stock 2d plans are planned and a CPU configuration
`2d_cpu128` (128x128 patches, batch 2, 5 stages of 16-160 features) is added beside them, inheriting the 2d
preprocessing. Both trainers (bench/av_fusion/trainers: same epochs x iterations, seed 0, fold 0, no final validation)
are trained with the stock nnUNetv2_train, predict the held-out cases with nnUNetv2_predict --save_probabilities
(no mirroring, to save CPU time; the same for both) and are scored with `nnunet_ext evaluate --av --fov masksTs`.
Results: bench/results/av_fusion/av_drive.json and .md, beside the paper's DRIVE-AV row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from nnunet_ext import stock
from nnunet_ext.dataset_conversion.Dataset711_DRIVE_AV import convert

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "av_fusion"
TRAINERS = ("nnUNetTrainer_drivecpu", "AVFusionTrainer_drivecpu")
CONFIGURATION = "2d_cpu128"
PAPER = {"sensitivity": 69.83, "auc_roc": 84.2, "f1": 71.26, "auc_pr": 72.41, "mse": 2.92}  # sigmoid version, %


def hold_out(raw: Path, n: int) -> list[str]:
    """Move the last n training cases to the test folders and fix numTraining."""
    cases = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTr").glob("*_0000.png"))
    test = cases[-n:]
    for kind in ("images", "labels", "masks"):
        (raw / f"{kind}Ts").mkdir(exist_ok=True)
    for case in test:
        (raw / "imagesTr" / f"{case}_0000.png").rename(raw / "imagesTs" / f"{case}_0000.png")
        for kind in ("labels", "masks"):
            (raw / f"{kind}Tr" / f"{case}.png").rename(raw / f"{kind}Ts" / f"{case}.png")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    dataset_json["numTraining"] = len(cases) - n
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return test


def add_cpu_configuration(preprocessed: Path) -> None:
    """A 128x128, batch-2 configuration inheriting the 2d preprocessing (the stock 2d plans need a GPU)."""
    plans_file = preprocessed / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    arch = json.loads(json.dumps(plans["configurations"]["2d"]["architecture"]))
    n = 5
    arch["arch_kwargs"].update(n_stages=n, features_per_stage=[16, 32, 64, 128, 160], kernel_sizes=[[3, 3]] * n,
                               strides=[[1, 1]] + [[2, 2]] * (n - 1), n_conv_per_stage=[2] * n,
                               n_conv_per_stage_decoder=[2] * (n - 1))
    plans["configurations"][CONFIGURATION] = {"inherits_from": "2d", "patch_size": [128, 128], "batch_size": 2,
                                              "architecture": arch}
    plans_file.write_text(json.dumps(plans, indent=2))


def write_split(preprocessed: Path, n_val: int = 1) -> None:
    cases = sorted(p.name[:-len(".b2nd")] for p in (preprocessed / "nnUNetPlans_2d").glob("*.b2nd")
                   if not p.name.endswith("_seg.b2nd"))
    (preprocessed / "splits_final.json").write_text(json.dumps([{"train": cases[:-n_val], "val": cases[-n_val:]}]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=HERE.parents[2] / "shared" / "data" / "DRIVE_AV")
    p.add_argument("--work", type=Path, default=Path("/tmp/av_drive"))
    p.add_argument("--holdout", type=int, default=4)
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS))
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    env = stock.work_environment(a.work / "nnunet", "cpu")
    env["nnUNet_extTrainer"] = f"{env['nnUNet_extTrainer']}:{HERE / 'trainers'}"
    raw_root, pre_root = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    log = a.work / "commands.log"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if not (pre_root / "Dataset711_DRIVE_AV" / "nnUNetPlans.json").exists():
        raw_root.mkdir(parents=True, exist_ok=True)
        raw = convert(a.source, out_root=raw_root, overwrite=True)  # the sample holds the training split only
        hold_out(raw, a.holdout)
        stock.plan_and_preprocess(711, "2d", env, log_file=log)
        write_split(pre_root / raw.name)
    raw = raw_root / "Dataset711_DRIVE_AV"
    add_cpu_configuration(pre_root / raw.name)
    test_cases = sorted(p.name[:-len(".png")] for p in (raw / "labelsTs").glob("*.png"))
    seconds["prepare"] = round(time.perf_counter() - t0, 1)

    train_env = dict(env, nnUNet_n_proc_DA="0", nnUNet_ext_seed="0")
    results = {}
    previous = a.out / "av_drive.json"
    if previous.exists():  # a rerun of some trainers keeps the others' rows
        old = json.loads(previous.read_text())
        results, seconds = old["results"], {**old["seconds"], **seconds}
    for trainer in a.trainers:
        t0 = time.perf_counter()
        stock.train(711, CONFIGURATION, 0, trainer, train_env, log_file=log)
        seconds[f"train {trainer}"] = round(time.perf_counter() - t0, 1)
        pred = a.work / f"pred_{trainer}"
        if pred.exists():
            shutil.rmtree(pred)
        t0 = time.perf_counter()
        stock.run([stock.find_command("nnUNetv2_predict"), "-i", raw / "imagesTs", "-o", pred, "-d", "711",
                   "-c", CONFIGURATION, "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                   "--save_probabilities", "--disable_tta"], train_env, log_file=log)
        seconds[f"predict {trainer}"] = round(time.perf_counter() - t0, 1)
        ev = a.work / f"eval_{trainer}"
        stock.run([stock.find_command("nnunet_ext"), "evaluate", "-ref", raw / "labelsTs", "-pred", pred,
                   "--images", raw / "imagesTs", "--av", "--fov", raw / "masksTs", "-o", ev], train_env,
                  log_file=log)
        results[trainer] = json.loads((ev / "summary.json").read_text())["av_protocol"]
        write_report(a.out, results, seconds, test_cases)
    return 0


def write_report(out: Path, results: dict, seconds: dict, test_cases: list[str]) -> None:
    """JSON with everything, and a markdown table (weighted over classes, mean +- std over images, %)."""
    from trainers.av_drive_trainers import BUDGET

    out.mkdir(parents=True, exist_ok=True)
    budget = (f"{BUDGET['epochs']} epochs x {BUDGET['iterations']} iterations, batch 2, 128x128 patches, U-Net "
              f"features 16-160 (5 stages), 2 shared CPU cores, seed 0, checkpoint_final; {len(test_cases)} held-out "
              f"images ({', '.join(test_cases)}), prediction without mirroring")
    report = {"budget": budget, "seconds": seconds, "test_cases": test_cases, "results": results,
              "paper_drive_av_sigmoid": PAPER}
    (out / "av_drive.json").write_text(json.dumps(report, indent=2))
    metrics = list(PAPER)
    lines = [f"DRIVE-AV, A/V protocol (weighted over artery/vein/uncertain, inside the FOV, %). Budget: {budget}.",
             "", "| trainer | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for trainer, summary in results.items():
        w = summary["weighted"]
        lines.append(f"| {trainer} | " + " | ".join(f"{100 * w[m]['mean']:.2f} +- {100 * w[m]['std']:.2f}"
                                                   for m in metrics) + " |")
    lines.append("| paper (Zhou et al. 2021, full training) | " + " | ".join(str(PAPER[m]) for m in metrics) + " |")
    lines += ["", "Seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()), ""]
    (out / "av_drive.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
