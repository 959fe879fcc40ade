"""The condition carries the task: toy clusters a tiny generator must tell apart by condition alone,
condition-only generation (norm=cond) that reads no per-task tensor, and the study's statistics."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from condpdiff.config import Norm
from condpdiff.normalize import fit_normalizer
from condpdiff.study import paired_bootstrap, splice
from condpdiff.training import train_generator
from conftest import TINY_PARAMS

LENGTH, PER_CLUSTER = 64, 24


def _clusters(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three tight clusters far apart (the regime of the LoRA corpus: tasks far apart, checkpoints close),
    and one condition vector per cluster, with 4 variants each (condition diversity)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, LENGTH, generator=g) * 2.0
    corpus = torch.cat([c + 0.02 * torch.randn(PER_CLUSTER, LENGTH, generator=g) for c in centres])
    task_index = torch.arange(3).repeat_interleave(PER_CLUSTER)
    base = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    bank = torch.nn.functional.normalize(base[:, None, :] + 0.05 * torch.randn(3, 4, 16, generator=g), dim=-1)
    return centres, corpus, task_index, bank


def _params(norm: Norm, diffusion_steps: int = 600):
    p = TINY_PARAMS
    return replace(p, norm=norm,
                   autoencoder=replace(p.autoencoder, channels=[16, 32], latent_channels=4, steps=400, batch_size=16,
                                       lr=0.003),
                   mean_predictor=replace(p.mean_predictor, steps=300),
                   diffusion=replace(p.diffusion, timesteps=100, channels=[32, 64], embed_dim=32, steps=diffusion_steps,
                                     batch_size=32, lr=0.002))


def _nearest(vectors: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(vectors, centres).argmin(dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("norm", [Norm.batch, Norm.cond])
def test_samples_land_on_the_cluster_their_condition_names(norm):
    """Under one global normalization (batch) only the condition tells the clusters apart; under cond
    the condition's predicted mean does. Either way each condition's samples must land on its cluster.
    1,200 denoiser steps: at 600 the batch generator sat on the bar's edge, and on one CPU (AMD EPYC, this
    project's 2026-11-29 machine) landed 6 of 8 samples of cluster 1 on it (two generate seeds; 8/8 at 1,200)."""
    centres, corpus, task_index, bank = _clusters()
    generator = train_generator(_params(norm, diffusion_steps=1200), corpus, task_index, bank, learned_condition=False)
    for k in range(3):
        condition = bank[k, 0]
        stats = None if norm is Norm.cond else k
        samples = generator.generate(condition, stats, LENGTH, samples=8, sampler="ddim", inference_steps=20, seed=k)
        assert (_nearest(samples, centres) == k).float().mean() >= 0.875, f"cluster {k}: {_nearest(samples, centres)}"


def test_condition_only_generation_reads_no_task_statistics():
    """norm=cond: scrambling every per-task row of the stats changes nothing; the condition decides."""
    centres, corpus, task_index, bank = _clusters(1)
    params = _params(Norm.cond)
    params = replace(params, autoencoder=replace(params.autoencoder, steps=5), diffusion=replace(params.diffusion,
                     steps=5), mean_predictor=replace(params.mean_predictor, steps=5))
    generator = train_generator(params, corpus, task_index, bank, learned_condition=False)
    first = generator.generate(bank[0, 0], None, LENGTH, 2, "ddim", 5, seed=3)
    scrambled = replace(generator.normalizer, mean=torch.randn_like(generator.normalizer.mean))
    generator.normalizer = scrambled
    assert torch.equal(first, generator.generate(bank[0, 0], 2, LENGTH, 2, "ddim", 5, seed=3))
    assert not torch.equal(first, generator.generate(bank[1, 0], None, LENGTH, 2, "ddim", 5, seed=3))


def test_cond_norm_centres_each_task_and_pools_one_scale():
    torch.manual_seed(0)
    corpus = torch.cat([torch.randn(50, 4) * 1.0 + 10, torch.randn(50, 4) * 3.0 - 10])
    task_index = torch.arange(2).repeat_interleave(50)
    normalizer = fit_normalizer(Norm.cond, corpus, task_index, 2)
    z = normalizer.transform(corpus, task_index)
    assert z[:50].mean().abs() < 0.2 and z[50:].mean().abs() < 0.2  # each task centred on its own mean
    assert torch.equal(normalizer.std[0], normalizer.std[1])  # one scale, shared by the tasks
    pooled = ((corpus[:50].var(0, unbiased=False) + corpus[50:].var(0, unbiased=False)) / 2).sqrt()
    torch.testing.assert_close(normalizer.shared_std, pooled)
    with pytest.raises(ValueError, match="no shared std"):
        _ = fit_normalizer(Norm.task, corpus, task_index, 2).shared_std


def test_splice_keeps_lora_and_takes_the_head():
    vectors = torch.arange(12.0).reshape(2, 6)
    mask = torch.tensor([True, True, False, True, False, False])
    spliced = splice(vectors, torch.full((6,), -1.0), mask)
    assert spliced.tolist() == [[0, 1, -1, 3, -1, -1], [6, 7, -1, 9, -1, -1]]


def test_paired_bootstrap_separates_a_real_gap_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300).astype(float)
    good = np.stack([np.where(rng.random(300) < 0.9, labels, 1 - labels) for _ in range(3)])
    bad = np.stack([np.where(rng.random(300) < 0.6, labels, 1 - labels) for _ in range(3)])
    diff, low, high = paired_bootstrap("sst2", good, bad, labels, rounds=200, seed=0)
    assert low > 0 and low <= diff <= high
    _, low, high = paired_bootstrap("sst2", good, good[[1, 2, 0]], labels, rounds=200, seed=0)
    assert low <= 0 <= high


def test_study_commands_refuse_bad_overrides_before_any_work(tmp_path, capsys):
    from condpdiff.cli import main

    assert main(["study", "x", "-S", "nope=1", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["study", "x", "-S", "norm=weird", "--out", str(tmp_path)]) == 2
    assert "params.yaml with -S norm=weird: norm" in capsys.readouterr().err
    assert main(["loto", "-S", "norm=task", "--out", str(tmp_path)]) == 2  # task statistics cannot hold a task out
    assert "norm=cond" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_film_starts_as_the_identity_of_the_condition():
    """AdaLN-Zero: before training, a FiLM denoiser's output does not depend on the condition at all."""
    from condpdiff.denoiser import Denoiser, DenoiserSpec

    torch.manual_seed(0)
    model = Denoiser(DenoiserSpec(2, 4, (8, 16), 16, False, "film", True)).eval()
    x, t = torch.randn(2, 2, 12), torch.tensor([3, 3])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, torch.eye(4)[:2]), model(x, t, torch.eye(4)[2:]), rtol=0, atol=0)


def test_condition_dropout_and_guidance():
    from condpdiff.denoiser import Denoiser, DenoiserSpec
    from condpdiff.diffusion import drop_conditions, make_scheduler, sample_latents

    conditions = torch.ones(1000, 3)
    assert drop_conditions(conditions, 0.0, torch.Generator()) is conditions
    dropped = drop_conditions(conditions, 0.2, torch.Generator().manual_seed(0))
    assert 0.15 < (dropped.sum(dim=1) == 0).float().mean() < 0.25 and set(dropped.sum(dim=1).tolist()) == {0.0, 3.0}
    torch.manual_seed(0)
    model = Denoiser(DenoiserSpec(2, 3, (8, 16), 16, False, "shift", False)).eval()
    config = dict(make_scheduler(20, "linear").config)
    plain = sample_latents(model, config, torch.eye(3)[:2], (2, 6), "ddim", 5, seed=0)
    assert torch.equal(plain, sample_latents(model, config, torch.eye(3)[:2], (2, 6), "ddim", 5, seed=0, guidance=1.0))
    assert not torch.allclose(plain, sample_latents(model, config, torch.eye(3)[:2], (2, 6), "ddim", 5, seed=0,
                                                     guidance=3.0))


def test_guidance_without_condition_dropout_is_a_config_error(tmp_path):
    from pathlib import Path

    from condpdiff.config import ConfigError, load_params

    text = Path("params.yaml").read_text().replace("guidance: 1.0", "guidance: 2.0")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match="cfg_dropout"):
        load_params(tmp_path / "params.yaml")


def test_ema_returns_averaged_weights_and_old_specs_restore():
    from condpdiff.denoiser import restore_denoiser
    from condpdiff.diffusion import fit_denoiser

    latents, task_index = torch.randn(8, 2, 8), torch.arange(2).repeat_interleave(4)
    bank = torch.eye(3)[:2, None, :]
    cfg = replace(TINY_PARAMS.diffusion, steps=4)
    plain, _, _ = fit_denoiser(cfg, latents, task_index, bank, False, seed=0)
    averaged, _, _ = fit_denoiser(replace(cfg, ema_decay=0.5), latents, task_index, bank, False, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), averaged.state_dict().values()))
    old = {k: v for k, v in vars(plain.spec).items() if k not in ("conditioning", "condition_norm")}
    restored = restore_denoiser(old, plain.state_dict())
    assert restored.spec.conditioning == "shift" and not restored.spec.condition_norm


@pytest.mark.slow
@pytest.mark.parametrize("prediction,stronger,guidance", [("sample", True, 2.0), ("v_prediction", False, 1.0)])
def test_other_targets_and_the_stronger_denoiser_land_on_the_named_cluster(prediction, stronger, guidance):
    """Global normalization with an x0 target, FiLM + condition LayerNorm, EMA, condition dropout and
    guidance 2; and a v target with the plain denoiser: still the cluster the condition names. (v with
    FiLM and condition dropout did not fit these clusters in 600 steps: hits 0.50 / 0.25 / 0.38.)"""
    centres, corpus, task_index, bank = _clusters(2)
    params = _params(Norm.batch)
    stronger_parts = dict(conditioning="film", condition_norm=True, cfg_dropout=0.15, ema_decay=0.99) if stronger else {}
    params = replace(params, diffusion=replace(params.diffusion, prediction=prediction, **stronger_parts))
    generator = train_generator(params, corpus, task_index, bank, learned_condition=False)
    for k in range(3):
        samples = generator.generate(bank[k, 0], k, LENGTH, samples=8, sampler="ddim", inference_steps=20, seed=k,
                                     guidance=guidance)
        assert (_nearest(samples, centres) == k).float().mean() >= 0.875, f"cluster {k}: {_nearest(samples, centres)}"


def test_study_table_skips_the_loto_and_describe_files_beside_it(tmp_path):
    from condpdiff.study import study_rows

    (tmp_path / "row.json").write_text(json.dumps({"tasks": {}, "params": {}, "average": {}}))
    (tmp_path / "loto.json").write_text(json.dumps({"folds": [], "overrides": []}))
    (tmp_path / "new_user.json").write_text(json.dumps({"tasks": {}, "average": {}, "run_id": "x"}))
    assert list(study_rows(tmp_path)) == ["row"]
