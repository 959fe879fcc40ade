"""From a condition to flat LoRA vectors: sample latents -> decode -> de-normalize -> crop."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from condpdiff.autoencoder import Autoencoder, load_autoencoder
from condpdiff.denoiser import Denoiser
from condpdiff.diffusion import load_diffusion, sample_latents
from condpdiff.normalize import Normalizer


@dataclass
class Generator:
    autoencoder: Autoencoder
    denoiser: Denoiser
    scheduler_config: dict
    latent_scale: float
    normalizer: Normalizer

    @torch.inference_mode()
    def generate(
        self, condition: torch.Tensor, stats_index: int, length: int, samples: int,
        sampler: str, inference_steps: int, seed: int,
    ) -> torch.Tensor:
        """condition (D,) -> (samples, length) vectors in weight space.

        `stats_index` picks the task whose normalization statistics undo the normalization;
        `length` is the task's real layout length (the zero padding is dropped).
        """
        conditions = condition[None, :].expand(samples, -1)
        latents = sample_latents(self.denoiser, self.scheduler_config, conditions, self.autoencoder.spec.latent_shape,
                                 sampler, inference_steps, seed)
        normalized = self.autoencoder.decode(latents * self.latent_scale)
        index = torch.full((samples,), stats_index, dtype=torch.long)
        vectors = self.normalizer.inverse(normalized, index)[:, :length]
        if not torch.isfinite(vectors).all():
            raise FloatingPointError("generated weights hold NaN or inf")
        return vectors.contiguous()


def load_generator(autoencoder: Path, diffusion: Path, stats: Path) -> Generator:
    """A generator from the files the autoencoder, diffusion and normalize stages write."""
    denoiser, scheduler_config, latent_scale = load_diffusion(diffusion)
    return Generator(load_autoencoder(autoencoder), denoiser, scheduler_config, latent_scale, Normalizer.load(stats))
