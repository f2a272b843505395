"""One optimizer with two update rules, so that FTSegNet's transformer blocks can train with AdamW while the rest of
the network keeps nnU-Net's SGD, and nnU-Net's train step (one optimizer, one GradScaler) stays unchanged.

Every parameter group names its rule (`rule`: "sgd" or "adamw"):
- sgd: PyTorch's SGD with Nesterov momentum and L2 weight decay, what nnU-Net uses (lr 1e-2, momentum 0.99);
- adamw: AdamW (decoupled weight decay) with a linear warm-up of `warmup` steps.
`GroupPolyLR` is nnU-Net's poly decay per group from each group's own `initial_lr` (nnU-Net's PolyLRScheduler would
put every group at the same learning rate).
"""

from __future__ import annotations

import torch

RULES = ("sgd", "adamw")


class SGDAdamW(torch.optim.Optimizer):
    def __init__(self, groups: list[dict], lr: float = 1e-2, momentum: float = 0.99, weight_decay: float = 3e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        for group in groups:
            if group.get("rule", "sgd") not in RULES:
                raise ValueError(f"unknown update rule {group.get('rule')!r}; known: {RULES}")
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "betas": betas,
                                  "eps": eps, "rule": "sgd", "warmup": 0})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["rule"] == "sgd":
                    self._sgd(p, group)
                else:
                    self._adamw(p, group)
        return loss

    def _sgd(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
        p.add_(grad.add(state["momentum_buffer"], alpha=group["momentum"]), alpha=-group["lr"])

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        beta1, beta2 = group["betas"]
        lr = group["lr"] * (min(1.0, t / group["warmup"]) if group["warmup"] else 1.0)
        p.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1 ** t))


class GroupPolyLR(torch.optim.lr_scheduler._LRScheduler):
    """lr of group g at epoch e: initial_lr_g * (1 - e / max_epochs) ** exponent; stepped with the epoch number as
    nnU-Net steps its PolyLRScheduler."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, exponent: float = 0.9):
        self.max_epochs = max_epochs
        self.exponent = exponent
        self.ctr = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, -1)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_epochs) ** self.exponent
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
