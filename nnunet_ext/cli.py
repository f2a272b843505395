"""The `nnunet_ext` command."""

from __future__ import annotations

import argparse
import shlex
import sys

from nnunet_ext import __version__
from nnunet_ext.evaluation.cli import add_compare, add_evaluate


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


# Each entry adds one subcommand; a module's parser is built only when the command line asks for it would be nicer,
# but argparse needs all of them for --help, and they import nothing heavy at module level.
_SUBCOMMANDS = [
    _add_env,
    add_evaluate,
    add_compare,
]


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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
