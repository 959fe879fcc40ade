"""The conditional denoiser: a 1D-conv U-Net over latents.

Every sample carries its own timestep: the embedding is (B, E) and is added to sample b's
feature maps only. (The official Cond P-Diff code embedded one timestep for the whole
batch; `tests/test_denoiser.py` guards against that bug.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from condpdiff.config import DiffusionConfig


@dataclass(frozen=True)
class DenoiserSpec:
    """The architecture; built from the config by `denoiser_spec`, never with defaults of its own."""

    in_channels: int
    condition_dim: int  # width of the condition vector (one-hot: number of tasks)
    channels: tuple[int, ...]
    embed_dim: int
    learned_condition: bool  # condition vectors are one-hot ids into a learned table
    conditioning: str  # "shift": the embedding is added to each block's features; "film": scale and shift
    condition_norm: bool  # a LayerNorm on the condition vector before its MLP


def denoiser_spec(cfg: DiffusionConfig, in_channels: int, condition_dim: int, learned_condition: bool) -> DenoiserSpec:
    """The one place a denoiser's architecture is built from the params."""
    return DenoiserSpec(in_channels, condition_dim, tuple(cfg.channels), cfg.embed_dim, learned_condition,
                        cfg.conditioning, cfg.condition_norm)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps. t (B,) -> (B, dim)"""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """conv -> (+ shift | FiLM) -> conv, with a skip. FiLM scales and shifts the normalized features
    (AdaLN-Zero style: zero-initialised, so every block starts as the identity of its input features)
    instead of adding one shift that the next GroupNorm partly removes."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, film: bool = False):
        super().__init__()
        self.film = film
        self.norm1 = nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.embed = nn.Linear(embed_dim, 2 * c_out if film else c_out)
        if film:
            nn.init.zeros_(self.embed.weight)
            nn.init.zeros_(self.embed.bias)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C, L)
        if self.film:
            scale, shift = self.embed(emb)[:, :, None].chunk(2, dim=1)  # per-sample (B, C, 1) each
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + self.embed(emb)[:, :, None])  # per-sample shift: (B, C, 1)
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class Denoiser(nn.Module):
    """Predicts the noise in x_t given t and a condition vector."""

    def __init__(self, spec: DenoiserSpec):
        super().__init__()
        self.spec = spec
        e = spec.embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        if spec.learned_condition:
            self.condition_table = nn.Parameter(torch.randn(spec.condition_dim, e) * 0.02)
            self.condition_mlp = nn.Sequential(nn.SiLU(), nn.Linear(e, e))
        else:
            layers = [nn.Linear(spec.condition_dim, e), nn.SiLU(), nn.Linear(e, e)]
            self.condition_mlp = nn.Sequential(*([nn.LayerNorm(spec.condition_dim)] if spec.condition_norm else []),
                                               *layers)
        widths, film = spec.channels, spec.conditioning == "film"
        self.stem = nn.Conv1d(spec.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(ResidualBlock(a, b, e, film) for a, b in zip(widths[:1] + widths[:-1], widths))
        self.pool = nn.ModuleList(nn.Conv1d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        self.middle = ResidualBlock(widths[-1], widths[-1], e, film)
        self.up = nn.ModuleList(ResidualBlock(2 * w, w_out, e, film) for w, w_out in
                                zip(reversed(widths), list(reversed(widths))[1:] + [widths[0]]))
        self.unpool = nn.ModuleList(nn.ConvTranspose1d(w, w, 2, stride=2) for w in reversed(widths[:-1]))
        self.head = nn.Sequential(nn.GroupNorm(min(8, widths[0]), widths[0]), nn.SiLU(),
                                  nn.Conv1d(widths[0], spec.in_channels, 3, padding=1))

    def embed(self, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """t (B,), condition (B, D) -> (B, E)"""
        time = self.time_mlp(timestep_embedding(t, self.spec.embed_dim))
        if self.spec.learned_condition:
            return time + self.condition_mlp(condition @ self.condition_table)
        return time + self.condition_mlp(condition)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x (B, C, L), t (B,), condition (B, D) -> (B, C, L)"""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        length = x.shape[-1]
        factor = 2 ** (len(self.spec.channels) - 1)
        x = F.pad(x, (0, (-length) % factor))
        emb = self.embed(t, condition)
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.middle(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.unpool):
                h = self.unpool[i](h)
        return self.head(h)[:, :, :length]


OLDER_SPEC = {"conditioning": "shift", "condition_norm": False}  # what a file saved before these keys existed built


def restore_denoiser(spec: dict, state_dict: dict) -> Denoiser:
    """A trained denoiser from its saved spec (a plain dict) and weights; a spec saved before a key
    existed gets the architecture it was built with then (OLDER_SPEC)."""
    model = Denoiser(DenoiserSpec(**{**OLDER_SPEC, **spec, "channels": tuple(spec["channels"])}))
    model.load_state_dict(state_dict)
    return model.eval()
