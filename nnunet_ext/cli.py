"""The `nnunet_ext` command."""

from __future__ import annotations

import argparse
import shlex
import sys

from nnunet_ext import __version__
from nnunet_ext.dataset_conversion.cli import add_parser as _add_convert
from nnunet_ext.evaluation.cli import add_compare, add_evaluate
from nnunet_ext.methods.freetumor.cli import add_synth
from nnunet_ext.phantoms import PHANTOMS
from nnunet_ext.stock import StockCommandError

DEMO_TRAINER = "nnUNetTrainer_demo"


def _cmd_env(args: argparse.Namespace) -> int:
    from nnunet_ext.paths import nnunet_environment

    for name, value in nnunet_environment(root=args.root).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _add_env(sub) -> None:
    p = sub.add_parser("env", help="print the exports nnU-Net needs: eval \"$(nnunet_ext env)\"",
                       description="Print shell exports of nnUNet_raw, nnUNet_preprocessed, nnUNet_results (values "
                                   "already set are kept, others default to $NNUNET_EXT_DATA or ~/nnUNet_data) and "
                                   "nnUNet_extTrainer (our trainer folder first, other folders kept).")
    p.add_argument("--root", default=None, help="folder for the three data folders not set yet")
    p.set_defaults(func=_cmd_env)


def _cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_ext.demo import resolve_demo, run_demo

    trainer, phantom, floor = resolve_demo(args.trainer, args.phantom)
    preset = {"default": "default", "none": None}.get(args.preset, args.preset)
    result = run_demo(args.work_dir, trainer=trainer, phantom=phantom, device=args.device, seed=args.seed,
                      quiet_commands=args.quiet, preset=preset)
    print()
    print(result.report.read_text())
    dice = result.metrics["foreground_mean"]["dice"]
    print(f"Foreground mean Dice on {result.metrics['n_cases']} held-out phantom cases: {dice:.3f}")
    print(f"Report: {result.report}  (work folder {result.work_dir}, full command log commands.log)")
    floor = args.min_dice if args.min_dice is not None else floor
    if floor is None:
        return 0
    passed = dice >= floor
    print(f"{'PASS' if passed else 'FAIL'}: Dice {dice:.3f} {'>=' if passed else '<'} floor {floor}")
    return 0 if passed else 1


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end stock nnU-Net pipeline on an embedded phantom",
                       description="Generate a phantom data set, then run the stock nnUNetv2_plan_and_preprocess, "
                                   "nnUNetv2_train (fold 0, short budget) and nnUNetv2_predict with one of our "
                                   "trainers, evaluate the held-out cases and write report.md + evaluation/ "
                                   "(CSV, JSON, overlay PNGs).")
    p.add_argument("--work-dir", default="nnunet_ext_work", help="folder for data, results and report")
    p.add_argument("--trainer", default=DEMO_TRAINER,
                   help="trainer class name (ours or nnU-Net's); a method name such as AVFusionTrainer runs its "
                        "_demo variant. Default: stock nnU-Net behaviour, demo budget")
    p.add_argument("--phantom", default=None, choices=sorted(PHANTOMS),
                   help="embedded data set (default: the trainer's own phantom, else fundus2d)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"], help="default: cuda if available")
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--min-dice", type=float, default=None,
                   help="exit with 1 when the foreground Dice is below (default: the floor measured for the "
                        "trainer's demo on its own phantom, none otherwise)")
    p.add_argument("--preset", default="default",
                   help="planner preset (nnunet_ext plan --list), or 'none' for nnU-Net's default plans. Default: "
                        "cpu for stock nnU-Net trainers on a CPU, the default plans for method demos (their Dice "
                        "floors were measured there)")
    p.add_argument("--quiet", action="store_true", help="do not echo the stock commands' progress lines")
    p.set_defaults(func=_cmd_demo)


def _cmd_plan(args: argparse.Namespace) -> int:
    from nnunet_ext.plans import PRESETS, check_request, plan_dataset

    if args.list:
        for preset in PRESETS.values():
            print(f"{preset.name:<12} -p {preset.plans_identifier:<22} {', '.join(preset.configurations):<24} "
                  f"{preset.description}")
        return 0
    if args.dataset is None or args.preset is None:
        raise ValueError("give -d DATASET_ID and --preset NAME (or --list)")
    # every check before anything is written: fingerprint and plans only once the request is known to be valid
    _, raw, configurations = check_request(args.dataset, args.preset, args.configurations)
    identifier = plan_dataset(args.dataset, args.preset, configurations, num_processes=args.np, verify=args.verify)
    print(f"\nPlanned {raw.name} with preset {args.preset!r} ({', '.join(configurations)}). Train and predict with "
          f"-p {identifier}, e.g.:")
    print(f"  nnUNetv2_train {args.dataset} {configurations[0]} 0 -p {identifier} [-tr TRAINER] [-device cpu]")
    print(f"  nnUNetv2_predict -i IN -o OUT -d {args.dataset} -c {configurations[0]} -p {identifier} [-tr TRAINER]")
    return 0


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="plan and preprocess a data set with a planner preset (cpu, lowmem, ...)",
                       description="Extract the fingerprint (if missing), plan with the preset's planner and "
                                   "preprocess, writing a plans file beside nnUNetPlans.json; prints the -p to pass "
                                   "to nnUNetv2_train / nnUNetv2_predict. Uses nnUNet_raw and nnUNet_preprocessed.")
    p.add_argument("-d", "--dataset", type=int, default=None, help="data set id")
    p.add_argument("--preset", default=None, help="preset name (see --list)")
    p.add_argument("-c", "--configurations", nargs="+", default=None,
                   help="configurations to preprocess (default: all of the preset's that the data set has)")
    p.add_argument("-np", type=int, default=1, help="processes for fingerprint and preprocessing (default 1)")
    p.add_argument("--verify", action="store_true", help="verify the data set's integrity first")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.set_defaults(func=_cmd_plan)


# Each entry adds one subcommand; a module's parser is built only when the command line asks for it would be nicer,
# but argparse needs all of them for --help, and they import nothing heavy at module level.
_SUBCOMMANDS = [_add_env, _add_demo, _add_plan, _add_convert, add_evaluate, add_compare, add_synth]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet_ext", description="nnU-Net v2 extension: method trainers, "
                                     "converters, evaluation, demo and benchmarks.")
    parser.add_argument("--version", action="version", version=f"nnunet-ext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, StockCommandError) as e:
        # user errors (bad names, missing folders, a stock command that failed): the message, not a traceback
        print(f"nnunet_ext {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
