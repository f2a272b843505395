"""KiTS23 -> Dataset753_KiTS23.

Source: `dataset/case_XXXXX/imaging.nii.gz` + `segmentation.nii.gz` (the kits23 repository's layout; the `dataset/`
level is optional). Labels as published: 0 background, 1 kidney, 2 tumour, 3 cyst (plain labels; nnU-Net's own
Dataset220 converter trains KiTS's nested regions instead).
"""

from __future__ import annotations

from functools import partial

from nnunet_ext.dataset_conversion._ct import ct_main, kits_cases, simple_ct_convert

DATASET_ID = 753
NAME = "KiTS23"
LABELS = {"background": 0, "kidney": 1, "kidney_tumour": 2, "kidney_cyst": 3}


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False):
    find = partial(kits_cases, prefix="", mapping={0: 0, 1: 1, 2: 2, 3: 3}, scheme="0 bg, 1 kidney, 2 tumour, 3 cyst")
    return simple_ct_convert(source, dataset_id, NAME, LABELS, find, out_root, overwrite,
                             reference="Heller et al. 2023 (KiTS23)")


def main(argv=None) -> int:
    return ct_main(convert, __doc__.splitlines()[0], DATASET_ID, argv)


if __name__ == "__main__":
    raise SystemExit(main())
