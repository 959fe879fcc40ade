"""LoRA fine-tuning that keeps the last N checkpoints.

Knows nothing of logging: progress goes through the `on_step(step, metrics)` callback.
"""
from __future__ import annotations

import random
from typing import Callable

import torch
from tqdm.auto import tqdm

from condpdiff.config import CollectConfig
from condpdiff.distributed import world
from condpdiff.glue import TASK_SPECS, Example
from condpdiff.lora import Layout, flatten_model

STSB_SCALE = 5.0  # STS-B scores live in [0, 5]; the head regresses score / 5


def texts(examples: list[Example]) -> tuple[list[str], list[str] | None]:
    """The first texts and, for pair tasks, the second ones: the tokenizer's two arguments."""
    return [e.text_a for e in examples], [e.text_b for e in examples] if examples[0].text_b is not None else None


def encode(tokenizer, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(*texts(examples), truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def label_tensor(task: str, examples: list[Example]) -> torch.Tensor:
    if TASK_SPECS[task].num_labels == 1:
        return torch.tensor([e.label / STSB_SCALE for e in examples], dtype=torch.float32)
    return torch.tensor([int(e.label) for e in examples], dtype=torch.long)


def example_length(example: Example) -> int:
    """Characters of the example's text(s): a length proxy for sorting batches without tokenizing."""
    return len(example.text_a) + len(example.text_b or "")


def token_lengths(tokenizer, examples: list[Example], max_length: int) -> list[int]:
    """Tokens of each example as `encode` truncates it, padding aside."""
    return [len(ids) for ids in tokenizer(*texts(examples), truncation=True, max_length=max_length)["input_ids"]]


def training_batches(lengths: list[int], batch_size: int, length_groups: int, rng: random.Random):
    """Endless batches of example indices, epoch after epoch; each epoch sees every example once.

    `lengths` holds each example's token count. Each epoch is shuffled, cut into pools of
    `length_groups` batches, and each pool sorted by length before it is split into batches, so a batch pads to a length near its own (the pair tasks padded
    1.4-1.9x more tokens than they held); the batches of an epoch are then shuffled, so the order of
    lengths is random. `length_groups` <= 1: plain shuffled batches.
    """
    pool = batch_size * max(length_groups, 1)
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start:start + pool]
            if length_groups > 1:
                chunk.sort(key=lambda i: lengths[i])
            batches.extend(chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size))
        if length_groups > 1:
            rng.shuffle(batches)
        yield from batches


def kept_steps(cfg: CollectConfig) -> list[int]:
    """The optimizer steps (1-based) whose weights enter the corpus: the last N, `stride` apart."""
    return [cfg.steps - i * cfg.stride for i in reversed(range(cfg.keep_last))]


def lr_factor(step: int, cfg: CollectConfig, first_kept: int) -> float:
    """Linear warm-up, constant, then `kept_lr_factor` over the kept window.

    A constant rate to the end left the corpus drifting (the soup of 100 steps trailed the
    last checkpoint by several points on CoLA and RTE); a lower rate over the kept window
    gathers the corpus around the end point while its checkpoints still differ.
    """
    if step < cfg.warmup_steps:
        return step / cfg.warmup_steps
    return cfg.kept_lr_factor if step >= first_kept else 1.0


def finetune_and_collect(
    model,
    tokenizer,
    task: str,
    train: list[Example],
    cfg: CollectConfig,
    layout: Layout,
    max_length: int,
    seed: int,
    on_step: Callable[[int, dict], None] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Train LoRA + head; return the kept flat vectors (N, L) and their steps. Under torchrun each rank trains
    on its share of every global batch (condpdiff.distributed)."""
    ranks = world()
    ranks.check_batch(cfg.batch_size, "collect")
    if len(train) % cfg.batch_size:  # every epoch ends on a short batch of this size
        ranks.check_batch(len(train) % cfg.batch_size, f"collect ({len(train)} examples: an epoch's last)")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    head_params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    optimizer = torch.optim.AdamW(
        [{"params": lora_params, "lr": cfg.lr_lora}, {"params": head_params, "lr": cfg.lr_head}],
        weight_decay=cfg.weight_decay,
    )
    keep = set(kept_steps(cfg))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s + 1, cfg, min(keep)))
    batches = training_batches(token_lengths(tokenizer, train, max_length), cfg.batch_size, cfg.length_groups, rng)
    kept, kept_at = [], []
    model.train()
    trained = ranks.wrap(model)
    for step in tqdm(range(1, cfg.steps + 1), desc=f"fine-tune {task}", leave=False):
        batch = [train[i] for i in ranks.shard(next(batches))]
        inputs = encode(tokenizer, batch, max_length)
        loss = trained(**inputs, labels=label_tensor(task, batch)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{task}: loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step in keep:
            kept.append(flatten_model(model, layout))
            kept_at.append(step)
        if on_step is not None and (step % 10 == 0 or step == cfg.steps):
            on_step(step, {"train_loss": ranks.mean(loss)})
    model.eval()
    return torch.stack(kept), kept_at
