"""Training the generator: the one path that the stages, the ablations and later studies share.

    normalize -> fit_autoencoder -> encode_latents -> (norm=cond: fit_condition_mean) -> fit_denoiser

The autoencoder and diffusion stages call the halves (`autoencoder.fit_autoencoder`,
`diffusion.fit_denoiser`); `train_generator` composes them in one process, for the ablations and
later studies. One seeding rule, kept by the halves: each seeds torch with the run's seed right
before it builds its network (so the initial weights depend on the seed alone, not on what ran
before), and its training loop draws batches and noise from a generator seeded with the same value.
"""
from __future__ import annotations

from typing import Callable

import torch

from condpdiff.autoencoder import Autoencoder, encode_latents, fit_autoencoder
from condpdiff.config import Norm, Params
from condpdiff.diffusion import fit_denoiser
from condpdiff.generator import Generator
from condpdiff.mean_predictor import MeanPredictor, fit_mean_predictor
from condpdiff.normalize import Normalizer, fit_normalizer


def train_generator(params: Params, corpus: torch.Tensor, task_index: torch.Tensor, bank: torch.Tensor,
                    learned_condition: bool, autoencoder: Autoencoder | None = None) -> Generator:
    """The whole generator from a stacked corpus (M, L), its task ids (M,) in 0..T-1 and each task's
    condition variants (T, B, D): row t of `bank` holds the conditions of task id t.

    A given `autoencoder` (trained on the same normalized corpus) is reused instead of trained.
    """
    num_tasks = len(bank)
    normalizer = fit_normalizer(params.norm, corpus, task_index, num_tasks)
    normalized = normalizer.transform(corpus, task_index)
    if autoencoder is None:
        autoencoder = fit_autoencoder(params.autoencoder, normalized, params.seed)
    latents = encode_latents(autoencoder, normalized)
    mean_predictor = fit_condition_mean(params, normalizer, bank)
    denoiser, scheduler, latent_scale = fit_denoiser(params.diffusion, latents, task_index, bank,
                                                     learned_condition, params.seed)
    return Generator(autoencoder, denoiser, dict(scheduler.config), latent_scale, normalizer, mean_predictor)


def fit_condition_mean(params: Params, normalizer: Normalizer, bank: torch.Tensor,
                       on_step: Callable[[int, dict], None] | None = None) -> MeanPredictor | None:
    """norm=cond: the network from a condition to its task's mean (in global z units); None otherwise."""
    if normalizer.method is not Norm.cond:
        return None
    targets = (normalizer.mean - normalizer.global_mean) / normalizer.global_std
    return fit_mean_predictor(params.mean_predictor, bank, targets, params.seed, on_step)
