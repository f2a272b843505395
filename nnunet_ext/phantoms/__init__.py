"""Deterministic synthetic data sets in nnU-Net raw format, for the demo and the tests.

Every module exposes `generate(out_root, dataset_id, ..., seed, overwrite) -> Path`, `make_case(rng)`, `LABELS`,
`NAME`, `DEFAULT_ID` (790-799 block) and `CONFIGURATION` (the nnU-Net configuration it is meant for).
"""

from nnunet_ext.phantoms import abdomen3d, av2d, ct3d, fundus2d, hn3d, tumor2d, weak2d

PHANTOMS = {"fundus2d": fundus2d, "ct3d": ct3d, "av2d": av2d, "tumor2d": tumor2d, "hn3d": hn3d, "weak2d": weak2d,
            "abdomen3d": abdomen3d}
