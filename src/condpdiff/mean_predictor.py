"""norm=cond: the network that reads a condition and returns its task's mean vector.

Under `cond` a generated vector is `global_mean + global_std * m(c) + shared_std * r`: `m(c)` is this
network's output (in global z units), `r` the decoded residual the diffusion samples. Nothing per
task is read at generation: a task's mean lives in the network's weights only as far as the network
learned to compute it from the condition, so a rewording or an unseen task gets what its text says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from condpdiff.config import MeanPredictorConfig


@dataclass(frozen=True)
class MeanPredictorSpec:
    condition_dim: int
    hidden: int
    length: int


class MeanPredictor(nn.Module):
    """LayerNorm -> MLP -> (L,). The last layer starts at zero: before training, every condition
    gets the global mean."""

    def __init__(self, spec: MeanPredictorSpec):
        super().__init__()
        self.spec = spec
        self.net = nn.Sequential(nn.LayerNorm(spec.condition_dim), nn.Linear(spec.condition_dim, spec.hidden),
                                 nn.SiLU(), nn.Linear(spec.hidden, spec.hidden), nn.SiLU(),
                                 nn.Linear(spec.hidden, spec.length))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """condition (B, D) -> (B, L) in global z units"""
        return self.net(condition)


def fit_mean_predictor(cfg: MeanPredictorConfig, bank: torch.Tensor, targets: torch.Tensor, seed: int,
                       on_step: Callable[[int, dict], None] | None = None) -> MeanPredictor:
    """bank (T, B, D): each task's condition variants; targets (T, L): each task's mean in global z units.

    Every step draws a batch of (task, variant) pairs; the loss is the MSE to the task's mean. With
    `cfg.condition_noise` > 0 each drawn condition is moved by Gaussian noise of that std and put back
    on the unit sphere the encoder writes to, so the whole neighbourhood of a wording maps to its task's
    mean, not the wording alone: a user's text lands between the wordings training saw.
    torch is seeded right before the network is built (the generator's one seeding rule).
    """
    torch.manual_seed(seed)
    model = MeanPredictor(MeanPredictorSpec(bank.shape[2], cfg.hidden, targets.shape[1]))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    model.train()
    for step in tqdm(range(1, cfg.steps + 1), desc="mean predictor", leave=False):
        tasks = torch.randint(0, bank.shape[0], (cfg.batch_size,), generator=generator)
        variants = torch.randint(0, bank.shape[1], (cfg.batch_size,), generator=generator)
        conditions = bank[tasks, variants]
        if cfg.condition_noise > 0:
            noise = torch.randn(conditions.shape, generator=generator) * cfg.condition_noise
            conditions = F.normalize(conditions + noise, dim=-1)
        loss = F.mse_loss(model(conditions), targets[tasks])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"mean predictor loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None and (step % 50 == 0 or step == cfg.steps):
            on_step(step, {"mean_predictor_loss": loss.item()})
    return model.eval()


def restore_mean_predictor(spec: dict, state_dict: dict) -> MeanPredictor:
    model = MeanPredictor(MeanPredictorSpec(**spec))
    model.load_state_dict(state_dict)
    return model.eval()

