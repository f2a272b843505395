"""Artery/vein binary-to-multi-class fusion (Zhou et al., MICCAI 2021) as nnU-Net trainers.

    nnUNetv2_train 711 2d 0 -tr AVFusionTrainer
    nnUNetv2_predict -i IN -o OUT -d 711 -c 2d -tr AVFusionTrainer --save_probabilities

The network (G, G_A, G_V and the fusion head, nnunet_ext.methods.av_fusion.network) is one module built by
`build_network_architecture`, so stock prediction needs nothing else. Losses: nnU-Net's Dice+CE with deep supervision
on [fused logits, G's side outputs], plus Dice+BCE on the artery (artery + crossing) and vein (vein + crossing)
branches. The branches are detached from the fusion (the original's design; `AVFusionTrainer_attached` is the
ablation). `AVFusionTrainer_GAN` adds the original's adversarial terms (per-pixel U-Net discriminators on the fused
output and on the branches, auxiliary modules saved and resumed with the rest) and its MSE between softmax and
one-hot reference.

The fusion mode shapes the network, and nnUNetv2_predict builds the network from the trainer class without making
an instance: variants therefore set class attributes (fusion_mode, detach_branches), which
`build_network_architecture` (a classmethod) reads.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from nnunet_ext.methods.av_fusion.loss import BranchLoss, branch_target, find_av_labels
from nnunet_ext.methods.av_fusion.network import FUSION_MODES, AVFusionNetwork, PixelDiscriminator
from nnunet_ext.methods.av_fusion.vitals import vital_counts, vital_values, vital_warnings
from nnunet_ext.training.base import nnUNetExtTrainer, unwrap
from nnunet_ext.training.phases import Phase, PhaseSchedule
from nnunet_ext.training.variants import DEBUG_BUDGET, DEMO_BUDGET, short_variant

__all__ = ["AVFusionTrainer", "AVFusionTrainer_attached", "AVFusionTrainer_detach", "AVFusionTrainer_mean",
           "AVFusionTrainer_mean_attached", "AVFusionTrainer_GAN", "AVFusionTrainer_debug", "AVFusionTrainer_demo",
           "AVFusionTrainer_GAN_debug", "AVFusionTrainer_GAN_demo"]


class AVFusionTrainer(nnUNetExtTrainer):
    # network structure: class attributes, read by build_network_architecture at training and prediction time
    fusion_mode = "concat"  # "concat": [sigmoid(G_A), G features, sigmoid(G_V)]; "mean": mean of the 3 features
    # True (the original, both versions): the fused loss does not reach G_A/G_V, so the branches never see the
    # ambiguous multi-class decision; False (AVFusionTrainer_attached) is the ablation
    detach_branches = True
    # set True in a subclass for data that really are 3D vessel trees (the method and its phantom are 2D fundus)
    allow_3d = False
    # `nnunet_ext demo --trainer AVFusionTrainer`: the A/V phantom, and the Dice its _demo variant reached there
    # (0.845 measured on CPU, seed 0, detached: artery 0.98, vein 0.975, crossing 0.58; 0.899 with the attached
    # branches of before; a lost class lands below 0.67)
    demo_phantom = "av2d"
    demo_dice_floor = 0.75
    branch_loss_weight = 1.0  # weight of the artery and vein branches' Dice+BCE beside the fused Dice+CE
    setting_choices = {"fusion_mode": FUSION_MODES}
    # vital signs (methods/av_fusion/vitals.py), drawn into this file of the fold folder; a branch or a fused class
    # that stays collapsed this many epochs in a row is logged as a WARNING
    progress_plot = "avfusion_progress.png"
    vital_collapse_epochs = 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.av_labels = find_av_labels(dataset_json["labels"], self.plans_manager.dataset_name)
        self.branch_loss: BranchLoss | None = None
        self._vital_counts: torch.Tensor | None = None

    @classmethod
    def check_dataset(cls, plans_manager, configuration_manager, label_manager, dataset_json: dict,
                      configuration: str) -> None:
        dataset = plans_manager.dataset_name
        if len(configuration_manager.patch_size) != 2 and not cls.allow_3d:
            raise ValueError(
                f"{cls.__name__} is a 2D method (fundus photographs); configuration '{configuration}' of "
                f"{dataset} is 3D. Train the 2d configuration (nnUNetv2_train {dataset} 2d FOLD -tr "
                f"{cls.__name__}), or subclass with allow_3d = True for real 3D vessel volumes")
        if label_manager.has_regions:
            raise ValueError(f"{dataset} uses region-based labels; {cls.__name__} needs class labels "
                             f"(artery, vein, optionally crossing/uncertain)")
        find_av_labels(dataset_json["labels"], dataset)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        def unet(outputs: int, deep_supervision: bool) -> nn.Module:
            return cls.plans_unet(configuration_manager, num_input_channels, outputs, deep_supervision)

        # the branches have no side outputs: deep supervision stays on G, as in the paper's adaptation to nnU-Net
        return AVFusionNetwork(unet(num_output_channels, enable_deep_supervision), unet(1, False), unet(1, False),
                               num_output_channels, cls.fusion_mode, cls.detach_branches)

    def initialize(self):
        super().initialize()
        self.branch_loss = BranchLoss(self.av_labels, self.configuration_manager.batch_dice,
                                      self.label_manager.ignore_label, self.is_ddp)
        self.print_to_log_file(f"A/V fusion ({self.fusion_mode}, branches "
                               f"{'detached' if self.detach_branches else 'attached'}): {self.av_labels.describe()}")

    # ------------------------------------------------------------------ training
    def segmentation_loss(self, output, target, artery_logits: torch.Tensor, vein_logits: torch.Tensor,
                          full_target: torch.Tensor) -> torch.Tensor:
        """Fused Dice+CE (with deep supervision) + branch_loss_weight x the branches' Dice+BCE."""
        branches = self.branch_loss(artery_logits, vein_logits, full_target)
        return self.loss(output, target) + self.branch_loss_weight * branches

    def segmentation_losses(self, data: torch.Tensor, target, full_target: torch.Tensor):
        """(network output, fused + branch loss) of one forward pass."""
        output, artery_logits, vein_logits = self.network(data, return_branches=True)
        return output, self.segmentation_loss(output, target, artery_logits, vein_logits, full_target)

    def train_step_fusion(self, batch: dict) -> dict:
        data, target, full_target = self.batch_to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            _, loss = self.segmentation_losses(data, target, full_target)
        self.optimizer_step(loss, self.optimizer, self.network.parameters())
        return {"loss": loss.detach().cpu().numpy()}

    def train_step(self, batch: dict) -> dict:
        if self.current_phase is None:
            return self.train_step_fusion(batch)
        return super().train_step(batch)  # train_step_<phase>

    # ------------------------------------------------------------------ vital signs
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._vital_counts = None
        unwrap(self.network).keep_outputs = True

    def validation_step(self, batch: dict) -> dict:
        result = super().validation_step(batch)
        net = unwrap(self.network)
        if net.last_outputs is not None:
            fused, artery_logits, vein_logits = net.last_outputs
            net.last_outputs = None
            target = batch["target"]
            target = (target[0] if isinstance(target, list) else target).to(fused.device, non_blocking=True)
            counts = vital_counts(fused, artery_logits, vein_logits, target, self.av_labels,
                                  self.label_manager.ignore_label).cpu()
            self._vital_counts = counts if self._vital_counts is None else self._vital_counts + counts
        return result

    def on_validation_epoch_end(self, val_outputs):
        net = unwrap(self.network)
        net.keep_outputs, net.last_outputs = False, None
        if self.is_ddp and self._vital_counts is not None:
            # every rank validated its own batches: the counts of all of them, the same on every rank
            counts = self._vital_counts.to(self.device)
            dist.all_reduce(counts)
            self._vital_counts = counts.cpu()
        super().on_validation_epoch_end(val_outputs)

    def epoch_vital_signs(self) -> dict[str, float]:
        return {} if self._vital_counts is None else vital_values(self._vital_counts)

    def vital_sign_warnings(self, history: list[dict]) -> list[str]:
        return vital_warnings(history, self.vital_collapse_epochs)


class AVFusionTrainer_attached(AVFusionTrainer):
    """Ablation: the fused loss also trains G_A/G_V (branch probabilities not detached)."""

    detach_branches = False


class AVFusionTrainer_detach(AVFusionTrainer):
    """The default since detached branches became the default; the name stays so that runs trained under it still
    predict and resume (checkpoints record the trainer's class name)."""


class AVFusionTrainer_mean(AVFusionTrainer):
    """The authors' later code: mean of the three final feature maps, branch features detached."""

    fusion_mode = "mean"


class AVFusionTrainer_mean_attached(AVFusionTrainer):
    """Ablation of AVFusionTrainer_mean: the fused loss also trains the branches' features."""

    fusion_mode = "mean"
    detach_branches = False


class AVFusionTrainer_GAN(AVFusionTrainer):
    """AVFusionTrainer plus the original's adversarial training. Per-pixel U-Net discriminators (from the plans) label
    every pixel of an (image, maps) pair real (all-ones target) or fake (all-zeros): `discriminator` sees the
    reference one-hot against the fused softmax, `branch_discriminator` the artery/vein branch targets against the
    branches' sigmoids. The generator adds 0.08 x adversarial on the fused output and on each branch, and 0.5 x
    MSE(fused softmax, one-hot), to nnU-Net's fused Dice+CE and the branch losses (the original used 1.1 x CE where
    nnU-Net uses Dice+CE). With detached branches the fused adversarial term trains G and the head, the branch terms
    train G_A and G_V, as in the original."""

    adversarial_weight = 0.08
    mse_weight = 0.5
    discriminator_lr = 2e-4

    def build_phase_schedule(self) -> PhaseSchedule:
        return PhaseSchedule([
            Phase("adversarial", None, train=("network", "discriminator", "branch_discriminator"),
                  losses={"adversarial": self.adversarial_weight, "mse": self.mse_weight}),
        ])

    def build_aux_modules(self) -> dict[str, nn.Module]:
        classes = self.label_manager.num_segmentation_heads
        return {"discriminator": PixelDiscriminator(
                    self.plans_unet(self.configuration_manager, self.num_input_channels + classes, classes, False)),
                "branch_discriminator": PixelDiscriminator(
                    self.plans_unet(self.configuration_manager, self.num_input_channels + 1, 1, False))}

    def configure_aux_optimizers(self):
        optimizers = {}
        for name in ("discriminator", "branch_discriminator"):
            opt = torch.optim.Adam(self.aux_modules[name].parameters(), lr=self.discriminator_lr, betas=(0.5, 0.999))
            optimizers[name] = (opt, PolyLRScheduler(opt, self.discriminator_lr, self.num_epochs))
        return optimizers

    def _one_hot(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(one-hot reference, valid-pixel mask); ignore-label pixels are zero in both pairs the discriminator sees."""
        if self.label_manager.ignore_label is not None:
            valid = target != self.label_manager.ignore_label
        else:
            valid = torch.ones_like(target, dtype=torch.bool)
        labels = torch.where(valid, target, 0).long()[:, 0]
        one_hot = nn.functional.one_hot(labels, self.label_manager.num_segmentation_heads)
        return one_hot.movedim(-1, 1).float() * valid, valid.float()

    @staticmethod
    def pixel_bce(logits: torch.Tensor, real: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """BCE of per-pixel logits against all-ones maps (samples with real = 1) or all-zeros maps (real = 0), over
        the valid pixels."""
        target = real.float().view(-1, *[1] * (logits.ndim - 1)).expand_as(logits)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * valid
        return loss.sum() / (valid.sum() * logits.shape[1]).clamp_min(1)

    def generator_adversarial(self, data: torch.Tensor, fused: torch.Tensor, artery_logits: torch.Tensor,
                              vein_logits: torch.Tensor, valid: torch.Tensor):
        """(fused term, branch term, fused softmax, branch sigmoids): each output pushed towards "real" by its
        discriminator, per pixel. The branch term is the sum over the two branches (each branch gets the weight the
        original gives it); both branches go through the discriminator in one forward pass (one DDP forward)."""
        probabilities = torch.softmax(fused.float(), 1) * valid
        branch_fake = torch.cat((torch.sigmoid(artery_logits.float()), torch.sigmoid(vein_logits.float()))) * \
            torch.cat((valid, valid))
        ones = torch.ones(data.shape[0], device=data.device)
        fused_term = self.pixel_bce(self.aux_modules["discriminator"](data, probabilities), ones, valid)
        branch_term = 2 * self.pixel_bce(self.aux_modules["branch_discriminator"](torch.cat((data, data)),
                                                                                  branch_fake),
                                         torch.cat((ones, ones)), torch.cat((valid, valid)))
        return fused_term, branch_term, probabilities, branch_fake

    def train_step_adversarial(self, batch: dict) -> dict:
        data, target, full_target = self.batch_to_device(batch)
        phase = self.current_phase.phase
        one_hot, valid = self._one_hot(full_target)
        branch_real = torch.cat([branch_target(full_target, v) * valid
                                 for v in (self.av_labels.artery, self.av_labels.vein)])

        # generator: the whole fusion network
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            output, artery_logits, vein_logits = self.network(data, return_branches=True)
            seg_loss = self.segmentation_loss(output, target, artery_logits, vein_logits, full_target)
            fused = output[0] if isinstance(output, list) else output
            fused_adv, branch_adv, probabilities, branch_fake = self.generator_adversarial(
                data, fused, artery_logits, vein_logits, valid)
            mse = ((probabilities - one_hot) ** 2).sum() / (valid.sum() * one_hot.shape[1]).clamp_min(1)
            loss = (seg_loss + phase.loss_weight("adversarial") * (fused_adv + branch_adv)
                    + phase.loss_weight("mse") * mse)
        self.optimizer_step(loss, self.optimizer, self.network.parameters())

        # discriminators: reference maps real, predicted maps fake, in one forward pass each (their grads from the
        # generator step dropped)
        for name, real, fake in (("discriminator", one_hot, probabilities), ("branch_discriminator", branch_real,
                                                                            branch_fake)):
            module = self.aux_modules[name]
            images = data.repeat(2 * real.shape[0] // data.shape[0], *[1] * (data.ndim - 1))
            labels = torch.cat((torch.ones(real.shape[0]), torch.zeros(real.shape[0]))).to(data.device)
            mask = valid.repeat(2 * real.shape[0] // valid.shape[0], *[1] * (valid.ndim - 1))
            self.aux_optimizers[name].zero_grad(set_to_none=True)
            with self.autocast():
                d_loss = self.pixel_bce(module(images, torch.cat((real, fake.detach()))), labels, mask)
            self.optimizer_step(d_loss, self.aux_optimizers[name], module.parameters())
        return {"loss": loss.detach().cpu().numpy()}


AVFusionTrainer_debug = short_variant(AVFusionTrainer, "AVFusionTrainer_debug", **DEBUG_BUDGET)
AVFusionTrainer_demo = short_variant(AVFusionTrainer, "AVFusionTrainer_demo", **DEMO_BUDGET)
AVFusionTrainer_GAN_debug = short_variant(AVFusionTrainer_GAN, "AVFusionTrainer_GAN_debug", **DEBUG_BUDGET)
AVFusionTrainer_GAN_demo = short_variant(AVFusionTrainer_GAN, "AVFusionTrainer_GAN_demo", **DEMO_BUDGET)
