"""MICCAI 2015 head and neck challenge (PDDCA) -> Dataset731_PDDCA.

Source: one folder per patient, `0522cXXXX/img.nrrd` + `0522cXXXX/structures/<Organ>.nrrd` (binary masks on the
image grid). Labels 1..9 in this order: BrainStem, Chiasm, Mandible, OpticNerve_L, OpticNerve_R, Parotid_L,
Parotid_R, Submandible_L, Submandible_R (a later structure wins where two overlap; overlaps are counted).
Not every patient has all nine structures: `missing_structures.json` beside dataset.json lists them per case
({case: [names]}) so training can ignore those classes there instead of learning them as background.
The challenge's test patients (offsite and onsite, 15) go to imagesTs/labelsTs, the rest to imagesTr.
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
    raw_root,
    read_volume,
    run_cli,
    staged_dataset,
    write_json,
    write_label_volume,
    write_volume,
)
from nnunet_ext.dataset_conversion._ct import finish_ct

DATASET_ID = 731
NAME = "PDDCA"
STRUCTURES = ("BrainStem", "Chiasm", "Mandible", "OpticNerve_L", "OpticNerve_R", "Parotid_L", "Parotid_R",
              "Submandible_L", "Submandible_R")
LABELS = {"background": 0, **{s: i + 1 for i, s in enumerate(STRUCTURES)}}
TEST_CASES = frozenset(f"0522c{n:04d}" for n in (555, 576, 598, 659, 661, 667, 669, 708, 727, 746,  # offsite
                                                  788, 806, 845, 857, 878))  # onsite


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False,
            test_cases=TEST_CASES) -> Path:
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: source folder not found")
    patients = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    patients = [p for p in patients if (p / "img.nrrd").is_file() or (p / "structures").is_dir()]
    if not patients:
        raise ConversionError(f"{source}: no patient folders with img.nrrd")
    missing, overlaps, n_train = {}, {}, 0
    with staged_dataset(dataset_id, NAME, out_root, overwrite) as out:
        (out / "imagesTs").mkdir()
        (out / "labelsTs").mkdir()
        for patient in tqdm(patients, desc=NAME, unit="case"):
            case, image_file = patient.name, patient / "img.nrrd"
            if not image_file.is_file():
                raise ConversionError(f"{patient / 'structures'}: missing partner file: no img.nrrd in {patient}")
            role = "Ts" if case in test_cases else "Tr"
            image = read_volume(image_file)
            write_volume(image, out / f"images{role}" / f"{case}_0000.nii.gz")
            label = np.zeros(image.GetSize()[::-1], np.uint8)
            missing[case], overlap = [], 0
            for value, structure in enumerate(STRUCTURES, start=1):
                mask_file = patient / "structures" / f"{structure}.nrrd"
                if not mask_file.is_file():
                    missing[case].append(structure)
                    continue
                mask = read_volume(mask_file)
                check_same_geometry(image, image_file, mask, mask_file)
                arr = sitk.GetArrayFromImage(mask)
                check_label_values(arr, (0, 1), mask_file, "binary structure mask 0/1")
                overlap += int(((label > 0) & (arr > 0)).sum())
                label[arr > 0] = value
            if overlap:
                overlaps[case] = overlap
            write_label_volume(label, image, out / f"labels{role}" / f"{case}.nii.gz")
            n_train += role == "Tr"
        write_json({c: m for c, m in missing.items() if m}, out / "missing_structures.json")
        finish_ct(out, NAME, LABELS, n_train, overlapping_voxels=overlaps,
                  missing_structures="missing_structures.json: {case: [structure names]} absent from the case",
                  reference="Raudaschl et al. 2017 (PDDCA, MICCAI 2015 head and neck challenge)")
    return raw_root(out_root) / dataset_name(dataset_id, NAME)


def main(argv=None) -> int:
    args = base_parser(__doc__.splitlines()[0], DATASET_ID).parse_args(argv)
    return run_cli(convert, args)


if __name__ == "__main__":
    raise SystemExit(main())
