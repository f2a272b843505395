"""Where AVFusionTrainer's mixed segments come from: the fused decision against the binary branches' own decision.

    python bench/av_fusion/branch_decisions.py WORK [--seeds 0 1] [--arms AVFusionTrainer AVFusionTrainer_attached]

WORK is a bench_av_drive.py work folder whose trainings and predictions are done (e.g. /tmp/av_drive_E40). Retrains
nothing: each AVFusion model predicts the held-out images again (no mirroring, as the bench) and two decisions are
scored with the same protocol as the bench (`evaluation.av_protocol`, FOV masks, paper mode):
- fused: the network's output, what nnUNetv2_predict writes (checked against the bench's own predictions);
- branches: G_A and G_V alone, each thresholded at 0.5: artery, vein, both (crossing) or neither (background);
- branches_no_crossing: G_A and G_V alone, vessel where either reaches 0.5, labelled by the larger, no crossings
  (the segment measure ignores crossing pixels, so this is the rule that cannot gain by calling pixels crossings).
The paper's premise is that binary branches, which never face the ambiguous four-class decision, label a segment
consistently; if the branches mix fewer segments than the fused output, the fusion is where the mixing enters.
Stock's figures come from the bench's evaluation folder. Results: bench/results/av_fusion/branch_decisions_E<n>.*
(LES-AV / HRF-AV work folders: branch_decisions_les_E<n>.* / branch_decisions_hrf_E<n>.*)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_av_drive import ARMS, bench_environment, model_folder, work_set  # noqa: E402

RESULTS = HERE.parent / "results" / "av_fusion"
FUSION_ARMS = [arm for arm in ARMS if arm != "stock"]
DECISIONS = ("fused", "branches", "branches_no_crossing")


class BranchDecision:
    """Stands in for the network inside nnU-Net's predictor: returns log-probabilities of the four labels from the
    branches alone, so that the predictor's softmax and argmax give the branches' decision.
    - "branches": artery and vein independent, p(crossing) = pA * pV: the two 0.5 thresholds (both = crossing);
    - "branches_no_crossing": vessel where the larger of pA and pV reaches 0.5, artery or vein by the larger, never
      crossing. The segment measure ignores pixels predicted crossing, so this rule shows that the branches' fewer
      mixed segments do not come from calling the disputed pixels crossings."""

    def __init__(self, network, rule: str):
        self.network, self.rule = network, rule

    def __call__(self, x):
        import torch

        _, a_logits, v_logits = self.network(x, return_branches=True)
        pa, pv = torch.sigmoid(a_logits), torch.sigmoid(v_logits)
        if self.rule == "branches":
            probs = torch.cat(((1 - pa) * (1 - pv), pa * (1 - pv), pv * (1 - pa), pa * pv), 1)
        else:
            vessel = torch.maximum(pa, pv)
            artery = (pa >= pv).to(pa.dtype)
            probs = torch.cat((1 - vessel, vessel * artery, vessel * (1 - artery), torch.zeros_like(pa)), 1)
        return torch.log(probs.clamp_min(1e-8))

    def to(self, device):
        # the predictor reassigns `self.network = self.network.to(device)`: keep the stand-in in place
        self.network.to(device)
        return self

    def __getattr__(self, name):
        return getattr(self.network, name)


def score_images(predictor, raw: Path, cases: list[str], decision: str, stored: Path | None) -> list[dict]:
    from nnunet_ext.evaluation.av_protocol import av_protocol_case
    from nnunet_ext.evaluation.evaluate import read_fov

    reader = predictor.plans_manager.image_reader_writer_class()
    network = predictor.network
    if decision != "fused":
        predictor.network = BranchDecision(network, decision)
    out = []
    try:
        for case in cases:
            image, props = reader.read_images([str(raw / "imagesTs" / f"{case}_0000.png")])
            prediction = predictor.predict_single_npy_array(image, props, None, None, False)
            reference, _ = reader.read_seg(str(raw / "labelsTs" / f"{case}.png"))
            reference = np.squeeze(reference).astype(np.int16)
            prediction = np.asarray(prediction).reshape(reference.shape)
            fov = read_fov(str(raw / "masksTs"), case, reference.shape)
            scores = av_protocol_case(reference, prediction, None, fov)
            row = {"case": case, "weighted_f1": scores["weighted"]["f1"],
                   "artery_f1": scores["per_class"]["artery"]["f1"], "vein_f1": scores["per_class"]["vein"]["f1"],
                   "crossing_f1": scores["per_class"]["uncertain"]["f1"],
                   "predicted_crossing_pixels": int(np.count_nonzero(prediction[fov] == 3)), **scores["segments"]}
            if stored is not None:
                written, _ = reader.read_seg(str(stored / f"{case}.png"))
                row["agreement_with_bench_prediction"] = float(np.mean(np.squeeze(written)
                                                                       == prediction))
            out.append(row)
    finally:
        predictor.network = network
    return out


def mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path, help="bench_av_drive.py work folder (trained and predicted)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--arms", nargs="+", choices=FUSION_ARMS, default=None,
                   help="default: every AVFusion arm trained in WORK for all the seeds")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    state_file = a.work / "bench_state.json"
    if not state_file.is_file():
        print(f"error: {a.work} is not a bench_av_drive.py work folder (no bench_state.json)", file=sys.stderr)
        return 2
    state = json.loads(state_file.read_text())
    epochs = int(state["epochs"])
    os.environ.update(bench_environment(a.work, epochs))

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(2)
    ds = work_set(a.work)
    raw = a.work / "nnunet" / "nnUNet_raw" / ds.folder
    cases = sorted(state["test_cases"])
    arms = a.arms or [arm for arm in FUSION_ARMS if all(
        (model_folder(a.work, s, arm, ds) / "fold_0" / "checkpoint_final.pth").is_file() for s in a.seeds)]
    report: dict = {"work": str(a.work), "epochs": epochs, "test_cases": cases, "split": state["split"], "rows": {}}
    for seed in a.seeds:
        run = a.work / f"seed{seed}"
        stock_summary = json.loads((run / "eval_stock" / "summary.json").read_text())["av_protocol"]
        report["rows"].setdefault("stock", {})[str(seed)] = {
            "fused": {"mixed_fraction": stock_summary["segments"]["mixed_fraction"]["mean"],
                      "misclassified_pixel_fraction": stock_summary["segments"]["misclassified_pixel_fraction"]["mean"],
                      "weighted_f1": stock_summary["paper"]["weighted"]["f1"]["mean"],
                      "crossing_f1": stock_summary["paper"]["per_class"]["uncertain"]["f1"]["mean"]}}
        for arm in arms:
            folder = model_folder(a.work, seed, arm, ds)
            if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
                print(f"error: {folder}/fold_0 has no checkpoint_final.pth", file=sys.stderr)
                return 2
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                        device=torch.device("cpu"), verbose=False, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,),
                                                           checkpoint_name="checkpoint_final.pth")
            entry = {}
            for decision in DECISIONS:
                rows = score_images(predictor, raw, cases, decision,
                                    run / f"pred_{arm}" if decision == "fused" else None)
                entry[decision] = {"mixed_fraction": mean(rows, "mixed_fraction"),
                                   "crossing_f1": mean(rows, "crossing_f1"),
                                   "predicted_crossing_pixels": mean(rows, "predicted_crossing_pixels"),
                                   "misclassified_pixel_fraction": mean(rows, "misclassified_pixel_fraction"),
                                   "weighted_f1": mean(rows, "weighted_f1"), "cases": rows}
                print(arm, seed, decision, json.dumps({k: round(v, 4) for k, v in entry[decision].items()
                                                       if k != "cases"}), flush=True)
            report["rows"].setdefault(arm, {})[str(seed)] = entry

    a.out.mkdir(parents=True, exist_ok=True)
    stem = f"branch_decisions_E{epochs}" if ds.key == "drive" else f"branch_decisions_{ds.key}_E{epochs}"
    (a.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    lines = [f"Fused vs branch-only decisions of the AVFusion models of `{a.work.name}` ({epochs} epochs x 100 "
             f"iterations, seeds {' '.join(map(str, a.seeds))}); held-out: {state['split']} "
             f"({len(cases)} image{'s' if len(cases) != 1 else ''}). "
             "Paper protocol inside the FOV, mean over images, %. Branches: G_A and G_V alone at 0.5 (both = "
             "crossing). Stock: the bench's own evaluation.", "",
             "| arm | seed | decision | mixed segments | misclassified segment pixels | weighted F1 | crossing F1 | "
             "pixels predicted crossing per image | agrees with the bench's prediction |", "|---" * 9 + "|"]
    for arm, by_seed in report["rows"].items():
        for seed, entry in by_seed.items():
            for decision, e in entry.items():
                agree = (f"{100 * min(r['agreement_with_bench_prediction'] for r in e['cases']):.2f} (min)"
                         if e.get("cases") and "agreement_with_bench_prediction" in e["cases"][0] else "")
                crossing_pixels = e.get("predicted_crossing_pixels")
                lines.append(f"| {arm} | {seed} | {decision} | {100 * e['mixed_fraction']:.2f} | "
                             f"{100 * e['misclassified_pixel_fraction']:.2f} | {100 * e['weighted_f1']:.2f} | "
                             f"{100 * e['crossing_f1']:.2f} | "
                             f"{'' if crossing_pixels is None else f'{crossing_pixels:.0f}'} | {agree} |")
    (a.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
