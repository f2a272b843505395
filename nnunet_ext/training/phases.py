"""Training in phases inside one nnU-Net run.

A phase is a range of epochs, the modules that train during it and the weights of the losses that apply. Methods
such as FocusNetV2 (localise, then segment, then adversarial shape prior) or WeakCycle (translation, then
teacher-student) are one `nnUNetv2_train` run whose behaviour changes at phase boundaries; keeping the schedule
declarative lets `--c` resume in the right phase from nothing but the epoch counter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

# Name of the segmentation network (trainer.network) in a phase's `train` list; other names are auxiliary modules.
NETWORK = "network"


@dataclass(frozen=True)
class Phase:
    """One phase of training.

    epochs: an int is a number of epochs; a float in (0, 1] is a fraction of the trainer's num_epochs (so short
    test variants scale every phase with the budget); None (last phase only) takes the epochs that remain.
    """

    name: str
    epochs: int | float | None
    train: tuple[str, ...] = (NETWORK,)
    losses: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            raise ValueError("a phase needs a name")
        if isinstance(self.epochs, bool) or (self.epochs is not None and not isinstance(self.epochs, int | float)):
            raise TypeError(f"phase {self.name!r}: epochs must be an int, a float fraction or None, "
                            f"got {self.epochs!r}")
        if isinstance(self.epochs, int) and self.epochs < 1:
            raise ValueError(f"phase {self.name!r}: epochs must be at least 1, got {self.epochs}")
        if isinstance(self.epochs, float) and not 0.0 < self.epochs <= 1.0:
            raise ValueError(f"phase {self.name!r}: a fractional length must lie in (0, 1], got {self.epochs}")
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "losses", MappingProxyType(dict(self.losses)))

    def loss_weight(self, loss_name: str) -> float:
        """Weight of a loss in this phase; a loss the phase does not name does not apply (0)."""
        return float(self.losses.get(loss_name, 0.0))

    def trains(self, module_name: str) -> bool:
        return module_name in self.train


@dataclass(frozen=True)
class ResolvedPhase:
    phase: Phase
    start: int  # first epoch, inclusive
    end: int  # last epoch, exclusive

    @property
    def name(self) -> str:
        return self.phase.name


class PhaseSchedule:
    """An ordered list of phases resolved against a total number of epochs."""

    def __init__(self, phases: Sequence[Phase]):
        if not phases:
            raise ValueError("a phase schedule needs at least one phase")
        names = [p.name for p in phases]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"phase names must be unique, repeated: {duplicates}")
        for p in phases[:-1]:
            if p.epochs is None:
                raise ValueError(f"only the last phase may take the remaining epochs (epochs=None), not {p.name!r}")
        self.phases = tuple(phases)

    def resolve(self, num_epochs: int) -> tuple[ResolvedPhase, ...]:
        lengths = []
        for p in self.phases:
            if p.epochs is None:
                lengths.append(num_epochs - sum(lengths))
            elif isinstance(p.epochs, float):
                lengths.append(max(1, round(p.epochs * num_epochs)))
            else:
                lengths.append(p.epochs)
        if sum(lengths) > num_epochs or min(lengths) < 1:
            raise ValueError(
                f"phases {[(p.name, p.epochs) for p in self.phases]} do not fit into num_epochs={num_epochs} "
                f"(resolved lengths {lengths}); give the trainer more epochs or shorter phases")
        resolved, start = [], 0
        for p, n in zip(self.phases, lengths, strict=True):
            resolved.append(ResolvedPhase(p, start, start + n))
            start += n
        return tuple(resolved)

    def resolved(self, name: str, num_epochs: int) -> ResolvedPhase:
        """The phase called name, with its epochs in a run of num_epochs."""
        for r in self.resolve(num_epochs):
            if r.name == name:
                return r
        raise KeyError(f"no phase {name!r} in {[p.name for p in self.phases]}")

    def phase_at(self, epoch: int, num_epochs: int) -> ResolvedPhase:
        """The phase that epoch belongs to; epochs past the schedule stay in the last phase."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        resolved = self.resolve(num_epochs)
        for r in resolved:
            if r.start <= epoch < r.end:
                return r
        return resolved[-1]

    def module_names(self) -> set[str]:
        return {m for p in self.phases for m in p.train}

    def describe(self, num_epochs: int) -> str:
        return "; ".join(f"{r.name}: epochs {r.start}-{r.end - 1}, trains {', '.join(r.phase.train) or 'nothing'}"
                         + (f", losses {dict(r.phase.losses)}" if r.phase.losses else "")
                         for r in self.resolve(num_epochs))


class PhasePolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly decay spread over the epochs [start, end) of one phase instead of the whole run: a network that
    trains only in that phase anneals to 0 by its end, as it would in a run of that length. Epochs after the phase
    keep lr 0 (the network is frozen there anyway); nnU-Net steps it with the epoch number."""

    def __init__(self, optimizer, initial_lr: float, start: int, end: int, exponent: float = 0.9):
        if end <= start:
            raise ValueError(f"a phase schedule needs end > start, got [{start}, {end})")
        self.start = start
        super().__init__(optimizer, initial_lr, end - start, exponent)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        super().step(min(max(current_step - self.start, 0), self.max_steps))
