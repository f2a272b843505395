"""Organ -> tumour label pairs, from the trainer's configuration or the data set's own label names.

FreeTumor's abdomen scheme is 1 liver -> 2 liver tumour, 3 pancreas -> 4, 5 kidney -> 6; the chest scheme 1 lung ->
2 lesion. A synthetic tumour grown in organ label o is written with label pairs[o], so the pairs must name real
labels of the data set: using the raw source labels where the remapped ones are meant silently trains the wrong
class, which is why every mapping is checked against dataset.json here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ABDOMEN_PAIRS = {1: 2, 3: 4, 5: 6}
CHEST_PAIRS = {1: 2}


class LabelMappingError(ValueError):
    pass


def _int_labels(dataset_json: Mapping, dataset: str) -> dict[str, int]:
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise LabelMappingError(f"{dataset}: dataset.json has no 'labels'")
    out = {}
    for name, value in labels.items():
        if isinstance(value, list | tuple):
            raise LabelMappingError(f"{dataset}: label {name!r} is a region {list(value)}; tumour synthesis needs "
                                    f"plain class labels (organ and tumour as separate values)")
        out[str(name)] = int(value)
    return out


def _is_tumour_name(name: str) -> bool:
    return re.search(r"tumou?r|lesion|cancer|carcinoma|metasta|nodule|mass|infection", name.lower()) is not None


def default_pairs(labels: Mapping[str, int]) -> dict[int, int]:
    """The abdomen scheme when the data set has its labels, else the chest scheme, else odd organ -> next label; in
    every case only where the tumour label's name says it is one (a data set of optic disc = 1, vessel = 2 must not
    get vessels painted into its discs)."""
    values = set(labels.values())
    names = {v: k for k, v in labels.items()}
    if ABDOMEN_PAIRS.keys() | set(ABDOMEN_PAIRS.values()) <= values:
        pairs = dict(ABDOMEN_PAIRS)
    elif values == {0, 1, 2}:
        pairs = dict(CHEST_PAIRS)
    else:
        pairs = {v: v + 1 for v in sorted(values) if v % 2 == 1 and v + 1 in values}
    return {o: t for o, t in pairs.items() if _is_tumour_name(names[t]) and not _is_tumour_name(names[o])}


def organ_tumour_pairs(dataset_json: Mapping, pairs: Mapping[int, int] | None = None,
                       dataset: str = "data set") -> dict[int, int]:
    """Validated {organ label: tumour label}. pairs=None takes the defaults for the data set's labels."""
    labels = _int_labels(dataset_json, dataset)
    known = {v: k for k, v in labels.items()}
    given = pairs is not None
    pairs = {int(o): int(t) for o, t in (pairs.items() if given else default_pairs(labels).items())}
    where = "organ_tumour_labels" if given else "the default organ->tumour mapping"
    if not pairs:
        raise LabelMappingError(f"{dataset}: no organ->tumour label pairs found in labels {labels}; set the "
                                f"trainer attribute organ_tumour_labels, e.g. {{1: 2}}")
    ignore = labels.get("ignore")  # nnU-Net's ignore label is the one named "ignore"
    for organ, tumour in pairs.items():
        for role, value in (("organ", organ), ("tumour", tumour)):
            if value not in known or value == 0:
                raise LabelMappingError(f"{dataset}: {where} {pairs} names {role} label {value}, which is not a "
                                        f"foreground label of dataset.json (labels {labels})")
            if ignore is not None and value == int(ignore):
                raise LabelMappingError(f"{dataset}: {where} {pairs} uses the ignore label {value} as {role}")
        if organ == tumour:
            raise LabelMappingError(f"{dataset}: {where} maps label {organ} to itself")
    if len(set(pairs.values())) != len(pairs) or set(pairs) & set(pairs.values()):
        raise LabelMappingError(f"{dataset}: {where} {pairs}: every organ needs its own tumour label, distinct from "
                                f"all organ labels")
    return pairs


def describe_pairs(pairs: Mapping[int, int], dataset_json: Mapping) -> str:
    names = {int(v): k for k, v in dataset_json["labels"].items() if not isinstance(v, list | tuple)}
    return ", ".join(f"{names.get(o, o)} ({o}) -> {names.get(t, t)} ({t})" for o, t in pairs.items())
