"""`nnunet_ext demo`: the whole stock nnU-Net pipeline with one of our trainers on an embedded phantom.

phantom -> nnUNetv2_plan_and_preprocess (or `nnunet_ext plan --preset cpu` on a CPU) -> nnUNetv2_train (fold 0)
-> nnUNetv2_predict (held-out cases) -> nnunet_ext.evaluation against the held-out labels -> report.md
(+ evaluation/ with CSV, JSON, plots).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nnunetv2
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

from nnunet_ext import stock
from nnunet_ext.evaluation.evaluate import evaluate_folder
from nnunet_ext.evaluation.report import summary_markdown
from nnunet_ext.paths import TRAINERS_DIR
from nnunet_ext.phantoms import PHANTOMS
from nnunet_ext.plans import PRESETS

# Lines of the stock commands' output worth showing while they run: one per epoch, and the final validation.
PROGRESS = r"Epoch \d+$|Epoch time|train_loss|Pseudo dice|Mean Validation Dice|Using trainer|Predicting|Traceback"


def resolve_demo(trainer: str, phantom: str | None = None) -> tuple[str, str, float | None]:
    """(trainer to run, phantom, Dice floor or None) for `nnunet_ext demo --trainer NAME [--phantom P]`.

    A method name runs its `_demo` variant when one exists (the full budget is days on a CPU). A trainer class says
    which phantom shows it (`demo_phantom`) and which Dice its demo reaches there (`demo_dice_floor`); the stock demo
    trainer uses the phantom's own `DEMO_DICE_FLOOR`. A floor is only applied on the phantom it was measured on.
    """
    def find(name: str):
        # ours first, imported under the package name so the classes are the ones checkpoints refer to
        ours = recursive_find_python_class(str(TRAINERS_DIR), name, "nnunet_ext.trainers")
        return ours or recursive_find_python_class(str(Path(nnunetv2.__file__).parent / "training" / "nnUNetTrainer"),
                                                   name, "nnunetv2.training.nnUNetTrainer")

    cls = find(trainer)
    if cls is None:
        raise ValueError(f"trainer {trainer!r} was not found in nnU-Net's or nnunet_ext's trainer folders")
    if not trainer.endswith(("_demo", "_debug")) and find(f"{trainer}_demo") is not None:
        trainer, cls = f"{trainer}_demo", find(f"{trainer}_demo")
    own_phantom = getattr(cls, "demo_phantom", None)
    phantom = phantom or own_phantom or "fundus2d"
    if phantom not in PHANTOMS:
        raise ValueError(f"unknown phantom {phantom!r}; choose from {sorted(PHANTOMS)}")
    floor = None
    if own_phantom == phantom and trainer.endswith("_demo"):
        floor = getattr(cls, "demo_dice_floor", None)
    if floor is None and trainer == "nnUNetTrainer_demo":
        floor = getattr(PHANTOMS[phantom], "DEMO_DICE_FLOOR", None)
    return trainer, phantom, floor


@dataclass
class DemoResult:
    work_dir: Path
    dataset_dir: Path
    predictions: Path
    report: Path
    metrics: dict
    seconds: dict


def default_preset(trainer: str, device: str) -> str | None:
    """The planner preset the demo plans with: `cpu` for stock nnU-Net behaviour on a CPU (the 2D demo trains in
    about half the time of the GPU plans, docs/cpu.md). A method's `_demo` variant keeps nnU-Net's default plans:
    its Dice floor was measured on them."""
    return "cpu" if device == "cpu" and trainer.startswith("nnUNetTrainer") else None


def run_demo(work_dir: Path, trainer: str = "nnUNetTrainer_demo", phantom: str = "fundus2d",
             device: str | None = None, seed: int = 0, echo: Callable[[str], None] = print,
             quiet_commands: bool = False, preset: str | None = "default") -> DemoResult:
    """preset: a planner preset (nnunet_ext.plans), None for nnU-Net's default plans, "default" for
    default_preset(trainer, device)."""
    if phantom not in PHANTOMS:
        raise ValueError(f"unknown phantom {phantom!r}; choose from {sorted(PHANTOMS)}")
    module = PHANTOMS[phantom]
    device = device or stock.default_device()
    if preset == "default":
        preset = default_preset(trainer, device)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)} or none")
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    env = stock.work_environment(work_dir / "nnunet", device)
    if device == "cpu":
        # on 2 cores, data augmentation in worker processes only competes with the network for the same cores
        env.setdefault("nnUNet_n_proc_DA", "0")
    log = work_dir / "commands.log"
    run_kw = {"log_file": log, "echo": None if quiet_commands else (lambda s: echo("    " + s)),
              "echo_pattern": PROGRESS}
    seconds = {}

    def stage(name: str, title: str, fn):
        echo(f"[{len(seconds) + 1}/5] {title}")
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        return out

    dataset_dir = stage("phantom", f"generating the {phantom} phantom (seed {seed})", lambda: module.generate(
        Path(env["nnUNet_raw"]), module.DEFAULT_ID, seed=seed, overwrite=True))
    dataset_id, configuration = module.DEFAULT_ID, module.CONFIGURATION
    if preset is None:
        plans = "nnUNetPlans"
        stage("plan_and_preprocess", f"nnUNetv2_plan_and_preprocess -d {dataset_id} -c {configuration}",
              lambda: stock.plan_and_preprocess(dataset_id, configuration, env, **run_kw))
    else:
        plans = stage("plan_and_preprocess", f"nnunet_ext plan -d {dataset_id} --preset {preset} -c {configuration} "
                      f"(nnU-Net's planning and preprocessing with the {preset} planner)",
                      lambda: stock.plan(dataset_id, preset, env, [configuration], **run_kw))
    stage("train", f"nnUNetv2_train {dataset_id} {configuration} 0 -tr {trainer} -p {plans} -device {device}",
          lambda: stock.train(dataset_id, configuration, 0, trainer, env, device=device, plans=plans, **run_kw))
    predictions = work_dir / "predictions"
    if predictions.exists():
        shutil.rmtree(predictions)
    stage("predict", f"nnUNetv2_predict on {dataset_dir.name}/imagesTs",
          lambda: stock.predict(dataset_dir / "imagesTs", predictions, dataset_id, configuration, trainer, env,
                                device=device, plans=plans, **run_kw))
    evaluation_dir = work_dir / "evaluation"
    summary = stage("evaluate", f"nnunet_ext evaluate -> {evaluation_dir.name}/", lambda: evaluate_folder(
        str(dataset_dir / "labelsTs"), str(predictions), str(evaluation_dir), str(dataset_dir / "dataset.json"),
        images_dir=str(dataset_dir / "imagesTs"), progress=False))
    title = f"nnunet-ext demo: {trainer} on the {phantom} phantom ({configuration}, {plans}, fold 0, {device})"
    report = _write_report(work_dir / "report.md", title, summary, seconds)
    return DemoResult(work_dir, dataset_dir, predictions, report, summary, seconds)


def _write_report(path: Path, title: str, summary: dict, seconds: dict) -> Path:
    lines = [f"# {title}", "", summary_markdown(summary), "",
             "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items()), "",
             "Per-case values: `evaluation/per_case.csv`; plots: "
             + ", ".join(f"`evaluation/{p}`" for p in summary.get("plots", [])), ""]
    path.write_text("\n".join(lines))
    return path
