"""The autoencoder and the denoiser, on tiny shapes."""
import pickle

import pytest
import torch

from condpdiff.autoencoder import Autoencoder, AutoencoderSpec
from condpdiff.denoiser import Denoiser, DenoiserSpec
from condpdiff.diffusion import make_scheduler, q_sample


def test_autoencoder_shapes_for_length_not_divisible_by_stride():
    spec = AutoencoderSpec(length=1001, channels=(4, 8), latent_channels=3, stride=4, input_noise=0.001,
                           latent_noise=0.001)
    model = Autoencoder(spec).eval()
    x = torch.randn(5, 1001)
    z = model.encode(x)
    assert z.shape == (5, 3, 1008 // 16) == (5, *spec.latent_shape)
    assert model.decode(z).shape == (5, 1001)
    assert model(x).shape == (5, 1001)


def test_autoencoder_encode_decode_add_no_noise():
    model = Autoencoder(AutoencoderSpec(length=64, channels=(4,), latent_channels=2, stride=4,
                                        input_noise=1.0, latent_noise=1.0)).eval()
    x = torch.randn(3, 64)
    assert torch.equal(model.decode(model.encode(x)), model.decode(model.encode(x)))


def _denoiser(learned=False, conditioning="shift", condition_norm=False):
    torch.manual_seed(0)
    model = Denoiser(DenoiserSpec(in_channels=3, condition_dim=5, channels=(8, 16), embed_dim=16,
                                  learned_condition=learned, conditioning=conditioning,
                                  condition_norm=condition_norm)).eval()
    if conditioning == "film":  # zero-initialised FiLM ignores the condition until trained: give it weights
        for module in model.modules():
            if getattr(module, "film", False):
                torch.nn.init.normal_(module.embed.weight, std=0.1)
    return model


@pytest.mark.parametrize("conditioning,condition_norm", [("shift", False), ("film", True)])
def test_each_sample_has_its_own_timestep(conditioning, condition_norm):
    """Output i changes when t_i changes, and not when t_j (j != i) changes."""
    model = _denoiser(conditioning=conditioning, condition_norm=condition_norm)
    x, condition = torch.randn(4, 3, 10), torch.randn(4, 5)
    t = torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        before = model(x, t, condition)
        t2 = t.clone()
        t2[1] = 999
        after = model(x, t2, condition)
    assert not torch.allclose(before[1], after[1])
    for j in (0, 2, 3):
        torch.testing.assert_close(before[j], after[j], rtol=0, atol=1e-6)


@pytest.mark.parametrize("conditioning,condition_norm", [("shift", False), ("film", False), ("film", True)])
def test_condition_changes_the_output_per_sample(conditioning, condition_norm):
    for learned in (False, True):
        model = _denoiser(learned, conditioning, condition_norm)
        x, t = torch.randn(2, 3, 10), torch.tensor([5, 5])
        condition = torch.eye(5)[:2]
        with torch.no_grad():
            a = model(x, t, condition)
            b = model(x, t, torch.eye(5)[[0, 3]])
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
        assert not torch.allclose(a[1], b[1])


def test_q_sample_at_t0_is_almost_x0():
    scheduler = make_scheduler(1000, "linear")
    x0, noise = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    xt = q_sample(scheduler, x0, noise, torch.tensor([0, 0]))
    # beta_1 = 1e-4: x_1 differs from x0 by about 1% of the noise
    assert (xt - x0).abs().max() < 0.05
    far = q_sample(scheduler, x0, noise, torch.tensor([999, 999]))
    assert torch.allclose(far, noise, atol=0.05)


class _Payload:
    """Stands for code hidden in a model file: unpickling it would run arbitrary code."""

    def __reduce__(self):
        return (print, ("this ran on load",))


def test_model_files_load_weights_only(tmp_path):
    from condpdiff.autoencoder import load_autoencoder
    from condpdiff.diffusion import load_diffusion, save_diffusion

    model = _denoiser()
    save_diffusion(model, make_scheduler(20, "linear"), 1.5, tmp_path / "model.pt")
    loaded, config, scale, mean_predictor = load_diffusion(tmp_path / "model.pt")
    assert mean_predictor is None
    assert scale == 1.5 and config["num_train_timesteps"] == 20
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    torch.save({"spec": {}, "state_dict": {}, "payload": _Payload()}, tmp_path / "evil.pt")
    for load in (load_diffusion, load_autoencoder):
        with pytest.raises(pickle.UnpicklingError):
            load(tmp_path / "evil.pt")
