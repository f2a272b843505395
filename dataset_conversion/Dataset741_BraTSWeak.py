"""BraTS 2018/2019 FLAIR slices with image-level labels -> Dataset741_BraTSWeak (weak-label convention, `_weak.py`).

Two source layouts, detected:
- the public 3D case folders (`Brats18_*/Brats18_*_flair.nii.gz` + `_seg.nii.gz`, also under HGG/ and LGG/): every
  `slice_step`-th axial slice with enough brain is cut; a slice is "disease" when it holds at least
  `min_lesion_pixels` tumour pixels, "normal" when it holds none (slices in between are skipped as ambiguous). Each
  slice is cropped to the brain's bounding box (made square), resized to 256x256 and scaled to 0-255 by the
  volume's 99.5th brain percentile, as the method's published slices are. Patients, never slices, are split into
  train/val/test (`val_fraction`, `test_fraction`, seeded).
- the already sliced PNG layout (`train/`, `val/images` + `val/labels`, `test/...`, `normal/`); a source with only
  `test/images` + `test/labels` (the official test slices) becomes imagesTs/labelsTs alone.
One grey channel named FLAIR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_ext.dataset_conversion._common import (
    ConversionError,
    base_parser,
    check_same_geometry,
    dataset_name,
    raw_root,
    read_volume,
    run_cli,
    staged_dataset,
)
from nnunet_ext.dataset_conversion._weak import (
    DEFAULT_ROLES,
    WeakDatasetWriter,
    add_weak_arguments,
    convert_sliced,
    is_sliced_layout,
    parse_roles,
    resize,
    split_by_fraction,
)

DATASET_ID = 741
NAME = "BraTSWeak"


def find_brats_cases(source: Path) -> list[tuple[str, Path, Path]]:
    """(case, flair, seg) for every *_flair.nii(.gz) below source; a missing seg is an error naming the flair."""
    cases = []
    for flair in sorted(source.rglob("*_flair.nii*")):
        # the published slices keep the volume's name (Brats18_..._flair.nii_120.png): not a volume
        if flair.name.startswith(".") or not flair.name.endswith(("_flair.nii", "_flair.nii.gz")):
            continue
        case = flair.name.split("_flair.nii")[0]
        seg = next((p for p in (flair.with_name(f"{case}_seg.nii.gz"), flair.with_name(f"{case}_seg.nii"))
                    if p.is_file()), None)
        if seg is None:
            raise ConversionError(f"{flair}: missing partner file: no {case}_seg.nii.gz beside it")
        cases.append((case, flair, seg))
    return cases


def slices_of_volume(flair_file: Path, seg_file: Path, size: int, slice_step: int, min_brain_fraction: float,
                     min_lesion_pixels: int):
    """Yield (z, image uint8 size x size, mask 0/1, is_disease) for the usable axial slices of one case."""
    flair, seg = read_volume(flair_file), read_volume(seg_file)
    check_same_geometry(flair, flair_file, seg, seg_file)
    img = sitk.GetArrayFromImage(flair).astype(np.float32)
    lab = sitk.GetArrayFromImage(seg)
    if lab.min() < 0 or lab.max() > 4:
        raise ConversionError(f"{seg_file}: label values outside the scheme (BraTS 0, 1, 2, 4), found "
                              f"{np.unique(lab).tolist()}")
    brain = img > 0
    if not brain.any():
        raise ConversionError(f"{flair_file}: empty image (no brain voxels)")
    top = float(np.percentile(img[brain], 99.5)) or 1.0
    for z in range(0, img.shape[0], slice_step):
        b = brain[z]
        if b.mean() < min_brain_fraction:
            continue
        lesion = int((lab[z] > 0).sum())
        if 0 < lesion < min_lesion_pixels:
            continue
        rows, cols = np.where(b)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        # square box around the brain so resizing keeps the aspect ratio; padded with background where it leaves
        side = max(r1 - r0, c1 - c0)
        rc, cc = (r0 + r1) // 2, (c0 + c1) // 2
        box = np.zeros((side, side), np.float32), np.zeros((side, side), np.uint8)
        sr, sc = rc - side // 2, cc - side // 2
        ir0, ic0 = max(sr, 0), max(sc, 0)
        ir1, ic1 = min(sr + side, img.shape[1]), min(sc + side, img.shape[2])
        box[0][ir0 - sr:ir1 - sr, ic0 - sc:ic1 - sc] = img[z, ir0:ir1, ic0:ic1]
        box[1][ir0 - sr:ir1 - sr, ic0 - sc:ic1 - sc] = lab[z, ir0:ir1, ic0:ic1] > 0
        image = np.clip(box[0] / top * 255, 0, 255).astype(np.uint8)
        yield z, resize(image, size), resize(box[1], size, nearest=True), lesion > 0


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False,
            roles: dict[str, str] | None = None, size: int = 256, slice_step: int = 5,
            min_brain_fraction: float = 0.1, min_lesion_pixels: int = 50, val_fraction: float = 0.1,
            test_fraction: float = 0.1, seed: int = 12345) -> Path:
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: source folder not found")
    roles = {**DEFAULT_ROLES, **(roles or {})}
    with staged_dataset(dataset_id, NAME, out_root, overwrite) as out:
        writer = WeakDatasetWriter(out, grey=True)
        if is_sliced_layout(source):
            convert_sliced(source, writer, roles, NAME)
            layout = "sliced"
        else:
            cases = find_brats_cases(source)
            if not cases:
                raise ConversionError(f"{source}: neither BraTS case folders (*_flair.nii.gz) nor the sliced layout")
            split = split_by_fraction([c[0] for c in cases], val_fraction, test_fraction, seed)
            for case, flair, seg in tqdm(cases, desc=f"{NAME} volumes"):
                role = roles[split[case]]
                for z, image, mask, disease in slices_of_volume(flair, seg, size, slice_step, min_brain_fraction,
                                                                min_lesion_pixels):
                    # in weak training a lesion-free slice is a known normal; held-out slices keep their masks
                    slice_role = ("weak" if disease else "normal") if role == "weak" else role
                    writer.add(f"{case}_flair_{z:03d}", image, slice_role, flair, mask)
            layout = "3d"
        writer.finish(NAME, "FLAIR", source_layout=layout,
                      reference="Menze et al. 2015; Bakas et al. 2017 (BraTS); Du et al. 2024 (weak labels)")
    return raw_root(out_root) / dataset_name(dataset_id, NAME)


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], DATASET_ID)
    add_weak_arguments(p)
    p.add_argument("--size", type=int, default=256, help="slice size after the brain crop (3D layout)")
    p.add_argument("--slice-step", type=int, default=5, help="take every n-th axial slice (3D layout)")
    args = p.parse_args(argv)
    return run_cli(convert, args, roles=parse_roles(args.role), size=args.size, slice_step=args.slice_step)


if __name__ == "__main__":
    raise SystemExit(main())
