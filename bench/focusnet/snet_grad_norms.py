"""How much one gradient-norm clip over S-Net and the SOL head together would shrink S-Net's update in the snet phase.

    python bench/focusnet/snet_grad_norms.py [--steps 150] [--window 25] [--trainer FocusNetV2Trainer_hnbench]
        [--epochs 60 --iterations 25]

The hn3d phantom (2d, generated and preprocessed in a temporary folder), the bench's narrow S-Net trainer at the
bench budget of bench_focusnet_hn3d.py --epochs 60 --iterations 25, seed 0,
nnU-Net's augmented batches: the first --steps snet-phase steps as the trainer runs them. Before each clip the
gradient norms of S-Net and of the SOL head are recorded (the head reads detached features, so no heatmap gradient
reaches S-Net). Per window of steps: median norms, the share of steps a joint clip at nnU-Net's 12 would have cut,
and the mean factor it would have applied to S-Net's update, against the factor S-Net's own clip applies (the
trainer clips each network apart since 2026-12-01). Writes bench/results/focusnet/snet_grad_norms.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "focusnet"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--trainer", default="FocusNetV2Trainer_hnbench")
    p.add_argument("--epochs", type=int, default=60, help="the bench trainers' budget (its learning-rate schedules)")
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    from nnunet_ext.benchmark import phantom_environment

    with phantom_environment("hn3d", "2d", (HERE / "trainers",), nnUNet_ext_seed="0",
                             nnUNet_ext_bench_epochs=str(a.epochs),
                             nnUNet_ext_bench_iterations=str(a.iterations)) as dataset_id:
        norms = measure(a.trainer, str(dataset_id), a.steps)

    from nnunet_ext.training.base import GRAD_CLIP

    windows = []
    for start in range(0, len(norms), a.window):
        chunk = np.asarray(norms[start:start + a.window])
        snet, sol = chunk[:, 0], chunk[:, 1]
        joint = np.sqrt(snet ** 2 + sol ** 2)
        windows.append({"steps": f"{start}-{start + len(chunk)}", "snet_norm_median": float(np.median(snet)),
                        "sol_norm_median": float(np.median(sol)),
                        "joint_clip_share": float((joint > GRAD_CLIP).mean()),
                        "joint_clip_snet_factor": float(np.minimum(1, GRAD_CLIP / joint).mean()),
                        "own_clip_snet_factor": float(np.minimum(1, GRAD_CLIP / snet).mean())})
    report = {"trainer": a.trainer, "dataset": f"hn3d phantom, 2d, cpu, seed 0, budget {a.epochs}x{a.iterations}",
              "grad_clip": GRAD_CLIP,
              "steps": a.steps, "date": time.strftime("%Y-%m-%d"), "windows": windows,
              "norms_per_step": [[round(x, 4) for x in row] for row in norms]}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "snet_grad_norms.json").write_text(json.dumps(report, indent=1))
    lines = [f"S-Net and SOL-head gradient norms in the snet phase, {a.trainer}, {report['dataset']}, "
             f"{report['date']} (written by bench/focusnet/snet_grad_norms.py)", "",
             f"| steps | S-Net norm (median) | SOL norm (median) | steps a joint clip at {GRAD_CLIP:g} cuts | "
             "S-Net's update under a joint clip | under its own clip |", "|---|---|---|---|---|---|"]
    lines += [f"| {w['steps']} | {w['snet_norm_median']:.2f} | {w['sol_norm_median']:.2f} | "
              f"{100 * w['joint_clip_share']:.0f} % | {w['joint_clip_snet_factor']:.3f}x | "
              f"{w['own_clip_snet_factor']:.3f}x |" for w in windows]
    (a.out / "snet_grad_norms.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def measure(trainer_name: str, dataset: str, steps: int) -> list[tuple[float, float]]:
    """(S-Net, SOL head) gradient norms before the clip of each of the first `steps` snet-phase steps."""
    import torch

    from nnunet_ext.benchmark import _build_trainer

    torch.set_num_threads(os.cpu_count() or 1)
    trainer = _build_trainer(trainer_name, dataset, "2d", 0, "nnUNetPlans", torch.device("cpu"))
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    if trainer.current_phase.name != "snet":
        raise SystemExit(f"{trainer_name} starts in phase {trainer.current_phase.name}, not snet")
    net = trainer.focus_network
    snet, sol = list(net.snet.parameters()), list(net.sol.parameters())

    def norm(params) -> float:
        grads = [p.grad.detach().float().flatten() for p in params if p.grad is not None]
        return float(torch.cat(grads).norm()) if grads else 0.0

    norms: list[tuple[float, float]] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, *args, **kwargs):
        parameters = list(parameters)
        # the step's first clip sees S-Net's gradient (or, clipped jointly, both): record both networks' norms then
        if any(p is snet[0] for p in parameters):
            norms.append((norm(snet), norm(sol)))
        return clip(parameters, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = recording_clip
    try:
        for _ in range(steps):
            trainer.train_step(next(trainer.dataloader_train))
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    if len(norms) != steps:
        raise SystemExit(f"recorded {len(norms)} clips for {steps} steps")
    return norms


if __name__ == "__main__":
    raise SystemExit(main())
