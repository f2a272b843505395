"""What every nnunet-ext trainer needs and the stock nnUNetTrainer lacks.

- auxiliary networks (priors, discriminators, generators, teachers) with their optimizers and schedulers, saved in
  the same checkpoint as the segmentation network, so `nnUNetv2_train ... --c` resumes all of them;
- training in phases (see phases.py) with a `train_step_<phase>` per phase;
- optional seeding, with the random state carried in checkpoints so that a resumed run continues the same random
  stream as an uninterrupted one (single-process data augmentation, nnUNet_n_proc_DA=0);
- a clean stop after N epochs (environment variable nnUNet_ext_stop_after_epochs), for jobs on clusters with a time
  limit and for resume tests;
- checkpoints written atomically (temporary file, then rename), so a kill while saving never leaves a broken file;
- the step helpers every method's train steps share: `autocast`, `batch_to_device`, `optimizer_step` (GradScaler,
  DDP gradient averaging for steps that bypass a DDP forward, clipping as nnU-Net) and `plans_unet`.

The trainer keeps nnU-Net's __init__ signature (nnU-Net records it to rebuild the trainer). Settings are class
attributes, so a subclass that sets one changes it; they are read when training starts (initialize), not in __init__,
so nnU-Net's own pattern - an attribute set on the instance after super().__init__ - works too. Settings that shape
the network are the exception: nnUNetv2_predict builds the network from the class without an instance, so they are
class attributes only (set them in a subclass).
"""

from __future__ import annotations

import io
import os
import random
import sys
from os.path import join

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ext.methods.unet import plans_unet
from nnunet_ext.training.phases import NETWORK, PhaseSchedule, ResolvedPhase
from nnunet_ext.training.vitals import format_vitals, plot_vitals

STOP_AFTER_ENV = "nnUNet_ext_stop_after_epochs"
SEED_ENV = "nnUNet_ext_seed"
CHECKPOINT_KEY = "nnunet_ext"
CHECKPOINT_FORMAT = 1
GRAD_CLIP = 12.0  # nnU-Net's clip_grad_norm_ in its train_step


def env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def atomic_torch_save(obj, filename: str) -> None:
    """torch.save through a temporary file in the same folder and os.replace, which is atomic on POSIX."""
    tmp = f"{filename}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers (their state_dict keys differ)."""
    if isinstance(module, DDP):
        module = module.module
    return getattr(module, "_orig_mod", module)


class nnUNetExtTrainer(nnUNetTrainer):
    """nnUNetTrainer plus the shared machinery. Methods override the hooks below, not the plumbing."""

    # network structure (class attribute only): stage i of every U-Net built from the plans gets at most
    # unet_base_features * 2**i features; None keeps the plans' widths. For CPU test and bench variants.
    unet_base_features: int | None = None
    # the fold folder's plot of epoch_vital_signs() (training/vitals.py), beside nnU-Net's progress.png
    progress_plot: str | None = None
    # settings that take one of a few values, {setting: allowed values}: initialize() refuses any other value at
    # once, instead of a phase switch hours into training tripping over a typo. Each class declares its own; the
    # declarations of every class in the MRO apply (declared_setting_choices).
    setting_choices: dict[str, tuple] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # before nnU-Net creates the fold folder and its log: a refused data set leaves nnUNet_results as it was
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        self.check_dataset(plans_manager, configuration_manager, plans_manager.get_label_manager(dataset_json),
                           dataset_json, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnU-Net's launcher runs DDP on CUDA only and moves every rank to cuda:<rank>; a gloo process group with
        # device cpu (our multi-process tests, CPU clusters) keeps the cpu
        self._cpu_ddp = self.is_ddp and torch.device(device).type == "cpu"
        if self._cpu_ddp:
            self.device = torch.device("cpu")
        self.seed: int | None = env_int(SEED_ENV)
        self.stop_after_epochs: int | None = env_int(STOP_AFTER_ENV)
        # None: the stock single-phase behaviour; initialize() asks the method's build_phase_schedule()
        self.phase_schedule: PhaseSchedule | None = None
        self.current_phase: ResolvedPhase | None = None
        self.aux_modules: dict[str, nn.Module] = {}
        self.aux_optimizers: dict[str, torch.optim.Optimizer] = {}
        self.aux_lr_schedulers: dict[str, object] = {}
        self._rng_state_to_restore: dict | None = None
        self.vital_history: list[dict] = []
        # optimizer_step's updates of the epoch: [tried, skipped for a gradient norm that was not finite]
        self.update_counts = [0, 0]

    # ------------------------------------------------------------------ hooks for the methods
    @classmethod
    def check_dataset(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                      label_manager: LabelManager, dataset_json: dict, configuration: str) -> None:
        """Raise ValueError naming the data set and the problem when the method cannot train on it (missing classes,
        wrong dimensionality, region labels). Runs before anything is written."""

    def build_phase_schedule(self) -> PhaseSchedule | None:
        """The method's phases (None: stock single-phase training). Called by initialize(), so that phase lengths and
        loss weights follow settings changed after super().__init__; by default the schedule assigned to
        self.phase_schedule, if any."""
        return self.phase_schedule

    def build_aux_modules(self) -> dict[str, nn.Module]:
        """Auxiliary networks by name, built after the segmentation network (self.network exists)."""
        return {}

    def configure_aux_optimizers(self) -> dict[str, tuple[torch.optim.Optimizer, object | None]]:
        """(optimizer, lr scheduler or None) per name; schedulers are stepped with the epoch like nnU-Net's."""
        return {}

    def extra_checkpoint_state(self) -> dict:
        """Method state that is not a module or optimizer (selected organs, pseudo-mask thresholds, counters)."""
        return {}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        pass

    def on_phase_start(self, phase: ResolvedPhase) -> None:
        """Called once when a phase begins, also when a resumed run starts inside it."""

    def epoch_vital_signs(self) -> dict[str, float]:
        """The mechanism's vital signs of the epoch that ends, {"group/name": value}: logged, kept in the checkpoint
        and plotted (progress_plot). Must not draw random numbers (resumed runs replay the random stream)."""
        return {}

    def vital_sign_warnings(self, history: list[dict]) -> list[str]:
        """Warnings about the vital signs so far (history: one dict per epoch, with "epoch"), e.g. a collapse."""
        return []

    def after_vital_signs(self, values: dict[str, float]) -> None:
        """Called with the epoch's vital signs before nnU-Net ends the epoch (and may save a checkpoint): a method
        that keeps something by them (the best state so far) does it here, so that the checkpoint holds it."""

    @classmethod
    def declared_setting_choices(cls) -> dict[str, tuple]:
        """setting_choices of cls and every class it inherits from, the most derived declaration winning."""
        choices: dict[str, tuple] = {}
        for klass in reversed(cls.__mro__):
            choices.update(vars(klass).get("setting_choices", {}))
        return choices

    def check_settings(self, *names: str) -> None:
        """ValueError naming the trainer, the setting and the allowed values for a value outside setting_choices; of
        the settings `names` only where given (a setting read long after initialize may have been changed since)."""
        declared = self.declared_setting_choices()
        for name, allowed in declared.items() if not names else ((n, declared[n]) for n in names):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{type(self).__name__}.{name} must be one of {list(allowed)}, got {value!r}")

    # ------------------------------------------------------------------ network
    @classmethod
    def plans_unet(cls, configuration_manager: ConfigurationManager, num_input_channels: int,
                   num_output_channels: int, deep_supervision: bool) -> nn.Module:
        """The configuration's U-Net (narrowed by unet_base_features): what every method builds its networks on."""
        kwargs = None
        if cls.unet_base_features is not None:
            kwargs = dict(configuration_manager.network_arch_init_kwargs)
            kwargs["features_per_stage"] = [min(f, cls.unet_base_features * 2 ** i)
                                            for i, f in enumerate(kwargs["features_per_stage"])]
        return plans_unet(configuration_manager, num_input_channels, num_output_channels, deep_supervision, kwargs)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return cls.plans_unet(configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)

    # ------------------------------------------------------------------ step helpers
    def autocast(self):
        """Mixed precision on CUDA only, as nnU-Net (slow on CPU, unsupported on MPS)."""
        return torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def batch_to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """(data, target as the loss takes it, full-resolution target) on the trainer's device."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
            return data, target, target[0]
        target = target.to(self.device, non_blocking=True)
        return data, target, target

    def optimizer_step(self, loss: torch.Tensor | None, optimizers, parameters, sync: bool = False,
                       scaled: bool = True) -> bool:
        """backward, (DDP average), unscale, clip the gradient norm to GRAD_CLIP, step: nnU-Net's update for any
        optimizer(s) and parameters. Returns whether the update was applied.

        loss None: this rank's batch had nothing for the step, but it joins the others' (sync) with no gradient of
        its own. sync: average the gradients over the ranks here, for steps that call sub-networks directly instead
        of through a DDP wrapper's forward. scaled=False: no GradScaler, for losses computed in float32 outside
        autocast. parameters: the tensors the step updates, or a list of groups of them (one per network sharing the
        step), each group then clipped on its own, so that one network's large gradient does not shrink another's
        update.

        A step whose gradient norm (after unscaling) is not finite is skipped, gradients dropped, and a GradScaler
        backs off as for an overflow. nnU-Net's order (unscale, clip, step) lets the scaler judge the gradients
        before clipping: under float16 autocast (WeakCycle's translation, NaN on an H200, bench/results/gpu; the
        same on the CPU) a discriminator's gradients passed the scaler's check, came out of the clipping as NaN, and
        its update turned its weights NaN for good. The ranks of a DDP run hold the same averaged gradients, so they
        skip the same steps."""
        optimizers = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        parameters = list(parameters)
        grouped = bool(parameters) and all(isinstance(g, list | tuple) for g in parameters)
        groups = [list(g) for g in parameters] if grouped else [parameters]
        parameters = [p for group in groups for p in group]
        scaler = self.grad_scaler if scaled else None
        if loss is not None:
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if sync:
            self.sync_gradients(parameters)
        if scaler is not None:
            for optimizer in optimizers:
                scaler.unscale_(optimizer)
        finite = True
        for group in groups:
            finite &= bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(group, GRAD_CLIP)))
        self.update_counts[0] += 1
        if not finite:
            self.update_counts[1] += 1
            for p in parameters:
                p.grad = None
            if scaler is not None:
                # the scaler's own overflow rule: the new scale without a step (update() demands a recorded step)
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            return False
        for optimizer in optimizers:
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer.step()
        if scaler is not None:
            scaler.update()
        return True

    def skipped_updates_warning(self) -> str | None:
        """The epoch's warning about updates optimizer_step skipped, if any."""
        tried, skipped = self.update_counts
        if not skipped:
            return None
        return (f"{skipped} of this epoch's {tried} updates skipped: the gradient norm was not finite (NaN or inf; "
                f"under mixed precision the loss scale backed off). A run that skips most of its updates is not "
                f"learning")

    # ------------------------------------------------------------------ set-up
    def modules_by_name(self) -> dict[str, nn.Module]:
        return {NETWORK: self.network, **self.aux_modules}

    def initialize(self):
        self.check_settings()
        self.phase_schedule = self.build_phase_schedule()
        if self.seed is not None:
            # ranks draw different batches, as in stock nnU-Net; DDP broadcasts rank 0's initial weights anyway
            seed_everything(self.seed + self.local_rank)
        if self._cpu_ddp:
            # the stock initialize wraps with device_ids=[rank], which DDP refuses for CPU modules: let it build the
            # plain network and loss, then wrap and rebuild the (DDP-aware) loss here
            self.is_ddp = False
            try:
                super().initialize()
            finally:
                self.is_ddp = True
            self.network = DDP(self.network)
            self._set_batch_size_and_oversample()  # per-rank share of the batch
            self.loss = self._build_loss()
        else:
            super().initialize()
        modules = self.build_aux_modules()
        if NETWORK in modules:
            raise ValueError(f"{self.__class__.__name__}: '{NETWORK}' is reserved for the segmentation network")
        self.aux_modules = {}
        for name, module in modules.items():
            module = module.to(self.device)
            if self.is_ddp and self.device.type == "cuda":
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # SyncBatchNorm runs on GPUs only
            self.aux_modules[name] = self._ddp_wrap(module)
        optimizers = self.configure_aux_optimizers()
        unknown = set(optimizers) - set(self.aux_modules)
        if unknown:
            raise ValueError(f"{self.__class__.__name__}: optimizers for unknown auxiliary modules {sorted(unknown)}")
        self.aux_optimizers = {k: opt for k, (opt, _) in optimizers.items()}
        self.aux_lr_schedulers = {k: sched for k, (_, sched) in optimizers.items() if sched is not None}
        if self.phase_schedule is not None:
            missing = self.phase_schedule.module_names() - set(self.modules_by_name())
            if missing:
                raise ValueError(f"{self.__class__.__name__}: the phase schedule trains unknown modules "
                                 f"{sorted(missing)}; known: {sorted(self.modules_by_name())}")
            self.phase_schedule.resolve(self.num_epochs)  # fail at start-up, not hours later
            self.print_to_log_file(f"Phases: {self.phase_schedule.describe(self.num_epochs)}")

    def _ddp_wrap(self, module: nn.Module) -> nn.Module:
        """DDP over the parameters that train now. DDP fixes its parameter set when it is built, and a parameter it
        holds that gets no gradient breaks the next step, so phases that freeze or unfreeze a module re-wrap it."""
        if not self.is_ddp:
            return module
        plain = module.module if isinstance(module, DDP) else module
        if not any(p.requires_grad for p in plain.parameters()):
            return plain
        return DDP(plain, device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    # ------------------------------------------------------------------ multi-process helpers (no-ops in one process)
    def any_rank(self, flag: bool) -> bool:
        """True when `flag` is true on some rank: a step that only some ranks' batches call for (no organ in the
        patch, no tumour drawn) must still run on every rank, or their collective calls would not pair up."""
        if not self.is_ddp:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sync_gradients(self, parameters) -> None:
        """Average the gradients of `parameters` over the ranks, for steps that bypass a DDP wrapper's forward (a
        module's sub-networks called one by one, some of them by one rank's batch only, which DDP cannot reduce).
        Every rank calls it with the same parameters; one without a gradient on any rank keeps none, so the
        optimizer skips it as it would in one process."""
        if not self.is_ddp:
            return
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        has_grad = torch.tensor([float(p.grad is not None) for p in params], device=self.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        dist.all_reduce(has_grad)
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for p, has in zip(params, has_grad.tolist(), strict=True):
            if has:
                p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def do_split(self):
        """nnU-Net's split; under DDP the first call lets rank 0 write splits_final.json before the other ranks read
        it (every rank writing and reading the file at once left one reading it half-written: JSONDecodeError)."""
        if not self.is_ddp or getattr(self, "_split_written", False):
            return super().do_split()
        if self.local_rank == 0:
            split = super().do_split()
        self.wait_for_rank0()
        if self.local_rank != 0:
            split = super().do_split()
        self._split_written = True
        return split

    def wait_for_rank0(self) -> None:
        """Under DDP, every rank waits here until rank 0 has written the files they read next."""
        if self.is_ddp:
            dist.barrier()

    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:
            # a process killed while saving leaves its temporary file (the checkpoint itself is intact): tidy up
            for name in os.listdir(self.output_folder):
                if name.startswith("checkpoint_") and ".pth.tmp" in name:
                    os.remove(join(self.output_folder, name))
        # the data loaders draw warm-up batches in on_train_start; a resumed run must continue the stream after
        # them exactly where the interrupted run stood, so the saved state is restored only now
        if self._rng_state_to_restore is not None:
            restore_rng_state(self._rng_state_to_restore)
            self._rng_state_to_restore = None

    # ------------------------------------------------------------------ phases
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.update_counts = [0, 0]
        for sched in self.aux_lr_schedulers.values():
            sched.step(self.current_epoch)
        if self.phase_schedule is None:
            return
        phase = self.phase_schedule.phase_at(self.current_epoch, self.num_epochs)
        if self.current_phase is None or phase.name != self.current_phase.name:
            self.print_to_log_file(f"Phase '{phase.name}' (epochs {phase.start}-{phase.end - 1}): trains "
                                   f"{', '.join(phase.phase.train) or 'nothing'}")
            self.current_phase = phase
            self.on_phase_start(phase)
        changed = False
        for name, module in self.modules_by_name().items():
            trains = phase.phase.trains(name)
            module.train(trains)
            for p in module.parameters():
                changed |= p.requires_grad != trains
                p.requires_grad_(trains)
        if changed and self.is_ddp:
            # nnU-Net reaches the network behind DDP as self.network.module, so the network stays wrapped (a frozen
            # network keeps its old wrapper; a method that freezes it calls it under no_grad or through unwrap())
            if any(p.requires_grad for p in unwrap(self.network).parameters()):
                self.network = self._ddp_wrap(self.network)
            self.aux_modules = {k: self._ddp_wrap(m) for k, m in self.aux_modules.items()}
            # optimizers hold the parameter tensors, not the wrappers: they are unaffected

    def train_step(self, batch: dict) -> dict:
        if self.current_phase is None:
            return super().train_step(batch)
        step = getattr(self, f"train_step_{self.current_phase.name}", None)
        if step is not None:
            return step(batch)
        if self.current_phase.phase.train == (NETWORK,):
            return super().train_step(batch)
        raise NotImplementedError(f"{self.__class__.__name__} has no train_step_{self.current_phase.name} for "
                                  f"phase '{self.current_phase.name}', which trains {self.current_phase.phase.train}")

    # ------------------------------------------------------------------ stopping and resuming
    def on_epoch_end(self):
        warning = self.skipped_updates_warning()
        if warning:
            self.print_to_log_file(f"WARNING: {warning}")
        values = self.epoch_vital_signs()
        if values:
            self.vital_history.append({"epoch": self.current_epoch, **values})
            self.print_to_log_file(f"Vital signs: {format_vitals(values)}")
            for warning in self.vital_sign_warnings(self.vital_history):
                self.print_to_log_file(f"WARNING: {warning}")
            self.after_vital_signs(values)
            if self.local_rank == 0 and self.progress_plot:
                plot_vitals(self.vital_history, join(self.output_folder, self.progress_plot),
                            f"{self.__class__.__name__}: vital signs")
        super().on_epoch_end()  # increments current_epoch to the number of finished epochs
        n = self.stop_after_epochs
        if n is not None and self.current_epoch == n and n < self.num_epochs:
            self.current_epoch -= 1  # save_checkpoint stores current_epoch + 1, as in on_train_end
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
            self.current_epoch += 1
            self.print_to_log_file(f"Stopping after {n} epochs ({STOP_AFTER_ENV}={n}); continue with "
                                   f"nnUNetv2_train ... --c")
            for loader in (self.dataloader_train, self.dataloader_val):
                if hasattr(loader, "_finish"):
                    loader._finish()
            if self.is_ddp:
                dist.barrier()
            sys.exit(0)

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)
            return
        # nnU-Net assembles its part of the checkpoint; ours is added to the same file before one atomic write
        buffer = io.BytesIO()
        super().save_checkpoint(buffer)
        checkpoint = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=False)
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "aux_modules": {k: unwrap(m).state_dict() for k, m in self.aux_modules.items()},
            "aux_optimizers": {k: o.state_dict() for k, o in self.aux_optimizers.items()},
            "aux_lr_schedulers": {k: s.state_dict() for k, s in self.aux_lr_schedulers.items()
                                  if hasattr(s, "state_dict")},
            "phase": self.current_phase.name if self.current_phase is not None else None,
            "rng": capture_rng_state(),
            "extra": self.extra_checkpoint_state(),
            "vitals": list(self.vital_history),
        }
        atomic_torch_save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint: str) -> None:
        if not isinstance(filename_or_checkpoint, str | os.PathLike):
            raise TypeError(f"{self.__class__.__name__}.load_checkpoint takes a checkpoint file path")
        filename = os.fspath(filename_or_checkpoint)
        super().load_checkpoint(filename)
        checkpoint = torch.load(filename, map_location=self.device, weights_only=False)
        ours = checkpoint.get(CHECKPOINT_KEY)
        if ours is None:
            if self.aux_modules or self.aux_optimizers:
                raise RuntimeError(f"{filename} was written by {checkpoint.get('trainer_name')}, which saves no "
                                   f"auxiliary state; {self.__class__.__name__} needs {sorted(self.aux_modules)}")
            return
        if set(ours["aux_modules"]) != set(self.aux_modules):
            raise RuntimeError(f"{filename} holds auxiliary modules {sorted(ours['aux_modules'])} but "
                               f"{self.__class__.__name__} has {sorted(self.aux_modules)}: the checkpoint comes "
                               f"from another trainer ({checkpoint.get('trainer_name')})")
        for k, state in ours["aux_modules"].items():
            unwrap(self.aux_modules[k]).load_state_dict(state)
        for k, state in ours["aux_optimizers"].items():
            self.aux_optimizers[k].load_state_dict(state)
        for k, state in ours["aux_lr_schedulers"].items():
            self.aux_lr_schedulers[k].load_state_dict(state)
        self.load_extra_checkpoint_state(ours["extra"])
        self.vital_history = list(ours.get("vitals", []))
        self._rng_state_to_restore = ours["rng"]
