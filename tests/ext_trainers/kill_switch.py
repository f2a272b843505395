"""A trainer that SIGKILLs its own process at a fixed point of an epoch, for the kill-and-resume tests.

Killing from the test process a fixed delay after the epoch's log line raced the epoch: on a busy CI machine the
log line reached the test late and a two-iteration epoch had already ended (and saved) when the kill came. Killed
from inside, the process dies at the same training step on every machine.
"""

import os
import signal
import sys

import torch

from nnunet_ext.training.variants import short_variant

KILL_EPOCH_ENV = "nnUNet_ext_test_kill_epoch"


class KillMidEpoch:
    """Mixin (first base): checkpoint_latest.pth after every epoch, and SIGKILL of the process just before the second
    training step of epoch `nnUNet_ext_test_kill_epoch` (0-based): the epoch has begun, one optimizer step of it is
    done, and neither its end nor its checkpoint has come."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1
        self.steps_this_epoch = 0

    def on_train_epoch_start(self):
        self.steps_this_epoch = 0
        super().on_train_epoch_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        # the kill tests compare checkpoint_final.pth, written before this; nnU-Net's final validation spawns its export
        # and metric workers, each importing torch and nnU-Net anew (12-14 s a run on a 2-core CI machine). Validation
        # after a resume is covered by each method's stop-resume-predict test
        self.print_to_log_file("KillMidEpoch: final validation skipped")

    def train_step(self, batch: dict) -> dict:
        kill_epoch = os.environ.get(KILL_EPOCH_ENV)
        if kill_epoch is not None and self.current_epoch == int(kill_epoch) and self.steps_this_epoch == 1:
            print(f"KillMidEpoch: SIGKILL in epoch {self.current_epoch}, before step 2", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        self.steps_this_epoch += 1
        return super().train_step(batch)


def kill_variant(base: type, name: str, epochs: int = 4, iterations: int = 2, val_iterations: int = 1) -> type:
    """`base` shortened to `epochs` x `iterations` with the kill switch, bound as `name` in the caller's module."""
    short = short_variant(base, f"{name}_base", epochs, iterations, val_iterations)
    module = sys._getframe(1).f_globals["__name__"]
    return type(name, (KillMidEpoch, short), {"__module__": module, "__qualname__": name, "__doc__": short.__doc__})
