"""Write bench/results/TARGETS.md: every method's benchmark targets (target, measured, goal, verdict) in one page,
copied from the targets.json files the bench scripts wrote.

    python bench/harness/targets_summary.py                 # the repository's bench/results
    python bench/harness/targets_summary.py --results DIR   # another results folder (one sub-folder per method)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunet_ext.benchmark import write_targets_summary

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: {args.results} is not a folder", file=sys.stderr)
        return 2
    try:
        path = write_targets_summary(args.results)
    except (ValueError, OSError) as e:  # a malformed targets.json: name it, write nothing
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
