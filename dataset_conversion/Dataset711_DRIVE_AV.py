"""DRIVE fundus photographs with RITE artery/vein labels -> Dataset711_DRIVE_AV.

Source: `training/images/NN_training.tif`, `training/1st_manual/NN_training.png` (index-coded 0-3 or RITE
colour-coded), `training/mask/NN_training_mask.gif`, the same under `test/` (`NN_test.*`). The official split
(20 training, 20 test) becomes imagesTr/imagesTs.
Labels 0 background, 1 artery, 2 vein, 3 uncertain; RGB image as one _0000.png; FOV masks in masksTr/masksTs.
Label decoding and the accepted layout variants are described in `_fundus.py`.
"""

from __future__ import annotations

from nnunet_ext.dataset_conversion._fundus import av_main, convert_av

DATASET_ID = 711
NAME = "DRIVE_AV"


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False, coding: str = "auto",
            label_folder: str | None = None):
    return convert_av(source, dataset_id, NAME, out_root=out_root, overwrite=overwrite, coding=coding,
                      label_folder=label_folder,
                      description="DRIVE fundus photographs with RITE artery/vein labels",
                      reference="Staal et al. 2004 (DRIVE); Hu et al. 2013 (RITE)")


def main(argv=None) -> int:
    return av_main(convert, __doc__.splitlines()[0], DATASET_ID, argv)


if __name__ == "__main__":
    raise SystemExit(main())
