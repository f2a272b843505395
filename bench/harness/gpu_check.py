"""Every method on a CUDA GPU in one bounded run: its demo through the stock commands, then the harness's step,
prediction and memory ratios to stock on the demo's own preprocessed phantom.

    python bench/harness/gpu_check.py --out bench/results/gpu --budget-s 520

The CPU tests and benches never touch CUDA, so this is where autocast, the GradScaler with several optimizers and
the on-device inference of each trainer run for real. Stages, each bounded so the whole run ends inside --budget-s:
1. the demos of stock nnU-Net and the five methods (`nnunet_ext demo --trainer NAME --device cuda`: phantom,
   nnUNetv2_plan_and_preprocess with the default plans, nnUNetv2_train on the demo budget through every phase,
   nnUNetv2_predict, evaluation), in parallel: a crash, a timeout or a Dice under the demo's floor is recorded with
   its log, not fixed here;
2. the harness (bench_trainers.py) on each demo's data, one run at a time (timings taken side by side are
   meaningless), in HARNESS order until the budget is spent: each trainer against nnUNetTrainer in the same run.
torch.compile is off for every trainer, stock included (nnU-Net compiles on CUDA by default; compiling would eat the
budget and time the compiler). Writes <out>/gpu_check.json and .md, each demo's report and log, and the harness's
tables (<out>/<device>_<phantom>_<what>.md/.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from nnunet_ext import stock
from nnunet_ext.benchmark import machine_info
from nnunet_ext.demo import resolve_demo
from nnunet_ext.phantoms import PHANTOMS

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

DEMOS = ("nnUNetTrainer", "FocusNetV2Trainer", "FreeTumorTrainer", "WeakCycleTrainer", "AVFusionTrainer",
         "FTSegNetTrainer")
# (demo whose data it runs on, tag, trainers, --phase items): the targets' steps first
HARNESS = (
    ("WeakCycleTrainer", "refinement", ["WeakCycleTrainer"], ["WeakCycleTrainer=refinement"]),
    ("FocusNetV2Trainer", "snet", ["FocusNetV2Trainer"], ["FocusNetV2Trainer=snet"]),
    ("FTSegNetTrainer", "segment", ["FTSegNetTrainer", "FTSegNetTrainer_NoCPB"], []),
    ("FreeTumorTrainer", "qc", ["FreeTumorTrainer"], []),
    ("AVFusionTrainer", "fusion", ["AVFusionTrainer"], []),
    ("FocusNetV2Trainer", "adversarial", ["FocusNetV2Trainer"], ["FocusNetV2Trainer=adversarial"]),
    ("WeakCycleTrainer", "translation", ["WeakCycleTrainer"], ["WeakCycleTrainer=translation"]),
)
ROW_KEYS = ("trainer", "phase", "seconds_per_iteration", "ratio_iteration", "seconds_per_predicted_case",
            "ratio_prediction", "peak_gpu_mb", "ratio_peak_gpu", "parameters")
HARNESS_RESERVE_S = 45  # the least a harness run needs (start-up, warm-up, prediction); fewer seconds left: skipped


def base_environment(da_workers: int) -> dict:
    # fewer export workers than nnU-Net's default 8 per command: six commands at once share 16 cores (in the first
    # run, with the default, the stock demo spent 44 s in its final validation of a few 96x96 images; the cause was
    # not isolated, and with 2 the three demos of the second run were still validating after 20 s)
    env = dict(os.environ, nnUNet_compile="false", nnUNet_n_proc_DA=str(da_workers), PYTHONUNBUFFERED="1")
    env.setdefault("nnUNet_def_n_proc", "2")
    return env


def run_demos(names: list[str], work: Path, out: Path, device: str, timeout_s: float, env: dict) -> dict:
    procs = {}
    for name in names:
        folder = work / f"demo_{name}"
        shutil.rmtree(folder, ignore_errors=True)
        log = open(out / f"demo_{name}.log", "w")
        argv = [sys.executable, "-m", "nnunet_ext.cli", "demo", "--trainer", name, "--device", device,
                "--work-dir", str(folder)]
        procs[name] = (subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                        start_new_session=True), log, time.time())
    results = {}
    for name, (proc, log, t0) in procs.items():
        rc = _wait(proc, t0 + timeout_s - time.time())
        log.close()
        trainer, phantom, floor = resolve_demo(name)
        entry = {"trainer": trainer, "phantom": phantom, "dice_floor": floor, "rc": rc,
                 "seconds": round(time.time() - t0, 1)}
        text = (out / f"demo_{name}.log").read_text(errors="replace")
        dice = re.search(r"Foreground mean Dice on \d+ held-out phantom cases: ([0-9.]+)", text)
        entry["foreground_dice"] = float(dice.group(1)) if dice else None
        report = work / f"demo_{name}" / "report.md"
        if report.is_file():
            shutil.copy(report, out / f"demo_{name}_report.md")
        entry["traceback"] = _traceback(text)
        results[name] = entry
    return results


def _wait(proc: subprocess.Popen, seconds: float) -> int | str:
    """The exit code, or "timeout" after killing the process's whole group: the stock commands it started would
    otherwise go on training beside the next stage's timings."""
    try:
        return proc.wait(timeout=max(1.0, seconds))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout"


def _traceback(text: str) -> str | None:
    at = text.rfind("Traceback")
    return text[at:][-3000:] if at >= 0 else None


def harness_tag(device: str, demo: str, what: str) -> str:
    """The name of a HARNESS run's log and tables, and what --harness selects it by."""
    return f"{device}_{resolve_demo(demo)[1]}_{what}"


def run_harness(runs, work: Path, out: Path, device: str, deadline: float, env: dict, args) -> list[dict]:
    done = []
    for demo, what, trainers, phases in runs:
        module = PHANTOMS[resolve_demo(demo)[1]]
        tag = harness_tag(device, demo, what)
        left = deadline - time.time()
        entry = {"tag": tag, "trainers": trainers, "phases": phases}
        preprocessed = work / f"demo_{demo}" / "nnunet" / "nnUNet_preprocessed"
        if not preprocessed.is_dir():
            entry["skipped"] = "the demo did not preprocess its phantom"
        elif left < HARNESS_RESERVE_S:
            entry["skipped"] = f"{left:.0f} s of the budget left"
        else:
            run_env = stock.work_environment(work / f"demo_{demo}" / "nnunet", device, env)
            argv = [sys.executable, str(HERE / "bench_trainers.py"), "-d", str(module.DEFAULT_ID), "-c",
                    module.CONFIGURATION, "--device", device, "--iterations", str(args.iterations), "--warmup",
                    str(args.warmup), "--predict-cases", str(args.predict_cases), "--out", str(out), "--tag", tag,
                    "-tr", *trainers] + [x for p in phases for x in ("--phase", p)]
            t0 = time.time()
            with open(out / f"{tag}.log", "w") as log:
                entry["rc"] = _wait(subprocess.Popen(argv, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                                     cwd=work, start_new_session=True), left)
            entry["seconds"] = round(time.time() - t0, 1)
            entry["traceback"] = _traceback((out / f"{tag}.log").read_text(errors="replace"))
            table = out / f"{tag}.json"
            if table.is_file():
                entry["rows"] = [{k: r.get(k) for k in ROW_KEYS} for r in json.loads(table.read_text())["results"]]
        done.append(entry)
        print(tag, json.dumps({k: entry.get(k) for k in ("rc", "seconds", "skipped")}), flush=True)
    return done


def markdown(report: dict) -> str:
    gpu = report["machine"]["gpu"] or {}
    lines = [f"# Every method on a GPU ({gpu.get('name', 'no GPU')})", "",
             "Written by `bench/harness/gpu_check.py`: each method's demo (`nnunet_ext demo --trainer NAME --device "
             "cuda`, the stock commands on the demo budget, default plans), then the harness against stock on the "
             f"demo's data. torch {report['machine']['torch']}, CUDA {gpu.get('cuda_version')}, "
             f"{report['machine']['cpu_count']} CPU cores, {report['machine']['date']}; torch.compile off.", "",
             "| demo | phantom | exit | seconds | foreground Dice | floor |", "|---|---|---|---|---|---|"]
    for d in report["demos"].values():
        dice, floor = d.get("foreground_dice"), d["dice_floor"]
        lines.append(f"| {d['trainer']} | {d['phantom']} | {d['rc']} | {d['seconds']} | "
                     f"{'' if dice is None else f'{dice:.3f}'} | {'' if floor is None else floor} |")
    lines += ["", "Harness runs (each table in full: `<tag>.md` beside this file):", "",
              "| run | exit | seconds | trainer | phase | s/iteration | x stock | s/predicted case | x stock | "
              "GPU peak MB | x stock |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in report["harness"]:
        if "rows" not in h:
            lines.append(f"| {h['tag']} | {h.get('rc', '')} | {h.get('seconds', '')} | "
                         f"{h.get('skipped', 'no table')} | | | | | | | |")
            continue
        for r in h["rows"]:
            cells = [r.get(k) for k in ROW_KEYS[:-1]]
            lines.append(f"| {h['tag']} | {h['rc']} | {h['seconds']} | "
                         + " | ".join("" if c is None else (f"{c:.3g}" if isinstance(c, float) else str(c))
                                      for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "gpu_check")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=520.0, help="wall-clock limit of the whole run")
    p.add_argument("--demo-share", type=float, default=0.5, help="share of the budget the demos may take")
    p.add_argument("--demos", nargs="*", default=list(DEMOS), choices=list(DEMOS))
    p.add_argument("--harness", nargs="*", default=None, help="tags (e.g. cuda_weak2d_refinement) to run; "
                   "default all")
    p.add_argument("--da-workers", type=int, default=max(1, (os.cpu_count() or 2) // 6))
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--predict-cases", type=int, default=1)
    args = p.parse_args()
    args.out, args.work = args.out.resolve(), args.work.resolve()  # the stages run in the work folder
    t0 = time.time()
    deadline = t0 + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    env = base_environment(args.da_workers)
    report = {"machine": machine_info(), "budget_s": args.budget_s,
              "da_workers": args.da_workers}
    print(json.dumps(report), flush=True)
    report["demos"] = run_demos(args.demos, args.work, args.out, args.device, args.budget_s * args.demo_share, env)
    print(json.dumps({k: {x: v[x] for x in ("rc", "seconds")} for k, v in report["demos"].items()}), flush=True)
    runs = [h for h in HARNESS if args.harness is None or harness_tag(args.device, h[0], h[1]) in args.harness]
    report["harness"] = run_harness(runs, args.work, args.out, args.device, deadline, env, args)
    report["seconds"] = round(time.time() - t0, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
