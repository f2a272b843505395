"""LES-AV fundus photographs with artery/vein labels -> Dataset712_LES_AV.

Source: `training/images/N.png`, `training/1st_manual/N.png`, `training/mask/N_mask.gif`, and `test/` alike
when the user keeps a held-out part (LES-AV has no official split; a flat folder with images/ is all training).
Labels 0 background, 1 artery, 2 vein, 3 uncertain; RGB image as one _0000.png; FOV masks in masksTr/masksTs.
Label decoding and the accepted layout variants are described in `_fundus.py`.
"""

from __future__ import annotations

from nnunet_ext.dataset_conversion._fundus import av_main, convert_av

DATASET_ID = 712
NAME = "LES_AV"


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False, coding: str = "auto",
            label_folder: str | None = None):
    return convert_av(source, dataset_id, NAME, out_root=out_root, overwrite=overwrite, coding=coding,
                      label_folder=label_folder,
                      description="LES-AV fundus photographs with artery/vein labels",
                      reference="Orlando et al. 2018 (LES-AV)")


def main(argv=None) -> int:
    return av_main(convert, __doc__.splitlines()[0], DATASET_ID, argv)


if __name__ == "__main__":
    raise SystemExit(main())
