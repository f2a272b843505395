"""COVID-19-20 lung lesions (FreeTumor's chest setting) -> Dataset756_COVID19_20.

Source: `*_ct.nii.gz` + `*_seg.nii.gz` (lesion masks 0/1), flat or under `Train/` and `Validation/` (-> imagesTs,
with labelsTs where segmentations exist). Labels 0 background, 1 lesion; with `lung_masks` (a folder of lung masks
named `NAME_lung.nii.gz`, `NAME_seg.nii.gz` or `NAME.nii.gz` for case NAME, any non-zero value = lung) the scheme is
0 background, 1 lung, 2 lesion (lesion wins where both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_ext.dataset_conversion._common import (
    ConversionError,
    base_parser,
    check_label_values,
    check_same_geometry,
    dataset_name,
    find_partner,
    first_existing,
    list_files,
    raw_root,
    read_volume,
    run_cli,
    staged_dataset,
    write_label_volume,
    write_volume,
)
from nnunet_ext.dataset_conversion._ct import NII, finish_ct

DATASET_ID = 756
NAME = "COVID19_20"


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False,
            lung_masks: str | Path | None = None) -> Path:
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: source folder not found")
    parts = {"Tr": first_existing(source, ("Train", "train", "Training")),
             "Ts": first_existing(source, ("Validation", "validation", "Test", "test"))}
    if parts["Tr"] is None:
        parts = {"Tr": source}
    labels = {"background": 0, "lesion": 1} if lung_masks is None else {"background": 0, "lung": 1, "lesion": 2}
    lesion_value = labels["lesion"]
    cases = []
    with staged_dataset(dataset_id, NAME, out_root, overwrite) as out:
        (out / "imagesTs").mkdir()
        (out / "labelsTs").mkdir()
        for role, folder in parts.items():
            if folder is None:
                continue
            cts = [f for f in list_files(folder, NII) if "_ct." in f.name]
            for ct_file in tqdm(cts, desc=f"{NAME} {folder.name}", unit="case"):
                case = ct_file.name.split("_ct.")[0]
                seg_file = find_partner(folder, case, ("_seg",), NII, "lesion mask", ct_file, required=role == "Tr")
                image = read_volume(ct_file)
                write_volume(image, out / f"images{role}" / f"{case}_0000.nii.gz")
                cases.append(role)
                if seg_file is None:
                    continue
                seg = read_volume(seg_file)
                check_same_geometry(image, ct_file, seg, seg_file)
                lesion = sitk.GetArrayFromImage(seg)
                check_label_values(lesion, (0, 1), seg_file, "lesion mask 0/1")
                label = np.zeros(lesion.shape, np.uint8)
                if lung_masks is not None:
                    lung_file = find_partner(Path(lung_masks), case, ("_lung", "_seg", ""), NII, "lung mask", ct_file)
                    lung = read_volume(lung_file)
                    check_same_geometry(image, ct_file, lung, lung_file)
                    label[sitk.GetArrayFromImage(lung) != 0] = 1
                label[lesion == 1] = lesion_value
                write_label_volume(label, image, out / f"labels{role}" / f"{case}.nii.gz")
        if "Tr" not in cases:
            raise ConversionError(f"{source}: no *_ct.nii.gz files found")
        finish_ct(out, NAME, labels, cases.count("Tr"), reference="Roth et al. 2022 (COVID-19-20 challenge)")
    return raw_root(out_root) / dataset_name(dataset_id, NAME)


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], DATASET_ID)
    p.add_argument("--lung-masks", default=None, help="folder of lung masks (adds the lung label)")
    args = p.parse_args(argv)
    return run_cli(convert, args, lung_masks=args.lung_masks)


if __name__ == "__main__":
    raise SystemExit(main())
