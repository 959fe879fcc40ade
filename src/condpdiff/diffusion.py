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
from condpdiff.distributed import world
from condpdiff.mean_predictor import MeanPredictor, restore_mean_predictor


def make_scheduler(timesteps: int, beta_schedule: str, prediction: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=beta_schedule, clip_sample=False,
                         prediction_type=prediction)


def q_sample(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise"""
    return scheduler.add_noise(x0, noise, t)


def p_losses(model: Denoiser, scheduler: DDPMScheduler, x0: torch.Tensor, condition: torch.Tensor,
             generator: torch.Generator, shard=lambda rows: rows) -> torch.Tensor:
    """The loss at one random timestep per sample, on the scheduler's prediction type: the noise
    (epsilon), x0 (sample) or the velocity (v_prediction). Noise and timesteps are drawn for the whole
    batch, then `shard` keeps this rank's rows (under torchrun; the whole batch otherwise)."""
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    x0, condition, noise, t = shard(x0), shard(condition), shard(noise), shard(t)
    kind = scheduler.config.prediction_type
    target = noise if kind == "epsilon" else x0 if kind == "sample" else scheduler.get_velocity(x0, noise, t)
    return F.mse_loss(model(q_sample(scheduler, x0, noise, t), t, condition), target)


def drop_conditions(conditions: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training: each row becomes the null (zero) condition with probability `rate`.
    At rate 0 nothing is drawn, so the random stream is the one without guidance."""
    if rate == 0.0:
        return conditions
    keep = torch.rand(conditions.shape[0], generator=generator) >= rate
    return conditions * keep[:, None]


def draw_conditions(bank: torch.Tensor, task_index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One condition per row of `task_index` (n,), from its task's variants in `bank` (T, B, D).

    With one variant per task (B = 1) nothing is drawn, so the random stream is the one-condition one.
    """
    if bank.shape[1] == 1:
        return bank[task_index, 0]
    return bank[task_index, torch.randint(0, bank.shape[1], task_index.shape, generator=generator)]


def train_diffusion(
    model: Denoiser,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    task_index: torch.Tensor,
    bank: torch.Tensor,
    cfg: DiffusionConfig,
    seed: int,
    on_step: Callable[[int, dict], None] | None = None,
) -> Denoiser:
    """latents (M, C, L) scaled to unit variance, their task ids (M,) and each task's condition
    variants (T, B, D): every step draws one variant per latent. Under torchrun each rank trains on its
    share of every global batch (condpdiff.distributed)."""
    ranks = world()
    ranks.check_batch(min(cfg.batch_size, latents.shape[0]), "diffusion")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps, eta_min=cfg.lr * cfg.lr_min_factor)
    average = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.ema_decay > 0 else None
    model.train()
    trained = ranks.wrap(model)
    for step in tqdm(range(1, cfg.steps + 1), desc="diffusion", leave=False):
        index = torch.randint(0, latents.shape[0], (min(cfg.batch_size, latents.shape[0]),), generator=generator)
        conditions = drop_conditions(draw_conditions(bank, task_index[index], generator), cfg.cfg_dropout, generator)
        loss = p_losses(trained, scheduler, latents[index], conditions, generator, ranks.shard)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"diffusion loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        if average is not None:
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # warm-up: the random init fades fast
                for key, value in model.state_dict().items():
                    if value.is_floating_point():
                        average[key].lerp_(value, 1.0 - decay)
                    else:
                        average[key].copy_(value)
        if on_step is not None and (step % 50 == 0 or step == cfg.steps):
            on_step(step, {"diffusion_train_loss": ranks.mean(loss)})
    if average is not None:
        model.load_state_dict(average)
    model.eval()
    return model


def fit_denoiser(
    cfg: DiffusionConfig,
    latents: torch.Tensor,
    task_index: torch.Tensor,
    bank: torch.Tensor,
    learned_condition: bool,
    seed: int,
    on_step: Callable[[int, dict], None] | None = None,
) -> tuple[Denoiser, DDPMScheduler, float]:
    """The conditional DDPM on latents scaled to unit variance; latents (M, C, L) of tasks `task_index`
    (M,), each task's condition variants `bank` (T, B, D).

    Returns the denoiser, its training scheduler and the latent scale that sampling multiplies back.
    torch is seeded right before the network is built.
    """
    latent_scale = latents.std().item()
    spec = denoiser_spec(cfg, latents.shape[1], bank.shape[2], learned_condition)
    torch.manual_seed(seed)
    scheduler = make_scheduler(cfg.timesteps, cfg.beta_schedule, cfg.prediction)
    model = train_diffusion(Denoiser(spec), scheduler, latents / latent_scale, task_index, bank, cfg, seed, on_step)
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
    guidance: float = 1.0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """condition (B, D) -> latents (B, C, L). The same seed gives the same latents.

    `guidance` w != 1 mixes the conditional and the null-condition predictions (classifier-free
    guidance): uncond + w * (cond - uncond); w = 1 is the conditional model alone. `on_step(t, x)`
    sees the latents after each step from timestep t (the sampling trajectory); it draws nothing."""
    scheduler_class = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    scheduler = scheduler_class.from_config(scheduler_config)
    scheduler.set_timesteps(inference_steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((condition.shape[0], *shape), generator=generator)
    for t in scheduler.timesteps:
        steps = t.expand(x.shape[0])
        prediction = model(x, steps, condition)
        if guidance != 1.0:
            unconditional = model(x, steps, torch.zeros_like(condition))
            prediction = unconditional + guidance * (prediction - unconditional)
        x = scheduler.step(prediction, t, x, generator=generator).prev_sample
        if on_step is not None:
            on_step(int(t), x)
    return x


def save_diffusion(model: Denoiser, scheduler: DDPMScheduler, latent_scale: float, path,
                   mean_predictor: MeanPredictor | None = None) -> None:
    """The same model gives the same bytes: diffusers lists its defaulted keys in set order, which
    changes from process to process, so that list is sorted before saving. Under norm=cond the
    condition's mean predictor is saved with the denoiser: both read the condition."""
    config = {key: sorted(value) if key == "_use_default_values" else value for key, value in scheduler.config.items()}
    checkpoint = {"spec": asdict(model.spec), "state_dict": model.state_dict(), "scheduler": config,
                  "latent_scale": latent_scale}
    if mean_predictor is not None:
        checkpoint["mean_predictor"] = {"spec": asdict(mean_predictor.spec), "state_dict": mean_predictor.state_dict()}
    torch.save(checkpoint, path)


def load_diffusion(path) -> tuple[Denoiser, dict, float, MeanPredictor | None]:
    """(denoiser, scheduler config, latent scale, mean predictor or None). weights_only: a registry artifact
    never runs code on load."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    mean = checkpoint.get("mean_predictor")
    return restore_denoiser(checkpoint["spec"], checkpoint["state_dict"]), checkpoint["scheduler"], \
        checkpoint["latent_scale"], restore_mean_predictor(mean["spec"], mean["state_dict"]) if mean else None
