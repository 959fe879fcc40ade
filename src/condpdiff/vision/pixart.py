"""The base text-to-image model: a small `diffusers.PixArtTransformer2DModel` in pixel space.

Captions ("a photo of a sneaker") enter as MiniLM token states (the `caption_channels` of PixArt's
caption projection); PixArt-alpha itself uses T5, which a user with its weights gets
(`condpdiff.vision.backbone`). Training is the plain DDPM loop: add noise at a per-sample timestep,
predict it, mean squared error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, PixArtTransformer2DModel

from condpdiff.config import LrSchedule


@dataclass(frozen=True)
class Captions:
    """Every caption a model is trained or sampled with, encoded once."""

    states: torch.Tensor  # (K, T, D) token states, padded to T
    mask: torch.Tensor  # (K, T) 1 for a token, 0 for padding
    null_states: torch.Tensor  # (T, D) the empty caption: classifier-free guidance's unconditional input
    null_mask: torch.Tensor  # (T,)

    def take(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The states and masks of `labels` (B,), with the empty caption where `drop` (B,) is True."""
        states, mask = self.states[labels], self.mask[labels]
        if drop is not None:
            states = torch.where(drop[:, None, None], self.null_states, states)
            mask = torch.where(drop[:, None], self.null_mask, mask)
        return states, mask


def encode_captions(texts: list[str], tokens: int) -> Captions:
    """MiniLM's last hidden states of each caption (and of ""), at most `tokens` tokens each."""
    from transformers import AutoModel, AutoTokenizer

    from condpdiff.lora import base_model_path

    path = base_model_path("minilm")
    return encode_with(AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval(), texts, tokens)


def encode_with(tokenizer, encoder, texts: list[str], tokens: int) -> Captions:
    """The last hidden states of a text encoder (MiniLM, or PixArt-alpha's T5) for each caption and for "",
    padded or cut to `tokens` tokens."""
    batch = tokenizer([*texts, ""], padding="max_length", truncation=True, max_length=tokens, return_tensors="pt")
    with torch.inference_mode():
        states = encoder(**batch).last_hidden_state  # (K + 1, T, D)
    mask = batch["attention_mask"].float()
    return Captions(states[:-1].clone(), mask[:-1].clone(), states[-1].clone(), mask[-1].clone())


def build_transformer(hidden: int, heads: int, layers: int, patch_size: int, caption_channels: int,
                      image_size: int, seed: int) -> PixArtTransformer2DModel:
    """PixArt's block (self-attention, cross-attention to the caption, MLP, adaLN-single timestep
    modulation) at a size the CPU trains in minutes; one gray channel, epsilon prediction."""
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        sample_size=image_size, in_channels=1, out_channels=1, patch_size=patch_size, num_layers=layers,
        num_attention_heads=heads, attention_head_dim=hidden // heads,
        cross_attention_dim=hidden,  # the caption projection maps captions to the model width
        caption_channels=caption_channels, use_additional_conditions=False, norm_type="ada_norm_single")


def denoising_loss(model, scheduler: DDPMScheduler, images: torch.Tensor, states: torch.Tensor,
                   mask: torch.Tensor, generator: torch.Generator, min_snr_gamma: float = 0.0) -> torch.Tensor:
    """The DDPM epsilon loss of a batch of images (B, C, H, W) in [-1, 1], one timestep per image.
    `min_snr_gamma` > 0 weighs each image's error by min(SNR(t), gamma) / SNR(t) (Min-SNR, Hang et al.
    2023): the nearly clean timesteps, whose noise is easy to tell and which dominate the plain loss's
    gradient, stop crowding out the noisy ones where shapes are decided."""
    noise = torch.randn(images.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), generator=generator)
    noisy = scheduler.add_noise(images, noise, t)
    predicted = model(noisy, encoder_hidden_states=states, encoder_attention_mask=mask, timestep=t).sample
    if min_snr_gamma <= 0:
        return F.mse_loss(predicted, noise)
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    weight = (min_snr_gamma / snr).clamp(max=1.0)  # = min(SNR, gamma) / SNR, finite where SNR -> 0
    return (weight * (predicted - noise).pow(2).flatten(1).mean(1)).mean()


def train_denoiser(model, scheduler: DDPMScheduler, images: torch.Tensor, labels: torch.Tensor,
                   captions: Captions, steps: int, batch_size: int, lr: float, caption_dropout: float,
                   seed: int, to_latents: Callable[[torch.Tensor], torch.Tensor] = lambda images: images,
                   ema_decay: float = 0.0, on_step: Callable[[int, dict], None] | None = None,
                   on_checkpoint: Callable[[int], None] | None = None, min_snr_gamma: float = 0.0,
                   lr_schedule: LrSchedule | str = LrSchedule.constant) -> None:
    """AdamW on the model's trainable parameters (all, or only the LoRA once injected) for `steps` batches
    drawn with replacement; the caption is replaced by the empty one with probability `caption_dropout`
    (what guidance needs). `to_latents` maps images to what the model denoises (pixels, or a VAE's
    latents). `ema_decay` > 0 ends with the exponential moving average of the weights (smoother samples
    from a short training; the LoRA corpus keeps raw checkpoints). `on_checkpoint(step)` is called after
    each step (the LoRA corpus keeps some of them). `min_snr_gamma`: see `denoising_loss`. `lr_schedule`
    "cosine" lowers the rate from `lr` to 0 along a half cosine over the steps; "constant" keeps it."""
    generator = torch.Generator().manual_seed(seed)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    cosine = LrSchedule(lr_schedule) is LrSchedule.cosine  # an unknown name raises ValueError here
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # max: a pretrained base may be fine-tuned for 0 steps
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))) if cosine else None
    average = [parameter.detach().clone() for parameter in trainable] if ema_decay > 0 else None
    model.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        drop = torch.rand(batch_size, generator=generator) < caption_dropout
        states, mask = captions.take(labels[index], drop)
        loss = denoising_loss(model, scheduler, to_latents(images[index]), states, mask, generator, min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if average is not None:
            with torch.no_grad():
                torch._foreach_lerp_(average, [parameter.detach() for parameter in trainable], 1 - ema_decay)
        if on_step is not None:
            on_step(step, {"loss": loss.item()})
        if on_checkpoint is not None:
            on_checkpoint(step)
    if average is not None:
        with torch.no_grad():
            for parameter, value in zip(trainable, average):
                parameter.copy_(value)
    model.eval()


def inject_style_lora(model: PixArtTransformer2DModel, r: int, alpha: int, target_modules: str, seed: int = 0):
    """LoRA on the attention projections (peft; PixArt's transformer has no `add_adapter`). Only the
    LoRA weights stay trainable; the flat layout is the text branch's (`condpdiff.lora`). peft draws the
    initial A matrices from torch's global stream, whose state differs from process to process here, so
    they are drawn from `seed` instead (the global stream is left as it was): a collect stage trains the
    same LoRA in every run."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return inject_adapter_in_model(config, model)
