"""Stock nnU-Net vs the transformer-only network (NoCPB) vs FTSegNet on the tumour phantom, at equal segmentation
budget, two seeds, five settings; then inference ablations of the trained FTSegNet.

    python bench/ftsegnet/bench_ftsegnet_tumor2d.py tumor2d [--work /tmp/ftsegnet_tumor2d] [--seeds 0 1]

SOURCE: `tumor2d` generates the phantom (seed 0, 96x96 RGB): 40 training images and 40 held-out images that
alternate tumour / no tumour (20 tumour-free). The data sets:
- full: all 40 training images with their masks (id 794);
- few masks: the same 40 images, only the first 8 with a mask, the other 32 classification-only (label map all
  ignore label, class in classification.json) (id 799);
- few masks, naevi: as few masks, but every image (training and held-out) also holds 1-2 benign naevi (background:
  a small tumour's size, flat, lighter, sharp-edged; tumor2d `mimics=True`) (id 790). Decided before any run: the
  first two settings left every arm at Dice ~0.98 with no room for a prior to help; here the few masks leave room
  for false positives that the image-level classes of the 32 classification-only images can correct.
- abundant classes, naevi: the paper's premise of classification data far more plentiful than masks: 168 training
  images with naevi, the same first 8 with a mask as in few masks, naevi, and 160 classification-only (id 789; its
  40 held-out images are the phantom's next 40, so a different held-out set, balanced the same way). Decided before
  any run, after the naevi setting's prior was right on only 58-75 % of validation patches with 32 class images.
  The prior's step count for it is chosen on fold 0's validation cases (bench_ftsegnet_prior_sweep.py --dataset 789,
  ABUNDANT_PRIOR_ITERATIONS).
- abundant classes, naevi, balanced masks: as abundant classes, naevi, but the 8 masked images alternate tumour / no
  tumour (tumor2d `balanced_masks=True`; the 160 classification-only and the 40 held-out images are the same images)
  (id 786). Decided before any run, after the abundant-classes setting: its 8 masks held 2 tumour-free images (in
  fold 0's training split), and in one seed the CPB then used P's spatial features rather than its class (false
  positives on naevi); with 4 tumour-free masks the segmenter sees, on its own loss, that "no tumour" means "mark
  nothing". P learns from the same 168 classes but 4, so it keeps the step count its sibling's validation chose.
Every arm: the same narrow U-Net (features 16-256), TUMOR_BUDGET segmentation epochs x iterations (`--budget long`:
three times the epochs, written to ftsegnet_tumor2d_long.* and its own rows of targets.json)
(bench/ftsegnet/trainers), fold 0 of nnU-Net's split, nnUNet_ext_seed per seed. FTSegNet's prior trains
TUMOR_PRIOR_ITERATIONS Adam steps before epoch 0, on top of that budget (its cost is reported apart). Segmenters never
draw classification-only cases (stock here drops them too), so all arms see the same masked cases.

Stage `sweep` (optimizer choice for the transformer blocks): NoCPB with each rule of TRANSFORMER_RULES on the full
setting, seed 0, scored by nnU-Net's own fold-0 validation (validation/summary.json: training cases, never the
held-out ones); the rule with the best validation Dice is used by the NoCPB and FTSegNet arms of stage `main`.

Scores on the 40 held-out images (checkpoint_final, in-process nnUNetPredictor, no mirroring): Dice on the 20 tumour
images (mean), false-positive rate on the 20 tumour-free images (share with any predicted tumour pixel), lesion-wise
detection (connected components, IoU >= 0.1; pooled sensitivity, precision, F1; false positives per image).
`--arms classonly` adds the ablation FTSegNetTrainer_ClassOnly (the CPB without its spatial term alpha *
conv1x1(G_s): P's evidence enters only per image, through the gate and the class vector), scored and ablated as
FTSegNet, with no target of its own. Ablations on each trained FTSegNet: CPB closed (alpha, gate, bottleneck
projection zeroed: the NoCPB computation with FTSegNet's segmenter weights) and shuffled prior (P sees the next
held-out image, of the other kind, the segmenter the true one). Cost: one segment-phase training step (forward,
backward, update; plans' batch and patch, median of 15) and prediction time per held-out image, FTSegNet / stock, in
this process: the full setting's first-seed models taking turns image by image (3 passes over the 40 images; the
target's number), and, for reference, the median of each arm's times right after its training.
Results: bench/results/ftsegnet/ftsegnet_tumor2d.json, .md and targets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "trainers"))
from ftsegnet_bench_trainers import (  # noqa: E402
    ABUNDANT_PRIOR_ITERATIONS,
    TRANSFORMER_RULES,
    TUMOR_BUDGETS,
    TUMOR_PRIOR_ITERATIONS,
)

from nnunet_ext import stock  # noqa: E402
from nnunet_ext.benchmark import machine_info, merge_targets  # noqa: E402
from nnunet_ext.evaluation.detection import lesion_detection, pool_detection  # noqa: E402
from nnunet_ext.methods.ftsegnet.optim import SGDAdamW  # noqa: E402
from nnunet_ext.phantoms import tumor2d  # noqa: E402

# data set id, training images, classification-only training cases, benign naevi (tumour mimics) in every image,
# masked cases alternating tumour / no tumour
SETTINGS = {"full": (794, 40, 0, False, False), "few_masks": (799, 40, 32, False, False),
            "few_masks_naevi": (790, 40, 32, True, False), "abundant_classes_naevi": (789, 168, 160, True, False),
            "abundant_classes_naevi_balanced": (786, 168, 160, True, True)}
SETTING_NAMES = {"full": "full", "few_masks": "few masks", "few_masks_naevi": "few masks, naevi",
                 "abundant_classes_naevi": "few masks, abundant classes, naevi",
                 "abundant_classes_naevi_balanced": "few masks (half tumour-free), abundant classes, naevi"}
N_TEST = 40
STOCK = "nnUNetTrainer_tumorbench"
# --budget: the trainers' name suffix (TUMOR_BUDGETS) and the results' file suffix
BUDGET_SUFFIX = {"standard": "", "long": "_long"}


def budget_label(budget: str) -> str:
    """The run label of a budget's rows in targets.json (merge_targets' `configuration` key)."""
    b = TUMOR_BUDGETS[BUDGET_SUFFIX[budget]]
    return f"2d, {b['epochs']} x {b['iterations']}"


def arm_trainers(rule: str, setting: str = "full", budget: str = "standard") -> dict[str, str]:
    # the abundant-classes settings' prior gets the step count its own validation chose (more images, more steps)
    prior = f"_prior{ABUNDANT_PRIOR_ITERATIONS}" if setting.startswith("abundant_classes") and \
        ABUNDANT_PRIOR_ITERATIONS != TUMOR_PRIOR_ITERATIONS else ""
    suffix = BUDGET_SUFFIX[budget]
    return {"stock": STOCK + suffix, "nocpb": f"FTSegNetTrainer_NoCPB_tumorbench_{rule}{suffix}",
            "ftsegnet": f"FTSegNetTrainer_tumorbench_{rule}{prior}{suffix}",
            "classonly": f"FTSegNetTrainer_ClassOnly_tumorbench_{rule}{prior}{suffix}"}


def prepare(env: dict, log: Path, settings) -> dict[str, Path]:
    raw_root, pre_root = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    raw_root.mkdir(parents=True, exist_ok=True)
    out = {}
    for setting, (dataset_id, n_train, n_only, naevi, balanced_masks) in SETTINGS.items():
        if setting not in settings:
            continue
        raw = raw_root / f"Dataset{dataset_id}_{tumor2d.NAME}"
        if not (pre_root / raw.name / "nnUNetPlans.json").exists():
            tumor2d.generate(raw_root, dataset_id, n_train=n_train, n_test=N_TEST, size=96, seed=0,
                             n_classification_only=n_only, balanced_test=True, overwrite=True, mimics=naevi,
                             balanced_masks=balanced_masks)
            stock.plan_and_preprocess(dataset_id, "2d", env, log_file=log)
        out[setting] = raw
    return out


def output_folder(env: dict, raw: Path, trainer: str, seed: int) -> Path:
    return Path(env["nnUNet_results"]) / f"seed{seed}" / raw.name / f"{trainer}__nnUNetPlans__2d" / "fold_0"


def train(env: dict, raw: Path, trainer: str, seed: int, log: Path, report: dict) -> Path:
    folder = output_folder(env, raw, trainer, seed)
    if not (folder / "checkpoint_final.pth").exists():
        run_env = dict(env, nnUNet_ext_seed=str(seed), nnUNet_results=str(Path(env["nnUNet_results"]) / f"seed{seed}"))
        t0 = time.perf_counter()
        stock.train(int(raw.name[7:10]), "2d", 0, trainer, run_env, log_file=log)
        run = f"{raw.name} {trainer} seed{seed}"
        report.setdefault("train_seconds", {})[run] = round(time.perf_counter() - t0, 1)
        report.setdefault("machine", {})[run] = machine_info()
    return folder


def validation_dice(folder: Path) -> float:
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    return float(summary["foreground_mean"]["Dice"])


# ---------------------------------------------------------------------------------------------- prediction
def predictor_for(folder: Path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder.parent), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    return predictor


def close_predictor_cpb(predictor) -> None:
    """Close the CPB of the predictor's FTSegNet (close_cpb) so that it predicts with the closed weights: the
    predictor loads its list_of_parameters into the network before every case."""
    from nnunet_ext.methods.ftsegnet.network import close_cpb

    close_cpb(predictor.network)
    predictor.list_of_parameters = [{k: v.clone() for k, v in predictor.network.state_dict().items()}]


def predict_all(predictor, images: list[Path]) -> tuple[list[np.ndarray], float]:
    reader = predictor.plans_manager.image_reader_writer_class()
    segs, seconds = [], []
    for image in images:
        data, properties = reader.read_images([str(image)])
        t0 = time.perf_counter()
        seg = predictor.predict_single_npy_array(data, properties)
        seconds.append(time.perf_counter() - t0)
        segs.append(np.asarray(seg)[0] if np.asarray(seg).ndim == 3 else np.asarray(seg))
    return segs, float(np.median(seconds))


def scores(predictions: list[np.ndarray], references: list[np.ndarray]) -> dict:
    dice, fp_images, fp_pixels, detections = [], [], [], []
    for pred, ref in zip(predictions, references, strict=True):
        p, r = pred == 1, ref == 1
        detections.append(lesion_detection(r, p, (1.0, 1.0)))
        if r.any():
            dice.append(2 * float((p & r).sum()) / float(p.sum() + r.sum()))
        else:
            fp_images.append(bool(p.any()))
            fp_pixels.append(int(p.sum()))
    pooled = pool_detection(detections)
    return {"dice_tumour_images": float(np.mean(dice)), "dice_per_tumour_image": [round(d, 4) for d in dice],
            "fp_rate_tumour_free": float(np.mean(fp_images)), "fp_pixels_tumour_free_mean": float(np.mean(fp_pixels)),
            "lesion_sensitivity": pooled["lesion_sensitivity"], "lesion_precision": pooled["lesion_precision"],
            "lesion_f1": pooled["lesion_f1"], "false_positive_lesions_per_image": pooled["false_positives_per_case"]}


def shuffled_prior_predictions(predictor, images: list[Path], tumour: list[bool] | None = None
                               ) -> tuple[list[np.ndarray], float | None]:
    """P sees image i+1 (the other kind: the held-out images alternate) while the segmenter sees image i. Also the
    prior's held-out accuracy at telling tumour from tumour-free images (class 0 = no tumour), from the inputs it saw
    in the first pass: a diagnostic of what the CPB is fed, never used for a choice."""
    from nnunet_ext.methods.ftsegnet.network import FTSegNetwork

    net = predictor.network
    assert isinstance(net, FTSegNetwork)
    prior_forward = net.prior.forward
    seen: list[torch.Tensor] = []

    def recording(x):
        seen.append(x.detach().clone())
        return prior_forward(x)

    net.prior.forward = recording
    predict_all(predictor, images)
    if len(seen) != len(images):
        raise RuntimeError(f"expected one window per held-out image, got {len(seen)} for {len(images)}")
    order = iter(range(len(images)))

    def shuffled(x):
        other = seen[(next(order) + 1) % len(seen)]
        return prior_forward(other.to(x.dtype))

    accuracy = None
    if tumour is not None:
        with torch.no_grad():
            called = [int(prior_forward(x)[0].argmax(1)[0]) != 0 for x in seen]
        accuracy = float(np.mean([c == t for c, t in zip(called, tumour, strict=True)]))
    net.prior.forward = shuffled
    try:
        return predict_all(predictor, images)[0], accuracy
    finally:
        del net.prior.forward


# ---------------------------------------------------------------------------------------------- cost
def step_seconds(trainer_name: str, raw: Path, env: dict, repeats: int = 15) -> float:
    """One segment-phase training step of the trainer's network: forward (P frozen, inside), deep-supervised CE,
    backward, the trainer's optimizer update; plans' batch size and patch."""
    import ftsegnet_bench_trainers as bench
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cls = getattr(bench, trainer_name)
    plans = PlansManager(json.loads((Path(env["nnUNet_preprocessed"]) / raw.name / "nnUNetPlans.json").read_text()))
    config = plans.get_configuration("2d")
    config.configuration["ftsegnet_prior_classes"] = len(tumor2d.CLASSES)
    torch.manual_seed(0)
    net = cls.build_network_architecture(plans, config, 3, 2, True)
    transformer = set()
    if hasattr(net, "transformers"):
        transformer = {id(p) for p in net.transformers.parameters()}
        if net.prior is not None:
            net.prior.eval().requires_grad_(False)
    groups = [{"params": [p for p in net.parameters() if p.requires_grad and id(p) not in transformer],
               "rule": "sgd", "weight_decay": 3e-5}]
    if transformer:
        groups.append({"params": list(net.transformers.parameters()), "rule": cls.transformer_optimizer,
                       "lr": cls.transformer_lr, "weight_decay": cls.transformer_weight_decay,
                       "warmup": cls.transformer_warmup})
    optimizer = SGDAdamW(groups)
    x = torch.randn(config.batch_size, 3, *config.patch_size)
    y = torch.randint(0, 2, (config.batch_size, *config.patch_size))
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        outputs = net(x)
        loss = sum(torch.nn.functional.cross_entropy(
            o, torch.nn.functional.interpolate(y[:, None].float(), o.shape[2:]).long()[:, 0]) for o in outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def interleaved_prediction_seconds(folders: dict[str, Path], images: list[Path], rounds: int = 3) -> dict[str, float]:
    """Median prediction time per image for each arm, the arms taking turns image by image (each image predicted by
    every arm in a row, `rounds` passes): machine load that drifts over minutes then hits every arm alike, which
    timing each arm right after its own training does not ensure."""
    predictors = {arm: predictor_for(folder) for arm, folder in folders.items()}
    reader = next(iter(predictors.values())).plans_manager.image_reader_writer_class()
    loaded = [reader.read_images([str(image)]) for image in images]
    seconds: dict[str, list[float]] = {arm: [] for arm in predictors}
    for _ in range(rounds):
        for data, properties in loaded:
            for arm, predictor in predictors.items():
                t0 = time.perf_counter()
                predictor.predict_single_npy_array(data, properties)
                seconds[arm].append(time.perf_counter() - t0)
    return {arm: float(np.median(v)) for arm, v in seconds.items()}


# ---------------------------------------------------------------------------------------------- report
def write_report(out_dir: Path, report: dict, budget: str = "standard") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"ftsegnet_tumor2d{BUDGET_SUFFIX[budget]}"
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1))
    lines = [f"Budget: {report['budget']}", ""]
    if report.get("sweep"):
        lines += ["Optimizer sweep (NoCPB, full setting, seed 0; nnU-Net fold-0 validation Dice on training cases):",
                  "", "| transformer rule | validation Dice |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in report["sweep"].items()]
        lines += [f"| stock (reference) | {report.get('sweep_stock', float('nan')):.4f} |", "",
                  f"Chosen: {report.get('rule')}", ""]
    lines += ["| setting | seed | arm | Dice (tumour images) | FP rate (tumour-free) | lesion sens. | lesion prec. | "
              "FP lesions/image |", "|---|---|---|---|---|---|---|---|"]
    for key, r in report.get("results", {}).items():
        setting, seed, arm = key.split("|")
        lines.append(f"| {setting} | {seed} | {arm} | {r['dice_tumour_images']:.3f} | {r['fp_rate_tumour_free']:.2f} | "
                     f"{r['lesion_sensitivity']:.2f} | {r['lesion_precision']:.2f} | "
                     f"{r['false_positive_lesions_per_image']:.2f} |")
    if report.get("cost"):
        lines += ["", "Cost: " + ", ".join(f"{k} {v}" for k, v in report["cost"].items())]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    targets = report.get("targets")
    if targets:
        # each budget's rows replace only that budget's (rows written before the label existed are the standard's)
        merge_targets(out_dir / "targets.json", targets, "configuration", budget_label(budget),
                      budget_label("standard"))
        lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {t['goal']} | {t['met']} |" for t in targets]
        (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def mean_over(report: dict, setting: str, arm: str, metric: str, seeds) -> list[float]:
    return [report["results"][f"{setting}|{s}|{arm}"][metric] for s in seeds
            if f"{setting}|{s}|{arm}" in report["results"]]


def targets(report: dict, seeds) -> list[dict]:
    out = []

    def add(target, measured, goal, met):
        out.append({"target": target, "measured": measured, "goal": goal, "met": bool(met)})

    for setting in SETTINGS:
        stock_d = mean_over(report, setting, "stock", "dice_tumour_images", seeds)
        nocpb_d = mean_over(report, setting, "nocpb", "dice_tumour_images", seeds)
        if stock_d and len(nocpb_d) == len(stock_d):
            diff = [round(n - s, 4) for n, s in zip(nocpb_d, stock_d, strict=True)]
            add(f"{setting}: NoCPB Dice - stock Dice per seed (tumour images)", diff, ">= -0.01 every seed",
                min(diff) >= -0.01)
    for setting, name in SETTING_NAMES.items():
        fp_f = mean_over(report, setting, "ftsegnet", "fp_rate_tumour_free", seeds)
        fp_n = mean_over(report, setting, "nocpb", "fp_rate_tumour_free", seeds)
        if fp_f and len(fp_f) == len(fp_n):
            add(f"{name}: FP rate on tumour-free images, FTSegNet vs NoCPB per seed",
                {"ftsegnet": fp_f, "nocpb": fp_n}, "FTSegNet < NoCPB every seed",
                all(a < b for a, b in zip(fp_f, fp_n, strict=True)))
        if setting == "full":
            continue  # the Dice target is the few-masks settings' (the issue's)
        d_f = mean_over(report, setting, "ftsegnet", "dice_tumour_images", seeds)
        d_n = mean_over(report, setting, "nocpb", "dice_tumour_images", seeds)
        if d_f and len(d_f) == len(d_n):
            add(f"{name}: Dice on tumour images, FTSegNet vs NoCPB per seed",
                {"ftsegnet": [round(v, 4) for v in d_f], "nocpb": [round(v, 4) for v in d_n]},
                "FTSegNet > NoCPB every seed", all(a > b for a, b in zip(d_f, d_n, strict=True)))
    worse = []
    for key, r in report.get("ablations", {}).items():
        if not key.endswith("|ftsegnet"):
            continue  # the class-only ablation's runs have no target
        base = report["results"][key]
        closed = r["cpb_closed"]
        worse.append({"run": key, "dice_drop": round(base["dice_tumour_images"] - closed["dice_tumour_images"], 4),
                      "fp_rate_rise": round(closed["fp_rate_tumour_free"] - base["fp_rate_tumour_free"], 3)})
    if worse:
        add("CPB closed at inference makes FTSegNet worse (Dice drop or FP-rate rise, every run)", worse,
            "worse in every run", all(w["dice_drop"] > 0 or w["fp_rate_rise"] > 0 for w in worse))
    cost = report.get("cost", {})
    if "segment_step_ratio" in cost:
        add("segment-phase training step, FTSegNet / stock", cost["segment_step_ratio"], "<= 1.5",
            cost["segment_step_ratio"] <= 1.5)
    if "prediction_ratio" in cost:
        add("prediction time per image, FTSegNet / stock", cost["prediction_ratio"], "<= 1.35",
            cost["prediction_ratio"] <= 1.35)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["tumor2d"], help="tumor2d: generate the phantom")
    p.add_argument("--work", type=Path, default=Path("/tmp/ftsegnet_tumor2d"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--stage", choices=("sweep", "main", "all"), default="all")
    p.add_argument("--rule", choices=sorted(TRANSFORMER_RULES), help="skip the sweep, use this rule")
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS),
                   help="settings to train and score in this run (the others' results stay in the report)")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "ftsegnet")
    p.add_argument("--budget", choices=sorted(BUDGET_SUFFIX), default="standard",
                   help="standard: TUMOR_BUDGET (30 x 20); long: three times the epochs (90 x 20), its own report "
                        "(ftsegnet_tumor2d_long.*) and targets rows; needs --rule, no sweep, no cost stage (the cost "
                        "targets are per step and per image, measured by the standard run)")
    p.add_argument("--arms", nargs="+", choices=("stock", "nocpb", "ftsegnet", "classonly"),
                   default=["stock", "nocpb", "ftsegnet"],
                   help="arms to train and score in this run (a target needs both of its arms); classonly: the "
                        "ablation FTSegNetTrainer_ClassOnly (the CPB without its spatial term), no target of its own")
    a = p.parse_args(argv)
    if a.budget != "standard" and (a.rule is None or a.stage != "main"):
        p.error("--budget long runs stage main only: give --stage main --rule RULE")
    seg_budget = TUMOR_BUDGETS[BUDGET_SUFFIX[a.budget]]

    env = stock.work_environment(a.work / "nnunet", "cpu")
    env["nnUNet_extTrainer"] = f"{env['nnUNet_extTrainer']}{os.pathsep}{HERE / 'trainers'}"
    env["nnUNet_n_proc_DA"] = "0"
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_extTrainer")})
    log = a.work / "commands.log"
    a.work.mkdir(parents=True, exist_ok=True)
    out_file = a.out / f"ftsegnet_tumor2d{BUDGET_SUFFIX[a.budget]}.json"
    report = json.loads(out_file.read_text()) if out_file.exists() else {}
    report.setdefault("results", {})
    report.setdefault("ablations", {})
    report["budget"] = (f"segmentation {seg_budget['epochs']} epochs x {seg_budget['iterations']} iterations for "
                        f"every arm (plans' batch size), FTSegNet's prior {TUMOR_PRIOR_ITERATIONS} iterations before "
                        f"epoch 0 on top ({ABUNDANT_PRIOR_ITERATIONS} in the abundant_classes settings); U-Net "
                        f"features 16-256; fold 0; seeds {a.seeds}; training images (classification-only among them): "
                        + ", ".join(f"{k} {v[1]} ({v[2]})" for k, v in SETTINGS.items()) +
                        f"; {N_TEST} held-out (20 tumour-free); one process on 2 CPU cores under the project's CPU "
                        f"lock")
    # the cost stage needs the standard budget's stock and FTSegNet arms (per step, per image); without it the cost
    # numbers stay those of the last run that had it
    cost_stage = a.budget == "standard" and {"stock", "ftsegnet"} <= set(a.arms)
    # full: the optimizer sweep's data and the cost's plans
    raws = prepare(env, log, set(a.settings) | ({"full"} if cost_stage or a.stage != "main" else set()))

    rule = a.rule or report.get("rule")
    if a.stage in ("sweep", "all") and a.rule is None:
        report["sweep"] = {}
        for name in TRANSFORMER_RULES:
            folder = train(env, raws["full"], f"FTSegNetTrainer_NoCPB_tumorbench_{name}", a.seeds[0], log, report)
            report["sweep"][name] = validation_dice(folder)
            write_report(a.out, report, a.budget)
        report["sweep_stock"] = validation_dice(train(env, raws["full"], STOCK, a.seeds[0], log, report))
        rule = max(report["sweep"], key=report["sweep"].get)
    report["rule"] = rule
    write_report(a.out, report, a.budget)
    if a.stage == "sweep":
        return 0

    images = {s: sorted((raw / "imagesTs").glob("*_0000.png")) for s, raw in raws.items()}
    references = {s: [np.asarray(Image.open(raw / "labelsTs" / f"{i.name[:-len('_0000.png')]}.png"))
                      for i in images[s]] for s, raw in raws.items()}
    prediction_seconds: dict[str, list[float]] = {}
    for seed in a.seeds:
        for setting, raw in raws.items():
            if setting not in a.settings:
                continue  # prepared for the sweep and the cost only
            for arm, trainer in arm_trainers(rule, setting, a.budget).items():
                if arm not in a.arms:
                    continue
                folder = train(env, raw, trainer, seed, log, report)
                predictor = predictor_for(folder)
                segs, per_image = predict_all(predictor, images[setting])
                prediction_seconds.setdefault(arm, []).append(per_image)
                key = f"{setting}|{seed}|{arm}"
                report["results"][key] = scores(segs, references[setting])
                vitals = torch.load(folder / "checkpoint_final.pth", map_location="cpu",
                                    weights_only=False).get("nnunet_ext", {}).get("vitals", [])
                if vitals:
                    report["results"][key]["final_vitals"] = vitals[-1]
                if arm in ("ftsegnet", "classonly"):
                    tumour = [bool((r == 1).any()) for r in references[setting]]
                    shuffled_segs, prior_accuracy = shuffled_prior_predictions(predictor, images[setting], tumour)
                    report["results"][key]["prior_heldout_tumour_accuracy"] = prior_accuracy
                    shuffled = scores(shuffled_segs, references[setting])
                    close_predictor_cpb(predictor)
                    closed = scores(predict_all(predictor, images[setting])[0], references[setting])
                    report["ablations"][key] = {"cpb_closed": closed, "shuffled_prior": shuffled}
                write_report(a.out, report, a.budget)

    if not cost_stage:
        report["targets"] = targets(report, a.seeds)
        write_report(a.out, report, a.budget)
        return 0
    raw = raws["full"]
    trainers = arm_trainers(rule)
    steps = {arm: step_seconds(trainers[arm], raw, env) for arm in ("stock", "nocpb", "ftsegnet")}
    report["cost"] = {
        "segment_step_seconds": {k: round(v, 4) for k, v in steps.items()},
        "segment_step_ratio": round(steps["ftsegnet"] / steps["stock"], 3),
        "nocpb_step_ratio": round(steps["nocpb"] / steps["stock"], 3),
        "prediction_seconds_per_image_median": {k: round(statistics.median(v), 4)
                                                for k, v in prediction_seconds.items()},
    }
    if prediction_seconds:
        report["cost"]["prediction_ratio_after_each_training"] = round(
            statistics.median(prediction_seconds["ftsegnet"]) / statistics.median(prediction_seconds["stock"]), 3)
    # the target's number: the full setting's trained stock and FTSegNet (first seed) predicting in turns
    interleaved = interleaved_prediction_seconds(
        {arm: train(env, raw, trainers[arm], a.seeds[0], log, report) for arm in ("stock", "ftsegnet")}, images["full"])
    report["cost"]["prediction_seconds_per_image_interleaved"] = {k: round(v, 4) for k, v in interleaved.items()}
    report["cost"]["prediction_ratio"] = round(interleaved["ftsegnet"] / interleaved["stock"], 3)
    report["targets"] = targets(report, a.seeds)
    write_report(a.out, report, a.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
