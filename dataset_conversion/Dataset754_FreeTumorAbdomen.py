"""Liver + pancreas + kidney tumour sets merged for FreeTumor -> Dataset754_FreeTumorAbdomen.

Source: a folder holding any of MSD Task03 Liver (or LiTS), MSD Task07 Pancreas and KiTS23 in their own layouts
(found by folder name: *Liver* / *LiTS*, *Pancreas*, *KiTS* / kits*), or the three folders given separately.
Labels (FreeTumor's abdomen scheme): 0 background, 1 liver, 2 liver tumour, 3 pancreas, 4 pancreas tumour,
5 kidney, 6 kidney tumour; KiTS cysts become kidney. Case names keep their source (liver_*, pancreas_*, kits_*).
Each source only annotates its own organ: the others are background in its cases (FreeTumor's setting).
"""

from __future__ import annotations

from pathlib import Path

from nnunet_ext.dataset_conversion._common import (
    ConversionError,
    add_common_arguments,
    dataset_name,
    raw_root,
    run_cli,
    staged_dataset,
)
from nnunet_ext.dataset_conversion._ct import ABDOMEN_LABELS, convert_cases, finish_ct, kits_cases, msd_cases

DATASET_ID = 754
NAME = "FreeTumorAbdomen"
PARTS = {
    "liver": (("*Liver*", "*liver*", "*LiTS*", "*lits*"), msd_cases, {0: 0, 1: 1, 2: 2}),
    "pancreas": (("*Pancreas*", "*pancreas*"), msd_cases, {0: 0, 1: 3, 2: 4}),
    "kits": (("*KiTS*", "*kits*"), kits_cases, {0: 0, 1: 5, 2: 6, 3: 5}),
}


def _find_part(source: Path, patterns) -> Path | None:
    for pattern in patterns:
        hits = sorted(p for p in source.glob(pattern) if p.is_dir())
        if hits:
            return hits[0]
    return None


def convert(source=None, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False, liver=None,
            pancreas=None, kits=None) -> Path:
    given = {"liver": liver, "pancreas": pancreas, "kits": kits}
    folders = {}
    for part, (patterns, _, _) in PARTS.items():
        folder = given[part] or (_find_part(Path(source), patterns) if source is not None else None)
        if folder is not None:
            folders[part] = Path(folder)
    if not folders:
        raise ConversionError(f"{source}: no liver, pancreas or KiTS source folder found")
    specs = []
    for part, folder in folders.items():
        _, find, mapping = PARTS[part]
        prefix = "kits_" if part == "kits" else part
        specs += find(folder, prefix, mapping, f"{part} source labels {sorted(mapping)}")
    with staged_dataset(dataset_id, NAME, out_root, overwrite) as out:
        convert_cases(specs, out, NAME)
        finish_ct(out, NAME, ABDOMEN_LABELS, sum(s.role == "Tr" for s in specs),
                  sources={k: str(v) for k, v in folders.items()},
                  reference="Wu et al. 2025 (FreeTumor); MSD; LiTS; KiTS23")
    return raw_root(out_root) / dataset_name(dataset_id, NAME)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-i", "--input", default=None, help="folder holding the liver, pancreas and KiTS folders")
    add_common_arguments(p, DATASET_ID, with_input=False)
    for part in PARTS:
        p.add_argument(f"--{part}", default=None, help=f"the {part} source folder (overrides -i's)")
    args = p.parse_args(argv)
    return run_cli(convert, args, liver=args.liver, pancreas=args.pancreas, kits=args.kits)


if __name__ == "__main__":
    raise SystemExit(main())
