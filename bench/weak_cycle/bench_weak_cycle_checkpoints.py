"""WeakCycle pseudo-masks through translation, beside four controls scored the same way, and the student's Dice: on
the distractor phantom (weak2d, bright ridges and dark spots in every image) and on the real BraTS 2018 / ISIC 2018
samples, through the converters and the stock commands.

    python bench/weak_cycle/bench_weak_cycle_checkpoints.py --dataset phantom --data /tmp/wc_phantom_src \\
        --work /tmp/wc_phantom --seeds 0 1
    python bench/weak_cycle/bench_weak_cycle_checkpoints.py --dataset brats --data ../shared/data/BraTS2018_slices \\
        --work /tmp/wc_brats
    python bench/weak_cycle/bench_weak_cycle_checkpoints.py --dataset isic --data ../shared/data/ISIC2018_weak \\
        --work /tmp/wc_isic

Phantom budgets: 2000 translation iterations (default, with the teacher-update ablation), --long 6000 (--long
--no-composite: the ablation without the adversarial term on the composite; --long --uncertain-ignore: the teacher
rule before 2026-12-01, pixels the teacher is unsure about become ignore; neither writes targets; --long
--full-width: WeakCycleTrainer's own widths, 32 features and 4 blocks, instead of the quarter-width networks below,
with its own targets), --xlong 16000
(--xlong --uncertain-ignore: that rule at this budget, no targets). On brats, --full-width trains the real-sample
budget with the trainer's own widths, on isic half its iterations (500 + 125; a full-width iteration on its 256x256
patches costs 8.6 s on 2 CPU cores); each writes its own targets. On isic, --no-composite trains the real-sample
budget without the composite's adversarial term (no targets). --long --identity-attention (with or without
--full-width): a candidate, not the original: the identity passes' attention pushed towards 0 (loss term
identity_attention, weight 10, or 1 with --identity-attention 1), scored the same way; it writes no targets.

--data is the source folder: the real sample, or for the phantom the folder it is generated into (kept there). One
stock `nnUNetv2_train` per seed with WeakCycleTrainer_ckpt_* (bench/weak_cycle/trainers/
weak_cycle_checkpoint_trainers.py: quarter-width generators and discriminators) scores at translation checkpoints
(0/250/500/1000/2000 iterations and the phase switch) the pseudo-masks of the weak training cases: the method
(attention), the CAM-only baseline (the same generator's CAM), the untrained generator's attention, the image
intensity (polarity chosen on validation) and keep-all, all with the trainer's body mask, per-image Otsu and
opening, in the raw geometry against the true masks (which training never sees). The student (the network nnU-Net
saves) is scored on the phantom's test cases (stock nnUNetv2_predict) or on the real samples' validation cases
(nnU-Net's own validation). Nothing is selected on the scored cases. Writes <name>.json, <name>.md and merges its
targets into targets.json in the output folder. A seed whose training finished in the work folder (a bench stopped
during a later seed) is scored again, not retrained; its training time is then read from nnU-Net's log in the fold.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_weak_cycle_eval import evaluate
from bench_weak_cycle_real import DATASETS, convert, sliced_layout

from nnunet_ext import stock
from nnunet_ext.benchmark import write_targets
from nnunet_ext.phantoms import weak2d

HERE = Path(__file__).resolve().parent
TRAINERS = HERE / "trainers"
sys.path.insert(0, str(TRAINERS))
from weak_cycle_checkpoint_trainers import IDENTITY_ATTENTION_WEIGHTS, REFERENCE_ENV  # noqa: E402

CONTROLS = ("untrained_attention", "intensity", "keep_all", "cam")
PHANTOM = {"n_train": 32, "n_val": 4, "n_test": 8, "size": 48}


def prepare(dataset: str, data: Path, work: Path, env: dict, n_train: int = PHANTOM["n_train"]) -> dict:
    """The raw + preprocessed data set; where the references and the student's scored cases are."""
    if dataset == "phantom":
        dataset_id = weak2d.DISTRACTOR_ID
        raw = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id}_{weak2d.DISTRACTOR_NAME}"
        if raw.exists():
            held = json.loads((raw / "dataset.json").read_text())["numTraining"] - PHANTOM["n_val"]
            if held != n_train:
                raise SystemExit(f"error: {raw} holds a phantom of {held} training images, not {n_train}: use "
                                 "another --work folder")
        else:
            source = weak2d.generate(data, seed=0, overwrite=True, distractors=True, **dict(PHANTOM, n_train=n_train))
            raw.parent.mkdir(parents=True, exist_ok=True)
            raw.symlink_to(source.resolve(), target_is_directory=True)
            stock.plan_and_preprocess(dataset_id, "2d", env)
        return {"id": dataset_id, "raw": raw, "reference": raw / "referenceTr", "test": (raw / "imagesTs",
                                                                                       raw / "labelsTs")}
    _, converter, dataset_id, name, _ = DATASETS[dataset]
    raw = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id}_{name}"
    if not raw.exists():
        sliced_layout(data, work / "src", 5)
        sliced_layout(data, work / "src_reference", None)
        convert(converter, work / "src", Path(env["nnUNet_raw"]), env)
        convert(converter, work / "src_reference", work / "reference", env)
        stock.plan_and_preprocess(dataset_id, "2d", env)
    return {"id": dataset_id, "raw": raw, "reference": work / "reference" / raw.name / "labelsTr", "test": None}


def translation_cost(rows: list[dict]) -> float | None:
    """Seconds per translation iteration between the first and last checkpoint (scoring included)."""
    rows = [r for r in rows if not r.get("selected")]
    if len(rows) < 2 or rows[-1]["iterations"] == rows[0]["iterations"]:
        return None
    return (rows[-1]["time_s"] - rows[0]["time_s"]) / (rows[-1]["iterations"] - rows[0]["iterations"])


def training_seconds(fold: Path) -> float:
    """Wall time of a finished training from nnU-Net's own log in the fold (first to last time stamp)."""
    stamps = []
    for log in sorted(fold.glob("training_log_*.txt")):
        stamps += re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+):", log.read_text(), re.M)
    if not stamps:
        return float("nan")
    times = [time.mktime(time.strptime(x.split(".")[0], "%Y-%m-%d %H:%M:%S")) for x in stamps]
    return max(times) - min(times)


def run_seed(dataset: str, setup: dict, trainer: str, seed: int, work: Path, env: dict, out: Path) -> dict:
    train_env = dict(env, nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_ext_seed=str(seed),
                     nnUNet_results=str(work / f"results_{trainer}_seed{seed}"),
                     **{REFERENCE_ENV: str(setup["reference"])})
    fold = Path(train_env["nnUNet_results"]) / setup["raw"].name / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    log_file = out / f"{dataset}_seed{seed}_train.log"
    if (fold / "checkpoint_final.pth").is_file() and log_file.is_file():
        # a finished training of this work folder (a bench stopped after some seeds): scored again, not retrained
        print(f"seed {seed}: reusing the finished training in {fold}", flush=True)
        log, train_s = log_file.read_text(), training_seconds(fold)
    else:
        log_file.unlink(missing_ok=True)  # a stopped run's lines would count as this training's epochs
        t = time.time()
        log = stock.train(setup["id"], "2d", 0, trainer, train_env, log_file=log_file)
        train_s = time.time() - t
    rows = json.loads((fold / "weak_cycle" / "checkpoints.json").read_text())
    if setup["test"] is not None:
        predictions = work / f"predictions_{trainer}_seed{seed}"
        stock.predict(setup["test"][0], predictions, setup["id"], "2d", trainer, train_env)
        student = evaluate(setup["test"][1], predictions)
        student_on = "test cases"
    else:
        splits = json.loads((Path(env["nnUNet_preprocessed"]) / setup["raw"].name / "splits_final.json")
                            .read_text())[0]
        student = evaluate(setup["reference"], fold / "validation", sorted(splits["val"]))
        student_on = "validation cases"
    epoch_times = [float(x) for x in re.findall(r"Epoch time: ([0-9.]+) s", log)]
    # nnU-Net's own validation of the student (fully labelled validation cases): what settings are chosen on
    validation = json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]
    # the trainer's vital signs hold each update (only epochs with one carry teacher/changed); shares in %
    vitals = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["nnunet_ext"]["vitals"]
    updates = [{"changed": 100 * v["teacher/changed"], "ignored": 100 * v["teacher/ignored"],
                "lesion": 100 * v["teacher/lesion"], "high": v["teacher/high"], "low": v["teacher/low"]}
               for v in vitals if "teacher/changed" in v]
    return {"seed": seed, "trainer": trainer, "checkpoints": rows, "student": student, "student_on": student_on,
            "student_validation_dice": float(validation), "teacher_updates": updates,
            "train_s": round(train_s, 1), "translation_s_per_iteration": translation_cost(rows),
            "epoch_times_s": epoch_times, "threshold": json.loads((fold / "weak_cycle" / "phase1_pseudo_masks" /
                                                                  "threshold.json").read_text())}


def summarise(dataset: str, runs: list[dict]) -> tuple[dict, list[dict]]:
    """Means over seeds per checkpoint; the targets this data set is measured against."""
    by_iterations: dict[int, list[dict]] = {}
    for run in runs:
        for row in run["checkpoints"]:
            if not row.get("selected"):
                by_iterations.setdefault(row["iterations"], []).append(row)
    table = {it: {k: float(np.mean([r[k] for r in rows])) for k in ("attention", "cam")}
             for it, rows in sorted(by_iterations.items())}
    first = [run["checkpoints"][0] for run in runs]
    controls = {k: float(np.mean([r[k] for r in first])) for k in ("untrained_attention", "intensity", "keep_all")}
    final = max(table)
    # the pseudo-masks come from the generator the trainer selected on the validation cases (a "selected" row), the
    # CAM-only control from the one its own validation Dice selects; runs without selection: the last generator
    selected = [next((r for r in run["checkpoints"] if r.get("selected")), None) for run in runs]
    if all(selected):
        attention = float(np.mean([r["attention"] for r in selected]))
        cam = float(np.mean([r["cam"] for r in selected]))
    else:
        attention, cam = table[final]["attention"], table[final]["cam"]
        selected = None
    controls["cam"] = cam
    student = float(np.mean([run["student"]["dice"] for run in runs])) / 100
    summary = {"final_iterations": final, "attention": attention, "controls": controls, "student_dice": student,
               "per_checkpoint": table, "last_generator": table[final],
               "selected_iterations": [{"attention": r["iterations"], "cam": r["cam_iterations"]} for r in selected]
               if selected else None}
    targets = []
    if dataset == "phantom":
        best = max(controls.values())
        targets.append({"target": "phantom: attention pseudo-mask Dice >= best control + 0.20",
                        "measured": round(attention, 3), "goal": round(best + 0.20, 3),
                        "met": attention >= best + 0.20})
        targets.append({"target": "phantom: student Dice >= pseudo-mask Dice", "measured": round(student, 3),
                        "goal": round(attention, 3), "met": student >= attention})
    else:
        for control in ("cam", "intensity"):
            targets.append({"target": f"{dataset}: attention pseudo-masks beat the {control} control",
                            "measured": round(attention, 3), "goal": round(controls[control], 3),
                            "met": attention > controls[control]})
    costs = [run["translation_s_per_iteration"] for run in runs if run["translation_s_per_iteration"]]
    summary["translation_s_per_iteration"] = float(np.mean(costs)) if costs else None
    return summary, targets


def markdown(dataset: str, args, runs: list[dict], summary: dict, targets: list[dict]) -> str:
    seeds = ", ".join(str(r["seed"]) for r in runs)
    names = ("long", "xlong", "no_composite", "uncertain_ignore", "identity_attention", "full_width")
    flags = "".join(f" --{name.replace('_', '-')}" for name in names if getattr(args, name, None))
    if getattr(args, "identity_attention", None) == 1.0:
        flags = flags.replace("--identity-attention", "--identity-attention 1")
    lines = [f"# WeakCycle pseudo-masks through translation: {dataset}", "",
             f"`python bench/weak_cycle/bench_weak_cycle_checkpoints.py --dataset {dataset}{flags} ...` "
             f"(seeds {seeds}; {time.strftime('%Y-%m-%d')}, shared 2-core CPU). Mean Dice of the weak training "
             f"cases' pseudo-masks (per image, 0-1) against their true masks, which training never sees; every source "
             f"through the same body mask, per-image Otsu and opening."
             + (f" Phantom of {args.n_train} training images (half weak, half normal)." if dataset == "phantom"
                else ""), "",
             "| translation iterations | attention (method) | CAM-only |", "|---|---|---|"]
    for it, row in summary["per_checkpoint"].items():
        lines.append(f"| {it} | {row['attention']:.3f} | {row['cam']:.3f} |")
    c = summary["controls"]
    picked = summary.get("selected_iterations")
    if picked:
        last = summary["last_generator"]
        lines += ["", f"Generator selected on the validation cases (generator_selection 'validation'; the pseudo-masks "
                  f"come from it): attention {summary['attention']:.3f} (selected after "
                  f"{', '.join(str(x['attention']) for x in picked)} iterations, per seed), CAM-only {c['cam']:.3f} "
                  f"(its own selection: {', '.join(str(x['cam']) for x in picked)} iterations); the last generator's: "
                  f"attention {last['attention']:.3f}, CAM {last['cam']:.3f}."]
    cam_at = "selected on its validation Dice" if picked else "at the phase switch"
    lines += ["", f"Controls: untrained generator {c['untrained_attention']:.3f}, intensity {c['intensity']:.3f} "
              f"(polarity {runs[0]['checkpoints'][0]['intensity_polarity']}, chosen on validation), keep-all "
              f"{c['keep_all']:.3f}, CAM-only {cam_at} {c['cam']:.3f}.",
              f"Student Dice ({runs[0]['student_on']}): {summary['student_dice']:.3f} "
              f"(per seed: {', '.join(str(r['student']['dice']) for r in runs)} %); on the fully labelled "
              f"validation cases (nnU-Net's validation) {summary['student_validation_dice']:.3f}.",
              "Teacher updates (share of the disease cases' body changed / left ignored, %; lesion and background "
              "thresholds): " + "; ".join(f"seed {r['seed']}: " + (", ".join(
                  f"{u['changed']:.1f}/{u['ignored']:.1f} at >= {u['high']:.3f}, <= {u['low']:.3f}"
                  for u in r["teacher_updates"]) or "none in this budget") for r in runs) + "."]
    ablation = summary.get("ablation_no_teacher_updates")
    if ablation:
        lines.append(f"Ablation, no teacher updates (pseudo_update_every 0, same translation): student Dice "
                     f"{ablation['student_dice']:.3f} ({runs[0]['student_on']}; per seed: "
                     f"{', '.join(str(r['student']['dice']) for r in ablation['runs'])} %), validation "
                     f"{ablation['student_validation_dice']:.3f}.")
    widths = "the trainer's own widths" if getattr(args, "full_width", False) else "quarter-width networks"
    lines += [f"Translation cost: {summary['translation_s_per_iteration']} s per iteration ({widths}, "
              f"scoring included); training {', '.join(str(r['train_s']) for r in runs)} s per seed.", "",
              "| target | measured | goal | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['goal']} | {t['met']} |" for t in targets]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("phantom", "brats", "isic"), required=True)
    p.add_argument("--data", required=True, help="source folder (phantom: where it is generated)")
    p.add_argument("--work", required=True)
    p.add_argument("-o", "--output", default=str(HERE.parents[1] / "bench" / "results" / "weak_cycle"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    length = p.add_mutually_exclusive_group()
    length.add_argument("--long", action="store_true", help="phantom: 6000 translation iterations instead of 2000")
    length.add_argument("--xlong", action="store_true", help="phantom: 16000 translation iterations")
    p.add_argument("--no-composite", action="store_true",
                   help="phantom with --long, or isic: the ablation without the adversarial term on the composite "
                        "(writes no targets)")
    p.add_argument("--uncertain-ignore", action="store_true",
                   help="phantom, --long or --xlong: the teacher rule before 2026-12-01, pixels the teacher is "
                        "unsure about become ignore (teacher_uncertain = 'ignore'); an ablation, writes no targets")
    p.add_argument("--identity-attention", type=float, nargs="?", const=10.0, choices=(10.0, 1.0),
                   help="phantom with --long: a candidate, the identity passes' attention pushed towards 0 (loss "
                        "term identity_attention, weight 10 or the value given, 1; not the original), writes no "
                        "targets")
    p.add_argument("--full-width", action="store_true",
                   help="phantom with --long, or brats or isic: WeakCycleTrainer's own generator and discriminator "
                        "widths (32 features, 4 blocks) instead of the bench's quarter-width networks; writes its "
                        "own targets")
    p.add_argument("--no-ablation", action="store_true",
                   help="phantom: skip the arm with the teacher's pseudo-label updates ablated")
    p.add_argument("--n-train", type=int, default=PHANTOM["n_train"],
                   help=f"phantom: training images, half weak and half normal (default {PHANTOM['n_train']}; the "
                        "original trains on hundreds); another number needs its own --work and --data folders and "
                        "writes its own results and targets")
    args = p.parse_args(argv)
    if args.n_train != PHANTOM["n_train"] and args.dataset != "phantom":
        p.error("--n-train sizes the phantom")
    if args.n_train < 2:
        p.error("--n-train needs at least one weak and one normal image")
    if (args.xlong or args.uncertain_ignore) and args.dataset != "phantom":
        p.error("--xlong and --uncertain-ignore are phantom runs")
    if args.no_composite and not (args.long or args.dataset == "isic"):
        p.error("--no-composite runs on the phantom with --long, or on isic")
    if args.uncertain_ignore and not (args.long or args.xlong):
        p.error("--uncertain-ignore runs with --long or --xlong")
    if args.full_width and (args.dataset == "phantom" and not args.long or args.no_composite or args.uncertain_ignore):
        p.error("--full-width runs on the phantom with --long (alone or with --identity-attention), or on brats or "
                "isic")
    if args.identity_attention is not None and not (args.dataset == "phantom" and args.long):
        p.error("--identity-attention runs on the phantom with --long")
    if sum((args.no_composite, args.uncertain_ignore, args.identity_attention is not None)) > 1:
        p.error("--no-composite, --uncertain-ignore and --identity-attention are separate runs")
    work, out = Path(args.work), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    env = stock.work_environment(work / "nnunet", device="cpu")
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(TRAINERS)])
    setup = prepare(args.dataset, Path(args.data), work, env, args.n_train)
    trainer = "WeakCycleTrainer_ckpt_phantom" if args.dataset == "phantom" else "WeakCycleTrainer_ckpt_real"
    budget = "_long" if args.long else "_xlong" if args.xlong else ""
    trainer += budget
    if args.dataset == "isic":
        trainer += "_isic"  # the original's ISIC loss weights
    variant = "_nocomposite" if args.no_composite else "_ignore" if args.uncertain_ignore else \
        f"_idattn{IDENTITY_ATTENTION_WEIGHTS[args.identity_attention]}" if args.identity_attention is not None else ""
    width = "_full" if args.full_width else ""
    trainer += variant + width
    size = f"_n{args.n_train}" if args.n_train != PHANTOM["n_train"] else ""
    tag = args.dataset + budget + variant + width + size
    runs = [run_seed(tag, setup, trainer, seed, work, env, out) for seed in args.seeds]
    summary, targets = summarise(args.dataset, runs)
    if args.dataset == "phantom" and not budget and not args.no_ablation:
        # the teacher's pseudo-label updates ablated: the same translation (same seed), the student on the phase-1
        # pseudo-masks with EMA-teacher consistency only
        ablation = [run_seed(f"{tag}_noupdate", setup, f"{trainer}_noupdate", seed, work, env, out)
                    for seed in args.seeds]
        summary["ablation_no_teacher_updates"] = {
            "student_dice": float(np.mean([r["student"]["dice"] for r in ablation])) / 100,
            "student_validation_dice": float(np.mean([r["student_validation_dice"] for r in ablation])),
            "runs": ablation}
    summary["student_validation_dice"] = float(np.mean([r["student_validation_dice"] for r in runs]))
    if budget or width:
        # a run of its own, with its own rows in targets.json beside those of the default budget and widths; isic at
        # full width trains half the real-sample iterations (its trainer says why)
        iterations = budget or (width and args.dataset == "isic")
        run = ", ".join(([f"{summary['final_iterations']} iterations"] if iterations else [])
                        + (["the trainer's own widths"] if width else [])
                        + ([f"{args.n_train} training images"] if size else []))
        for t in targets:
            t["target"] = t["target"].replace(f"{args.dataset}:", f"{args.dataset} ({run}):", 1)
    name = f"weak_cycle_checkpoints_{tag}"
    (out / f"{name}.json").write_text(json.dumps({"summary": summary, "runs": runs, "targets": targets}, indent=1,
                                                 default=str))
    (out / f"{name}.md").write_text(markdown(args.dataset, args, runs, summary, targets))
    print(json.dumps({"summary": summary, "targets": targets}, indent=1))
    if variant:
        return 0  # an ablation or a candidate: its numbers stand beside the method's, not as its targets
    targets_file = out / "targets.json"
    previous = json.loads(targets_file.read_text()) if targets_file.is_file() else []
    prefix = targets[0]["target"].split(":")[0] + ":"
    merged = [t for t in previous if not t["target"].startswith(prefix)] + targets
    write_targets(targets_file, merged)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
