"""Baselines that need no generator: the classification head trained alone on the frozen base.

`head_only` answers "how much of a task does the head learn without any LoRA?": the floor every
LoRA, original or generated, must clear. The evaluate stage scores it beside the original and the
generated adapters; the study and leave-one-task-out use it too.
"""
from __future__ import annotations

import math
import random

import torch

from condpdiff.config import Params
from condpdiff.evaluation import Scorer
from condpdiff.finetune import (encode, example_length, kept_steps, label_tensor, lr_factor, token_lengths,
                               training_batches)
from condpdiff.glue import Example
from condpdiff.lora import load_vector

# the headonly stage's file in outputs/headonly/<task>/ (here, not in artifacts.py, which every collect
# stage depends on: naming a new file there would re-run the six fine-tunes)
HEAD_ONLY = "head_only.safetensors"

@torch.inference_mode()
def pooled_features(scorer: Scorer, examples: list[Example], batch_size: int) -> torch.Tensor:
    """The frozen base's pooled [CLS] features (LoRA zeroed), in the examples' order: what the head reads.
    Batches are length-sorted so they pad little."""
    load_vector(scorer.model, torch.zeros(scorer.layout.length), scorer.layout)
    scorer.model.eval()
    encoder = scorer.model.base_model.model.bert
    order = sorted(range(len(examples)), key=lambda i: example_length(examples[i]))
    features = None
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        pooled = encoder(**encode(scorer.tokenizer, [examples[i] for i in index], scorer.max_length)).pooler_output
        if features is None:
            features = pooled.new_zeros(len(examples), pooled.shape[1])
        features[index] = pooled
    return features


def head_only(params: Params, scorer: Scorer, train: list[Example], head_init: torch.Tensor) -> torch.Tensor:
    """The head trained alone on the frozen base (LoRA off) on collect's batches, with its steps, head rate
    and schedule; the features are computed once (no dropout: the base is frozen and in eval mode).
    `head_init` is a flat vector whose head entries start the training (the model's seeded init).
    Returns the flat vector: zero LoRA, the trained head."""
    cfg = params.collect.for_task(scorer.task)
    features = pooled_features(scorer, train, params.evaluate.batch_size)
    names = [(n, s, o) for n, s, o in zip(scorer.layout.names, scorer.layout.shapes, scorer.layout.offsets)
             if not scorer.layout.is_lora(n)]
    weight = next((s, o) for n, s, o in names if n.endswith("weight"))
    bias = next((s, o) for n, s, o in names if n.endswith("bias"))
    if len(names) != 2 or weight[0][1] != features.shape[1]:
        raise ValueError(f"{scorer.task}: expected one linear head over {features.shape[1]} features, got {names}")
    layer = torch.nn.Linear(weight[0][1], weight[0][0])
    with torch.no_grad():
        layer.weight.copy_(head_init[weight[1]:weight[1] + math.prod(weight[0])].reshape(weight[0]))
        layer.bias.copy_(head_init[bias[1]:bias[1] + math.prod(bias[0])])
    labels = label_tensor(scorer.task, train)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=cfg.lr_head, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s + 1, cfg, min(kept_steps(cfg))))
    batches = training_batches(token_lengths(scorer.tokenizer, train, scorer.max_length), cfg.batch_size,
                               cfg.length_groups, random.Random(params.seed))
    for _ in range(cfg.steps):
        index = next(batches)
        logits = layer(features[index])
        loss = (torch.nn.functional.mse_loss(logits[:, 0], labels[index]) if logits.shape[1] == 1
                else torch.nn.functional.cross_entropy(logits, labels[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    vector = torch.zeros(scorer.layout.length)
    vector[weight[1]:weight[1] + math.prod(weight[0])] = layer.weight.detach().flatten()
    vector[bias[1]:bias[1] + math.prod(bias[0])] = layer.bias.detach()
    return vector
