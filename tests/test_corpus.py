import pytest
import torch

from condpdiff.corpus import load_task_corpus, pad_to, save_task_corpus, spaced_indices


def test_round_trip_and_padding(tmp_path):
    checkpoints = torch.randn(4, 10)
    save_task_corpus(tmp_path / "t.safetensors", checkpoints, [7, 8, 9, 10])
    loaded, steps = load_task_corpus(tmp_path / "t.safetensors")
    assert torch.equal(loaded, checkpoints) and steps == [7, 8, 9, 10]
    padded = pad_to(checkpoints, 13)
    assert padded.shape == (4, 13) and torch.equal(padded[:, 10:], torch.zeros(4, 3))


@pytest.mark.parametrize("content, message", [(b"not a safetensors file", "corrupt"), (None, "missing")])
def test_missing_or_corrupt_corpus_is_named(tmp_path, content, message):
    path = tmp_path / "sst2.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=f"{message}.*sst2.safetensors"):
        load_task_corpus(path)


def test_nan_corpus_is_refused(tmp_path):
    checkpoints = torch.zeros(2, 3)
    checkpoints[0, 1] = float("inf")
    save_task_corpus(tmp_path / "x.safetensors", checkpoints, [1, 2])
    with pytest.raises(ValueError, match="NaN or inf"):
        load_task_corpus(tmp_path / "x.safetensors")


def test_spaced_indices():
    assert spaced_indices(10, 100) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert spaced_indices(0, 5) == list(range(5))
    assert spaced_indices(1, 5) == [4]


def test_learning_rate_drops_over_the_kept_window():
    from dataclasses import replace

    from condpdiff.finetune import kept_steps, lr_factor
    from conftest import TINY_PARAMS

    cfg = replace(TINY_PARAMS.collect, steps=20, warmup_steps=4, keep_last=5, stride=1, kept_lr_factor=0.1)
    first = min(kept_steps(cfg))
    assert kept_steps(cfg) == [16, 17, 18, 19, 20]
    assert [lr_factor(s, cfg, first) for s in (1, 2, 4, 15, 16, 20)] == [0.25, 0.5, 1.0, 1.0, 0.1, 0.1]


@pytest.mark.parametrize("length_groups", [1, 4])
def test_training_batches_cover_each_epoch_once_and_group_lengths(length_groups):
    import random
    from itertools import islice

    from condpdiff.finetune import training_batches

    draw = random.Random(1)
    lengths = [draw.randrange(5, 120) for _ in range(103)]
    batches = list(islice(training_batches(lengths, 8, length_groups, random.Random(0)), 26))
    first, second = sorted(i for b in batches[:13] for i in b), sorted(i for b in batches[13:] for i in b)
    assert first == second == list(range(103))  # two epochs of 13 batches (the last one of 7)
    assert sorted(len(b) for b in batches[:13]) == [7] + [8] * 12
    again = list(islice(training_batches(lengths, 8, length_groups, random.Random(0)), 26))
    assert again == batches
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    if length_groups > 1:  # sorted pools pad far less than plain shuffled batches
        plain = list(islice(training_batches(lengths, 8, 1, random.Random(0)), 26))
        assert padded < 0.8 * sum(max(lengths[i] for i in b) * len(b) for b in plain)
