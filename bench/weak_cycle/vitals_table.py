"""Vital signs of WeakCycle trainings side by side, epoch by epoch, read from their nnU-Net training logs.

    python bench/weak_cycle/vitals_table.py --name identity_attention_probe \\
        default=bench/results/weak_cycle/phantom_long_seed0_train.log \\
        identity_attention=bench/results/weak_cycle/phantom_long_idattn_seed0_train.log

For runs that were stopped, or whose checkpoint scores are not the question: what the trainer logged every epoch
(`Vital signs: group: key value, ...; group: ...`) up to the last epoch all runs reached, every `--every` epochs.
Writes <name>.json (every epoch of every run) and <name>.md (the table) to the output folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from nnunet_ext.training.vitals import parse_vitals

HERE = Path(__file__).resolve().parent
KEYS = ("attention/coverage", "attention/inside_body", "attention/normal_body", "attention/outside_body",
        "attention/lesion_contrast", "pseudo_mask/validation_dice", "pseudo_mask/validation_dice_cam",
        "cam/accuracy")
EPOCH = re.compile(r": Epoch (\d+)$")
VITALS = re.compile(r": Vital signs: (.*)$")


def read_log(path: Path) -> dict[int, dict[str, float]]:
    """Epoch -> the vital signs logged in it (the last line of an epoch logged twice, as after a resume)."""
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such training log")
    epochs: dict[int, dict[str, float]] = {}
    epoch = None
    for line in path.read_text().splitlines():
        if m := EPOCH.search(line):
            epoch = int(m.group(1))
        elif (m := VITALS.search(line)) and epoch is not None:
            epochs[epoch] = parse_vitals(m.group(1))
    if not epochs:
        raise SystemExit(f"error: {path}: no 'Vital signs' lines (not a WeakCycle training log?)")
    return epochs


def table(runs: dict[str, dict[int, dict[str, float]]], every: int) -> list[str]:
    last = min(max(epochs) for epochs in runs.values())
    shown = sorted({*range(0, last + 1, every), last})
    keys = [k for k in KEYS if any(k in v for epochs in runs.values() for v in epochs.values())]
    lines = ["| epoch | run | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for epoch in shown:
        for label, epochs in runs.items():
            values = epochs.get(epoch, {})
            lines.append(f"| {epoch} | {label} | " + " | ".join(
                f"{values[k]:.3f}" if k in values else "" for k in keys) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="label=path/to/training.log")
    p.add_argument("--name", required=True, help="output file name (without extension)")
    p.add_argument("--every", type=int, default=4, help="epochs between table rows")
    p.add_argument("-o", "--output", default=str(HERE.parent / "results" / "weak_cycle"))
    a = p.parse_args(argv)
    runs = {}
    for spec in a.runs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            p.error(f"{spec!r}: give label=path")
        runs[label] = read_log(Path(path))
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    sources = {label: spec.partition("=")[2] for label, spec in zip(runs, a.runs, strict=True)}
    (out / f"{a.name}.json").write_text(json.dumps({"logs": sources, "epochs": runs}, indent=1))
    header = [f"# WeakCycle vital signs: {', '.join(runs)}", "",
              "`python bench/weak_cycle/vitals_table.py --name " + a.name + " " +
              " ".join(f"{label}={path}" for label, path in sources.items()) + "`; what each trainer logged at the "
              "end of the epoch (50 iterations each on the phantom runs), up to the last epoch every run reached.", ""]
    (out / f"{a.name}.md").write_text("\n".join(header + table(runs, a.every)) + "\n")
    print((out / f"{a.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
