"""A trainer with an auxiliary network, its own optimizer and two phases, to test the shared machinery through the
stock nnUNetv2_train. Tests put this folder on nnUNet_extTrainer beside nnunet_ext's own trainer folder."""

import torch
from kill_switch import kill_variant
from torch import nn

from nnunet_ext.training.base import nnUNetExtTrainer
from nnunet_ext.training.phases import Phase, PhaseSchedule


class ForegroundCritic(nn.Module):
    """Predicts the foreground fraction of a patch from the segmentation network's softmax."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.features = nn.Sequential(conv(num_classes, 8, 3, padding=1), nn.LeakyReLU(0.01))
        self.head = nn.Linear(8, 1)

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(probabilities).flatten(2).mean(2)).squeeze(1)


class AuxPhaseTestTrainer(nnUNetExtTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1
        self.phase_schedule = PhaseSchedule([
            Phase("warmup", 1, train=("network",)),
            Phase("joint", None, train=("network", "critic"), losses={"segmentation": 1.0, "critic": 0.5}),
        ])

    def build_aux_modules(self):
        return {"critic": ForegroundCritic(self.label_manager.num_segmentation_heads,
                                           len(self.configuration_manager.patch_size))}

    def configure_aux_optimizers(self):
        opt = torch.optim.Adam(self.aux_modules["critic"].parameters(), lr=1e-3)
        return {"critic": (opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5 ** epoch))}

    def train_step_joint(self, batch: dict) -> dict:
        data = batch["data"].to(self.device)
        target = [t.to(self.device) for t in batch["target"]]
        self.optimizer.zero_grad(set_to_none=True)
        self.aux_optimizers["critic"].zero_grad(set_to_none=True)
        output = self.network(data)
        seg_loss = self.loss(output, target)
        probabilities = torch.softmax(output[0], 1).detach()
        fraction = (target[0] > 0).float().flatten(1).mean(1)
        critic_loss = nn.functional.mse_loss(self.aux_modules["critic"](probabilities), fraction)
        phase = self.current_phase.phase
        (phase.loss_weight("segmentation") * seg_loss + phase.loss_weight("critic") * critic_loss).backward()
        self.optimizer.step()
        self.aux_optimizers["critic"].step()
        return {"loss": seg_loss.detach().cpu().numpy()}


AuxPhaseTestTrainer_kill = kill_variant(AuxPhaseTestTrainer, "AuxPhaseTestTrainer_kill", iterations=3)
