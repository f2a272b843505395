"""WeakCycle's teacher rule, chosen on validation: which share of each class's pixels the teacher's pseudo-label
update keeps (`teacher_keep_fraction`), on the distractor phantom (weak2d, 798).

    python bench/weak_cycle/bench_weak_cycle_teacher_rule.py --data /tmp/wc_phantom_src --work /tmp/wc_rule

One stock `nnUNetv2_train` per rule, seed 0, the same budget and translation as bench_weak_cycle_checkpoints.py
(2000 translation + 500 refinement iterations; one teacher update, after 250 refinement iterations): class-balanced
thresholds keeping 50 % or 80 % of each class's pixels (the candidates: both leave the teacher's unsure pixels
ignored, as the spec asks), and, reported beside them, keeping 100 % (hard self-training: nothing is ignored but
ties), the absolute confidence 0.9 alone (the rule before class balancing) and no update at all. The rule is chosen
by the student's Dice on the 4 fully labelled validation cases (nnU-Net's own validation); the test cases' Dice
(stock nnUNetv2_predict) is reported, never used. Writes teacher_rule_selection.json and .md to the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_weak_cycle_checkpoints import TRAINERS, prepare, run_seed

from nnunet_ext import stock

HERE = Path(__file__).resolve().parent
BASE = "WeakCycleTrainer_ckpt_phantom"
# name -> (trainer, teacher_keep_fraction, candidate for the default)
RULES = {
    "keep 50 %": (f"{BASE}_keep50", 0.5, True),
    "keep 80 %": (BASE, 0.8, True),
    "keep 100 % (nothing ignored)": (f"{BASE}_keep100", 1.0, False),
    "absolute confidence 0.9 alone": (f"{BASE}_keepnone", None, False),
    "no teacher update": (f"{BASE}_noupdate", 0.8, False),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder the phantom is generated into (kept there)")
    p.add_argument("--work", required=True)
    p.add_argument("-o", "--output", default=str(HERE.parents[1] / "bench" / "results" / "weak_cycle"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    env = stock.work_environment(work / "nnunet", device="cpu")
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(TRAINERS)])
    setup = prepare("phantom", Path(args.data), work, env)
    rows = []
    for name, (trainer, keep, candidate) in RULES.items():
        run = run_seed(f"rule_{trainer}", setup, trainer, args.seed, work, env, out)
        rows.append({"rule": name, "trainer": trainer, "teacher_keep_fraction": keep, "candidate": candidate,
                     "student_validation_dice": run["student_validation_dice"],
                     "student_test_dice": run["student"]["dice"] / 100, "teacher_updates": run["teacher_updates"],
                     "pseudo_mask_dice": run["checkpoints"][-1]["attention"]})
    chosen = max((r for r in rows if r["candidate"]), key=lambda r: r["student_validation_dice"])
    result = {"seed": args.seed, "chosen": chosen["rule"], "chosen_keep_fraction": chosen["teacher_keep_fraction"],
              "rows": rows}
    (out / "teacher_rule_selection.json").write_text(json.dumps(result, indent=1))
    lines = ["# WeakCycle teacher rule, chosen on validation", "",
             f"`python bench/weak_cycle/bench_weak_cycle_teacher_rule.py ...` (seed {args.seed}; "
             f"{time.strftime('%Y-%m-%d')}, shared 2-core CPU). Distractor phantom (798), 2000 translation + 500 "
             f"refinement iterations, one teacher update; the same translation in every row (same seed). Student "
             f"Dice (0-1) on the fully labelled validation cases (the choice) and on the test cases (reported only).",
             "", "| rule | candidate | student, validation | student, test | teacher update: changed / ignored % "
             "(lesion >=, background <=) |", "|---|---|---|---|---|"]
    for r in rows:
        update = ", ".join(f"{u['changed']:.1f} / {u['ignored']:.1f} ({u['high']:.3f}, {u['low']:.3f})"
                           for u in r["teacher_updates"]) or "none"
        lines.append(f"| {r['rule']} | {'yes' if r['candidate'] else 'no'} | {r['student_validation_dice']:.3f} | "
                     f"{r['student_test_dice']:.3f} | {update} |")
    lines += ["", f"Chosen: **{chosen['rule']}** (`teacher_keep_fraction = {chosen['teacher_keep_fraction']}`), the "
              f"best validation Dice among the candidates. Pseudo-masks at the phase switch (the same in every row): "
              f"Dice {rows[0]['pseudo_mask_dice']:.3f} on the weak training cases."]
    (out / "teacher_rule_selection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
