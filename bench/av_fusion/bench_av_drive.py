"""Stock nnU-Net vs AVFusionTrainer (detached branches) vs AVFusionTrainer_attached on real DRIVE-AV (or LES-AV,
HRF-AV), equal CPU budget.

    python bench/av_fusion/bench_av_drive.py SOURCE [--work /tmp/av_drive] [--stage prepare time train evaluate]
                                             [--seeds 0 1] [--arms ...] [--epochs 10] [--dataset auto]

SOURCE is an A/V fundus folder in its public layout (training/ and, when present, a test/ split): DRIVE-AV, LES-AV
or HRF-AV, told apart by their file names (`--dataset` to say it). Stages, each restartable (a training with a
checkpoint_final, a prediction folder with all cases are not redone):
- prepare: convert (Dataset711 / 712 / 713), hold out the test cases (the source's test/ split when it has one, else
  DRIVE-AV's training images 37-40, or for LES-AV and HRF-AV, which have no official split, the last fifth of the
  training cases in numeric order, at least one: never seen in training or in checkpoint choice), `nnunet_ext plan
  --preset cpu_context -c 2d` (plans/presets.py: 8-128 features, patch never below 256 px a side; on DRIVE-AV
  256x256, batch 2; 128-pixel patches lose the optic disc and vessel tracing that tell arteries from veins); with
  fewer than 8 training cases the one case that gives nnU-Net's per-epoch pseudo-Dice stays in training (nothing
  is chosen on it, and a set of 3 would otherwise train on 2);
- time: seconds per training step and per predicted case of stock and AVFusionTrainer on those plans
  (bench/harness, same run), for the cost target (AVFusion step <= 1.05 x three stock steps);
- train: for each seed, the arms (default stock, AVFusionTrainer, AVFusionTrainer_attached; AVFusionTrainer_mean on
  request; bench/av_fusion/trainers: same epochs x iterations x batch) with the stock
  nnUNetv2_train, then nnUNetv2_predict --save_probabilities (no mirroring, the same for all) of the held-out cases;
- evaluate: `nnunet_ext evaluate --av` (paper protocol, probability protocol, intra-segment misclassification,
  crossing F1), then bench/results/av_fusion/av_drive[_E<epochs>].{json,md} (LES-AV: av_les_av_E<epochs>.*, HRF-AV:
  av_hrf_av_E<epochs>.*) and this data set's rows of targets.json (the other data sets' rows are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "trainers"))
from av_drive_trainers import EPOCHS_ENV  # noqa: E402

from nnunet_ext import stock  # noqa: E402
from nnunet_ext.benchmark import merge_targets  # noqa: E402
from nnunet_ext.dataset_conversion._common import ConversionError  # noqa: E402
from nnunet_ext.dataset_conversion._fundus import split_folders  # noqa: E402
from nnunet_ext.plans import PRESETS  # noqa: E402

RESULTS = HERE.parent / "results" / "av_fusion"
PRESET = "cpu_context"
PLANS = PRESETS[PRESET].plans_identifier
CONFIGURATION = "2d"
ARMS = {"stock": "nnUNetTrainer_drivecpu", "AVFusionTrainer": "AVFusionTrainer_drivecpu",
        "AVFusionTrainer_attached": "AVFusionTrainer_attached_drivecpu",
        "AVFusionTrainer_mean": "AVFusionTrainer_mean_drivecpu"}
DEFAULT_ARMS = ("stock", "AVFusionTrainer", "AVFusionTrainer_attached")  # the mean-fusion arm on request (--arms)
STAGES = ("prepare", "time", "train", "evaluate")
DEFAULT_EPOCHS = 10
METRICS = ("sensitivity", "auc_roc", "f1", "auc_pr", "mse")
MIN_TRAIN_FOR_SEPARATE_VAL = 8


@dataclass(frozen=True)
class AVSet:
    key: str
    title: str
    dataset_id: int
    folder: str  # the data set folder, also the name of its converter module in nnunet_ext.dataset_conversion
    paper: tuple  # Zhou et al. 2021, sigmoid version, %: METRICS in order
    holdout: tuple = ()  # fixed held-out training cases when the source has no test/; empty: the last fifth

    @property
    def slug(self) -> str:
        return self.folder.split("_", 1)[1].lower()  # drive_av

    @property
    def paper_metrics(self) -> dict:
        return dict(zip(METRICS, self.paper, strict=True))

    def stem(self, epochs: int) -> str:
        base = "av_drive" if self.key == "drive" else f"av_{self.slug}"
        return base if epochs == DEFAULT_EPOCHS and self.key == "drive" else f"{base}_E{epochs}"


SETS = {s.key: s for s in (
    AVSet("drive", "DRIVE-AV", 711, "Dataset711_DRIVE_AV", (69.83, 84.2, 71.26, 72.41, 2.92),
          ("37_training", "38_training", "39_training", "40_training")),
    AVSet("les", "LES-AV", 712, "Dataset712_LES_AV", (67.08, 83.01, 68.22, 69.63, 2.19)),
    AVSet("hrf", "HRF-AV", 713, "Dataset713_HRF_AV", (69.19, 84.15, 71.92, 73.65, 1.94)),
)}
DRIVE = SETS["drive"]


def detect_set(source: Path) -> AVSet | None:
    """Which public A/V set a source folder holds, from its images' names: DRIVE `NN_training.tif`, HRF `NN_x.jpg`
    (x = dr, g, h), LES-AV plain numbers `N.png`."""
    try:
        splits = split_folders(source)
    except ConversionError:
        return None
    stems = [f.stem for folder in splits.values() for f in (folder / "images").glob("*") if f.is_file()]
    if not stems:
        return None
    if all(re.fullmatch(r"\d+_(training|test)", s) for s in stems):
        return SETS["drive"]
    if all(re.fullmatch(r"\d+_(dr|g|h)", s) for s in stems):
        return SETS["hrf"]
    if all(re.fullmatch(r"\d+", s) for s in stems):
        return SETS["les"]
    return None


def numeric_order(case: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", case))


def default_holdout(raw: Path, ds: AVSet) -> tuple[str, ...]:
    """The set's fixed held-out cases, else the last fifth of the training cases in numeric order (at least one)."""
    if ds.holdout:
        return ds.holdout
    cases = sorted((p.name[:-len("_0000.png")] for p in (raw / "imagesTr").glob("*_0000.png")), key=numeric_order)
    if len(cases) < 3:
        raise SystemExit(f"{raw}: {len(cases)} training images; holding some out needs at least 3")
    return tuple(cases[-max(1, math.ceil(len(cases) / 5)):])


def hold_out(raw: Path, cases: tuple[str, ...]) -> list[str]:
    """Move the given training cases to the test folders and fix numTraining."""
    missing = [c for c in cases if not (raw / "imagesTr" / f"{c}_0000.png").exists()]
    if missing:
        raise SystemExit(f"{raw}: held-out cases {missing} are not among the converted training images")
    for kind in ("images", "labels", "masks"):
        (raw / f"{kind}Ts").mkdir(exist_ok=True)
    for case in cases:
        (raw / "imagesTr" / f"{case}_0000.png").rename(raw / "imagesTs" / f"{case}_0000.png")
        for kind in ("labels", "masks"):
            (raw / f"{kind}Tr" / f"{case}.png").rename(raw / f"{kind}Ts" / f"{case}.png")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    dataset_json["numTraining"] = len(list((raw / "imagesTr").glob("*_0000.png")))
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return list(cases)


def write_split(preprocessed: Path, n_val: int = 1) -> bool:
    """Fold 0 trains on all but one case; nnU-Net's per-epoch pseudo-Dice uses that one, nothing is chosen on it.
    With fewer than MIN_TRAIN_FOR_SEPARATE_VAL cases that one stays in training too (returns True then)."""
    cases = sorted(p.name[:-len(".b2nd")] for p in (preprocessed / f"{PLANS}_{CONFIGURATION}").glob("*.b2nd")
                   if not p.name.endswith("_seg.b2nd"))
    shared = len(cases) < MIN_TRAIN_FOR_SEPARATE_VAL
    train = cases if shared else cases[:-n_val]
    (preprocessed / "splits_final.json").write_text(json.dumps([{"train": train, "val": cases[-n_val:]}]))
    return shared


def prepare(source: Path, ds: AVSet, env: dict, log: Path) -> dict:
    import importlib

    convert = importlib.import_module(f"nnunet_ext.dataset_conversion.{ds.folder}").convert
    raw_root, pre_root = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    raw = raw_root / ds.folder
    if not (pre_root / raw.name / f"{PLANS}.json").exists():
        raw_root.mkdir(parents=True, exist_ok=True)
        raw = convert(source, out_root=raw_root, overwrite=True)
        if any((raw / "imagesTs").glob("*.png")):
            unlabelled = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTs").glob("*_0000.png")
                                if not (raw / "labelsTs" / p.name.replace("_0000.png", ".png")).exists())
            if unlabelled:
                raise SystemExit(f"{source}: test images without an A/V label ({', '.join(unlabelled[:5])}); the "
                                 "bench scores held-out images against their labels")
            split = f"the source's {ds.title} test split"
        else:
            held = hold_out(raw, default_holdout(raw, ds))
            rule = "" if ds.holdout else "the last fifth in numeric order, "
            split = (f"training images {', '.join(c.removesuffix('_training') for c in held)} held out ({rule}no "
                     "test/ in the source)")
        stock.plan(ds.dataset_id, PRESET, env, [CONFIGURATION], log_file=log)
        if write_split(pre_root / raw.name):
            split += f"; under {MIN_TRAIN_FOR_SEPARATE_VAL} training images, so the pseudo-Dice case stays in training"
        (raw / "bench_split.txt").write_text(split)
    return {"split": (raw / "bench_split.txt").read_text(),
            "test_cases": sorted(p.name[:-len(".png")] for p in (raw / "labelsTs").glob("*.png"))}


def time_steps(ds: AVSet, env: dict, out: Path, log: Path) -> dict:
    """Step and prediction seconds of stock and AVFusionTrainer on the bench plans, in one process."""
    tag = f"{ds.slug}_{CONFIGURATION}_{PRESET}_cpu"
    stock.run([sys.executable, HERE.parent / "harness" / "bench_trainers.py", "-d", str(ds.dataset_id), "-c",
               CONFIGURATION, "-p", PLANS, "-tr", "AVFusionTrainer", "--device", "cpu", "--iterations", "8",
               "--warmup", "2", "--predict-cases", "1", "--out", out, "--tag", tag], env, log_file=log)
    report = json.loads((out / f"{tag}.json").read_text())
    rows = {r["trainer"]: r for r in report["results"]}
    s, f = rows["nnUNetTrainer"], rows["AVFusionTrainer"]
    return {"stock_step_s": s["seconds_per_iteration"], "avfusion_step_s": f["seconds_per_iteration"],
            "step_ratio_to_stock": f["seconds_per_iteration"] / s["seconds_per_iteration"],
            "step_ratio_to_three_stock": f["seconds_per_iteration"] / (3 * s["seconds_per_iteration"]),
            "stock_predict_case_s": s["seconds_per_predicted_case"],
            "avfusion_predict_case_s": f["seconds_per_predicted_case"],
            "predict_ratio_to_stock": f["seconds_per_predicted_case"] / s["seconds_per_predicted_case"]}


def run_dir(work: Path, seed: int) -> Path:
    return work / f"seed{seed}"


def model_folder(work: Path, seed: int, arm: str, ds: AVSet = DRIVE) -> Path:
    """The trained model (its fold_0 inside) of one arm and seed in the work folder."""
    return run_dir(work, seed) / "results" / ds.folder / f"{ARMS[arm]}__{PLANS}__{CONFIGURATION}"


def work_set(work: Path) -> AVSet:
    """The data set a work folder's trainings are of (work folders from before LES-AV/HRF-AV were DRIVE-AV's)."""
    state_file = work / "bench_state.json"
    key = json.loads(state_file.read_text()).get("dataset", "drive") if state_file.exists() else "drive"
    return SETS[key]


def bench_environment(work: Path, epochs: int) -> dict:
    """The environment the bench's stock commands run in: nnU-Net folders under the work folder, our and the bench's
    trainers findable, single-process augmentation, the epochs for the bench trainers."""
    env = stock.work_environment(work / "nnunet", "cpu")
    env["nnUNet_extTrainer"] = f"{env['nnUNet_extTrainer']}:{HERE / 'trainers'}"
    env["nnUNet_n_proc_DA"] = "0"
    env[EPOCHS_ENV] = str(epochs)
    return env


def train_arms(work: Path, ds: AVSet, env: dict, seeds: list[int], arms: list[str], log: Path, state: dict) -> None:
    raw = Path(env["nnUNet_raw"]) / ds.folder
    n_test = len(list((raw / "imagesTs").glob("*_0000.png")))
    for seed in seeds:
        for arm in arms:
            trainer = ARMS[arm]
            seed_env = dict(env, nnUNet_results=str(run_dir(work, seed) / "results"), nnUNet_ext_seed=str(seed))
            fold = model_folder(work, seed, arm, ds) / "fold_0"
            key = f"seed {seed} {arm}"
            if not (fold / "checkpoint_final.pth").exists():
                t0 = time.perf_counter()
                stock.train(ds.dataset_id, CONFIGURATION, 0, trainer, seed_env, plans=PLANS, log_file=log)
                state.setdefault("train_seconds", {})[key] = round(time.perf_counter() - t0, 1)
                save_state(work, state)
            pred = run_dir(work, seed) / f"pred_{arm}"
            if len(list(pred.glob("*.npz"))) < n_test:
                if pred.exists():
                    shutil.rmtree(pred)
                t0 = time.perf_counter()
                stock.run([stock.find_command("nnUNetv2_predict"), "-i", raw / "imagesTs", "-o", pred, "-d",
                           str(ds.dataset_id), "-c", CONFIGURATION, "-p", PLANS, "-tr", trainer, "-f", "0", "-device",
                           "cpu", "-npp", "1", "-nps", "1", "--save_probabilities", "--disable_tta"], seed_env,
                          log_file=log)
                state.setdefault("predict_seconds", {})[key] = round(time.perf_counter() - t0, 1)
                save_state(work, state)


def state_budget_differs(work: Path, epochs: int) -> bool:
    state_file = work / "bench_state.json"
    return state_file.exists() and json.loads(state_file.read_text()).get("epochs", DEFAULT_EPOCHS) != epochs


def save_state(work: Path, state: dict) -> None:
    (work / "bench_state.json").write_text(json.dumps(state, indent=2))


def evaluate_arms(work: Path, ds: AVSet, env: dict, seeds: list[int], arms: list[str], log: Path) -> dict:
    raw = Path(env["nnUNet_raw"]) / ds.folder
    results: dict = {}
    for seed in seeds:
        for arm in arms:
            pred = run_dir(work, seed) / f"pred_{arm}"
            if not pred.exists():
                continue
            ev = run_dir(work, seed) / f"eval_{arm}"
            stock.run([stock.find_command("nnunet_ext"), "evaluate", "-ref", raw / "labelsTs", "-pred", pred,
                       "--images", raw / "imagesTs", "--av", "--fov", raw / "masksTs", "-o", ev], env, log_file=log)
            summary = json.loads((ev / "summary.json").read_text())
            per_case = json.loads((ev / "av_cases.json").read_text())
            results.setdefault(arm, {})[str(seed)] = {"summary": summary["av_protocol"], "cases": per_case}
    return results


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.2f}"


def write_report(out: Path, work: Path, ds: AVSet, state: dict, results: dict) -> dict:
    """JSON with everything, this set's rows of targets.json, and the markdown tables (paper protocol, %)."""
    sys.path.insert(0, str(HERE / "trainers"))
    from av_drive_trainers import BUDGET

    # the trainers module was imported before --epochs reached the environment: its BUDGET holds the default epochs,
    # while the trainings ran (in their own processes) with the work folder's
    epochs = int(state["epochs"])
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((Path(state["preprocessed"]) / f"{PLANS}.json").read_text())["configurations"][CONFIGURATION]
    feats = cfg["architecture"]["arch_kwargs"]["features_per_stage"]
    budget = (f"{epochs} epochs x {BUDGET['iterations']} iterations x batch {cfg['batch_size']} for every "
              f"arm (AVFusion runs three U-Nets per step), {cfg['patch_size'][0]}x{cfg['patch_size'][1]} patches, "
              f"U-Net features {'-'.join(map(str, feats))} (plans {PLANS}), 2 shared CPU cores, checkpoint_final, "
              f"prediction without mirroring; test: {state['split']} ({len(state['test_cases'])} "
              f"image{'s' if len(state['test_cases']) != 1 else ''})")

    def seed_value(arm: str, seed: str, group: str, metric: str) -> float:
        s = results[arm][seed]["summary"][group]
        return s["weighted"][metric]["mean"] if "weighted" in s else s[metric]["mean"]

    seeds = sorted({s for arm in results.values() for s in arm})
    table: dict = {}
    for arm in results:
        for seed in seeds:
            if seed not in results[arm]:
                continue
            paper = results[arm][seed]["summary"]["paper"]
            row = {"weighted": {m: paper["weighted"][m]["mean"] for m in METRICS},
                   "per_class": {c: {m: v["mean"] for m, v in paper["per_class"][c].items() if m in METRICS}
                                 for c in paper["per_class"]}}
            seg = results[arm][seed]["summary"]["segments"]
            row["segments"] = {k: seg[k]["mean"] for k in ("mixed_fraction", "misclassified_pixel_fraction")}
            row["crossing_f1"] = paper["per_class"]["uncertain"]["f1"]["mean"]
            row["image_f1"] = {c["case"]: c["weighted"]["f1"] for c in results[arm][seed]["cases"]}
            row["image_mixed_fraction"] = {c["case"]: c["segments"]["mixed_fraction"]
                                           for c in results[arm][seed]["cases"]}
            row["probability_mode_weighted"] = {m: results[arm][seed]["summary"]["probability"]["weighted"][m]["mean"]
                                                for m in ("auc_roc", "auc_pr", "mse")}
            table.setdefault(arm, {})[seed] = row

    prefix = "" if ds is DRIVE else f"{ds.title} "
    targets = []
    for seed in seeds:
        if not all(seed in table.get(a, {}) for a in ("stock", "AVFusionTrainer")):
            continue
        s, f = table["stock"][seed], table["AVFusionTrainer"][seed]
        targets.append({"target": f"{prefix}seed {seed}: AVFusionTrainer weighted F1 (paper protocol, held-out) > "
                                  "stock",
                        "measured": round(100 * f["weighted"]["f1"], 2), "goal": f"> {100 * s['weighted']['f1']:.2f}",
                        "met": bool(f["weighted"]["f1"] > s["weighted"]["f1"])})
        targets.append({"target": f"{prefix}seed {seed}: AVFusionTrainer intra-segment mixed-label fraction < stock",
                        "measured": round(f["segments"]["mixed_fraction"], 4),
                        "goal": f"< {s['segments']['mixed_fraction']:.4f}",
                        "met": bool(f["segments"]["mixed_fraction"] < s["segments"]["mixed_fraction"])})
        targets.append({"target": f"{prefix}seed {seed}: stock artery F1 >= 0.5 (the budget separates arteries from "
                                  "veins)",
                        "measured": round(s["per_class"]["artery"]["f1"], 4), "goal": ">= 0.5",
                        "met": bool(s["per_class"]["artery"]["f1"] >= 0.5)})
    cost = state.get("cost")
    if cost:
        targets.append({"target": f"{prefix}AVFusionTrainer training step <= 1.05 x three stock steps (same network, "
                                  "same run)",
                        "measured": round(cost["step_ratio_to_three_stock"], 3), "goal": "<= 1.05",
                        "met": bool(cost["step_ratio_to_three_stock"] <= 1.05)})
    report = {"budget": budget, "budget_counted_as": "epochs x iterations x batch, equal for every arm; wall time "
              "reported beside it", "plans": PLANS, "configuration": cfg, "state": state, "table": table,
              "results": results, "dataset": ds.title, "paper_sigmoid": ds.paper_metrics}
    report["targets"] = [{**t, "dataset": ds.title} for t in targets]
    stem = ds.stem(epochs)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    # rows without a data set are DRIVE-AV's, written before the script took other sets
    merge_targets(out / "targets.json", targets, "dataset", ds.title, DRIVE.title, indent=2)

    metrics = list(METRICS)
    paper = ds.paper_metrics
    lines = [f"{ds.title}, paper protocol (hard labels inside the FOV; per image, weighted over artery/vein/uncertain "
             f"by reference pixels; mean over the held-out images, %). Budget: {budget}.", "",
             "| arm | seed | " + " | ".join(metrics) + " | artery F1 | vein F1 | crossing F1 | mixed segments | "
             "misclassified segment pixels | train s |", "|---" * (len(metrics) + 8) + "|"]
    for arm, by_seed in table.items():
        for seed, row in by_seed.items():
            pc = row["per_class"]
            lines.append(f"| {arm} | {seed} | " + " | ".join(_pct(row["weighted"][m]) for m in metrics)
                         + f" | {_pct(pc['artery']['f1'])} | {_pct(pc['vein']['f1'])} | {_pct(row['crossing_f1'])}"
                         f" | {_pct(row['segments']['mixed_fraction'])}"
                         f" | {_pct(row['segments']['misclassified_pixel_fraction'])}"
                         f" | {state.get('train_seconds', {}).get(f'seed {seed} {arm}', 'n/a')} |")
    lines.append(f"| paper (Zhou et al. 2021, {ds.title}, full training, mean over runs) | | "
                 + " | ".join(str(paper[m]) for m in metrics) + " | | | | | | |")
    lines += ["", "Mean +- std over the seeds (the paper's +- is over training runs too):", "",
              "| arm | " + " | ".join(metrics) + " | mixed segments | misclassified segment pixels |",
              "|---" * (len(metrics) + 3) + "|"]
    for arm, by_seed in table.items():
        rows = list(by_seed.values())
        cells = [np.array([r["weighted"][m] for r in rows]) for m in metrics]
        cells += [np.array([r["segments"][k] for r in rows]) for k in ("mixed_fraction",
                                                                        "misclassified_pixel_fraction")]
        lines.append(f"| {arm} | " + " | ".join(f"{_pct(c.mean())} +- {_pct(c.std())}" for c in cells) + " |")
    lines += ["", "Per class (paper protocol, mean over seeds of the mean over images, %):", "",
              "| arm | class | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for arm, by_seed in table.items():
        for name in next(iter(by_seed.values()))["per_class"]:
            lines.append(f"| {arm} | {name} | " + " | ".join(
                _pct(float(np.mean([r["per_class"][name][m] for r in by_seed.values()]))) for m in metrics) + " |")
    lines += ["", "Probability mode (AUC-ROC / AUC-PR / MSE of the softmax maps, weighted, %; not the paper's "
              "protocol):", ""]
    for arm, by_seed in table.items():
        for seed, row in by_seed.items():
            p = row["probability_mode_weighted"]
            lines.append(f"- {arm} seed {seed}: {_pct(p['auc_roc'])} / {_pct(p['auc_pr'])} / {_pct(p['mse'])}")
    for arm in (a for a in ARMS if a != "stock"):
        for seed in seeds:
            if seed not in table.get(arm, {}) or seed not in table.get("stock", {}):
                continue
            a, b = table[arm][seed], table["stock"][seed]
            f1_wins = sum(a["image_f1"][c] > b["image_f1"][c] for c in a["image_f1"])
            seg_wins = sum(a["image_mixed_fraction"][c] < b["image_mixed_fraction"][c] for c in a["image_f1"])
            lines.append(f"- {arm} vs stock, seed {seed}: higher weighted F1 on {f1_wins} of {len(a['image_f1'])} "
                         f"held-out images, fewer mixed segments on {seg_wins}")
    if cost:
        lines += ["", f"Cost ({PLANS} {CONFIGURATION}, same run): stock step {cost['stock_step_s']:.3f} s, "
                  f"AVFusionTrainer {cost['avfusion_step_s']:.3f} s = {cost['step_ratio_to_stock']:.2f}x stock = "
                  f"{cost['step_ratio_to_three_stock']:.3f}x three stock steps; prediction per case "
                  f"{cost['stock_predict_case_s']:.1f} s vs {cost['avfusion_predict_case_s']:.1f} s "
                  f"({cost['predict_ratio_to_stock']:.2f}x)."]
    lines += ["", "Targets: " + "; ".join(f"{t['target']}: {t['measured']} ({t['goal']}, "
                                          f"{'met' if t['met'] else 'MISSED'})" for t in targets), ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="DRIVE-AV, LES-AV or HRF-AV folder (training/, optionally test/)")
    p.add_argument("--work", type=Path, default=Path("/tmp/av_drive"))
    p.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(DEFAULT_ARMS))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help="epochs x 100 iterations for every arm (results: av_drive_E<epochs>.* unless the default; "
                        "use a fresh --work per budget)")
    p.add_argument("--dataset", choices=("auto", *SETS), default="auto",
                   help="which A/V set SOURCE holds (auto: from its image names)")
    a = p.parse_args(argv)
    if not (a.source / "training").is_dir():
        print(f"error: {a.source} has no training/ folder (expected the DRIVE-AV, LES-AV or HRF-AV layout)",
              file=sys.stderr)
        return 2
    ds = SETS.get(a.dataset) or detect_set(a.source)
    if ds is None:
        print(f"error: {a.source}: cannot tell from the image names whether this is DRIVE-AV (NN_training.tif), "
              "HRF-AV (NN_dr/g/h.jpg) or LES-AV (N.png); pass --dataset", file=sys.stderr)
        return 2
    held = work_set(a.work) if (a.work / "bench_state.json").exists() else ds
    if held is not ds:
        print(f"error: {a.work} holds {held.title} trainings, not {ds.title}; use a fresh --work", file=sys.stderr)
        return 2

    a.work.mkdir(parents=True, exist_ok=True)
    env = bench_environment(a.work, a.epochs)
    os.environ[EPOCHS_ENV] = str(a.epochs)
    if state_budget_differs(a.work, a.epochs):
        print(f"error: {a.work} holds trainings of another budget; use a fresh --work for --epochs {a.epochs}",
              file=sys.stderr)
        return 2
    log = a.work / "commands.log"
    state_file = a.work / "bench_state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    state["epochs"] = a.epochs
    state["dataset"] = ds.key
    state.update(prepare(a.source, ds, env, log))
    state["preprocessed"] = str(Path(env["nnUNet_preprocessed"]) / ds.folder)
    save_state(a.work, state)
    if "time" in a.stage:
        state["cost"] = time_steps(ds, env, a.out, log)
        save_state(a.work, state)
        print(json.dumps(state["cost"], indent=2))
    if "train" in a.stage:
        train_arms(a.work, ds, env, a.seeds, a.arms, log, state)
    if "evaluate" in a.stage:
        # every arm trained in this work folder, so that adding an arm later keeps the others in the report
        results = evaluate_arms(a.work, ds, env, a.seeds, list(ARMS), log)
        write_report(a.out, a.work, ds, state, results)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
