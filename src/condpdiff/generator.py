"""From a condition to flat LoRA vectors: sample latents -> decode -> de-normalize -> crop."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from condpdiff.artifacts import GeneratorFiles
from condpdiff.autoencoder import Autoencoder, load_autoencoder
from condpdiff.denoiser import Denoiser
from condpdiff.config import Norm
from condpdiff.diffusion import load_diffusion, sample_latents
from condpdiff.mean_predictor import MeanPredictor
from condpdiff.normalize import Normalizer


@dataclass
class Generator:
    autoencoder: Autoencoder
    denoiser: Denoiser
    scheduler_config: dict
    latent_scale: float
    normalizer: Normalizer
    mean_predictor: MeanPredictor | None  # norm=cond: the condition's mean

    @property
    def condition_only(self) -> bool:
        """True when generation reads the condition and shared statistics only (norm=cond)."""
        return self.normalizer.method is Norm.cond

    def __post_init__(self):
        if self.condition_only and self.mean_predictor is None:
            raise ValueError("norm=cond needs the condition's mean predictor (in the diffusion model file)")

    @torch.inference_mode()
    def condition_mean(self, condition: torch.Tensor) -> torch.Tensor:
        """norm=cond: condition (D,) -> the mean vector it predicts, in weight space (L,)."""
        z = self.mean_predictor(condition[None, :])[0]
        return self.normalizer.from_global(z)

    @torch.inference_mode()
    def denormalize(self, normalized: torch.Tensor, condition: torch.Tensor, stats_index: int | None) -> torch.Tensor:
        """(K, L) normalized vectors -> weight space: the condition's mean under `cond`, else the
        statistics of task `stats_index`."""
        if self.condition_only:
            return self.condition_mean(condition) + self.normalizer.shared_std * normalized
        if stats_index is None:
            raise ValueError(f"norm={self.normalizer.method.value} needs a task's statistics (stats_index)")
        return self.normalizer.inverse(normalized, torch.full((len(normalized),), stats_index, dtype=torch.long))

    @torch.inference_mode()
    def to_weights(self, latents: torch.Tensor, condition: torch.Tensor, stats_index: int | None,
                   length: int) -> torch.Tensor:
        """(K, C, L') unit-variance latents -> (K, length) vectors in weight space: decode, de-normalize,
        drop the zero padding."""
        normalized = self.autoencoder.decode(latents * self.latent_scale)
        return self.denormalize(normalized, condition, stats_index)[:, :length].contiguous()

    @torch.inference_mode()
    def generate(
        self, condition: torch.Tensor, stats_index: int | None, length: int, samples: int,
        sampler: str, inference_steps: int, seed: int, guidance: float = 1.0,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """condition (D,) -> (samples, length) vectors in weight space.

        `stats_index` picks the task whose normalization statistics undo the normalization; under
        norm=cond it is ignored (the condition alone decides). `length` is the task's real layout
        length (the zero padding is dropped). `guidance`: the classifier-free guidance scale.
        `on_step(t, latents)` sees the sampling trajectory (`to_weights` decodes it).
        """
        conditions = condition[None, :].expand(samples, -1)
        latents = sample_latents(self.denoiser, self.scheduler_config, conditions, self.autoencoder.spec.latent_shape,
                                 sampler, inference_steps, seed, guidance, on_step)
        vectors = self.to_weights(latents, condition, stats_index, length)
        if not torch.isfinite(vectors).all():
            raise FloatingPointError("generated weights hold NaN or inf")
        return vectors


    @torch.inference_mode()
    def no_diffusion(self, condition: torch.Tensor, stats_index: int | None, length: int, samples: int,
                     seed: int) -> torch.Tensor:
        """The generator without its autoencoder and diffusion: N(0, I) in normalized space, de-normalized
        like a sample (cond: the condition's mean + pooled std * N(0, I); task: soup + std_task * N(0, I)).
        What the diffusion must beat to have earned its place. (samples, length)."""
        draws = torch.randn((samples, self.autoencoder.spec.length), generator=torch.Generator().manual_seed(seed))
        return self.denormalize(draws, condition, stats_index)[:, :length].contiguous()


def generation_seed(seed: int, task_position: int) -> int:
    """The sampling seed of the task at `task_position` in `data.tasks`, shared by the generate stage and
    the ablations. Noise is drawn for the whole batch at once, so `python -m condpdiff generate --task T
    --seed S` repeats the stage's samples only with this S and the stage's --samples, sampler and steps."""
    return seed * 1000 + task_position


def load_generator(files: GeneratorFiles) -> Generator:
    """A generator from the trained parts (the pipeline's outputs or a registry bundle)."""
    missing = files.missing()
    if missing:
        raise FileNotFoundError(f"generator files missing: {[str(p) for p in missing]}")
    denoiser, scheduler_config, latent_scale, mean_predictor = load_diffusion(files.diffusion)
    return Generator(load_autoencoder(files.autoencoder), denoiser, scheduler_config, latent_scale,
                     Normalizer.load(files.stats), mean_predictor)
