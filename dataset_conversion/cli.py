"""`nnunet_ext convert NAME SRC [options]`: runs a converter by its short name."""

from __future__ import annotations

import argparse

from nnunet_ext.dataset_conversion import CONVERTERS, converter_module


def _cmd_convert(args: argparse.Namespace) -> int:
    module = converter_module(args.name)
    return module.main(["-i", args.source, *args.options])


def add_parser(sub) -> None:
    table = "\n".join(f"  {name:<18} {dsid}  {what}" for name, (dsid, _, what) in CONVERTERS.items())
    p = sub.add_parser("convert", help="convert a public data set into nnU-Net raw format",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Convert a public data set in its published layout into nnUNet_raw/DatasetNNN_Name."
                                   f"\n\nconverters (name, id, data set):\n{table}\n\n"
                                   "Options after SRC go to the converter: -o OUT (default $nnUNet_raw), --overwrite, "
                                   "-d ID and its own options; `nnunet_ext convert NAME SRC -h` lists them.")
    p.add_argument("name", choices=list(CONVERTERS), metavar="NAME", help="converter short name (listed above)")
    p.add_argument("source", metavar="SRC", help="source folder in the data set's published layout")
    p.add_argument("options", nargs=argparse.REMAINDER, help="converter options")
    p.set_defaults(func=_cmd_convert)
