"""`nnunet_ext synth`: put synthetic tumours into a CT with an organ mask, to look at what FreeTumor training sees.

    nnunet_ext synth -i ct.nii.gz -m organs.nii.gz -o out/ --organ liver --organ kidney [--ids totalsegmentator]

Writes out/image.nii.gz (the CT with tumours, the input's geometry and pixel type), out/label.nii.gz (the abdomen
scheme: 1 liver, 2 liver tumour, 3 pancreas, 4 pancreas tumour, 5 kidney, 6 kidney tumour), out/overlay.png (per
tumour the axial slice through its centre, CT window, tumour outlined) and out/tumours.json (organ, size class,
radii in mm, voxels, mean intensity of the organ and of the tumour before/after). The folder appears only complete.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ORGANS = {"liver": 1, "pancreas": 3, "kidney": 5}
# which values of the input mask are which organ
MASK_IDS = {"abdomen": {"liver": (1,), "pancreas": (3,), "kidney": (5,)},
            "totalsegmentator": {"liver": (5,), "pancreas": (7,), "kidney": (2, 3)}}


class SynthInputError(ValueError):
    pass


def _read(path: Path, what: str):
    import SimpleITK as sitk

    if not path.is_file():
        raise SynthInputError(f"{path}: {what} not found")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise SynthInputError(f"{path}: cannot read the {what} ({str(e).strip().splitlines()[-1]})") from None


def synthesise_file(image_path: Path, mask_path: Path, out: Path, organs: list[str], ids: str = "abdomen",
                    size_class: str | None = None, tumours_per_organ: int = 1, seed: int = 0,
                    contrast_hu: float | None = None, overwrite: bool = False) -> list[dict]:
    import SimpleITK as sitk

    from nnunet_ext.fileio import atomic_output_dir
    from nnunet_ext.methods.freetumor.appearance import DEFAULT_CONTRAST_HU
    from nnunet_ext.methods.freetumor.synthesize import TumourSynthesizer

    image_path, mask_path, out = Path(image_path), Path(mask_path), Path(out)
    image, mask = _read(image_path, "CT image"), _read(mask_path, "organ mask")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise SynthInputError(f"{image_path}: expected a single-channel 3D CT volume")
    if image.GetSize() != mask.GetSize():
        raise SynthInputError(f"{mask_path}: size {mask.GetSize()} differs from the CT's {image.GetSize()} "
                              f"({image_path})")
    if not np.allclose(image.GetSpacing(), mask.GetSpacing(), rtol=1e-3):
        raise SynthInputError(f"{mask_path}: spacing {mask.GetSpacing()} differs from the CT's {image.GetSpacing()}")
    unknown = [o for o in organs if o not in ORGANS]
    if unknown:
        raise SynthInputError(f"--organ {unknown}: choose from {list(ORGANS)}")
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    raw = sitk.GetArrayFromImage(mask)
    label = np.zeros(raw.shape, np.uint8)
    for organ, values in MASK_IDS[ids].items():
        label[np.isin(raw, values)] = ORGANS[organ]
    spacing = tuple(reversed(image.GetSpacing()))
    synthesizer = TumourSynthesizer({1: 2, 3: 4, 5: 6}, spacing, contrast_jitter=(1.0, 1.0))
    rng = np.random.default_rng(seed)
    current, seg, records = hu[None], label, []
    for organ in organs:
        organ_label = ORGANS[organ]
        if not (seg == organ_label).any():
            raise SynthInputError(f"{mask_path}: no {organ} voxels (mask values {MASK_IDS[ids][organ]} with --ids "
                                  f"{ids})")
        for _ in range(tumours_per_organ):
            difference = None
            if contrast_hu is not None:
                difference = np.full(seg.shape, contrast_hu, np.float32)
            result = synthesizer.synthesise(current, seg, organ_label, rng, size_class, difference)
            if result is None:
                raise SynthInputError(f"{mask_path}: the {organ} is too small for a tumour")
            m = result.mask
            records.append({"organ": organ, "label": result.tumour, "size_class": result.shape.size_class,
                            "radii_mm": np.round(result.shape.radii_mm, 1).tolist(), "voxels": int(m.sum()),
                            "centre_zyx": list(result.shape.centre),
                            "organ_mean_hu": float(current[0][seg == organ_label].mean()),
                            "organ_std_hu": float(current[0][seg == organ_label].std()),
                            "tumour_mean_hu_before": float(current[0][m].mean()),
                            "tumour_mean_hu_after": float(result.image[0][m].mean()),
                            "difference_hu": float(result.difference[0]) if contrast_hu is None else contrast_hu,
                            "default_contrast_hu": list(DEFAULT_CONTRAST_HU)})
            current, seg = result.image, result.seg
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        new = sitk.GetImageFromArray(np.round(current[0]).astype(sitk.GetArrayViewFromImage(image).dtype))
        new.CopyInformation(image)
        sitk.WriteImage(new, str(tmp / "image.nii.gz"))
        new_label = sitk.GetImageFromArray(seg.astype(np.uint8))
        new_label.CopyInformation(image)
        sitk.WriteImage(new_label, str(tmp / "label.nii.gz"))
        write_overlay(hu, current[0], seg, records, spacing, tmp / "overlay.png")
        (tmp / "tumours.json").write_text(json.dumps(records, indent=2))
    return records


def write_overlay(before: np.ndarray, after: np.ndarray, seg: np.ndarray, records: list[dict], spacing, path: Path,
                  window=(-160, 240)) -> None:
    """One column per tumour: the axial slice through its centre before and after, tumour outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(records))
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    aspect = spacing[1] / spacing[2]
    for i, r in enumerate(records):
        z = r["centre_zyx"][0]
        for row, (volume, title) in enumerate(((before, "before"), (after, "after"))):
            ax = axes[row, i]
            ax.imshow(volume[z], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect)
            if row == 1:
                ax.contour(seg[z] == r["label"], levels=[0.5], colors="r", linewidths=0.8)
            ax.set_title(f"{r['organ']} {r['size_class']} {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _cmd_synth(args: argparse.Namespace) -> int:
    try:
        records = synthesise_file(Path(args.input), Path(args.mask), Path(args.output), args.organ or list(ORGANS),
                                  args.ids, args.size, args.n, args.seed, args.contrast_hu, args.overwrite)
    except (SynthInputError, FileExistsError) as e:
        raise SystemExit(f"nnunet_ext synth: {e}") from None
    for r in records:
        print(f"{r['organ']}: {r['size_class']} tumour, {r['voxels']} voxels, mean {r['tumour_mean_hu_before']:.0f} "
              f"-> {r['tumour_mean_hu_after']:.0f} HU (organ {r['organ_mean_hu']:.0f} +- {r['organ_std_hu']:.0f})")
    print(f"Wrote {args.output}/image.nii.gz, label.nii.gz, overlay.png, tumours.json")
    return 0


def add_synth(sub) -> None:
    from nnunet_ext.methods.freetumor.shape import SIZE_CLASSES_MM

    p = sub.add_parser("synth", help="insert synthetic tumours into a CT + organ mask (FreeTumor's procedural mode)",
                       description=__doc__.split("\n\n")[0] + " Writes image.nii.gz, label.nii.gz, overlay.png and "
                       "tumours.json into the output folder.")
    p.add_argument("-i", "--input", required=True, help="CT volume (NIfTI, HU)")
    p.add_argument("-m", "--mask", required=True, help="organ mask on the CT's grid")
    p.add_argument("-o", "--output", required=True, help="output folder (created complete, or not at all)")
    p.add_argument("--organ", action="append", choices=list(ORGANS), help="organ to put a tumour in (repeat; "
                   "default all three)")
    p.add_argument("--ids", default="abdomen", choices=list(MASK_IDS),
                   help="mask values: abdomen (1 liver, 3 pancreas, 5 kidney) or totalsegmentator (5, 7, 2+3)")
    p.add_argument("--size", default=None, choices=list(SIZE_CLASSES_MM), help="size class (default: random)")
    p.add_argument("-n", type=int, default=1, help="tumours per organ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contrast-hu", type=float, default=None,
                   help="organ minus tumour in HU (default: drawn per tumour from 40-150 HU, hypodense, FreeTumor's "
                   "procedural range)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_synth)
