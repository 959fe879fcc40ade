"""Conditional latent DDPM: training (`p_losses`) and sampling, on diffusers' schedulers.

The scheduler is separate from the network, as in diffusers: `DDPMScheduler.add_noise`
is `q_sample`, and sampling runs `DDPMScheduler` or `DDIMScheduler` step by step.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch.nn import functional as F
from tqdm.auto import tqdm

from condpdiff.config import DiffusionConfig
from condpdiff.denoiser import Denoiser, denoiser_spec, restore_denoiser


def make_scheduler(timesteps: int, beta_schedule: str) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=beta_schedule, clip_sample=False)


def q_sample(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise"""
    return scheduler.add_noise(x0, noise, t)


def p_losses(model: Denoiser, scheduler: DDPMScheduler, x0: torch.Tensor, condition: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
    """The epsilon-prediction loss at one random timestep per sample."""
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    return F.mse_loss(model(q_sample(scheduler, x0, noise, t), t, condition), noise)


def train_diffusion(
    model: Denoiser,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    conditions: torch.Tensor,
    cfg: DiffusionConfig,
    seed: int,
    on_step: Callable[[int, dict], None] | None = None,
) -> Denoiser:
    """latents (M, C, L) scaled to unit variance; conditions (M, D), one row per latent."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps, eta_min=cfg.lr * cfg.lr_min_factor)
    model.train()
    for step in tqdm(range(1, cfg.steps + 1), desc="diffusion", leave=False):
        index = torch.randint(0, latents.shape[0], (min(cfg.batch_size, latents.shape[0]),), generator=generator)
        loss = p_losses(model, scheduler, latents[index], conditions[index], generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"diffusion loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        if on_step is not None and (step % 50 == 0 or step == cfg.steps):
            on_step(step, {"diffusion_train_loss": loss.item()})
    model.eval()
    return model


def fit_denoiser(
    cfg: DiffusionConfig,
    latents: torch.Tensor,
    conditions: torch.Tensor,
    learned_condition: bool,
    seed: int,
    on_step: Callable[[int, dict], None] | None = None,
) -> tuple[Denoiser, DDPMScheduler, float]:
    """The conditional DDPM on latents scaled to unit variance; conditions (M, D), one row per latent.

    Returns the denoiser, its training scheduler and the latent scale that sampling multiplies back.
    torch is seeded right before the network is built.
    """
    latent_scale = latents.std().item()
    spec = denoiser_spec(cfg, latents.shape[1], conditions.shape[1], learned_condition)
    torch.manual_seed(seed)
    scheduler = make_scheduler(cfg.timesteps, cfg.beta_schedule)
    model = train_diffusion(Denoiser(spec), scheduler, latents / latent_scale, conditions, cfg, seed, on_step)
    return model, scheduler, latent_scale


@torch.inference_mode()
def sample_latents(
    model: Denoiser,
    scheduler_config: dict,
    condition: torch.Tensor,
    shape: tuple[int, int],
    sampler: str,
    inference_steps: int,
    seed: int,
) -> torch.Tensor:
    """condition (B, D) -> latents (B, C, L). The same seed gives the same latents."""
    scheduler_class = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    scheduler = scheduler_class.from_config(scheduler_config)
    scheduler.set_timesteps(inference_steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((condition.shape[0], *shape), generator=generator)
    for t in scheduler.timesteps:
        noise = model(x, t.expand(x.shape[0]), condition)
        x = scheduler.step(noise, t, x, generator=generator).prev_sample
    return x


def save_diffusion(model: Denoiser, scheduler: DDPMScheduler, latent_scale: float, path) -> None:
    """The same model gives the same bytes: diffusers lists its defaulted keys in set order, which
    changes from process to process, so that list is sorted before saving."""
    config = {key: sorted(value) if key == "_use_default_values" else value for key, value in scheduler.config.items()}
    torch.save({"spec": asdict(model.spec), "state_dict": model.state_dict(), "scheduler": config,
                "latent_scale": latent_scale}, path)


def load_diffusion(path) -> tuple[Denoiser, dict, float]:
    """(denoiser, scheduler config, latent scale). weights_only: a registry artifact never runs code on load."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return restore_denoiser(checkpoint["spec"], checkpoint["state_dict"]), checkpoint["scheduler"], \
        checkpoint["latent_scale"]
