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
prior_iterations before epoch 0 since issue 20 - the checked-in results predate that and spent epoch 0 on the
prior), seed 0, fold 0, checkpoint_final, stock nnUNetv2_predict without mirroring, scored with `nnunet_ext evaluate`
(Dice, HD95 per held-out image). Results: bench/results/ftsegnet/ftsegnet_ablation_<data>.json and .md;
`--demo-budget`: the _demo variants (24 epochs x 20 iterations) instead, results in ftsegnet_ablation_<data>_demo.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from trainers.ftsegnet_bench_trainers import BUDGET

from nnunet_ext import stock
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
    p.add_argument("--demo-budget", action="store_true", help="the _demo variants (24 x 20) instead, results in "
                   "ftsegnet_ablation_<data>_demo.*")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "ftsegnet")
    a = p.parse_args(argv)
    budget = DEMO_BUDGET if a.demo_budget else BUDGET
    a.trainers = a.trainers or list(DEMO_TRAINERS if a.demo_budget else TRAINERS)

    work = a.work / a.data
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
    report = json.loads(out_file.read_text()) if out_file.exists() else {"results": {}, "seconds": {}}
    train_env = dict(env, nnUNet_n_proc_DA="0", nnUNet_ext_seed="0")
    train_env["nnUNet_extTrainer"] = f"{env['nnUNet_extTrainer']}:{HERE / 'trainers'}"
    for trainer in a.trainers:
        t0 = time.perf_counter()
        stock.train(dataset_id, configuration, 0, trainer, train_env, plans=plans, log_file=log)
        report["seconds"][f"train {trainer}"] = round(time.perf_counter() - t0, 1)
        pred = work / f"pred_{trainer}"
        if pred.exists():
            shutil.rmtree(pred)
        t0 = time.perf_counter()
        stock.run([stock.find_command("nnUNetv2_predict"), "-i", raw / "imagesTs", "-o", pred, "-d", str(dataset_id),
                   "-c", configuration, "-p", plans, "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1",
                   "-nps", "1", "--disable_tta"], train_env, log_file=log)
        report["seconds"][f"predict {trainer}"] = round(time.perf_counter() - t0, 1)
        ev = work / f"eval_{trainer}"
        stock.run([stock.find_command("nnunet_ext"), "evaluate", "-ref", raw / "labelsTs", "-pred", pred,
                   "--images", raw / "imagesTs", "-o", ev], train_env, log_file=log)
        summary = json.loads((ev / "summary.json").read_text())
        report["results"][trainer] = {"foreground_mean": summary["foreground_mean"],
                                      "per_class": summary["per_class"], "detection": summary.get("detection"),
                                      "n_cases": summary["n_cases"]}
        report["budget"] = (f"{budget['epochs']} epochs x {budget['iterations']} iterations, "
                            f"configuration {configuration} of {plans}, seed 0, fold 0, checkpoint_final, 2 CPU cores "
                            "shared with other jobs, prediction without mirroring")
        report["test_cases"] = sorted(p.name[:-len(".png")] for p in (raw / "labelsTs").glob("*.png"))
        write_report(out_file, report)
    return 0


def write_report(out_file: Path, report: dict) -> None:
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(report, indent=2))
    lines = [f"Held-out cases: {', '.join(report['test_cases'])}. Budget: {report['budget']}.", "",
             "| trainer | Dice (mean +- std) | HD95 (px, mean +- std) | train s | predict s |", "|---|---|---|---|---|"]
    for trainer, r in report["results"].items():
        cls = next(iter(r["per_class"].values()))
        lines.append(f"| {trainer} | {cls['dice']['mean']:.3f} +- {cls['dice']['std']:.3f} | "
                     f"{cls['hd95']['mean']:.1f} +- {cls['hd95']['std']:.1f} | "
                     f"{report['seconds'].get(f'train {trainer}')} | {report['seconds'].get(f'predict {trainer}')} |")
    out_file.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
