"""LoRA fine-tuning that keeps the last N checkpoints.

Knows nothing of logging: progress goes through the `on_step(step, metrics)` callback.
"""
from __future__ import annotations

import random
from typing import Callable

import torch
from tqdm.auto import tqdm

from condpdiff.config import CollectConfig
from condpdiff.glue import TASK_SPECS, Example
from condpdiff.lora import Layout, flatten_model

STSB_SCALE = 5.0  # STS-B scores live in [0, 5]; the head regresses score / 5


def encode(tokenizer, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    first = [e.text_a for e in examples]
    second = [e.text_b for e in examples] if examples[0].text_b is not None else None
    return tokenizer(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def label_tensor(task: str, examples: list[Example]) -> torch.Tensor:
    if TASK_SPECS[task].num_labels == 1:
        return torch.tensor([e.label / STSB_SCALE for e in examples], dtype=torch.float32)
    return torch.tensor([int(e.label) for e in examples], dtype=torch.long)


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
    """Train LoRA + head; return the kept flat vectors (N, L) and their steps."""
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
    order: list[int] = []
    kept, kept_at = [], []
    model.train()
    for step in tqdm(range(1, cfg.steps + 1), desc=f"fine-tune {task}", leave=False):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch = [train[i] for i in order[:cfg.batch_size]]
        del order[:cfg.batch_size]
        inputs = encode(tokenizer, batch, max_length)
        loss = model(**inputs, labels=label_tensor(task, batch)).loss
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
            on_step(step, {"train_loss": loss.item()})
    model.eval()
    return torch.stack(kept), kept_at
