"""Benchmark trainers against the stock nnUNetTrainer on one preprocessed data set.

    python bench/harness/bench_trainers.py -d 791 -c 2d -tr nnUNetTrainer_debug [--device cpu] [--iterations 10]
    python bench/harness/bench_trainers.py --phantom fundus2d -tr ...   # generate + preprocess the phantom first

Writes <out>/<tag>.json and .md (a markdown table with ratios to stock) and prints the table. --out defaults to
bench/results; the checked-in tables are filed by method, e.g. `--out bench/results/focusnet` for a FocusNetV2
comparison (bench/results/stock: nnUNetExtTrainer itself against nnUNetTrainer).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from nnunet_ext import stock
from nnunet_ext.benchmark import run_benchmark
from nnunet_ext.phantoms import PHANTOMS

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-tr", nargs="+", default=[], help="trainers to compare with nnUNetTrainer")
    p.add_argument("-d", help="preprocessed data set id or name (uses the nnUNet_* variables of the shell)")
    p.add_argument("-c", help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("--phantom", choices=sorted(PHANTOMS), help="generate and preprocess this phantom in a temp dir")
    p.add_argument("--device", default=stock.default_device())
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--predict-cases", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--tag", default=None, help="results file stem (default: dataset_configuration_device)")
    p.add_argument("--preset", default=None,
                   help="with --phantom: plan it with this planner preset (nnunet_ext plan --list) instead of "
                        "nnU-Net's default plans")
    p.add_argument("-p", dest="plans", default=None, help="with -d: plans identifier (default nnUNetPlans)")
    p.add_argument("--phase", action="append", default=[], metavar="TRAINER=PHASE|EPOCH",
                   help="time TRAINER's step in PHASE or at EPOCH (default: a phased trainer's last, main phase)")
    a = p.parse_args(argv)
    if a.phantom is None and (a.d is None or a.c is None):
        p.error("give -d and -c for a preprocessed data set, or --phantom")

    with tempfile.TemporaryDirectory() as tmp:
        if a.phantom is not None:
            module = PHANTOMS[a.phantom]
            env = stock.work_environment(Path(tmp), a.device)
            module.generate(Path(env["nnUNet_raw"]), module.DEFAULT_ID)
            configuration = a.c or module.CONFIGURATION
            if a.preset is None:
                stock.plan_and_preprocess(module.DEFAULT_ID, configuration, env)
                plans = "nnUNetPlans"
            else:
                plans = stock.plan(module.DEFAULT_ID, a.preset, env, [configuration])
            dataset = str(module.DEFAULT_ID)
            tag = a.tag or f"phantom_{a.phantom}_{configuration}_{a.device}" + (f"_{a.preset}" if a.preset else "")
        else:
            env = stock.cpu_friendly(os.environ, a.device)
            from nnunet_ext.paths import ext_trainer_path

            env["nnUNet_extTrainer"] = ext_trainer_path(env.get("nnUNet_extTrainer"))
            dataset, configuration, tag, plans = a.d, a.c, a.tag, a.plans or "nnUNetPlans"
        phases = dict(item.split("=", 1) for item in a.phase)
        report = run_benchmark(a.tr, dataset, configuration, a.device, a.iterations, a.warmup, a.predict_cases,
                               a.out, env=env, tag=tag, phases=phases, plans=plans)
    from nnunet_ext.benchmark import markdown_table

    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
