"""Metrics and reports beyond nnU-Net's own Dice/IoU evaluation.

- `metrics`: overlap, surface distances (HD95, ASSD, NSD in mm) and probability metrics on numpy arrays
- `detection`: lesion-wise detection by connected components, with size bins
- `av_protocol`: the artery/vein protocol (per image inside the FOV, pixel-count-weighted over classes)
- `evaluate`: nnU-Net prediction folders and cross-validation output (`class_metrics` is the array-level entry)
- `report`, `plots`: CSV/JSON/markdown tables and PNG plots; `compare`: paired comparison with Wilcoxon tests
- `cli`: the `nnunet_ext evaluate` and `nnunet_ext compare` subcommands

Nothing is imported here, so that `nnunet_ext --help` stays fast.
"""
