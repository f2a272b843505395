"""Stock vs FreeTumorTrainer at the same small budget on the abdomen3d phantom (tumours in every fourth training case):
tumour Dice and lesion-wise sensitivity by size on held-out cases, through the stock commands.

    python bench/freetumor/bench_freetumor_phantom.py --work /tmp/ftbench \\
        -o bench/results/freetumor/freetumor_phantom_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from nnunet_ext import stock
from nnunet_ext.evaluation.evaluate import EvaluationSettings, evaluate_folder
from nnunet_ext.phantoms import abdomen3d

HERE = Path(__file__).resolve().parent
TRAINERS = ["nnUNetTrainer_benchsmall", "FreeTumorTrainer_benchsmall"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--shape", default="16,48,48")
    p.add_argument("--n-train", type=int, default=12)
    p.add_argument("--n-test", type=int, default=6)
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    env = stock.work_environment(work / "nnunet", device="cpu")
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(HERE / "trainers")])
    raw = Path(env["nnUNet_raw"]) / "Dataset797_PhantomFreeTumor"
    if not raw.exists():
        abdomen3d.generate(Path(env["nnUNet_raw"]), n_train=args.n_train, n_test=args.n_test,
                           shape=tuple(int(s) for s in args.shape.split(",")), seed=0)
        stock.plan_and_preprocess(797, "3d_fullres", env)
    train_env = dict(env, nnUNet_n_proc_DA="0", nnUNet_ext_seed="0")
    results = {}
    for trainer in TRAINERS:
        t = time.time()
        stock.train(797, "3d_fullres", 0, trainer, train_env, log_file=out / f"{trainer}_train.log")
        train_s = time.time() - t
        pred = work / f"pred_{trainer}"
        stock.predict(raw / "imagesTs", pred, 797, "3d_fullres", trainer, train_env)
        summary = evaluate_folder(str(raw / "labelsTs"), str(pred), str(out / f"eval_{trainer}"),
                                  settings=EvaluationSettings(lesion_classes=[2, 4, 6]), plots=False, progress=False)
        results[trainer] = {"train_s": train_s, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({k: v["train_s"] for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
