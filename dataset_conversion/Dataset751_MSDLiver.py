"""MSD Task03 Liver / LiTS -> Dataset751_MSDLiver.

Source: the MSD layout (`imagesTr/liver_N.nii.gz`, `labelsTr/liver_N.nii.gz`, `imagesTs/` without labels, its own
dataset.json) or LiTS's `volume-N.nii` + `segmentation-N.nii`. Labels 0 background, 1 liver, 2 liver tumour.
"""

from __future__ import annotations

from functools import partial

from nnunet_ext.dataset_conversion._ct import ct_main, msd_cases, simple_ct_convert

DATASET_ID = 751
NAME = "MSDLiver"
LABELS = {"background": 0, "liver": 1, "liver_tumour": 2}


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False):
    find = partial(msd_cases, prefix="liver", mapping={0: 0, 1: 1, 2: 2}, scheme="0 bg, 1 liver, 2 tumour")
    return simple_ct_convert(source, dataset_id, NAME, LABELS, find, out_root, overwrite,
                             reference="Antonelli et al. 2022 (MSD); Bilic et al. 2023 (LiTS)")


def main(argv=None) -> int:
    return ct_main(convert, __doc__.splitlines()[0], DATASET_ID, argv)


if __name__ == "__main__":
    raise SystemExit(main())
