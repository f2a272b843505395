"""FreeTumor's synthesis cost per patch next to the training step, in process, on a preprocessed data set.

    python bench/freetumor/bench_freetumor_cost.py PREPROCESSED_ROOT DATASET [-c 3d_fullres] [-n 5] \\
        -o bench/results/freetumor/x.json

Times (median of n after one warm-up, same batches): the procedural synthesis of one batch (every eligible patch gets
a tumour), the quality-control forward pass of the baseline (the EMA network) on the synthetic patches, and the stock
train step (nnUNetExtTrainer) on the batch. Ratios are what matter; the absolute numbers depend on the machine load.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preprocessed")
    p.add_argument("dataset")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-n", type=int, default=5)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("nnUNet_results", tempfile.mkdtemp(prefix="freetumor_bench_"))  # nothing is saved there
    os.environ.update(nnUNet_preprocessed=args.preprocessed, nnUNet_n_proc_DA="0", nnUNet_ext_seed="0")
    os.environ.setdefault("nnUNet_raw", args.preprocessed)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.methods.freetumor.quality import tumour_fractions
    from nnunet_ext.trainers.freetumor_trainers import FreeTumorTrainer

    folder = Path(args.preprocessed) / args.dataset
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer = FreeTumorTrainer(copy.deepcopy(plans), args.configuration, 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    trainer.prepare_synthesis()
    trainer.synthesis_probability = 1.0
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    loader = trainer.get_dataloaders()[0]
    batches = []
    while len(batches) < args.n + 1:
        b = next(loader)
        if any(trainer.synthesizer.eligible_organs(t[0].numpy()) for t in b["target"][0]):
            batches.append(b)

    def timed(fn):
        out = []
        for i, b in enumerate(batches):
            t = time.perf_counter()
            fn(b)
            if i:
                out.append(time.perf_counter() - t)
        return statistics.median(out)

    synth = timed(trainer.synthesise_batch)
    patches = trainer.synthesis_counts["synthesised"] / len(batches)

    def qc(b):
        data, target = b["data"], b["target"][0]
        drawn = trainer.draw_tumours(data, target, 1.0)
        if drawn:
            masks = trainer._stack(drawn, "mask", torch.bool)[:, 0]
            tumour_fractions(trainer.aux_modules["ema"], data[[d["index"] for d in drawn]], masks,
                             [d["tumour"] for d in drawn])

    quality = timed(qc)
    stock_step = timed(lambda b: nnUNetTrainer.train_step(trainer, b))
    shape = list(batches[0]["data"].shape)
    report = {"data": args.dataset, "configuration": args.configuration, "batch_shape": shape,
              "synthesised_patches_per_batch": patches, "synthesis_s_per_batch": synth,
              "synthesis_s_per_patch": synth / max(patches, 1e-9), "qc_forward_s_per_batch": quality,
              "stock_train_step_s": stock_step, "synthesis_over_step": synth / stock_step,
              "synthesis_plus_qc_over_step": (synth + quality) / stock_step,
              "freetumor_step_over_stock": (stock_step + synth + quality) / stock_step,
              "n": args.n, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "note": "2 CPU cores shared with other jobs: ratios only", "date": time.strftime("%Y-%m-%d")}
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    np.random.seed(0)
    raise SystemExit(main())
