"""The condition bank's texts (wordings x few-shot draws, other label words, bare descriptions) and the
mean predictor's training noise."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from condpdiff.ablation import Variant, paper_protocol
from condpdiff.conditions import bank_texts, condition_text, draw_seed, read_descriptions
from condpdiff.config import check_params, load_params
from condpdiff.glue import Example
from condpdiff.mean_predictor import fit_mean_predictor

REPO = Path(__file__).resolve().parents[1]
TRAIN = [Example(f"sentence {i}", None, float(i % 2)) for i in range(20)]


def _descriptions(tmp_path: Path, entry: dict, **others: dict) -> Path:
    path = tmp_path / "descriptions.yaml"
    path.write_text(yaml.safe_dump({"sst2": entry, **others}))
    return path


def test_draws_write_other_label_words_and_the_last_ones_are_bare(tmp_path):
    entry = {"descriptions": ["first wording", "second wording"], "labels": ["negative", "positive"],
             "label_sets": [["boo", "yay"]]}
    cola = {"descriptions": ["cola first", "cola second"], "labels": ["unacceptable", "acceptable"]}
    path = _descriptions(tmp_path, entry, cola=cola)
    cfg = replace(load_params(REPO / "params.yaml").conditions, descriptions=str(path), wordings=2, draws=3,
                  bare_draws=1, examples=2)
    texts = bank_texts(cfg, ["sst2", "cola"], {"sst2": TRAIN, "cola": TRAIN}, seed=0)
    assert len(texts) == 2 * 2 * 3  # task-major, then wording, then draw: the bank's (T, W x D) reshape
    assert texts[6].startswith("cola first Example: ") and texts[11] == "cola second"
    assert texts[0] == condition_text("first wording", ["negative", "positive"], TRAIN, 2, draw_seed(0, "sst2", 0))
    assert {"yay", "boo"} & set(texts[1].replace(".", " ").split())
    assert not {"negative", "positive"} & set(texts[1].replace(".", " ").split())
    assert texts[2] == "first wording" and texts[5] == "second wording"
    assert texts[3].startswith("second wording Example: ")


def test_generation_and_the_paper_protocol_keep_the_examples():
    """Generation (and leave-one-task-out's unseen task) reads wording 0, draw 0; the paper-protocol grids
    read one wording and one draw. Both keep the task's examples whatever `bare_draws` the params hold."""
    params = load_params(REPO / "params.yaml")
    assert params.conditions.bare_draws > 0 and params.conditions.examples > 0
    tasks = ["sst2", "rte"]
    train = {task: TRAIN for task in tasks}
    per_task = params.conditions.wordings * params.conditions.draws
    assert all(" Example: " in text for text in bank_texts(params.conditions, tasks, train, seed=0)[::per_task])
    protocol = paper_protocol(params, Variant())
    check_params(protocol)
    assert all(" Example: " in text for text in bank_texts(protocol.conditions, tasks, train, seed=0))


def test_label_sets_must_match_the_labels(tmp_path):
    path = _descriptions(tmp_path, {"descriptions": ["a"], "labels": ["no", "yes"], "label_sets": [["one"]]})
    with pytest.raises(ValueError, match="sst2.*label_sets"):
        read_descriptions(path)


def test_condition_noise_is_applied_and_seeded():
    cfg = replace(load_params(REPO / "profiles" / "tiny.yaml").mean_predictor, hidden=16, steps=20, batch_size=8)
    bank = torch.nn.functional.normalize(torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    targets = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    query = bank[:, 0]

    def fitted(noise: float) -> torch.Tensor:
        model = fit_mean_predictor(replace(cfg, condition_noise=noise), bank, targets, seed=0)
        with torch.no_grad():
            return model(query)

    assert torch.equal(fitted(0.1), fitted(0.1))
    assert not torch.allclose(fitted(0.1), fitted(0.0))


def test_no_training_wording_nearly_copies_a_held_out_one():
    """The held-out rewordings and the new-user test set must stay unseen: no training description may sit
    closer than 0.9 cosine (MiniLM) to any of them (a near-copy read 0.96; honest paraphrases stay under 0.9)."""
    from condpdiff.conditions import MiniLMTextEncoder, read_rewordings
    from condpdiff.freetext import read_free_conditions

    params = load_params(REPO / "params.yaml")
    training = read_descriptions(REPO / params.conditions.descriptions)
    rewordings = read_rewordings(REPO / "data" / "task_rewordings.yaml")
    test_set = read_free_conditions(REPO / "data" / "new_user_conditions_2.yaml")
    encoder = MiniLMTextEncoder(params.base)
    for task, entry in training.items():
        held = rewordings[task] + [e["description"] for e in test_set[task]]
        similarity = encoder.encode(entry["descriptions"]) @ encoder.encode(held).T
        worst = int(similarity.argmax())
        row, column = divmod(worst, len(held))
        assert similarity.max() < 0.9, f"{task}: {entry['descriptions'][row]!r} ~ {held[column]!r}"
