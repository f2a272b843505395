"""Stock nnUNetTrainer vs FocusNetV2Trainer at the same budget on the head-and-neck phantom (3d_fullres, CPU).

Both trainers of bench/focusnet/trainers (same narrow S-Net, 12 epochs x 10 iterations; --suffix _demo for the
full-width _demo variants, 24 x 20, about 2 hours of a shared 2-core CPU) train fold 0 of `hn3d` (10 training
cases), predict the held-out cases with stock nnUNetv2_predict and are evaluated with `nnunet_ext evaluate`
(per-organ Dice and HD95); the small organs are summarised separately. For FocusNetV2 the heatmap peaks of the
held-out cases are compared with the reference centroids (mm). Results:
bench/results/focusnet/focusnet_hn3d_3d_cpu*.json.

    python bench/focusnet/bench_focusnet_phantom.py --root /tmp/focusnet_bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_ext import stock
from nnunet_ext.evaluation.metrics import overlap_metrics
from nnunet_ext.methods.focusnet.roi import centroid, crop, peak, place_box
from nnunet_ext.phantoms import hn3d

REPO = Path(__file__).resolve().parents[2]


def _held_out(model_dir: Path, raw: Path):
    """The trained network (as stock prediction builds it) and, per held-out case, (normalised image, S-Net output,
    reference labels). Phantom cases are one patch each, so no sliding window is needed."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    net = predictor.network
    net.load_state_dict(predictor.list_of_parameters[0])
    net.eval()
    props = predictor.plans_manager.foreground_intensity_properties_per_channel["0"]
    norm = CTNormalization(use_mask_for_norm=False, intensityproperties=props)
    cases = []
    for image_file in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        case = image_file.name[:-len("_0000.nii.gz")]
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_file))).astype(np.float32)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" / f"{case}.nii.gz"))).astype(np.int64)
        x = torch.from_numpy(norm.run(image[None], None))[None].float()
        with torch.no_grad():
            cases.append((x, net.snet_forward(x), torch.from_numpy(label)))
    return net, cases


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return overlap_metrics(b.numpy(), a.numpy())["dice"]


def localisation_errors(model_dir: Path, raw: Path) -> tuple[dict[str, list[float]], dict[str, dict[str, list]]]:
    """Per small organ on the held-out cases: distance (mm) between heatmap peak and reference centroid, the peak
    heights (pasting needs them above peak_threshold) under '<organ> peak'; and, with oracle localisation (box at
    the reference centroid), Dice inside the box of SOS-Net vs S-Net."""
    net, cases = _held_out(model_dir, raw)
    spacing = np.array(hn3d.SPACING_ZYX)
    names = {v: k for k, v in hn3d.LABELS.items()}
    errors: dict[str, list[float]] = {n: [] for lab in net.labels for n in (names[lab], f"{names[lab]} peak")}
    oracle: dict[str, dict[str, list]] = {names[lab]: {"sos": [], "snet": []} for lab in net.labels}
    for x, out, label in cases:
        heat = torch.sigmoid(out.heat_logits)[0]
        for k, lab in enumerate(net.labels):
            c = centroid(label == lab)
            if c is None:
                continue
            index, value = peak(heat[k])
            errors[f"{names[lab]} peak"].append(value)
            errors[names[lab]].append(float(np.linalg.norm((np.array(index) - np.array(c)) * spacing)))
            start = place_box(c, net.box, x.shape[2:])
            ref = crop(label == lab, start, net.box)
            with torch.no_grad():
                sos = net.sos[k](net.sos_input(x, out, k, 0, start))[0, 0] > 0
            oracle[names[lab]]["sos"].append(_dice(sos, ref))
            oracle[names[lab]]["snet"].append(_dice(crop(out.logits[0].argmax(0) == lab, start, net.box), ref))
    return errors, oracle


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--suffix", default="_hnbench", help="trainer variant suffix (budget), default _hnbench")
    p.add_argument("--n-train", type=int, default=10)
    p.add_argument("--n-test", type=int, default=4)
    args = p.parse_args()
    env = stock.work_environment(args.root / "nnunet", device="cpu")
    env.update(nnUNet_ext_seed="0")
    raw = Path(env["nnUNet_raw"]) / f"Dataset{hn3d.DEFAULT_ID}_{hn3d.NAME}"
    if not raw.exists():
        hn3d.generate(Path(env["nnUNet_raw"]), n_train=args.n_train, n_test=args.n_test, seed=0)
        stock.plan_and_preprocess(hn3d.DEFAULT_ID, "3d_fullres", env)
    train_env = dict(env, nnUNet_n_proc_DA="0")
    extra = str(REPO / "bench" / "focusnet" / "trainers")
    train_env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], extra])
    report = {"setting": {"phantom": "hn3d", "n_train": args.n_train, "n_test": args.n_test, "fold": 0,
                          "configuration": "3d_fullres", "device": "cpu", "suffix": args.suffix}, "trainers": {}}
    for base in ("nnUNetTrainer", "FocusNetV2Trainer"):
        name = base + args.suffix
        t0 = time.time()
        stock.train(hn3d.DEFAULT_ID, "3d_fullres", 0, name, train_env)
        t_train = time.time() - t0
        pred = args.root / f"pred_{name}"
        t0 = time.time()
        stock.predict(raw / "imagesTs", pred, hn3d.DEFAULT_ID, "3d_fullres", name, train_env)
        t_pred = time.time() - t0
        subprocess.run([sys.executable, "-m", "nnunet_ext.cli", "evaluate", "-ref", str(raw / "labelsTs"), "-pred",
                        str(pred), "--no-plots", "-np", "1"], check=True, env=env)
        summary = json.loads((pred / "evaluation" / "summary.json").read_text())
        entry = {"train_s": round(t_train, 1), "predict_s": round(t_pred, 1), "summary": summary}
        if base == "FocusNetV2Trainer":
            model = Path(env["nnUNet_results"]) / raw.name / f"{name}__nnUNetPlans__3d_fullres"
            os.environ.update(train_env)  # the predictor finds the trainer class through nnUNet_extTrainer
            try:
                errs, oracle = localisation_errors(model, raw)
                entry["heatmap_peak_error_mm"] = {k: {"mean": float(np.mean(v)), "max": float(np.max(v)),
                                                      "n": len(v)} for k, v in errs.items() if v}
                entry["oracle_box_dice"] = {k: {m: float(np.mean(v)) for m, v in d.items() if v}
                                            for k, d in oracle.items()}
            except Exception as e:  # keep the segmentation results of a long run if only this part fails
                entry["heatmap_peak_error_mm"] = f"failed: {e!r}"
        (args.root / f"{name}.json").write_text(json.dumps(entry, indent=2, default=float))
        report["trainers"][name] = entry
        print(json.dumps({k: v for k, v in entry.items() if k != "summary"}), flush=True)
    out = REPO / "bench" / "results" / "focusnet" / f"focusnet_hn3d_3d_cpu{args.suffix}.json"
    out.write_text(json.dumps(report, indent=2, default=float))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
