"""3D CT converters' shared body: find image/label pairs in the published layouts, validate, remap, write NIfTI.

Images are written as `CASE_0000.nii.gz` with SimpleITK, which keeps spacing, origin and direction; labels are
remapped through a lookup table and written as uint8 on the image's own grid (after checking that the label's grid
matches). Label values a scheme does not know are refused naming the file, unless the converter maps the rest of a
multi-organ segmentation to background on purpose (organ-only CT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_ext.dataset_conversion._common import (
    ConversionError,
    base_parser,
    check_same_geometry,
    dataset_name,
    list_files,
    raw_root,
    read_volume,
    run_cli,
    staged_dataset,
    strip_extension,
    write_dataset_json,
    write_label_volume,
    write_volume,
)

NII = (".nii.gz", ".nii")
ABDOMEN_LABELS = {"background": 0, "liver": 1, "liver_tumour": 2, "pancreas": 3, "pancreas_tumour": 4, "kidney": 5,
                  "kidney_tumour": 6}


@dataclass
class CaseSpec:
    case: str
    image: Path
    label: Path | None = None
    role: str = "Tr"  # Tr or Ts
    mapping: dict[int, int] = field(default_factory=dict)  # source label -> nnU-Net label
    unmapped_to_background: bool = False
    scheme: str = ""


def remap(arr: np.ndarray, spec: CaseSpec) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise ConversionError(f"{spec.label}: label values outside the scheme: non-integer values")
        arr = arr.astype(np.int64)
    found = np.unique(arr)
    unknown = [int(v) for v in found if int(v) not in spec.mapping]
    if unknown and not spec.unmapped_to_background:
        raise ConversionError(f"{spec.label}: label values {unknown} outside the scheme ({spec.scheme})")
    if found.size and (found.min() < 0 or found.max() > 65535):
        raise ConversionError(f"{spec.label}: label values {found.min()}..{found.max()} outside the scheme")
    lut = np.zeros(int(found.max()) + 1 if found.size else 1, np.uint8)
    for src, dst in spec.mapping.items():
        if src < lut.size:
            lut[src] = dst
    return lut[arr]


def convert_case(spec: CaseSpec, out: Path) -> set[int]:
    """Write one case; returns the nnU-Net label values present."""
    image = read_volume(spec.image)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise ConversionError(f"{spec.image}: expected a single-channel 3D volume")
    write_volume(image, out / f"images{spec.role}" / f"{spec.case}_0000.nii.gz")
    if spec.label is None:
        return set()
    seg = read_volume(spec.label)
    check_same_geometry(image, spec.image, seg, spec.label)
    label = remap(sitk.GetArrayFromImage(seg), spec)
    write_label_volume(label, image, out / f"labels{spec.role}" / f"{spec.case}.nii.gz")
    return set(np.unique(label).tolist())


def convert_cases(specs: list[CaseSpec], out: Path, desc: str) -> dict[str, list[int]]:
    """Write all cases (unique names checked first); returns case -> labels present."""
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.case in seen:
            raise ConversionError(f"{spec.image}: case name {spec.case} also used by {seen[spec.case]}")
        seen[spec.case] = spec.image
    (out / "imagesTs").mkdir(exist_ok=True)
    (out / "labelsTs").mkdir(exist_ok=True)
    present = {}
    for spec in tqdm(specs, desc=desc, unit="case"):
        present[spec.case] = sorted(convert_case(spec, out))
    return present


def finish_ct(out: Path, name: str, labels: dict, n_train: int, **kwargs) -> None:
    if n_train == 0:
        raise ConversionError(f"{name}: no training cases found")
    write_dataset_json(out, {0: "CT"}, labels, n_train, ".nii.gz", dataset_name=name, **kwargs)


def msd_cases(folder: Path, prefix: str, mapping: dict[int, int], scheme: str) -> list[CaseSpec]:
    """MSD layout: imagesTr/*.nii.gz + labelsTr/same name; imagesTs/* without labels. Also LiTS's
    volume-N.nii + segmentation-N.nii anywhere below folder."""
    specs = []
    if (folder / "imagesTr").is_dir():
        for image in list_files(folder / "imagesTr", NII):
            label = folder / "labelsTr" / image.name
            if not label.is_file():
                raise ConversionError(f"{image}: missing partner file: no labelsTr/{image.name}")
            specs.append(CaseSpec(f"{prefix}_{strip_extension(image.name)}", image, label, "Tr", mapping,
                                  scheme=scheme))
        if (folder / "imagesTs").is_dir():
            specs += [CaseSpec(f"{prefix}_{strip_extension(i.name)}", i, None, "Ts")
                      for i in list_files(folder / "imagesTs", NII)]
        return specs
    for image in sorted(folder.rglob("volume-*.nii*")):
        number = strip_extension(image.name).split("-", 1)[1]
        label = next((p for p in (image.with_name(f"segmentation-{number}{e}") for e in NII) if p.is_file()), None)
        if label is None:
            # LiTS keeps volumes and segmentations in one folder per batch, or segmentations in a sibling folder
            label = next(iter(sorted(folder.rglob(f"segmentation-{number}.nii*"))), None)
        if label is None:
            raise ConversionError(f"{image}: missing partner file: no segmentation-{number}.nii(.gz)")
        specs.append(CaseSpec(f"{prefix}_{number}", image, label, "Tr", mapping, scheme=scheme))
    if not specs:
        raise ConversionError(f"{folder}: neither the MSD layout (imagesTr/, labelsTr/) nor LiTS volume-N.nii files")
    return specs


def kits_cases(folder: Path, prefix: str, mapping: dict[int, int], scheme: str) -> list[CaseSpec]:
    """KiTS23 layout: dataset/case_XXXXX/imaging.nii.gz + segmentation.nii.gz (the dataset/ level optional)."""
    specs = []
    for image in sorted(folder.rglob("imaging.nii.gz")):
        label = image.with_name("segmentation.nii.gz")
        if not label.is_file():
            raise ConversionError(f"{image}: missing partner file: no segmentation.nii.gz beside it")
        specs.append(CaseSpec(f"{prefix}{image.parent.name}", image, label, "Tr", mapping, scheme=scheme))
    if not specs:
        raise ConversionError(f"{folder}: no KiTS23 case_XXXXX/imaging.nii.gz found")
    return specs


def simple_ct_convert(source, dataset_id: int, name: str, labels: dict, find, out_root, overwrite: bool,
                      **json_kwargs) -> Path:
    """A CT data set whose cases come from one finder function (MSD, LiTS, KiTS23 on their own)."""
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: source folder not found")
    specs = find(source)
    with staged_dataset(dataset_id, name, out_root, overwrite) as out:
        convert_cases(specs, out, name)
        finish_ct(out, name, labels, sum(s.role == "Tr" for s in specs), **json_kwargs)
    return raw_root(out_root) / dataset_name(dataset_id, name)


def ct_main(convert, description: str, dataset_id: int, argv=None) -> int:
    args = base_parser(description, dataset_id).parse_args(argv)
    return run_cli(convert, args)
