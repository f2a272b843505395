"""Stock nnUNetv2_predict of an FTSegNet model on the real widefield fundus tumour photograph (4304x4306).

    python bench/ftsegnet/bench_ftsegnet_fundus_tumor.py --env-root /tmp/ftsegnet_ablation/tumor2d/nnunet \
        [-tr FTSegNetTrainer_demo] [--scale 1 --scale 0.03]

The photograph (../shared/data/fundus_tumor/test.jpg, no label) is written as nnU-Net input (CASE_0000.png, RGB)
into a temporary folder, at full resolution and optionally downscaled (`--scale`: a model trained on the 96x96
phantom sees a whole fundus in 96 pixels, so only a downscaled copy matches its scale). Each run records wall time
and the peak resident memory of the nnUNetv2_predict process tree, and saves a small overlay PNG (prediction in
cyan over the photograph, 400 px wide) in bench/results/ftsegnet. Results:
bench/results/ftsegnet/ftsegnet_fundus_tumor.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_ext import stock

HERE = Path(__file__).resolve().parent
Image.MAX_IMAGE_PIXELS = None  # the photograph is 18.5 megapixels, below nothing dangerous


def overlay(photo: Image.Image, seg: np.ndarray, out: Path, width: int = 400) -> None:
    small = photo.resize((width, round(photo.height * width / photo.width)), Image.BILINEAR)
    mask = np.asarray(Image.fromarray((seg > 0).astype(np.uint8) * 255).resize(small.size, Image.NEAREST)) > 0
    rgb = np.asarray(small).astype(np.float32)
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array([0, 255, 255])
    Image.fromarray(rgb.astype(np.uint8)).save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-root", type=Path, required=True, help="folder holding nnUNet_raw/preprocessed/results")
    p.add_argument("--image", type=Path, default=HERE.parents[2] / "shared" / "data" / "fundus_tumor" / "test.jpg")
    p.add_argument("-d", default="794")
    p.add_argument("-c", default="2d")
    p.add_argument("-tr", default="FTSegNetTrainer_demo")
    p.add_argument("--scale", type=float, action="append", help="1 = full resolution (default: 1)")
    p.add_argument("--tta", action="store_true", help="mirroring (4x the time in 2d); off by default")
    p.add_argument("--step-size", default="0.5", help="sliding-window step (nnU-Net's default 0.5)")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "ftsegnet")
    a = p.parse_args(argv)

    env = stock.work_environment(a.env_root, "cpu")
    env["nnUNet_extTrainer"] = f"{env['nnUNet_extTrainer']}:{HERE / 'trainers'}"  # the ablation's variants
    photo = Image.open(a.image).convert("RGB")
    a.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for scale in a.scale or [1.0]:
        with tempfile.TemporaryDirectory() as tmp:
            inp, pred = Path(tmp) / "in", Path(tmp) / "pred"
            inp.mkdir()
            image = photo if scale == 1 else photo.resize((round(photo.width * scale), round(photo.height * scale)),
                                                          Image.LANCZOS)
            image.save(inp / "fundus_tumor_0000.png")
            argv_ = [stock.find_command("nnUNetv2_predict"), "-i", inp, "-o", pred, "-d", a.d, "-c", a.c, "-tr", a.tr,
                     "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "-step_size", a.step_size]
            argv_ += [] if a.tta else ["--disable_tta"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            stock.run(argv_, env)
            seconds = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
            seg = np.asarray(Image.open(pred / "fundus_tumor.png"))
            name = f"ftsegnet_fundus_tumor_x{scale:g}.png"
            overlay(photo, seg, a.out / name)
            runs[f"{scale:g}"] = {"input_size": list(image.size), "seconds": round(seconds, 1),
                                  "peak_rss_mb": round(peak / 1024) if peak > before else None,
                                  "tumour_fraction": float((seg > 0).mean()), "overlay": name,
                                  "mirroring": a.tta, "step_size": float(a.step_size)}
            print(scale, runs[f"{scale:g}"])
    out = a.out / "ftsegnet_fundus_tumor.json"
    previous = json.loads(out.read_text())["runs"] if out.exists() else {}
    out.write_text(json.dumps({"trainer": a.tr, "dataset": a.d, "configuration": a.c, "machine":
                               "2 CPU cores shared with other jobs", "runs": {**previous, **runs}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
