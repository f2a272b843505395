"""The hn3d bench's trained models on more held-out phantom cases: how much one hard case decides the targets.

    python bench/focusnet/heldout_extra.py hn3d --configuration 2d --epochs 60 --iterations 25 --seeds 0 1 \
        --tag soladv --work /tmp/fn_work --n-extra 18

bench_focusnet_hn3d.py holds out 6 phantom cases, so one case decides a per-organ rate to 1/12 over two seeds. This
script trains nothing: it takes the models that bench_focusnet_hn3d.py left in its work folder (same SOURCE, budget,
tag and work arguments) and predicts N further phantom cases, drawn after the bench's held-out ones from the same
generator (seed 0, cases n_train + n_test onwards; the phantom draws every case from its own generator, so the
training and the bench's held-out cases are those the models saw and were scored on). Reported per row (means over
seeds): per-organ Dice on the extra cases, the small-organ mean, and for FocusNetV2 rows the localisation of the
bench (peak, error, share within half the box, paste rate at each run's chosen threshold), per case too, on the
extra cases and on all held-out cases together (the bench's own entries for its cases). The issue's targets stay
those of bench_focusnet_hn3d.py (targets.json); this report is the size of their sampling error.
Results: bench/results/focusnet/heldout_extra_<stem>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_focusnet_hn3d as bench  # noqa: E402

from nnunet_ext import stock  # noqa: E402
from nnunet_ext.phantoms import hn3d  # noqa: E402


def extra_cases(folder: Path, n_train: int, n_test: int, n_extra: int) -> Path:
    """imagesTs/labelsTs with phantom cases n_train + n_test ... + n_extra - 1 (the bench's cases are not repeated)."""
    target = folder / f"Dataset{hn3d.DEFAULT_ID}_{hn3d.NAME}"
    marker = folder / "cases.json"
    wanted = {"first": n_train + n_test, "count": n_extra}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return target
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    generated = hn3d.generate(folder / "all", n_train=n_train + n_test, n_test=n_extra, seed=0)
    target.mkdir()
    for sub in ("imagesTs", "labelsTs"):
        shutil.move(str(generated / sub), str(target / sub))
    shutil.copy(generated / "dataset.json", target / "dataset.json")
    shutil.rmtree(folder / "all")
    marker.write_text(json.dumps(wanted))
    return target


def score_row(row: str, seed: int, raw: Path, extra: Path, args, env: dict, work: Path) -> dict:
    dataset_id = int(raw.name[len("Dataset"):].split("_")[0])
    model = bench.model_folder(work, row, seed, raw, args)
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        raise SystemExit(f"{model}: no checkpoint_final.pth - run bench_focusnet_hn3d.py with the same arguments first")
    run_env = bench.row_environment(env, work, row, seed)
    pred = work / "extra" / f"pred_{row}_seed{seed}"
    shutil.rmtree(pred, ignore_errors=True)
    stock.predict(extra / "imagesTs", pred, dataset_id, args.configuration, bench.ROWS[row], run_env,
                  plans=args.plans)
    entry = {"row": row, "seed": seed,
             "per_class": {organ: v["dice"] for organ, v in bench.evaluate(extra / "labelsTs", pred, run_env).items()}}
    own = json.loads((work / f"{row}_seed{seed}.json").read_text())
    entry["bench_per_class"] = {o: v["dice"] for o, v in own["per_class"].items()}
    if not row.startswith("stock"):
        os.environ.update(run_env)  # the predictor finds the trainer class through nnUNet_extTrainer
        loc = bench.localisation(model, extra, args.configuration)
        entry["peak_threshold"] = loc["peak_threshold"]
        entry["box"] = loc["box"]
        entry["cases"] = {organ: [{"case": r["case"], "peak": round(r["peak"], 3), "error_mm": round(r["error_mm"], 2),
                                   "in_half_box": r["in_half_box"]} for r in rows]
                          for organ, rows in loc["rows"].items()}
        entry["bench_localisation"] = own["localisation"]  # the bench's held-out cases, for the pooled rates
    return entry


def summarise(entries: list[dict], small: list[str], n_extra: int, n_test: int) -> dict:
    organs = list(entries[0]["per_class"])
    out = {"dice_extra": {o: float(np.mean([e["per_class"][o] for e in entries])) for o in organs}}
    out["small_mean_extra_per_seed"] = [float(np.mean([e["per_class"][o] for o in small])) for e in entries]
    out["small_mean_extra"] = float(np.mean(out["small_mean_extra_per_seed"]))
    # whole-case Dice over all held-out cases: the bench's mean over its cases and this one's, weighted by count
    out["small_mean_all"] = float(np.mean([
        (np.mean([e["bench_per_class"][o] for o in small]) * n_test + np.mean([e["per_class"][o] for o in small])
         * n_extra) / (n_test + n_extra) for e in entries]))
    if "cases" not in entries[0]:
        return out
    loc = {}
    for organ in small:
        rows = [(e["peak_threshold"], r) for e in entries for r in e["cases"].get(organ, [])]
        if not rows:
            continue
        pasted = [r["peak"] > t for t, r in rows]
        own = [e["bench_localisation"][organ] for e in entries if organ in e["bench_localisation"]]
        own_n = sum(o["n"] for o in own)
        loc[organ] = {
            "n_extra": len(rows), "peak": float(np.mean([r["peak"] for _, r in rows])),
            "error_mm": float(np.mean([r["error_mm"] for _, r in rows])),
            "in_half_box": float(np.mean([r["in_half_box"] for _, r in rows])),
            "paste_rate": float(np.mean(pasted)),
            "unpasted": sorted({r["case"] for t, r in rows if not r["peak"] > t}),
            "n_all": len(rows) + own_n,
            "paste_rate_all": float((sum(pasted) + sum(o["paste_rate"] * o["n"] for o in own)) / (len(rows) + own_n)),
            "in_half_box_all": float((sum(r["in_half_box"] for _, r in rows) + sum(o["in_half_box"] * o["n"]
                                                                                  for o in own))
                                     / (len(rows) + own_n))}
    out["localisation"] = loc
    return out


def markdown(report: dict, small: list[str]) -> str:
    s = report["setting"]
    organs = list(next(iter(report["summary"].values()))["dice_extra"])
    lines = [f"# FocusNetV2 bench models on {s['n_extra']} more held-out phantom cases ({s['dataset']}, "
             f"{s['configuration']}, work folder tag `{s['tag']}`)", "",
             f"Written by bench/focusnet/heldout_extra.py. The models of bench_focusnet_hn3d.py (E = {s['epochs']} x "
             f"{s['iterations']}, seeds {s['seeds']}) predict phantom cases {s['first_case']}-"
             f"{s['first_case'] + s['n_extra'] - 1}, drawn after the bench's {s['n_test']} held-out cases; nothing "
             "is retrained or chosen here. Means over seeds.", "",
             "| row | " + " | ".join(organs) + " | small-organ mean, extra cases (per seed) | small-organ mean, all "
             f"{s['n_test'] + s['n_extra']} held-out |", "|---" * (len(organs) + 3) + "|"]
    for row, r in report["summary"].items():
        per_seed = ", ".join(f"{v:.3f}" for v in r["small_mean_extra_per_seed"])
        lines.append(f"| {row} | " + " | ".join(f"{r['dice_extra'][o]:.3f}" for o in organs)
                     + f" | {r['small_mean_extra']:.3f} ({per_seed}) | {r['small_mean_all']:.3f} |")
    lines += ["", "Localisation (organ-centred windows as in the bench; paste rate at each run's chosen threshold; "
              "'all' pools the bench's held-out cases with these):", "",
              "| row | organ | peak | error mm | in half box | paste rate | unpasted cases | paste rate, all | "
              "in half box, all |", "|---|---|---|---|---|---|---|---|---|"]
    for row, r in report["summary"].items():
        for organ, v in r.get("localisation", {}).items():
            lines.append(f"| {row} | {organ} | {v['peak']:.3f} | {v['error_mm']:.1f} | {v['in_half_box']:.2f} | "
                         f"{v['paste_rate']:.3f} ({v['n_extra']}) | {', '.join(v['unpasted']) or '-'} | "
                         f"{v['paste_rate_all']:.3f} ({v['n_all']}) | {v['in_half_box_all']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", choices=["hn3d"], help="the phantom (a real data set has no further cases to draw)")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rows", nargs="+", default=["stock", "focusnet_equal_total", "focusnet_same_snet"],
                   choices=list(bench.ROWS))
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=6)
    p.add_argument("--n-extra", type=int, default=18)
    p.add_argument("--work", type=Path, default=bench.REPO / "bench" / "work" / "focusnet")
    p.add_argument("--out", type=Path, default=bench.REPO / "bench" / "results" / "focusnet")
    p.add_argument("--tag", default="")
    p.add_argument("--preset", default=None)
    args = p.parse_args()
    if args.n_extra < 1:
        raise SystemExit(f"--n-extra must be at least 1, got {args.n_extra}")
    env = stock.work_environment(args.work / "nnunet", device="cpu")
    raw = Path(env["nnUNet_raw"]) / f"Dataset{hn3d.DEFAULT_ID}_{hn3d.NAME}"
    args.plans = "nnUNetPlans" if args.preset is None else f"nnUNetPlans_{args.preset}"
    work = bench.work_folder(raw, args)
    if not work.is_dir():
        raise SystemExit(f"{work}: no bench work folder - run bench_focusnet_hn3d.py with the same arguments first")
    bench.add_bench_environment(env, args)
    extra = extra_cases(args.work / f"extra_{args.n_train + args.n_test}_{args.n_extra}", args.n_train, args.n_test,
                        args.n_extra)
    entries = {row: [score_row(row, seed, raw, extra, args, env, work) for seed in args.seeds] for row in args.rows}
    focus = next((e[0] for r, e in entries.items() if not r.startswith("stock")), None)
    small = list(focus["cases"]) if focus else list(hn3d.SMALL)
    report = {"setting": {"dataset": raw.name, "configuration": args.configuration, "epochs": args.epochs,
                          "iterations": args.iterations, "seeds": args.seeds, "tag": args.tag,
                          "n_test": args.n_test, "n_extra": args.n_extra, "first_case": args.n_train + args.n_test,
                          "small_organs": small},
              "summary": {row: summarise(e, small, args.n_extra, args.n_test) for row, e in entries.items()},
              "runs": entries}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"heldout_extra_{raw.name}_{args.configuration}_E{args.epochs}x{args.iterations}" + (
        f"_{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(report, small))
    print(args.out / f"{stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
