"""How many steps FTSegNet's classification prior needs: its validation accuracy after N Adam steps, for the choice of
`prior_iterations` (training/validation cases of fold 0 only, never the held-out images).

    python bench/ftsegnet/bench_ftsegnet_prior_sweep.py [--work /tmp/ftsegnet_tumor2d] [--steps 300 1000 3000]
        [--dataset 799]

Uses a data set that bench_ftsegnet_tumor2d.py prepared (default the few-masks Dataset799: 40 training images, 32 of
them classification-only; 789: 168 training images with naevi, 160 classification-only); the prior learns from all of
fold 0's training cases. The prior is FTSegNetTrainer's, trained
by the trainer's own train_prior on nnU-Net's patches and augmentation; accuracy on 20 validation batches (every fold-0
validation image several times), per prior learning rate. Result: bench/results/ftsegnet/prior_sweep.json
(prior_sweep_<id>.json for another --dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "trainers"))
import ftsegnet_bench_trainers as bench  # noqa: E402

from nnunet_ext import stock  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/ftsegnet_tumor2d"))
    p.add_argument("--steps", type=int, nargs="+", default=[300, 1000, 3000])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    p.add_argument("--dataset", type=int, default=799)
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "ftsegnet")
    a = p.parse_args(argv)
    env = stock.work_environment(a.work / "nnunet", "cpu")
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed")})
    os.environ["nnUNet_results"] = str(a.work / "prior_sweep_results")
    os.environ["nnUNet_n_proc_DA"] = "0"
    folder = next(Path(env["nnUNet_preprocessed"]).glob(f"Dataset{a.dataset}_*"))
    result = {"data": folder.name, "validation_batches": 20, "accuracy": {}, "seconds": {}}
    for lr in a.lrs:
        torch.manual_seed(0)
        plans = json.loads((folder / "nnUNetPlans.json").read_text())
        plans["continue_training"] = False
        trainer = bench.FTSegNetTrainer_tumorbench_adamw3e4(plans, "2d", 0,
                                                            json.loads((folder / "dataset.json").read_text()),
                                                            torch.device("cpu"))
        trainer.prior_lr = lr
        trainer.num_val_iterations_per_epoch = result["validation_batches"]
        trainer.initialize()
        loader_tr, loader_val = trainer.prior_dataloaders()
        done, curve = 0, {}
        t0 = time.perf_counter()
        for steps in sorted(a.steps):
            trainer.train_prior(loader_tr, steps - done)
            done = steps
            curve[steps] = round(trainer.prior_accuracy(loader_val), 3)
            print(f"prior lr {lr}: {steps} steps, validation accuracy {curve[steps]}", flush=True)
        result["accuracy"][str(lr)] = curve
        result["seconds"][str(lr)] = round(time.perf_counter() - t0, 1)
        for loader in (loader_tr, loader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
    a.out.mkdir(parents=True, exist_ok=True)
    name = "prior_sweep.json" if a.dataset == 799 else f"prior_sweep_{a.dataset}.json"
    (a.out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
