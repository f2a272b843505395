"""Cost of a trainer next to the stock nnUNetTrainer: seconds per training iteration, per predicted case, peak memory.

Every trainer runs in its own fresh process (so peak memory is its own), on the same plans and, for the training
step, on the same batches: the stock trainer's data pipeline draws them once and all trainers step on them. The data
pipeline of each trainer (which may synthesise or add targets) is timed separately. Results are medians after
warm-up; they are ratios to stock measured in the same run, never absolute promises.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnunet_ext.stock import cpu_friendly

STOCK = "nnUNetTrainer"


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    """Resident memory now (Linux /proc); elsewhere the peak so far, an upper bound."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def gpu_info() -> dict | None:
    """The first CUDA device (name, memory, CUDA and cuDNN versions), None without one."""
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def machine_info() -> dict:
    """Where and when a bench run trained: CPU model, cores, torch and its thread count, the GPU if any (gpu_info),
    the date, and the median time of a fixed 512x512 matrix product. Kept beside each training's results, so that two
    runs of the same code and seed that disagree can be told apart by the machine they ran on (another CPU need not
    repeat the digits)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    a = torch.ones(512, 512)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, a)
        times.append(time.perf_counter() - t0)
    return {"cpu": model, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": gpu_info(), "date": time.strftime("%Y-%m-%d"),
            "matmul512_ms": round(1000 * float(np.median(times)), 3)}


@contextlib.contextmanager
def phantom_environment(phantom: str, configuration: str, trainer_dirs: tuple[Path, ...] = (), **env_vars: str):
    """A phantom generated and preprocessed (nnU-Net's default plans) in a temporary folder, its nnUNet_* variables
    set in this process as the harness sets them (augmentation in-process, results kept out of any real
    nnUNet_results) plus env_vars, trainer_dirs appended to nnUNet_extTrainer; yields the phantom's data set id. For
    bench scripts that build trainers here."""
    from nnunet_ext import stock
    from nnunet_ext.phantoms import PHANTOMS

    module = PHANTOMS[phantom]
    with tempfile.TemporaryDirectory() as tmp:
        env = stock.work_environment(Path(tmp), "cpu")
        module.generate(Path(env["nnUNet_raw"]), module.DEFAULT_ID)
        stock.plan_and_preprocess(module.DEFAULT_ID, configuration, env)
        env.update(nnUNet_n_proc_DA="0", nnUNet_results=str(Path(tmp) / "results"), **env_vars)
        env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], *map(str, trainer_dirs)])
        os.environ.update(env)
        yield module.DEFAULT_ID


def _build_trainer(trainer_name: str, dataset: str, configuration: str, fold: int, plans_identifier: str,
                   device: torch.device):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    dataset_name = maybe_convert_to_dataset_name(dataset)
    folder = Path(nnUNet_preprocessed.require()) / dataset_name
    plans = load_json(str(folder / f"{plans_identifier}.json"))
    plans["continue_training"] = False
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    return trainer_class(plans=plans, configuration=configuration, fold=fold,
                         dataset_json=load_json(str(folder / "dataset.json")), device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn, n: int, warmup: int, device: torch.device) -> tuple[float, list[float]]:
    times = []
    for i in range(warmup + n):
        _sync(device)
        t0 = time.perf_counter()
        fn(i)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def _enter_phase(trainer, where: str | None) -> str | None:
    """Move a fresh trainer to where its step is timed: the first epoch of the phase named `where`, or the epoch
    `where` gives as a number (FreeTumor's quality control starts after its warm-up epochs), or by default the first
    epoch of its last, main phase, so that a short warm-up (FTSegNet's prior) is not taken for the method's cost.
    Returns what the table shows: the phase or epoch, None for the stock behaviour at epoch 0."""
    schedule = getattr(trainer, "phase_schedule", None)
    if where is not None and where.isdigit():
        trainer.current_epoch = int(where)
        label = f"epoch {where}"
        if schedule is not None:
            label += f", {schedule.phase_at(int(where), trainer.num_epochs).name} phase"
        return label
    if schedule is None:
        if where is not None:
            raise ValueError(f"{trainer.__class__.__name__} has no phases; give an epoch number instead of {where!r}")
        return None
    phases = schedule.resolve(trainer.num_epochs)
    chosen = phases[-1] if where is None else next((p for p in phases if p.name == where), None)
    if chosen is None:
        raise ValueError(f"{trainer.__class__.__name__} has no phase {where!r}; phases: {[p.name for p in phases]}")
    trainer.current_epoch = chosen.start
    return f"{chosen.name} phase"


def measure(trainer_name: str, dataset: str, configuration: str, device: str, iterations: int, warmup: int,
            batches_file: Path, draw_batches: bool, predict_cases: int, fold: int = 0,
            plans_identifier: str = "nnUNetPlans", phase: str | None = None) -> dict:
    """Runs inside the child process."""
    dev = torch.device(device)
    if dev.type == "cpu":
        # as nnUNetv2_train and nnUNetv2_predict do on the CPU; torch's implicit default is several times slower here
        torch.set_num_threads(os.cpu_count() or 1)
    rss_start = _current_rss_mb()  # after importing torch and nnU-Net, before the trainer exists
    trainer = _build_trainer(trainer_name, dataset, configuration, fold, plans_identifier, dev)
    trainer.on_train_start()
    measured_phase = _enter_phase(trainer, phase)
    trainer.on_train_epoch_start()
    n_batches = warmup + iterations

    pipeline_s, _ = _median_seconds(lambda i: next(trainer.dataloader_train), iterations, warmup, dev)
    own_batches = getattr(trainer, "benchmark_own_batches", False)
    if draw_batches or own_batches:
        batches = [next(trainer.dataloader_train) for _ in range(n_batches)]
        if draw_batches:
            torch.save(batches, batches_file)
    else:
        batches = torch.load(batches_file, weights_only=False)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_s, step_times = _median_seconds(lambda i: trainer.train_step(batches[i]), iterations, warmup, dev)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None

    predict_s = None
    if predict_cases > 0:
        predict_s = _measure_prediction(trainer, predict_cases, dev)

    result = {
        "trainer": trainer_name,
        "phase": measured_phase,
        "seconds_per_iteration": step_s,
        "iteration_times": step_times,
        "seconds_per_batch_data_pipeline": pipeline_s,
        "seconds_per_predicted_case": predict_s,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_at_start_mb": rss_start,
        "peak_gpu_mb": gpu_peak,
        "parameters": sum(p.numel() for p in trainer.network.parameters()),
        "batch_size": trainer.batch_size,
        "patch_size": list(trainer.configuration_manager.patch_size),
    }
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()
    return result


def _measure_prediction(trainer, n_cases: int, dev: torch.device) -> float:
    """Seconds per raw case through nnU-Net's predictor (preprocessing, sliding window with mirroring, resampling)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    raw = Path(nnUNet_raw.require()) / trainer.plans_manager.dataset_name
    ending = trainer.dataset_json["file_ending"]
    folder = raw / "imagesTs" if (raw / "imagesTs").is_dir() else raw / "imagesTr"
    cases = create_lists_from_splitted_dataset_folder(str(folder), ending)[:n_cases]
    if not cases:
        raise FileNotFoundError(f"no raw cases in {folder} to time prediction on")
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                    [trainer.network.state_dict()],
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    rw = trainer.plans_manager.image_reader_writer_class()
    times = []
    with torch.no_grad():
        for files in cases:
            image, props = rw.read_images(files)
            _sync(dev)
            t0 = time.perf_counter()
            predictor.predict_single_npy_array(image, props, None, None, False)
            _sync(dev)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_benchmark(trainers: list[str], dataset: str, configuration: str, device: str = "cpu",
                  iterations: int = 10, warmup: int = 3, predict_cases: int = 2, out_dir: Path | None = None,
                  env: dict | None = None, tag: str | None = None, phases: dict[str, str] | None = None,
                  plans: str = "nnUNetPlans") -> dict:
    """Measure STOCK first (it draws the shared batches), then every other trainer, each in a fresh process.
    plans: the plans identifier (e.g. nnUNetPlans_cpu from `nnunet_ext plan --preset cpu`)."""
    order = [STOCK] + [t for t in trainers if t != STOCK]
    env = cpu_friendly(env or os.environ, device)
    if device == "cpu":
        env["nnUNet_n_proc_DA"] = "0"  # the pipeline is timed in-process; workers would hide its cost
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env["nnUNet_results"] = str(Path(tmp) / "results")  # benchmark runs must not touch real results
        batches_file = Path(tmp) / "batches.pt"
        for i, name in enumerate(order):
            out_file = Path(tmp) / f"{name}.json"
            argv = [sys.executable, "-m", "nnunet_ext.benchmark", "--child", name, "-d", str(dataset),
                    "-c", configuration, "--device", device, "--iterations", str(iterations), "--warmup",
                    str(warmup), "--predict-cases", str(predict_cases), "--batches", str(batches_file),
                    "--out", str(out_file), "--plans", plans] + (["--draw-batches"] if i == 0 else [])
            if phases and name in phases:
                argv += ["--phase", phases[name]]
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"benchmark of {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            results.append(json.loads(out_file.read_text()))
    stock = results[0]
    for r in results:
        r["ratio_iteration"] = r["seconds_per_iteration"] / stock["seconds_per_iteration"]
        if r["seconds_per_predicted_case"] is not None:
            r["ratio_prediction"] = r["seconds_per_predicted_case"] / stock["seconds_per_predicted_case"]
        # memory the trainer itself adds over the interpreter with torch and nnU-Net loaded
        r["trainer_rss_mb"] = r["peak_rss_mb"] - r["rss_at_start_mb"]
        r["ratio_trainer_rss"] = r["trainer_rss_mb"] / (stock["peak_rss_mb"] - stock["rss_at_start_mb"])
        if r["peak_gpu_mb"] is not None:
            r["ratio_peak_gpu"] = r["peak_gpu_mb"] / stock["peak_gpu_mb"]
    machine = machine_info()
    report = {
        "dataset": str(dataset), "configuration": configuration, "plans": plans, "device": device,
        "device_name": machine["gpu"]["name"] if device == "cuda" else machine["cpu"],
        "cpu_count": machine["cpu_count"], "torch": machine["torch"], "iterations": iterations, "warmup": warmup,
        "date": machine["date"], "machine": machine, "results": results,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = tag or f"{dataset}_{configuration}_{device}"
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
        (out_dir / f"{stem}.md").write_text(markdown_table(report))
    return report


def merge_targets(path: Path, rows: list[dict], key: str, value: str, unlabelled: str, indent: int = 1) -> None:
    """Write one run's target rows into a method's targets.json that holds rows of several runs told apart by `key`
    (data set, configuration): the rows whose `key` is `value` are replaced by `rows` (each labelled with it), the
    others kept. A row without `key` counts as `unlabelled`: the run a script made before it labelled its rows; kept,
    it is written with that label, so that the summary names the run of every row of a file with several."""
    previous = json.loads(path.read_text()) if path.exists() else []
    kept = [{**r, key: r.get(key, unlabelled)} for r in previous if r.get(key, unlabelled) != value]
    write_targets(path, kept + [{**r, key: value} for r in rows], indent)


def write_targets(path: Path, rows: list[dict], indent: int = 1) -> None:
    """Write a method's targets.json (<results>/<method>/targets.json) and the results folder's TARGETS.md with it,
    so no bench script can update one without the other."""
    Path(path).write_text(json.dumps(rows, indent=indent))
    refresh_targets_summary(path)


SUMMARY = "TARGETS.md"
RUN_KEYS = ("dataset", "configuration")


def _cell(value) -> str:
    """A value as the targets file holds it; floats to 6 significant digits, enough that a value beside its goal
    never reads as the other side of it."""
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value, separators=(", ", ": "), default=str) if isinstance(value, list | dict) else str(value)
    return text.replace("|", "\\|")


def targets_summary(results: Path) -> str:
    """Markdown of every method's targets.json under `results` (one folder per method): each row's target, what was
    measured, the goal and the verdict, copied from the file the bench script wrote, so nothing is typed by hand."""
    intro = ["# Benchmark targets", "",
             "Written by `python bench/harness/targets_summary.py` (and by every bench script that writes a "
             "`targets.json`) from `bench/results/<method>/targets.json`; each row as the script that measured it "
             "wrote it. Verdicts: met, **missed**, or not measured (the run that would measure it did not train "
             "that arm). What each run was and why a target was missed: the method's page in `docs/`.", ""]
    lines, counts = [], []
    for f in sorted(results.glob("*/targets.json")):
        rows = json.loads(f.read_text())
        if not isinstance(rows, list) or not all(isinstance(r, dict) and {"target", "measured", "goal", "met"} <= set(r)
                                                 for r in rows):
            raise ValueError(f"{f}: not a list of {{target, measured, goal, met}} rows")
        verdicts = ["met" if r["met"] is True else "not measured" if r["met"] is None else "**missed**" for r in rows]
        tally = {v: verdicts.count(v) for v in ("met", "**missed**", "not measured")}
        counts.append(f"| {f.parent.name} | {tally['met']} | {tally['**missed**']} | {tally['not measured']} |")
        # rows of several runs in one file carry the run's data set or configuration (merge_targets)
        labelled = any(k in r for r in rows for k in RUN_KEYS)
        lines += [f"## {f.parent.name}", "", f"`{f.parent.name}/targets.json`: {len(rows)} rows, {tally['met']} met, "
                  f"{tally['**missed**']} missed, {tally['not measured']} not measured.", "",
                  "| run " * labelled + "| target | measured | goal | verdict |", "|---" * (4 + labelled) + "|"]
        for r, verdict in zip(rows, verdicts, strict=True):
            run = f"| {', '.join(str(r[k]) for k in RUN_KEYS if k in r) or '-'} " * labelled
            lines.append(f"{run}| {_cell(r['target'])} | {_cell(r['measured'])} | {_cell(r['goal'])} | {verdict} |")
        lines.append("")
    header = ["| method | met | missed | not measured |", "|---|---|---|---|", *counts, ""]
    return "\n".join(intro + header + lines).rstrip() + "\n"


def write_targets_summary(results: Path) -> Path:
    """Rewrite results/TARGETS.md; bench scripts call it after their targets.json so the two never disagree."""
    path = Path(results) / SUMMARY
    text = targets_summary(Path(results))  # before touching the file: a malformed targets.json leaves it as it was
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def refresh_targets_summary(targets_file: Path) -> None:
    """After a bench script wrote <results>/<method>/targets.json: rewrite <results>/TARGETS.md where that results
    folder keeps one (the repository's does), so the summary never disagrees with the files; elsewhere (a bench run
    with its own --out) nothing is added."""
    results = Path(targets_file).resolve().parent.parent
    if (results / SUMMARY).exists():
        write_targets_summary(results)


def markdown_table(report: dict) -> str:
    head = (f"Dataset {report['dataset']}, {report['configuration']}, {report.get('plans', 'nnUNetPlans')}, "
            f"{report['device']} "
            f"({report['device_name']}, {report['cpu_count']} cores, torch {report['torch']}), "
            f"median of {report['iterations']} after {report['warmup']} warm-up, {report['date']}\n\n"
            "| trainer | s/iteration | x stock | data s/batch | s/predicted case | x stock | RSS over start MB "
            "| x stock | peak GPU MB | params |\n|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in report["results"]:
        pred = r["seconds_per_predicted_case"]
        gpu = r["peak_gpu_mb"]
        name = r["trainer"] + (f" ({r['phase']})" if r.get("phase") else "")
        rows.append(
            f"| {name} | {r['seconds_per_iteration']:.3f} | {r['ratio_iteration']:.2f} "
            f"| {r['seconds_per_batch_data_pipeline']:.3f} "
            f"| {'-' if pred is None else f'{pred:.2f}'} | {r.get('ratio_prediction', float('nan')):.2f} "
            f"| {r['trainer_rss_mb']:.0f} | {r['ratio_trainer_rss']:.2f} | {'-' if gpu is None else f'{gpu:.0f}'} "
            f"| {r['parameters'] / 1e6:.2f}M |")
    return head + "\n".join(rows) + "\n"


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child", required=True)
    p.add_argument("-d", required=True)
    p.add_argument("-c", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--predict-cases", type=int, required=True)
    p.add_argument("--batches", type=Path, required=True)
    p.add_argument("--draw-batches", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--phase", default=None)
    p.add_argument("--plans", default="nnUNetPlans")
    a = p.parse_args(argv)
    result = measure(a.child, a.d, a.c, a.device, a.iterations, a.warmup, a.batches, a.draw_batches,
                     a.predict_cases, plans_identifier=a.plans, phase=a.phase)
    a.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
