"""The base model behind every vision stage, and the one sampling path through `PixArtAlphaPipeline`.

Two kinds, chosen by `vision.base.pretrained`:
- null (the default, offline): the small pixel-space PixArt transformer this pipeline trains, captions
  from MiniLM, no VAE (pixels are the latents);
- a folder in diffusers' PixArt-alpha layout (transformer/, vae/, text_encoder/, tokenizer/,
  scheduler/): PixArt-alpha's own transformer, T5 captions and VAE. The 32x32 gray style images are
  upsampled to the model's resolution for the VAE, and its samples brought back to 32x32 gray, so the
  LoRA corpus, generator and scores downstream are the same.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, PixArtAlphaPipeline,
                       PixArtTransformer2DModel)
from safetensors.torch import load_file, save_file

from condpdiff.config import ImageBaseConfig, Sampler, StyleCollectConfig
from condpdiff.vision.classifier import Classifier
from condpdiff.vision.data import CLASSES, SIZE, caption
from condpdiff.vision.pixart import Captions, build_transformer, encode_captions, encode_with, train_denoiser

BASE_FILES = {"transformer": "transformer", "captions": "captions.safetensors",
              "classifier": "classifier.safetensors", "info": "base.json"}


@dataclass
class Backbone:
    transformer: PixArtTransformer2DModel
    scheduler: DDPMScheduler
    vae: AutoencoderKL | None  # None: the model denoises pixels

    @property
    def resolution(self) -> int:
        """The pixel size the model draws (the transformer's sample size times the VAE's downscale)."""
        return self.transformer.config.sample_size * self.vae_scale

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @torch.no_grad()
    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Style images (B, 1, 32, 32) in [-1, 1] -> what the transformer denoises."""
        if self.vae is None:
            return images
        rgb = F.interpolate(images, size=self.resolution, mode="bilinear").repeat(1, 3, 1, 1)
        return self.vae.encode(rgb).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_latents`: (B, 1, 32, 32) in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        rgb = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return F.interpolate(rgb.mean(1, keepdim=True), size=SIZE, mode="area").clamp(-1, 1)

    def pipeline(self, sampler: Sampler) -> PixArtAlphaPipeline:
        """PixArt-alpha's pipeline stepping the training schedule with `sampler`: ancestral DDPM steps (fresh
        noise at each step) or deterministic DDIM; captions come encoded, so it holds no text encoder, and it
        returns latents (`to_images` decodes them)."""
        scheduler_class = DDIMScheduler if Sampler(sampler) is Sampler.ddim else DDPMScheduler
        pipeline = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=self.vae, transformer=self.transformer,
                                       scheduler=scheduler_class.from_config(self.scheduler.config))
        pipeline.vae_scale_factor = self.vae_scale  # without a VAE the pipeline assumes 8
        pipeline.set_progress_bar_config(disable=True)
        return pipeline


def base_captions(base: ImageBaseConfig) -> Captions:
    """Every class caption and the empty one, encoded by the base's text encoder."""
    texts = [caption(label) for label in range(len(CLASSES))]
    if base.pretrained is None:
        return encode_captions(texts, base.caption_tokens)
    from transformers import AutoTokenizer, T5EncoderModel

    folder = Path(base.pretrained)
    return encode_with(AutoTokenizer.from_pretrained(folder / "tokenizer"),
                       T5EncoderModel.from_pretrained(folder / "text_encoder").eval(), texts, base.caption_tokens)


def build_base(base: ImageBaseConfig, captions: Captions, seed: int) -> Backbone:
    """The untrained small model, or PixArt-alpha's weights (then `vision.base.steps` fine-tunes them)."""
    if base.pretrained is None:
        transformer = build_transformer(base.hidden, base.heads, base.layers, base.patch_size,
                                        captions.states.shape[-1], SIZE, seed)
        return Backbone(transformer, DDPMScheduler(num_train_timesteps=base.timesteps, beta_schedule=base.beta_schedule),
                        None)
    folder = Path(base.pretrained)
    for part in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"):
        if not (folder / part).is_dir():
            raise FileNotFoundError(f"vision.base.pretrained: {folder} has no {part}/ folder (diffusers layout)")
    return Backbone(PixArtTransformer2DModel.from_pretrained(folder / "transformer"),
                    DDPMScheduler.from_pretrained(folder / "scheduler"),
                    AutoencoderKL.from_pretrained(folder / "vae").eval())


def train_base(base: ImageBaseConfig, captions: Captions, images: torch.Tensor, labels: torch.Tensor, seed: int,
               on_step: Callable[[int, dict], None] | None = None) -> Backbone:
    """The base model of `base`, trained on images (N, 1, 32, 32) in [-1, 1] with their class labels; every
    training knob (steps, rate and its schedule, EMA, Min-SNR, caption dropout) is read from `base`."""
    backbone = build_base(base, captions, seed)
    train_denoiser(backbone.transformer, backbone.scheduler, images, labels, captions, base.steps, base.batch_size,
                   base.lr, base.caption_dropout, seed, backbone.to_latents, base.ema_decay, on_step=on_step,
                   min_snr_gamma=base.min_snr_gamma, lr_schedule=base.lr_schedule)
    return backbone


def train_style_lora(backbone: Backbone, captions: Captions, style: dict[str, torch.Tensor],
                     collect: StyleCollectConfig, caption_dropout: float, seed: int,
                     on_step: Callable[[int, dict], None] | None = None,
                     on_checkpoint: Callable[[int], None] | None = None) -> None:
    """Fine-tune the transformer's trainable weights (only the LoRA, once `inject_style_lora` has run) on a
    style's `train` images and their class captions with the collect recipe's steps, batch, rate and loss;
    `on_checkpoint(step)` after each step (the corpus keeps some)."""
    train_denoiser(backbone.transformer, backbone.scheduler, style["train"], style["train_labels"], captions,
                   collect.steps, collect.batch_size, collect.lr, caption_dropout, seed, backbone.to_latents,
                   on_step=on_step, on_checkpoint=on_checkpoint, min_snr_gamma=collect.min_snr_gamma)


def save_base(folder: Path, backbone: Backbone, captions: Captions, classifier: Classifier,
              pretrained: str | None) -> None:
    folder = Path(folder)
    backbone.transformer.save_pretrained(folder / BASE_FILES["transformer"])
    backbone.scheduler.save_config(folder / BASE_FILES["transformer"])
    save_file({"states": captions.states, "mask": captions.mask, "null_states": captions.null_states,
               "null_mask": captions.null_mask}, str(folder / BASE_FILES["captions"]))
    save_file(classifier.state_dict(), str(folder / BASE_FILES["classifier"]))
    (folder / BASE_FILES["info"]).write_text(json.dumps({"pretrained": pretrained}, indent=1))


def load_base(folder: Path) -> tuple[Backbone, Captions, Classifier]:
    """What the base stage wrote: the trained transformer (+ the VAE of its PixArt-alpha folder), the
    encoded captions and the classifier."""
    folder = Path(folder)
    missing = [name for name in BASE_FILES.values() if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"base model folder {folder} lacks {missing}: run the vision base stage")
    pretrained = json.loads((folder / BASE_FILES["info"]).read_text())["pretrained"]
    transformer = PixArtTransformer2DModel.from_pretrained(folder / BASE_FILES["transformer"]).eval()
    scheduler = DDPMScheduler.from_pretrained(folder / BASE_FILES["transformer"])
    vae = AutoencoderKL.from_pretrained(Path(pretrained) / "vae").eval() if pretrained else None
    tensors = load_file(str(folder / BASE_FILES["captions"]))
    captions = Captions(tensors["states"], tensors["mask"], tensors["null_states"], tensors["null_mask"])
    classifier = Classifier()
    classifier.load_state_dict(load_file(str(folder / BASE_FILES["classifier"])))
    return Backbone(transformer, scheduler, vae), captions, classifier.eval()


@torch.inference_mode()
def sample_images(backbone: Backbone, captions: Captions, labels: torch.Tensor, sampler: Sampler, steps: int,
                  guidance: float, seed: int, batch_size: int = 256) -> torch.Tensor:
    """Images (N, 1, 32, 32) in [-1, 1] of the caption of each label, in batches, each batch seeded (the
    starting noise and, for ddpm, every step's noise)."""
    pipeline, images = backbone.pipeline(sampler), []
    for start in range(0, len(labels), batch_size):
        batch = labels[start:start + batch_size]
        states, mask = captions.take(batch)
        null_states, null_mask = captions.take(batch, torch.ones(len(batch), dtype=torch.bool))
        out = pipeline(prompt=None, negative_prompt=None, prompt_embeds=states, prompt_attention_mask=mask,
                       negative_prompt_embeds=null_states, negative_prompt_attention_mask=null_mask,
                       num_inference_steps=steps, guidance_scale=guidance, height=backbone.resolution,
                       width=backbone.resolution, generator=torch.Generator().manual_seed(seed + start),
                       output_type="latent", use_resolution_binning=False, clean_caption=False,
                       max_sequence_length=states.shape[1])
        images.append(backbone.to_images(out.images))
    return torch.cat(images)
