"""Where WeakCycleTrainer's refinement step spends its time beyond stock's, on the bench harness's weak2d phantom
(generated and preprocessed in a temporary folder, as bench/harness/bench_trainers.py --phantom weak2d does).

    python bench/weak_cycle/refinement_step_breakdown.py [--iterations 10] [--warmup 3]

One process, one trainer in its first refinement epoch, the same loader batches for every part (median and mean
of --iterations after --warmup; the whole-step variants and the student's part interleaved batch by batch, twice):
the whole step (and as it was with the consistency on every sample), the student's part (nnU-Net's own train_step
on the strong view), the teacher's forward pass on the weak view (on the disease cases' samples the consistency
covers; on every sample and with deep-supervision heads, as before), the EMA update (fused, and the per-parameter
loop it replaced) and the consistency term. Writes bench/results/weak_cycle/refinement_step_breakdown.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results" / "weak_cycle"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    from nnunet_ext.benchmark import phantom_environment

    with phantom_environment("weak2d", "2d") as dataset_id:
        rows = measure(str(dataset_id), a.iterations, a.warmup)

    a.out.mkdir(parents=True, exist_ok=True)
    report = {"dataset": "weak2d phantom (796), 2d, cpu", "iterations": a.iterations, "warmup": a.warmup,
              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "milliseconds": rows}
    (a.out / "refinement_step_breakdown.json").write_text(json.dumps(report, indent=1))
    lines = [f"WeakCycleTrainer refinement step, {report['dataset']}, {a.iterations} steps after {a.warmup} "
             f"warm-up, one process, the same batches, {report['date']}", "", "| part | median ms | mean ms |",
             "|---|---|---|"]
    lines += [f"| {name} | {value['median']:.2f} | {value['mean']:.2f} |" if isinstance(value, dict)
              else f"| {name} | {value:.2f} | |" for name, value in rows.items()]
    (a.out / "refinement_step_breakdown.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def measure(dataset: str, iterations: int, warmup: int) -> dict:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.benchmark import _build_trainer, _enter_phase
    from nnunet_ext.methods.weak_cycle.loss import teacher_consistency
    from nnunet_ext.methods.weak_cycle.views import split_views
    from nnunet_ext.training.base import unwrap

    torch.set_num_threads(os.cpu_count() or 1)
    trainer = _build_trainer("WeakCycleTrainer", dataset, "2d", 0, "nnUNetPlans", torch.device("cpu"))
    trainer.on_train_start()
    _enter_phase(trainer, "refinement")
    trainer.on_train_epoch_start()
    batches = [next(trainer.dataloader_train) for _ in range(warmup + iterations)]
    channels = trainer.num_input_channels
    teacher = trainer.aux_modules["teacher"]
    teacher_ds = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, channels,
                                                    trainer.label_manager.num_segmentation_heads, True)
    teacher_ds.load_state_dict(unwrap(teacher).state_dict())
    teacher_ds.eval()
    student_logits = torch.randn_like(teacher(split_views(batches[0]["data"], channels)[1]))

    def summary(times: list[float]) -> dict[str, float]:
        return {"median": float(np.median(times) * 1000), "mean": float(np.mean(times) * 1000)}

    def interleaved_ms(fns: dict) -> dict[str, dict[str, float]]:
        """Each batch through every fn in turn, the order reversed on the second pass: the whole-step variants
        differ by a few ms, less than the machine's drift over a sequential run."""
        times: dict[str, list[float]] = {name: [] for name in fns}
        for order in (list(fns), list(fns)[::-1]):
            for i, batch in enumerate(batches):
                for name in order:
                    t0 = time.perf_counter()
                    fns[name](batch)
                    if i >= warmup:
                        times[name].append(time.perf_counter() - t0)
        return {name: summary(t) for name, t in times.items()}

    def median_ms(fn) -> float:
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - t0)
        # the mean too: a step whose teacher pass depends on the batch's cases varies, and a run costs the mean
        return {"median": float(np.median(times[warmup:]) * 1000), "mean": float(np.mean(times[warmup:]) * 1000)}

    @torch.no_grad()
    def teacher_forward(batch, network=teacher):
        network(split_views(batch["data"], channels)[1])

    @torch.no_grad()
    def ema_loop(_):
        for t, s in zip(teacher.parameters(), trainer.network.parameters(), strict=True):
            t.mul_(trainer.ema_decay).add_(s.detach(), alpha=1 - trainer.ema_decay)
        for t, s in zip(teacher.buffers(), trainer.network.buffers(), strict=True):
            t.copy_(s)

    def student_step(batch):
        strong, _ = split_views(batch["data"], channels)
        nnUNetTrainer.train_step(trainer, {"data": strong, "target": batch["target"]})

    @torch.no_grad()
    def teacher_forward_covered(batch):
        index = trainer.consistency_samples(batch.get("keys"), batch["data"].shape[0])
        weak = split_views(batch["data"], channels)[1]
        if index is None or len(index):
            teacher(weak if index is None else weak[index])

    def whole_step_all_samples(batch):
        trainer.consistency_on_certain = True
        try:
            trainer.train_step(batch)
        finally:
            trainer.consistency_on_certain = False

    covered = [trainer.consistency_samples(b.get("keys"), b["data"].shape[0]) for b in batches[warmup:]]
    share = float(np.mean([1.0 if i is None else len(i) / b["data"].shape[0]
                           for i, b in zip(covered, batches[warmup:], strict=True)]))
    with torch.no_grad():
        teacher_logits = teacher(split_views(batches[0]["data"], channels)[1])
    steps = interleaved_ms({"whole refinement step": trainer.train_step,
                            "whole refinement step, consistency on every sample (before)": whole_step_all_samples,
                            "student: nnU-Net's train_step on the strong view": student_step})
    return {
        **steps,
        "share of the timed batches' samples the consistency covers (disease cases; not ms)": share,
        "teacher forward on the weak view, the disease cases' samples": median_ms(teacher_forward_covered),
        "teacher forward on the weak view, every sample (before)": median_ms(teacher_forward),
        "teacher forward with deep-supervision heads (before)": median_ms(
            lambda b: teacher_forward(b, teacher_ds)),
        "EMA update, fused": median_ms(lambda _: trainer.update_teacher()),
        "EMA update, per-parameter loop (before)": median_ms(ema_loop),
        "consistency term": median_ms(lambda _: teacher_consistency(student_logits, teacher_logits)),
    }


if __name__ == "__main__":
    raise SystemExit(main())
