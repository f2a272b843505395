"""`nnunet_ext synth` on a real CT with its TotalSegmentator organ mask: before/after overlays per organ and the
inserted contrast, with the default procedural contrast (40-150 HU darker than the organ, drawn per tumour).

    python bench/freetumor/bench_freetumor_ct_synth.py ../shared/data/CT_abdomen [--ct example_ct_sm.nii.gz]

Writes bench/results/freetumor/freetumor_ct_abdomen/: overlay_<organ>.png, tumours_<organ>.json (two tumours per
organ, seed 0) and summary.json (organ mean/std, tumour mean before/after, contrast in HU and in organ std).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from nnunet_ext.cli import main as cli_main

RESULTS = Path(__file__).resolve().parent.parent / "results" / "freetumor" / "freetumor_ct_abdomen"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="folder with the CT and its TotalSegmentator mask")
    p.add_argument("--ct", default="example_ct_sm.nii.gz")
    p.add_argument("--mask", default="example_seg.nii.gz")
    p.add_argument("-o", "--output", default=str(RESULTS))
    args = p.parse_args(argv)
    source, out = Path(args.source), Path(args.output)
    for f in (args.ct, args.mask):
        if not (source / f).is_file():
            raise SystemExit(f"{source / f}: not found")
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for organ in ("liver", "pancreas", "kidney"):
            folder = Path(tmp) / organ
            rc = cli_main(["synth", "-i", str(source / args.ct), "-m", str(source / args.mask), "-o", str(folder),
                           "--organ", organ, "--ids", "totalsegmentator", "-n", "2", "--seed", "0"])
            if rc:
                return rc
            shutil.copy(folder / "overlay.png", out / f"overlay_{organ}.png")
            records = json.loads((folder / "tumours.json").read_text())
            (out / f"tumours_{organ}.json").write_text(json.dumps(records, indent=2))
            for r in records:
                drop = r["tumour_mean_hu_before"] - r["tumour_mean_hu_after"]
                summary.append({"organ": organ, "size_class": r["size_class"], "voxels": r["voxels"],
                                "organ_mean_hu": r["organ_mean_hu"], "organ_std_hu": r["organ_std_hu"],
                                "before_hu": r["tumour_mean_hu_before"], "after_hu": r["tumour_mean_hu_after"],
                                "drop_hu": drop, "drop_in_organ_std": drop / r["organ_std_hu"]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for s in summary:
        print(f"{s['organ']} {s['size_class']}: {s['before_hu']:.0f} -> {s['after_hu']:.0f} HU "
              f"(drop {s['drop_hu']:.0f} HU = {s['drop_in_organ_std']:.1f} organ std)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
