"""How much does GAP(G_s), the CPB gate's input, vary from image to image, and does it still know the class?

    python bench/ftsegnet/gate_probe.py tumor2d [--out bench/results/ftsegnet] [--steps 1500] [--seed 0]

SOURCE: `tumor2d` generates, in memory, the tumour phantom of the bench's abundant-classes settings (96x96 RGB, benign
naevi in every image): the first 168 images train FTSegNet's prior P (the project's ClassificationPrior, instance
norm, the strides of nnU-Net's plans for the bench's data set 786: 1, 2, 2, 2, 2) on whole images and their class
table (0 none, 1 small, 2 large), Adam 1e-3, batch 8 (the plans' batch size), random flips; the next 40, alternating
tumour / no tumour, are held out. Per stage of P on the held-out images: the spread of GAP(G_s) across images (mean
over channels of the standard deviation), its level (mean over channels of |mean|), their ratio, and a linear probe
(L2-regularised logistic regression on the training images' standardised GAP(G_s)) telling tumour from tumour-free
held-out images. A spread of a few per cent of the level is what a zero-started gate under nnU-Net's SGD learns as a
constant (docs/ftsegnet.md); the probe says whether the class is in it anyway. Results: OUT/gate_probe.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnunet_ext.methods.ftsegnet.network import ClassificationPrior
from nnunet_ext.phantoms.tumor2d import case_rng, make_case

HERE = Path(__file__).resolve().parent
N_TRAIN, N_TEST = 168, 40
STRIDES = [(1, 1), (2, 2), (2, 2), (2, 2), (2, 2)]  # nnU-Net's 2d plans for data set 786 (96x96)
BATCH = 8


def images(first: int, last: int, balanced: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The phantom's images first..last-1 (z-scored per channel, as nnU-Net normalises RGB) and their classes."""
    xs, ys = [], []
    for i in range(first, last):
        probability = (1.0 if (i - first) % 2 == 0 else 0.0) if balanced else 0.65
        image, _, case_class = make_case(case_rng(0, i), 96, probability, True)
        x = image.astype(np.float32).transpose(2, 0, 1)
        xs.append((x - x.mean((1, 2), keepdims=True)) / (x.std((1, 2), keepdims=True) + 1e-6))
        ys.append(case_class)
    return torch.tensor(np.stack(xs)), torch.tensor(ys)


def probe_accuracy(train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor) -> float:
    mean, std = train.mean(0), train.std(0) + 1e-8
    a, b = (train - mean) / std, (test - mean) / std
    w = torch.zeros(a.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, bias], max_iter=200)
    target = y_train.float()

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(a @ w + bias, target) + 1e-2 * (w ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((((b @ w + bias) > 0).float() == y_test.float()).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["tumor2d"], help="tumor2d: generate the phantom")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "ftsegnet")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    x_train, y_train = images(0, N_TRAIN, False)
    x_test, y_test = images(N_TRAIN, N_TRAIN + N_TEST, True)
    prior = ClassificationPrior(3, 3, STRIDES, nn.Conv2d)
    optimizer = torch.optim.Adam(prior.parameters(), 1e-3)
    for _ in range(a.steps):
        pick = torch.randint(0, N_TRAIN, (BATCH,))
        x = x_train[pick]
        if torch.rand(1) < 0.5:
            x = x.flip(3)
        loss = nn.functional.cross_entropy(prior(x)[0], y_train[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
    with torch.no_grad():
        logits_test, g_test = prior(x_test)
        g_train = prior(x_train)[1]
    report = {"source": a.source, "steps": a.steps, "seed": a.seed, "training_images": N_TRAIN,
              "held_out_images": N_TEST,
              "prior_heldout_class_accuracy": float((logits_test.argmax(1) == y_test).float().mean()),
              "prior_heldout_tumour_accuracy": float(((logits_test.argmax(1) > 0) == (y_test > 0)).float().mean()),
              "stages": []}
    for s, (gtr, gte) in enumerate(zip(g_train, g_test, strict=True)):
        pooled_train, pooled_test = gtr.flatten(2).mean(2), gte.flatten(2).mean(2)
        spread = float(pooled_test.std(0).mean())
        level = float(pooled_test.mean(0).abs().mean())
        report["stages"].append({
            "stage": s, "gap_spread": round(spread, 4), "gap_level": round(level, 4),
            "spread_over_level": round(spread / level, 4),
            "probe_tumour_accuracy": round(probe_accuracy(pooled_train, y_train > 0, pooled_test, y_test > 0), 3)})
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gate_probe.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# GAP(G_s) across images (`gate_probe.py {a.source} --steps {a.steps} --seed {a.seed}`)", "",
             f"P trained {a.steps} steps on {N_TRAIN} whole phantom images; held out: {N_TEST} (20 tumour-free). "
             f"P's held-out class accuracy {report['prior_heldout_class_accuracy']:.3f}, tumour / tumour-free "
             f"{report['prior_heldout_tumour_accuracy']:.3f}.", "",
             "| stage | GAP spread across images | GAP level | spread / level | linear probe, tumour vs none |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['gap_spread']} | {r['gap_level']} | {r['spread_over_level']} | "
              f"{r['probe_tumour_accuracy']} |" for r in report["stages"]]
    (a.out / "gate_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
