"""Short-budget variants of a trainer, for tests, demos and benchmarks.

nnU-Net's own variants (nnUNetTrainer_5epochs, ...) are subclasses whose __init__ sets attributes after
super().__init__. `short_variant` writes such a subclass for a given budget so that every method gets its `_debug`
and `_demo` variants with one line each in its trainer module:

    FocusNetV2Trainer_debug = short_variant(FocusNetV2Trainer, "FocusNetV2Trainer_debug", epochs=2, iterations=5)

The class must be bound to the same name at module level: nnU-Net finds trainers by module attribute and checkpoints
record the class name.
"""

from __future__ import annotations

import sys

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

# Budgets every method shares. debug: the smallest run that exercises every phase transition in tests;
# demo: what `nnunet_ext demo` trains for, a few minutes on 2 CPU cores for the 2D phantom.
DEBUG_BUDGET = {"epochs": 2, "iterations": 5, "val_iterations": 2}
DEMO_BUDGET = {"epochs": 24, "iterations": 20, "val_iterations": 4}


def short_variant(base: type[nnUNetTrainer], name: str, epochs: int, iterations: int,
                  val_iterations: int | None = None, save_every: int | None = None) -> type[nnUNetTrainer]:
    if epochs < 1 or iterations < 1:
        raise ValueError(f"{name}: epochs and iterations must be >= 1, got {epochs} and {iterations}")
    val_iterations = max(1, iterations // 5) if val_iterations is None else val_iterations

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        self.num_iterations_per_epoch = iterations
        self.num_val_iterations_per_epoch = val_iterations
        if save_every is not None:
            self.save_every = save_every

    doc = f"{base.__name__} for {epochs} epochs x {iterations} iterations ({val_iterations} validation iterations)."
    # the caller's module, where the class is bound to `name`, so that pickling and nnU-Net's lookup agree
    module = sys._getframe(1).f_globals.get("__name__", base.__module__)
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": module, "__qualname__": name})
