"""The head-only baseline: features in the examples' order whatever the batching, and a head that learns."""
import torch

from condpdiff.baselines import head_only, pooled_features
from condpdiff.evaluation import task_scorer
from condpdiff.glue import Example
from condpdiff.lora import flatten_model
from conftest import TINY_PARAMS

TEXTS = ["a truly wonderful film", "bad.", "the plot never comes together and the acting is wooden throughout",
         "great", "I would not watch it again, not even for free, not even on a long flight", "fine", "awful, awful",
         "a warm, funny and moving story"]


def _examples() -> list[Example]:
    return [Example(text_a=text, text_b=None, label=i % 2) for i, text in enumerate(TEXTS)]


def test_length_sorted_batches_return_features_in_the_examples_order():
    scorer = task_scorer(TINY_PARAMS.base, TINY_PARAMS.lora, "sst2", 4, 0)
    examples = _examples()
    batched = pooled_features(scorer, examples, batch_size=3)
    one_by_one = torch.cat([pooled_features(scorer, [e], batch_size=1) for e in examples])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


def test_the_head_trained_alone_moves_only_the_head():
    scorer = task_scorer(TINY_PARAMS.base, TINY_PARAMS.lora, "sst2", 4, 0)
    init = flatten_model(scorer.model, scorer.layout)
    vector = head_only(TINY_PARAMS, scorer, _examples(), init)
    lora = scorer.layout.lora_mask()
    assert torch.count_nonzero(vector[lora]) == 0
    assert not torch.allclose(vector[~lora], init[~lora])
