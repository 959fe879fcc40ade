import pytest
import torch

from condpdiff.config import Norm
from condpdiff.normalize import Normalizer, fit_normalizer


@pytest.mark.parametrize("method", list(Norm))
def test_inverse_round_trips_and_constant_element_is_finite(method, tmp_path):
    torch.manual_seed(0)
    corpus = torch.randn(12, 7) * torch.arange(1, 8) + 3.0
    corpus[:, 2] = 5.0  # constant everywhere: std 0
    corpus[:, 6] = 0.0  # zero padding
    task_index = torch.tensor([0] * 6 + [1] * 6)
    normalizer = fit_normalizer(method, corpus, task_index, 2)
    z = normalizer.transform(corpus, task_index)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(normalizer.inverse(z, task_index), corpus, rtol=0, atol=1e-5)
    normalizer.save(tmp_path / "stats.safetensors")
    loaded = Normalizer.load(tmp_path / "stats.safetensors")
    assert loaded.method is method and torch.equal(loaded.mean, normalizer.mean)


def test_task_norm_uses_each_tasks_own_statistics():
    corpus = torch.cat([torch.randn(5, 3), torch.randn(5, 3) + 100.0])
    task_index = torch.tensor([0] * 5 + [1] * 5)
    z = fit_normalizer(Norm.task, corpus, task_index, 2).transform(corpus, task_index)
    assert z[task_index == 1].mean().abs() < 1e-4
    batch = fit_normalizer(Norm.batch, corpus, task_index, 2).transform(corpus, task_index)
    assert batch[task_index == 1].mean() > 0.5


def test_nan_in_corpus_is_refused():
    corpus = torch.zeros(4, 3)
    corpus[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_normalizer(Norm.task, corpus, torch.zeros(4, dtype=torch.long), 1)
