"""Stock nnU-Net vs FreeTumorTrainer on held-out tumours: (a) organ-only training, (b) scarce tumours, (c) cost.

    python bench/freetumor/bench_freetumor_phantom.py --work /tmp/ftbench [--source RAW_DATASET] [--seeds 0 1]

Source: an nnU-Net raw data set (dataset.json, imagesTr/labelsTr, imagesTs/labelsTs) in an organ/tumour label scheme
(default pairs as FreeTumorTrainer reads them); without --source the abdomen3d phantom is generated (24 training
cases, tumours in every fourth; 8 held-out cases that all hold 1-3 tumours; seed 0). From it two training sets:
(a) organ-only: the training cases without any tumour; (b) scarce: those plus at most one tumour case per three
healthy ones (the phantom: all 24, 6 with tumours). Held out: the imagesTs cases that hold a tumour, never seen in
training, planning or checkpoint choice (nnU-Net's fold 0 validation uses training cases only).

Arms (bench/freetumor/trainers, one training at a time, nnUNet_n_proc_DA=0 so augmentation costs count in the step):
stock nnU-Net behaviour (in (a) one seed: it has never seen a tumour) and FreeTumorTrainer with its defaults
(quality control 'auto', which is off here: fewer than 10 training cases hold a tumour; synthesis in the
augmentation pipeline), the same U-Net (features from 16), the
same epochs x iterations x batch (the plans' batch); in (b) also FreeTumorTrainer judged by a frozen baseline: the
stock (b) model of the same seed (nnUNet_ext_freetumor_baseline, synthesis in the train step), and a short in-step
run without QC for the cost table. A control (arm a_freetumor_matched, long budget, not a target): FreeTumorTrainer
with the procedural contrast set to the source's own tumour contrast (the generated phantom documents 25-45 HU;
FreeTumor's default is 40-150 HU), to tell a contrast mismatch from the budget. Budget: EPOCHS x ITERATIONS of
bench/freetumor/trainers (same for all arms; --budget short/long/xlong); seeds via nnUNet_ext_seed. Scored with
`nnunet_ext evaluate` (tumour Dice per class and for any tumour; lesion-wise sensitivity by size bin, IoU > 0.1). Cost:
the mean epoch time of epochs 1.. (nnU-Net's log) / iterations, as ratios to stock in the same bench.

Writes bench/results/freetumor/phantom_<configuration>[_<budget>]/results.json, results.md and targets.json (a
run of the control alone writes no targets.json), and bench/results/freetumor/targets.json from every phantom_*
folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "trainers"))
from freetumor_bench_trainers import EPOCHS, ITERATIONS, LONG_EPOCHS, XLONG_EPOCHS  # noqa: E402

from nnunet_ext import stock  # noqa: E402
from nnunet_ext.benchmark import write_targets  # noqa: E402
from nnunet_ext.evaluation.evaluate import EvaluationSettings, evaluate_folder  # noqa: E402
from nnunet_ext.methods.freetumor.labels import organ_tumour_pairs  # noqa: E402
from nnunet_ext.phantoms import abdomen3d  # noqa: E402

RESULTS = HERE.parent / "results" / "freetumor"
STOCK, FREETUMOR = "nnUNetTrainer_ftbench", "FreeTumorTrainer_ftbench"
ARMS = ("a_stock", "a_freetumor", "b_stock", "b_freetumor", "b_freetumor_qc", "cost_instep", "a_freetumor_matched")
INSTEP = "FreeTumorTrainer_ftbench_instep"
SETTINGS = {"organ_only": 861, "scarce": 862}
BUDGETS = {"short": EPOCHS, "long": LONG_EPOCHS, "xlong": XLONG_EPOCHS}
MEDIUM_AND_LARGE_MM3 = 524.0  # detection size bins: [0, 524) small (radius < 5 mm), then medium, large


def read_labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def make_training_sets(source: Path, raw_root: Path) -> dict:
    """The two training sets beside the same held-out cases, as raw data sets 861 and 862."""
    dataset_json = json.loads((source / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    pairs = organ_tumour_pairs(dataset_json, None, source.name)
    tumours = sorted(pairs.values())
    cases = sorted(p.name[:-len(ending)] for p in (source / "labelsTr").glob(f"*{ending}"))
    with_tumour = [c for c in cases if np.isin(read_labels(source / "labelsTr" / f"{c}{ending}"), tumours).any()]
    healthy = [c for c in cases if c not in with_tumour]
    test = sorted(p.name[:-len(ending)] for p in (source / "labelsTs").glob(f"*{ending}")
                  if np.isin(read_labels(p), tumours).any())
    if not healthy or not test:
        raise SystemExit(f"{source}: needs training cases without tumours ({len(healthy)}) and held-out cases with "
                         f"tumours ({len(test)})")
    chosen = {"organ_only": healthy, "scarce": healthy + with_tumour[:max(1, len(healthy) // 3)]}
    info = {}
    for setting, dataset_id in SETTINGS.items():
        raw = raw_root / f"Dataset{dataset_id}_FreeTumorBench{setting.title().replace('_', '')}"
        if not raw.exists():
            tmp = raw.with_name(raw.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            for kind in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
                (tmp / kind).mkdir(parents=True)
            for c in chosen[setting]:
                for image in (source / "imagesTr").glob(f"{c}_[0-9][0-9][0-9][0-9]{ending}"):
                    shutil.copy(image, tmp / "imagesTr" / image.name)
                shutil.copy(source / "labelsTr" / f"{c}{ending}", tmp / "labelsTr" / f"{c}{ending}")
            for c in test:
                for image in (source / "imagesTs").glob(f"{c}_[0-9][0-9][0-9][0-9]{ending}"):
                    shutil.copy(image, tmp / "imagesTs" / image.name)
                shutil.copy(source / "labelsTs" / f"{c}{ending}", tmp / "labelsTs" / f"{c}{ending}")
            (tmp / "dataset.json").write_text(json.dumps({**dataset_json, "numTraining": len(chosen[setting])},
                                                         indent=2))
            tmp.rename(raw)
        info[setting] = {"dataset_id": dataset_id, "raw": raw, "n_train": len(chosen[setting]),
                         "n_train_with_tumour": len([c for c in chosen[setting] if c in with_tumour]),
                         "n_test": len(test)}
    return {"pairs": pairs, "sets": info}


def epoch_seconds(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"Epoch time: ([0-9.]+) s", log)]


def vital_signs(fold: Path) -> list[dict]:
    import torch

    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    return checkpoint.get("nnunet_ext", {}).get("vitals", [])


def score(raw: Path, pred: Path, out: Path, pairs: dict) -> dict:
    tumours = tuple(sorted(pairs.values()))
    organs = sorted(pairs)
    settings = EvaluationSettings(classes=[*organs, *tumours], extra_regions=[tumours], lesion_classes=[tumours],
                                  surface=False, probabilities=False)
    summary = evaluate_folder(str(raw / "labelsTs"), str(pred), str(out), settings=settings, plots=False,
                              progress=False)
    per_class = summary["per_class"]
    names = list(per_class)
    region = names[-1]  # the extra region (any tumour) comes last
    detection = next(iter(summary["detection"].values()))
    by_size = detection["by_size"]
    med_large = [v for k, v in by_size.items() if float(k.strip("[)").split(",")[0]) >= MEDIUM_AND_LARGE_MM3]
    n_ml = sum(v["n_lesions"] for v in med_large)
    return {
        "dice": {n: per_class[n]["dice"]["mean"] for n in names},
        "tumour_dice": per_class[region]["dice"]["mean"],
        "organ_dice": float(np.mean([per_class[n]["dice"]["mean"] for n in names[:len(organs)]])),
        "lesion_sensitivity": detection["lesion_sensitivity"],
        "lesion_precision": detection["lesion_precision"],
        "false_positives_per_case": detection["false_positives_per_case"],
        "by_size": by_size,
        "medium_large_sensitivity": (sum(v["n_detected"] for v in med_large) / n_ml) if n_ml else float("nan"),
        "n_medium_large": n_ml,
    }


def run_arm(name: str, trainer: str, setting: dict, seed: int, env: dict, work: Path, out: Path, pairs: dict,
            extra_env: dict | None = None, predict: bool = True) -> dict:
    dataset_id, raw = setting["dataset_id"], setting["raw"]
    results_dir = Path(env["nnUNet_results"]) / f"seed{seed}" / name
    arm_env = dict(env, nnUNet_results=str(results_dir), nnUNet_ext_seed=str(seed), **(extra_env or {}))
    fold = results_dir / raw.name / f"{trainer}__nnUNetPlans__{CONFIGURATION}" / "fold_0"
    log_file = out / "logs" / f"{name}_seed{seed}_train.log"
    t = time.time()
    if not (fold / "checkpoint_final.pth").exists():
        stock.train(dataset_id, CONFIGURATION, 0, trainer, arm_env, log_file=log_file)
    train_s = time.time() - t
    log = log_file.read_text() if log_file.exists() else ""
    result = {"trainer": trainer, "seed": seed, "train_s": round(train_s, 1), "fold": str(fold),
              "epoch_s": epoch_seconds(log), "vitals": vital_signs(fold)}
    if predict:
        pred = work / "pred" / f"{name}_seed{seed}"
        if pred.exists():
            shutil.rmtree(pred)
        t = time.time()
        stock.predict(raw / "imagesTs", pred, dataset_id, CONFIGURATION, trainer, arm_env)
        result["predict_s"] = round(time.time() - t, 1)
        result["scores"] = score(raw, pred, work / "eval" / f"{name}_seed{seed}", pairs)
    shown = {k: result["scores"][k] for k in ("tumour_dice", "organ_dice", "lesion_sensitivity")} if predict else {}
    print(f"{name} seed {seed}: train {train_s:.0f} s {json.dumps(shown)}", flush=True)
    return result


def per_iteration(run: dict) -> float:
    epochs = run["epoch_s"][1:] or run["epoch_s"]
    return float(np.mean(epochs)) / ITERATIONS if epochs else float("nan")


def mean_over(runs: list[dict], key) -> float:
    values = [key(r) for r in runs]
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def combine_targets(results: Path = RESULTS) -> None:
    """The method's targets.json: every budget's targets (phantom_*/targets.json), each named with its run."""
    combined = []
    for f in sorted(results.glob("phantom_*/targets.json")):
        combined += [{**t, "target": f"[{f.parent.name}] {t['target']}"} for t in json.loads(f.read_text())]
    write_targets(results / "targets.json", combined, indent=2)


def main(argv=None) -> int:
    global CONFIGURATION
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="working folder (nnU-Net folders, predictions)")
    p.add_argument("--source", default=None, help="raw nnU-Net data set folder (default: generate abdomen3d)")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--qc-seeds", type=int, nargs="*", default=[0], help="seeds of the (b) arm with a baseline judge")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="short",
                   help=f"epochs: short {EPOCHS}, long {LONG_EPOCHS}, xlong {XLONG_EPOCHS} (x {ITERATIONS} iterations "
                        "each)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--later-seed-arms", nargs="+", choices=ARMS, default=None,
                   help="arms that also run for the seeds after the first (default: all of --arms)")
    p.add_argument("--matched-contrast-hu", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="the a_freetumor_matched control (long budget only): procedural contrast set to the source's "
                        "own tumour contrast, organ minus tumour in HU (default with the generated phantom: its "
                        "documented range, abdomen3d.TUMOUR_CONTRAST_HU); not a target, it tells contrast mismatch "
                        "from budget")
    p.add_argument("-o", "--output", default=None,
                   help="default bench/results/freetumor/phantom_<configuration>[_<budget>]")
    args = p.parse_args(argv)
    CONFIGURATION = args.configuration
    suffix = "" if args.budget == "short" else f"_{args.budget}"
    stock_tr, freetumor_tr = STOCK + suffix, FREETUMOR + suffix
    epochs = BUDGETS[args.budget]
    work = Path(args.work).resolve()
    out = Path(args.output) if args.output else RESULTS / f"phantom_{CONFIGURATION}{suffix}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = stock.work_environment(work / "nnunet", device="cpu")
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(HERE / "trainers")])
    env = dict(env, nnUNet_n_proc_DA="0")

    if args.source:
        source = Path(args.source).resolve()
        if not (source / "dataset.json").is_file():
            raise SystemExit(f"--source {source}: no dataset.json (an nnU-Net raw data set folder is expected)")
    else:
        source = work / "source" / f"Dataset{abdomen3d.DEFAULT_ID}_{abdomen3d.NAME}"
        if not source.exists():
            abdomen3d.generate(work / "source", n_train=24, n_test=8, seed=0)
    matched = args.matched_contrast_hu
    if matched is None and not args.source:
        matched = sorted(-v for v in abdomen3d.TUMOUR_CONTRAST_HU)
    if "a_freetumor_matched" in args.arms and (matched is None or args.budget != "long"):
        raise SystemExit("a_freetumor_matched needs --budget long and, with --source, --matched-contrast-hu LOW HIGH")
    made = make_training_sets(source, Path(env["nnUNet_raw"]))
    pairs, sets = made["pairs"], made["sets"]
    for s in sets.values():
        if not (Path(env["nnUNet_preprocessed"]) / s["raw"].name / "nnUNetPlans.json").exists():
            stock.plan_and_preprocess(s["dataset_id"], CONFIGURATION, env)

    runs: dict[str, list[dict]] = {}

    later = set(args.arms if args.later_seed_arms is None else args.later_seed_arms)

    def arm(key, name, trainer, setting, seed, **kw):
        if key in args.arms and (seed == args.seeds[0] or key in later):
            runs.setdefault(key, []).append(run_arm(name + suffix, trainer, sets[setting], seed, env, work, out,
                                                    pairs, **kw))

    for seed in args.seeds:
        if seed == args.seeds[0]:  # stock cannot segment a class it never saw: one seed shows its organ Dice
            arm("a_stock", "organ_only_stock", stock_tr, "organ_only", seed)
        arm("a_freetumor", "organ_only_freetumor", freetumor_tr, "organ_only", seed)
        if "a_freetumor_matched" in args.arms:
            arm("a_freetumor_matched", "organ_only_freetumor_matched", freetumor_tr + "_matched", "organ_only", seed,
                extra_env={"FREETUMOR_BENCH_CONTRAST_HU": ",".join(f"{v:g}" for v in matched)})
        arm("b_stock", "scarce_stock", stock_tr, "scarce", seed)
        arm("b_freetumor", "scarce_freetumor", freetumor_tr, "scarce", seed)
    for seed in args.qc_seeds:
        stock_runs = [r for r in runs.get("b_stock", []) if r["seed"] == seed]
        if stock_runs:  # the judge: the stock (b) model of the same seed and budget
            baseline = Path(stock_runs[0]["fold"]) / "checkpoint_final.pth"
            arm("b_freetumor_qc", "scarce_freetumor_qc", freetumor_tr, "scarce", seed,
                extra_env={"nnUNet_ext_freetumor_baseline": str(baseline)})
    arm("cost_instep", "scarce_freetumor_instep", INSTEP, "scarce", args.seeds[0], predict=False)

    def ratio(key, what=per_iteration, reference="b_stock"):
        if not runs.get(key) or not runs.get(reference):
            return float("nan")
        return mean_over(runs[key], what) / mean_over(runs[reference], what)

    cost = {"stock_s_per_iteration": mean_over(runs.get("b_stock", []), per_iteration),
            "workers_ratio": ratio("b_freetumor"), "step_ratio": ratio("cost_instep"),
            "step_qc_ratio": ratio("b_freetumor_qc"),
            "predict_ratio": ratio("b_freetumor", lambda r: r["predict_s"])}

    def per_seed(key, metric):
        return [r["scores"][metric] for r in runs.get(key, [])] or [float("nan")]

    a_ml = per_seed("a_freetumor", "medium_large_sensitivity")
    b_gain = [f - s for f, s in zip(per_seed("b_freetumor", "tumour_dice"), per_seed("b_stock", "tumour_dice"),
                                    strict=False)]
    b_organ = [abs(f - s) for f, s in zip(per_seed("b_freetumor", "organ_dice"), per_seed("b_stock", "organ_dice"),
                                          strict=False)]
    targets = [
        {"target": "(a) organ-only: lesion-wise sensitivity for medium and large held-out tumours, FreeTumorTrainer "
                   "(worst seed)", "measured": min(a_ml), "goal": ">= 0.7", "met": bool(min(a_ml) >= 0.7)},
        {"target": "(a) organ-only: stock's medium/large sensitivity (0 by construction)",
         "measured": max(per_seed("a_stock", "medium_large_sensitivity")), "goal": "== 0",
         "met": bool(max(per_seed("a_stock", "medium_large_sensitivity")) == 0)},
        {"target": "(b) scarce: tumour Dice gain over stock (FreeTumorTrainer defaults, worst seed)",
         "measured": min(b_gain), "goal": ">= 0.05", "met": bool(min(b_gain) >= 0.05)},
        {"target": "(b) scarce: |organ Dice - stock organ Dice| (worst seed)", "measured": max(b_organ),
         "goal": "<= 0.02", "met": bool(max(b_organ) <= 0.02)},
        {"target": "(c) in-worker synthesis, time per iteration / stock", "measured": cost["workers_ratio"],
         "goal": "<= 1.10", "met": bool(cost["workers_ratio"] <= 1.10)},
        {"target": "(c) in-step synthesis with a baseline QC, time per iteration / stock",
         "measured": cost["step_qc_ratio"], "goal": "<= 1.4", "met": bool(cost["step_qc_ratio"] <= 1.4)},
    ]
    diagnostics = {"a_freetumor_matched": {
        "what": "control, not a target: FreeTumorTrainer with the procedural contrast set to the source's own tumour "
                "contrast", "contrast_hu": matched,
        "medium_large_sensitivity": per_seed("a_freetumor_matched", "medium_large_sensitivity"),
        "tumour_dice": per_seed("a_freetumor_matched", "tumour_dice")}} if runs.get("a_freetumor_matched") else {}
    for t in targets:  # an arm this run did not train: no verdict, rather than a miss
        if t["measured"] is None or np.isnan(t["measured"]):
            t["measured"], t["met"] = None, None
    result = {"configuration": CONFIGURATION, "source": str(source), "epochs": epochs, "iterations": ITERATIONS,
              "seeds": args.seeds, "sets": {k: {kk: str(vv) if isinstance(vv, Path) else vv for kk, vv in v.items()}
                                            for k, v in sets.items()},
              "runs": runs, "cost": cost, "targets": targets, "diagnostics": diagnostics}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    if any(t["measured"] is not None for t in targets):  # a controls-only run has no verdict to add
        (out / "targets.json").write_text(json.dumps(targets, indent=2))
    if out.parent == RESULTS:
        combine_targets()
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    def fmt(x):
        return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"

    lines = [f"# FreeTumor phantom bench ({result['configuration']}, {result['epochs']} x {result['iterations']} "
             f"iterations, seeds {result['seeds']})", "",
             "| arm | seed | tumour Dice | organ Dice | lesion sens. | medium+large sens. | FP/case | by size "
             "(detected/lesions) | s/iteration |", "|---|---|---|---|---|---|---|---|---|"]
    for key, runs in result["runs"].items():
        for r in runs:
            s = r.get("scores")
            bins = "" if s is None else ", ".join(f"{k}: {v['n_detected']}/{v['n_lesions']}"
                                                  for k, v in s["by_size"].items())
            cells = ["-"] * 6 if s is None else [fmt(s["tumour_dice"]), fmt(s["organ_dice"]),
                                                 fmt(s["lesion_sensitivity"]), fmt(s["medium_large_sensitivity"]),
                                                 fmt(s["false_positives_per_case"]), bins]
            lines.append(f"| {key} | {r['seed']} | " + " | ".join(cells) + f" | {fmt(per_iteration(r))} |")
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {fmt(t['measured'])} | {t['goal']} | "
              f"{'not run' if t['met'] is None else t['met']} |" for t in result["targets"]]
    for name, d in result.get("diagnostics", {}).items():
        lines += ["", f"{name} ({d['what']}, {d['contrast_hu'][0]:g}-{d['contrast_hu'][1]:g} HU): medium+large "
                      f"sensitivity per seed {[fmt(v) for v in d['medium_large_sensitivity']]}, tumour Dice "
                      f"{[fmt(v) for v in d['tumour_dice']]}"]
    return "\n".join(lines) + "\n"


CONFIGURATION = "2d"

if __name__ == "__main__":
    raise SystemExit(main())
