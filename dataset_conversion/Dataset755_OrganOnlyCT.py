"""Healthy-organ CT (multi-organ labels, no tumours) -> Dataset755_OrganOnlyCT, for FreeTumor's tumour synthesis.

Source: CT volumes with multi-organ label volumes on the same grid, paired as
- `imagesTr/X.nii.gz` + `labelsTr/X.nii.gz` (or `images/` + `labels/`), or
- a flat folder of `NAME_ct*.nii.gz` + `NAME_seg*.nii.gz` (when several CTs share a NAME, the one on the
  segmentation's grid is taken; CTs without a segmentation are skipped), or
- explicit (image, label) pairs.
A user-given mapping names which source ids are which organ (default: TotalSegmentator v2 "total" ids liver 5,
pancreas 7, kidney 2 and 3); every other id becomes background. The result uses the abdomen label scheme of
Dataset754 (0 bg, 1 liver, 2 liver tumour, 3 pancreas, 4 pancreas tumour, 5 kidney, 6 kidney tumour) with no tumour
voxels, so synthetic tumours get labels the network already has.
"""

from __future__ import annotations

from pathlib import Path

from nnunet_ext.dataset_conversion._common import (
    ConversionError,
    add_common_arguments,
    dataset_name,
    list_files,
    raw_root,
    read_volume,
    run_cli,
    safe_case_id,
    staged_dataset,
    strip_extension,
)
from nnunet_ext.dataset_conversion._ct import ABDOMEN_LABELS, NII, CaseSpec, convert_cases, finish_ct

DATASET_ID = 755
NAME = "OrganOnlyCT"
TOTALSEGMENTATOR_IDS = {"liver": (5,), "pancreas": (7,), "kidney": (2, 3)}
ORGAN_LABEL = {"liver": 1, "pancreas": 3, "kidney": 5}


def parse_mapping(items: list[str]) -> dict[str, tuple[int, ...]]:
    """['liver=5', 'kidney=2,3'] -> {'liver': (5,), 'kidney': (2, 3)}."""
    out = {}
    for item in items:
        organ, _, ids = item.partition("=")
        if organ not in ORGAN_LABEL or not ids:
            raise ConversionError(f"--map {item}: expected ORGAN=ID[,ID...] with ORGAN one of {list(ORGAN_LABEL)}")
        out[organ] = tuple(int(i) for i in ids.split(","))
    return out


def find_pairs(source: Path) -> list[tuple[Path, Path]]:
    for images, labels in (("imagesTr", "labelsTr"), ("images", "labels")):
        if (source / images).is_dir():
            pairs = []
            for image in list_files(source / images, NII):
                stem = strip_extension(image.name)
                # nnU-Net-style image names carry a _0000 channel suffix the label lacks
                candidates = [source / labels / image.name, source / labels / f"{stem.removesuffix('_0000')}.nii.gz"]
                label = next((c for c in candidates if c.is_file()), None)
                if label is None:
                    raise ConversionError(f"{image}: missing partner file: no {labels}/{image.name}")
                pairs.append((image, label))
            return pairs
    pairs = []
    files = list_files(source, NII)
    for seg in (f for f in files if "_seg" in f.name):
        key = seg.name.split("_seg")[0]
        cts = [f for f in files if f.name.startswith(f"{key}_ct")]
        if not cts:
            raise ConversionError(f"{seg}: missing partner file: no {key}_ct*.nii.gz beside it")
        size = read_volume(seg).GetSize()
        # the cheap header read is enough to choose among CTs of one patient (full scan vs cut)
        same_grid = [c for c in cts if read_volume(c).GetSize() == size] if len(cts) > 1 else cts
        if len(same_grid) != 1:
            raise ConversionError(f"{seg}: {len(same_grid)} of the CTs {[c.name for c in cts]} are on its grid")
        pairs.append((same_grid[0], seg))
    if not pairs:
        raise ConversionError(f"{source}: no CT/label pairs (imagesTr+labelsTr, images+labels or *_ct/*_seg files)")
    return pairs


def convert(source=None, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False,
            organ_ids: dict[str, tuple[int, ...]] | None = None, pairs=None) -> Path:
    organ_ids = organ_ids or TOTALSEGMENTATOR_IDS
    mapping = {0: 0}
    for organ, ids in organ_ids.items():
        for i in ids:
            if i in mapping and i != 0:
                raise ConversionError(f"label id {i} mapped to two organs")
            mapping[int(i)] = ORGAN_LABEL[organ]
    if pairs is None:
        if source is None or not Path(source).is_dir():
            raise ConversionError(f"{source}: source folder not found")
        pairs = find_pairs(Path(source))
    specs = [CaseSpec(safe_case_id(strip_extension(Path(seg).name).replace("_seg", "")), Path(img), Path(seg), "Tr",
                      mapping, unmapped_to_background=True) for img, seg in pairs]
    with staged_dataset(dataset_id, NAME, out_root, overwrite) as out:
        present = convert_cases(specs, out, NAME)
        finish_ct(out, NAME, ABDOMEN_LABELS, sum(s.role == "Tr" for s in specs),
                  organ_ids={k: list(v) for k, v in organ_ids.items()},
                  organs_present=present, tumours="none: labels 2, 4, 6 are declared for synthesis and absent")
    return raw_root(out_root) / dataset_name(dataset_id, NAME)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-i", "--input", default=None, help="source folder")
    add_common_arguments(p, DATASET_ID, with_input=False)
    p.add_argument("--map", action="append", default=[], metavar="ORGAN=ID[,ID]",
                   help="source label ids of an organ (liver, pancreas, kidney); default TotalSegmentator v2 ids "
                        "liver=5 pancreas=7 kidney=2,3")
    p.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABEL"), help="an explicit pair")
    args = p.parse_args(argv)
    try:
        organ_ids = parse_mapping(args.map) if args.map else None
    except ConversionError as e:
        p.error(str(e))
    return run_cli(convert, args, organ_ids=organ_ids, pairs=args.pair)


if __name__ == "__main__":
    raise SystemExit(main())
