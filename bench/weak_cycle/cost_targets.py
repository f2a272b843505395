"""The cost target of WeakCycle from a bench harness run (bench/harness/bench_trainers.py with --phase
WeakCycleTrainer=refinement), merged into targets.json beside the harness results.

    python bench/weak_cycle/cost_targets.py bench/results/weak_cycle/phantom_weak2d_2d_cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nnunet_ext.benchmark import write_targets

GOAL = 1.2  # refinement-phase step against the stock nnUNetTrainer step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="the harness's JSON (a run with WeakCycleTrainer's refinement phase "
                   "and nnUNetTrainer)")
    results_file = p.parse_args(argv).results
    if not results_file.is_file():
        p.error(f"{results_file}: no such file")
    results = json.loads(results_file.read_text())["results"]
    row = next((r for r in results if r["trainer"].startswith("WeakCycleTrainer")
                and str(r.get("phase") or "").startswith("refinement")), None)
    stock = next((r for r in results if r["trainer"] == "nnUNetTrainer"), None)
    if row is None or stock is None:
        p.error(f"{results_file}: needs a WeakCycleTrainer row with --phase WeakCycleTrainer=refinement and an "
                "nnUNetTrainer row")
    # the harness's ratio is of medians; the teacher's pass depends on how many of a batch's samples are disease
    # cases, so the step varies from batch to batch and a run costs the mean: both must meet the goal
    mean_ratio = float(np.mean(row["iteration_times"]) / np.mean(stock["iteration_times"]))
    measured = max(row["ratio_iteration"], mean_ratio)
    target = {"target": "refinement-phase step <= 1.2x stock (bench harness; the larger of the median and mean ratios)",
              "measured": round(measured, 3), "goal": GOAL, "met": measured <= GOAL,
              "median_ratio": round(row["ratio_iteration"], 3), "mean_ratio": round(mean_ratio, 3)}
    targets_file = results_file.parent / "targets.json"
    previous = json.loads(targets_file.read_text()) if targets_file.is_file() else []
    merged = [t for t in previous if not t["target"].startswith("refinement-phase step")] + [target]
    write_targets(targets_file, merged)
    print(json.dumps(target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
