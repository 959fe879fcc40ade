"""1D-CNN autoencoder over flat (normalized) LoRA vectors.

Training adds Gaussian noise to the input and to the latent (Cond P-Diff Eq. 6); `encode`
and `decode` never add noise, so evaluation and generation are noise-free.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from condpdiff.config import AutoencoderConfig
from condpdiff.distributed import world


@dataclass(frozen=True)
class AutoencoderSpec:
    """The architecture; built from the config by `autoencoder_spec`, never with defaults of its own."""

    length: int  # real input length L (the padded corpus length)
    channels: tuple[int, ...]
    latent_channels: int
    stride: int
    input_noise: float
    latent_noise: float

    @property
    def padded_length(self) -> int:
        factor = self.stride ** len(self.channels)
        return math.ceil(self.length / factor) * factor

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.latent_channels, self.padded_length // self.stride ** len(self.channels)


def _refine(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(channels, channels, 3, padding=1), nn.InstanceNorm1d(channels, affine=True), nn.LeakyReLU(0.2)
    )


class Autoencoder(nn.Module):
    def __init__(self, spec: AutoencoderSpec):
        super().__init__()
        self.spec = spec
        widths = (1, *spec.channels)
        down = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            down += [nn.Conv1d(c_in, c_out, spec.stride, stride=spec.stride), nn.LeakyReLU(0.2), _refine(c_out)]
        self.encoder = nn.Sequential(*down, nn.Conv1d(widths[-1], spec.latent_channels, 1))
        up = [nn.Conv1d(spec.latent_channels, widths[-1], 1), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(reversed(widths[2:]), reversed(widths[1:-1])):
            up += [_refine(c_in), nn.ConvTranspose1d(c_in, c_out, spec.stride, stride=spec.stride), nn.LeakyReLU(0.2)]
        up += [_refine(widths[1]), nn.ConvTranspose1d(widths[1], 1, spec.stride, stride=spec.stride)]
        self.decoder = nn.Sequential(*up)
        # per-element gain and bias: a convolution shares weights over positions, but every
        # position of the flat vector is a different parameter with its own scale
        self.out_gain = nn.Parameter(torch.ones(spec.length))
        self.out_bias = nn.Parameter(torch.zeros(spec.length))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, C_latent, L_latent)"""
        x = F.pad(x, (0, self.spec.padded_length - x.shape[-1]))
        return self.encoder(x.unsqueeze(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C_latent, L_latent) -> (B, L)"""
        x = self.decoder(z).squeeze(1)[:, : self.spec.length]
        return x * self.out_gain + self.out_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training pass: noise on the input and on the latent."""
        z = self.encode(x + self.spec.input_noise * torch.randn_like(x))
        return self.decode(z + self.spec.latent_noise * torch.randn_like(z))


def autoencoder_spec(cfg: AutoencoderConfig, length: int) -> AutoencoderSpec:
    """The one place an autoencoder's architecture is built from the params."""
    return AutoencoderSpec(length, tuple(cfg.channels), cfg.latent_channels, cfg.stride, cfg.input_noise,
                           cfg.latent_noise)


def train_autoencoder(
    model: Autoencoder,
    data: torch.Tensor,
    cfg: AutoencoderConfig,
    seed: int,
    on_step: Callable[[int, dict], None] | None = None,
) -> Autoencoder:
    """Minimize MSE on the (M, L) normalized corpus with AdamW and cosine decay. Under torchrun each rank
    trains on its share of every global batch (condpdiff.distributed)."""
    ranks = world()
    ranks.check_batch(min(cfg.batch_size, data.shape[0]), "autoencoder")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps, eta_min=cfg.lr * cfg.lr_min_factor)
    model.train()
    trained = ranks.wrap(model)
    for step in tqdm(range(1, cfg.steps + 1), desc="autoencoder", leave=False):
        batch = data[ranks.shard(torch.randint(0, data.shape[0], (min(cfg.batch_size, data.shape[0]),),
                                               generator=generator))]
        loss = F.mse_loss(trained(batch), batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"autoencoder loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None and (step % 50 == 0 or step == cfg.steps):
            on_step(step, {"ae_train_mse": ranks.mean(loss)})
    model.eval()
    return model


def fit_autoencoder(cfg: AutoencoderConfig, normalized: torch.Tensor, seed: int,
                    on_step: Callable[[int, dict], None] | None = None) -> Autoencoder:
    """An autoencoder trained on the (M, L) normalized corpus; torch is seeded right before the network is built."""
    spec = autoencoder_spec(cfg, normalized.shape[1])
    torch.manual_seed(seed)
    return train_autoencoder(Autoencoder(spec), normalized, cfg, seed, on_step)


@torch.inference_mode()
def encode_latents(autoencoder: Autoencoder, normalized: torch.Tensor) -> torch.Tensor:
    """(M, L) -> (M, C, L_latent), without noise."""
    return autoencoder.encode(normalized)


def save_autoencoder(model: Autoencoder, path) -> None:
    torch.save({"spec": asdict(model.spec), "state_dict": model.state_dict()}, path)


def load_autoencoder(path) -> Autoencoder:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    spec = checkpoint["spec"]
    model = Autoencoder(AutoencoderSpec(**{**spec, "channels": tuple(spec["channels"])}))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
