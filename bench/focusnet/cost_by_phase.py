"""FocusNetV2Trainer's training cost over a whole run against stock nnU-Net, composed from its step in every phase.

    python bench/focusnet/cost_by_phase.py hn3d --configuration 2d
    python bench/focusnet/cost_by_phase.py /data/nnUNet_raw/Dataset731_PDDCA --configuration 3d_fullres

The comparison bench (bench_focusnet_hn3d.py) times whole trainings, but with a narrow S-Net (8-64 features) so that
they fit a CPU; next to it FocusNetV2's 32-wide heatmap head is large. This script times steps on the plans a user
gets (nnU-Net's default plans, or --plans), with the bench harness (nnunet_ext.benchmark: the same batches, stock
measured in the same run): FocusNetV2Trainer's step in each phase (snet, shape, sos, adversarial) against
nnUNetTrainer's, and the whole-run ratio at equal total iterations = sum over phases of (phase fraction x step ratio),
fractions from FocusNetV2Trainer.phase_fractions. At the same S-Net budget (S-Net gets stock's iterations, the SOS
phases come on top) a run is 1 / snet fraction times longer, which the report gives too. Prediction cost per case
is timed in the last phase's run. Results: bench/results/focusnet/cost_by_phase_<dataset>_<configuration>_<plans>.*.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from nnunet_ext import stock
from nnunet_ext.benchmark import markdown_table, run_benchmark
from nnunet_ext.trainers.focusnet_trainers import FocusNetV2Trainer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAINER = "FocusNetV2Trainer"
# FocusNetV2Trainer with nnU-Net's mirroring on every axis (bench/focusnet/trainers): on data with left/right label
# pairs FocusNetV2Trainer leaves the left-right axis out of test-time mirroring (fewer passes than stock), which would
# otherwise count as a speed-up of the method
EQUAL_MIRRORING = "FocusNetV2Trainer_mirrored"


def phase_fractions(num_epochs: int = 1000) -> dict[str, float]:
    """Share of the epochs each phase takes in a run of num_epochs (nnU-Net's default 1000)."""
    phases = FocusNetV2Trainer.build_phase_schedule(FocusNetV2Trainer).resolve(num_epochs)
    return {p.name: (p.end - p.start) / num_epochs for p in phases}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="nnU-Net raw data set folder (DatasetNNN_Name), or 'hn3d' (the phantom)")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--plans", default="nnUNetPlans", help="plans identifier (default: nnU-Net's default plans)")
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--predict-cases", type=int, default=2)
    p.add_argument("--trainer", default=TRAINER, choices=[TRAINER, EQUAL_MIRRORING],
                   help=f"the trainer timed against stock ({EQUAL_MIRRORING}: the same with stock's mirroring axes)")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "focusnet")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "focusnet")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_focusnet_hn3d import prepare_source

    env = stock.work_environment(args.work / "nnunet", device="cpu")
    raw = prepare_source(args.source, Path(env["nnUNet_raw"]), 16, 6)
    dataset_id = int(raw.name[len("Dataset"):].split("_")[0])
    if not (Path(env["nnUNet_preprocessed"]) / raw.name / f"{args.plans}_{args.configuration}").is_dir():
        if args.plans != "nnUNetPlans":
            raise SystemExit(f"{raw.name}: no preprocessed {args.plans}_{args.configuration}; plan it first")
        stock.plan_and_preprocess(dataset_id, args.configuration, env)
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(HERE / "trainers")])
    trainer = args.trainer
    fractions = phase_fractions()
    runs = {}
    for i, phase in enumerate(fractions):
        last = i == len(fractions) - 1
        report = run_benchmark([trainer], str(dataset_id), args.configuration, "cpu", args.iterations, args.warmup,
                               args.predict_cases if last else 0, env=env, phases={trainer: phase},
                               plans=args.plans)
        print(markdown_table(report), flush=True)
        runs[phase] = report
    ratios = {ph: next(r for r in rep["results"] if r["trainer"] == trainer)["ratio_iteration"]
              for ph, rep in runs.items()}
    whole = float(sum(fractions[ph] * ratios[ph] for ph in fractions))
    last = next(r for r in runs[list(fractions)[-1]]["results"] if r["trainer"] == trainer)
    summary = {"dataset": raw.name, "configuration": args.configuration, "plans": args.plans, "trainer": trainer,
               "iterations": args.iterations, "warmup": args.warmup, "phase_fractions": fractions,
               "step_ratio_by_phase": ratios,
               "stock_step_s_by_run": {ph: rep["results"][0]["seconds_per_iteration"] for ph, rep in runs.items()},
               "whole_run_ratio_equal_total_iterations": whole,
               "whole_run_ratio_same_snet_budget": whole / fractions["snet"],
               "prediction_ratio": last.get("ratio_prediction"), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"cost_by_phase_{raw.name}_{args.configuration}_{args.plans}" + (
        "" if trainer == TRAINER else f"_{trainer}")
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# {trainer} cost by phase on {raw.name} ({args.configuration}, {args.plans}, CPU)", "",
             "Written by bench/focusnet/cost_by_phase.py: bench harness (same batches, nnUNetTrainer timed in the "
             f"same run), median of {args.iterations} steps after {args.warmup} warm-up, per phase.", "",
             "| phase | share of the epochs | stock s/step | FocusNetV2 s/step | x stock |", "|---|---|---|---|---|"]
    for ph, rep in runs.items():
        s, f = rep["results"][0], next(r for r in rep["results"] if r["trainer"] == trainer)
        lines.append(f"| {ph} | {fractions[ph]:.2f} | {s['seconds_per_iteration']:.3f} | "
                     f"{f['seconds_per_iteration']:.3f} | {ratios[ph]:.2f} |")
    pred, same = summary["prediction_ratio"], summary["whole_run_ratio_same_snet_budget"]
    lines += ["", f"Whole run at equal total iterations: **{whole:.2f}x** stock (sum of share x ratio); at the same "
              f"S-Net budget (1 / {fractions['snet']:.2f} as many iterations): {same:.2f}x. "
              f"Prediction per case: {'n/a' if pred is None else f'{pred:.2f}x'} stock.",
              "", f"Spread of stock's step over the {len(runs)} runs: "
              f"{np.min(list(summary['stock_step_s_by_run'].values())):.3f}-"
              f"{np.max(list(summary['stock_step_s_by_run'].values())):.3f} s.", ""]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
