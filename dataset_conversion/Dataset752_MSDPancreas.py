"""MSD Task07 Pancreas -> Dataset752_MSDPancreas.

Source: the MSD layout (`imagesTr/pancreas_N.nii.gz`, `labelsTr/`, `imagesTs/` without labels).
Labels 0 background, 1 pancreas, 2 pancreas tumour (MSD's "cancer": tumour and cyst).
"""

from __future__ import annotations

from functools import partial

from nnunet_ext.dataset_conversion._ct import ct_main, msd_cases, simple_ct_convert

DATASET_ID = 752
NAME = "MSDPancreas"
LABELS = {"background": 0, "pancreas": 1, "pancreas_tumour": 2}


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False):
    find = partial(msd_cases, prefix="pancreas", mapping={0: 0, 1: 1, 2: 2}, scheme="0 bg, 1 pancreas, 2 tumour")
    return simple_ct_convert(source, dataset_id, NAME, LABELS, find, out_root, overwrite,
                             reference="Antonelli et al. 2022 (MSD)")


def main(argv=None) -> int:
    return ct_main(convert, __doc__.splitlines()[0], DATASET_ID, argv)


if __name__ == "__main__":
    raise SystemExit(main())
