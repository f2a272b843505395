"""HRF fundus photographs with artery/vein labels -> Dataset713_HRF_AV.

Source: `training/images/NN_x.jpg` (x = dr, g, h; JPEGs decoded and written losslessly as PNG),
`training/1st_manual/NN_x_AVmanual.png`, `training/mask/NN_x_mask.tif`, and `test/` alike.
Labels 0 background, 1 artery, 2 vein, 3 uncertain; RGB image as one _0000.png; FOV masks in masksTr/masksTs.
Label decoding and the accepted layout variants are described in `_fundus.py`.
"""

from __future__ import annotations

from nnunet_ext.dataset_conversion._fundus import av_main, convert_av

DATASET_ID = 713
NAME = "HRF_AV"


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False, coding: str = "auto",
            label_folder: str | None = None):
    return convert_av(source, dataset_id, NAME, out_root=out_root, overwrite=overwrite, coding=coding,
                      label_folder=label_folder,
                      description="HRF fundus photographs with artery/vein labels",
                      reference="Budai et al. 2013 (HRF); Hemelings et al. 2019 (A/V labels)")


def main(argv=None) -> int:
    return av_main(convert, __doc__.splitlines()[0], DATASET_ID, argv)


if __name__ == "__main__":
    raise SystemExit(main())
