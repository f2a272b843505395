"""Running the stock nnU-Net commands as a user would, in a subprocess with a prepared environment.

The demo, the tests and the benchmarks all go through the real `nnUNetv2_*` entry points; this module only builds
their command lines, sets the CPU-friendly environment and keeps a log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nnunet_ext.paths import environment_for_root


class StockCommandError(RuntimeError):
    pass


def default_device() -> str:
    import torch  # here: `nnunet_ext env` and --help should not pay for importing torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def find_command(name: str) -> str:
    """A console script of the running interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StockCommandError(f"{name} not found beside {sys.executable} or on PATH: is nnunetv2 installed?")
    return found


def cpu_friendly(env: Mapping[str, str], device: str) -> dict[str, str]:
    """Settings measured on 2-core machines (docs/cpu.md); a GPU run keeps nnU-Net's own defaults."""
    env = dict(env)
    if device == "cpu":
        # torch.compile makes CPU prediction about 3x slower on small cases
        env["nnUNet_compile"] = "false"
        env.setdefault("nnUNet_def_n_proc", "1")
    return env


def work_environment(root: Path, device: str = "cpu", environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Environment whose nnU-Net folders live under root, with our trainers findable."""
    return cpu_friendly(environment_for_root(Path(root), environ), device)


def run(argv: Sequence[str], env: Mapping[str, str], log_file: Path | None = None,
        echo: Callable[[str], None] | None = None, echo_pattern: str | None = None,
        timeout: float | None = None) -> str:
    """Run a command, stream its output to log_file (and lines matching echo_pattern to echo), return the output.

    Raises StockCommandError with the command and the output's tail when it fails.
    """
    argv = [str(a) for a in argv]
    pattern = re.compile(echo_pattern) if echo_pattern else None
    lines: list[str] = []
    log = open(log_file, "a") if log_file is not None else None
    try:
        if log:
            log.write(f"$ {' '.join(argv)}\n")
        proc = subprocess.Popen(argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if log:
                log.write(line)
                log.flush()
            if echo is not None and pattern is not None and pattern.search(line):
                echo(line.rstrip())
        rc = proc.wait(timeout=timeout)
    finally:
        if log:
            log.close()
    output = "".join(lines)
    if rc != 0:
        raise StockCommandError(f"{' '.join(argv)} failed with exit code {rc}:\n{output[-4000:]}")
    return output


def plan_and_preprocess(dataset_id: int, configuration: str, env: Mapping[str, str], verify: bool = True,
                        **kwargs) -> str:
    argv = [find_command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", configuration,
            "-np", "1", "-npfp", "1"]
    if verify:
        argv.append("--verify_dataset_integrity")
    env = dict(env)
    # nnUNet_n_proc_DA=0 makes planning call torch.set_num_threads(0) and crash
    if env.get("nnUNet_n_proc_DA") == "0":
        env.pop("nnUNet_n_proc_DA")
    return run(argv, env, **kwargs)


def train(dataset_id: int, configuration: str, fold: int | str, trainer: str, env: Mapping[str, str],
          device: str = "cpu", continue_training: bool = False, extra: Sequence[str] = (), plans: str = "nnUNetPlans",
          **kwargs) -> str:
    argv = [find_command("nnUNetv2_train"), str(dataset_id), configuration, str(fold), "-tr", trainer,
            "-p", plans, "-device", device, *extra]
    if continue_training:
        argv.append("--c")
    return run(argv, env, **kwargs)


def predict(input_folder: Path, output_folder: Path, dataset_id: int, configuration: str, trainer: str,
            env: Mapping[str, str], folds: Sequence[int | str] = (0,), device: str = "cpu",
            save_probabilities: bool = False, checkpoint: str = "checkpoint_final.pth", plans: str = "nnUNetPlans",
            **kwargs) -> str:
    argv = [find_command("nnUNetv2_predict"), "-i", str(input_folder), "-o", str(output_folder),
            "-d", str(dataset_id), "-c", configuration, "-tr", trainer, "-p", plans, "-f", *[str(f) for f in folds],
            "-device", device, "-chk", checkpoint, "-npp", "1", "-nps", "1"]
    if save_probabilities:
        argv.append("--save_probabilities")
    return run(argv, env, **kwargs)


def plan(dataset_id: int, preset: str, env: Mapping[str, str], configurations: Sequence[str] | None = None,
         **kwargs) -> str:
    """`nnunet_ext plan` with a planner preset (nnunet_ext.plans): fingerprint if missing, plans, preprocessing.
    Returns the plans identifier to pass to nnUNetv2_train / nnUNetv2_predict as -p."""
    from nnunet_ext.plans import PRESETS

    argv = [find_command("nnunet_ext"), "plan", "-d", str(dataset_id), "--preset", preset]
    if configurations:
        argv += ["-c", *configurations]
    run(argv, env, **kwargs)
    return PRESETS[preset].plans_identifier
