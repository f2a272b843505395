"""Converters from public data set layouts to nnU-Net raw format (one module per data set).

`CONVERTERS` maps the short name used by `nnunet_ext convert NAME SRC` to (data set id, module, what it converts).
Ids live in the 700 block; 790-799 are kept for the synthetic phantoms.
"""

from __future__ import annotations

import importlib

CONVERTERS: dict[str, tuple[int, str, str]] = {
    "drive_av": (711, "Dataset711_DRIVE_AV", "DRIVE fundus, RITE artery/vein labels"),
    "les_av": (712, "Dataset712_LES_AV", "LES-AV fundus, artery/vein labels"),
    "hrf_av": (713, "Dataset713_HRF_AV", "HRF fundus, artery/vein labels"),
    "fundus_tumour": (721, "Dataset721_FundusTumour", "FTS-style fundus tumour images + masks (+ class table)"),
    "pddca": (731, "Dataset731_PDDCA", "MICCAI 2015 head and neck (PDDCA), 9 organs at risk"),
    "brats_weak": (741, "Dataset741_BraTSWeak", "BraTS 2018/2019 FLAIR slices, weak (image-level) labels"),
    "isic_weak": (742, "Dataset742_ISICWeak", "ISIC 2018 dermoscopy, weak (image-level) labels"),
    "msd_liver": (751, "Dataset751_MSDLiver", "MSD Task03 Liver / LiTS"),
    "msd_pancreas": (752, "Dataset752_MSDPancreas", "MSD Task07 Pancreas"),
    "kits23": (753, "Dataset753_KiTS23", "KiTS23 kidney, tumour, cyst"),
    "freetumor_abdomen": (754, "Dataset754_FreeTumorAbdomen", "liver + pancreas + KiTS merged, 6 classes"),
    "organ_ct": (755, "Dataset755_OrganOnlyCT", "healthy-organ CT with a label mapping (tumour synthesis)"),
    "covid19_20": (756, "Dataset756_COVID19_20", "COVID-19-20 lung lesions"),
}


def converter_module(name: str):
    """The module of a converter by short name (imported on demand: each pulls in SimpleITK, PIL, ...)."""
    if name not in CONVERTERS:
        raise KeyError(f"unknown converter {name!r}; known: {', '.join(sorted(CONVERTERS))}")
    return importlib.import_module(f"nnunet_ext.dataset_conversion.{CONVERTERS[name][1]}")
