"""One ablation variant, run in-process on the collected corpus: normalize -> autoencoder ->
conditions -> diffusion -> generate -> score. It never fine-tunes: a downstream change reuses
the corpus, taking its last `n` checkpoints and generating only the chosen layers' LoRA
(the other layers keep the corpus soup's values, as in the paper's parameter-subset study).

Grids share work through a cache folder: two variants that train the same generator (n=N is
the whole corpus; a layer range covering every layer is all layers; each grid's default row is
the same run) share one result, and variants that differ only after the autoencoder share it.

Knows nothing of MLflow or Optuna; `condpdiff.tune` drives it.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from condpdiff.autoencoder import Autoencoder, AutoencoderSpec, load_autoencoder, save_autoencoder, train_autoencoder
from condpdiff.conditions import build_conditions
from condpdiff.config import ConditionType, Norm, Params
from condpdiff.corpus import load_task_corpus, pad_to
from condpdiff.denoiser import Denoiser, DenoiserSpec
from condpdiff.diffusion import make_scheduler, train_diffusion
from condpdiff.finetune import score_vector
from condpdiff.generator import Generator
from condpdiff.glue import headline, read_jsonl
from condpdiff.lora import Layout, build_peft_model, load_tokenizer, read_layouts
from condpdiff.normalize import fit_normalizer

LAYER = re.compile(r"\.layer\.(\d+)\.")


@dataclass(frozen=True)
class Variant:
    """What one grid row changes; None keeps the params value."""

    norm: str | None = None
    condition: str | None = None
    n: int | None = None  # the last n kept checkpoints
    layers: str | None = None  # "0-4": generate the LoRA of layers 0..4 only


def parse_layers(text: str) -> range:
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if not match or int(match[1]) > int(match[2]):
        raise ValueError(f"layers must look like '0-4', got {text!r}")
    return range(int(match[1]), int(match[2]) + 1)


def generated_mask(layout: Layout, padded_length: int, layers: range | None) -> torch.Tensor:
    """True where the generator makes the value: the head, and the LoRA of `layers` (all if None)."""
    mask = torch.zeros(padded_length, dtype=torch.bool)
    for name, shape, offset in zip(layout.names, layout.shapes, layout.offsets):
        match = LAYER.search(name)
        if not layout.is_lora(name) or layers is None or (match and int(match[1]) in layers):
            mask[offset:offset + torch.Size(shape).numel()] = True
    return mask


def _apply(params: Params, variant: Variant) -> Params:
    return replace(params, norm=Norm(variant.norm) if variant.norm else params.norm,
                   conditions=replace(params.conditions, type=ConditionType(variant.condition))
                   if variant.condition else params.conditions)


def _digest(*parts) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return hasher.hexdigest()[:16]


def _canonical(variant: Variant, tasks: list[str], corpus_dir: Path) -> tuple[int | None, range | None]:
    """The variant's n and layers with the no-op values (the whole corpus, every layer) as None."""
    layouts, _, _ = read_layouts(corpus_dir / "layout.json")
    kept = {len(load_task_corpus(corpus_dir / f"{t}.safetensors")[1]) for t in tasks}
    n = None if variant.n is not None and kept == {variant.n} else variant.n
    layers = parse_layers(variant.layers) if variant.layers else None
    present = {int(m[1]) for t in tasks for name in layouts[t].names if (m := LAYER.search(name))}
    return n, None if layers is not None and present <= set(layers) else layers


def _keys(params: Params, variant: Variant, tasks: list[str], prepared: Path, corpus_dir: Path) -> tuple[str, str]:
    """(autoencoder key, row key): hashes of everything that decides the autoencoder / the row's scores."""
    n, layers = _canonical(variant, tasks, corpus_dir)
    params = _apply(params, variant)
    corpus = _digest(*[(corpus_dir / f).read_bytes() for f in ["layout.json", *(f"{t}.safetensors" for t in tasks)]])
    upstream = [corpus, tasks, n, list(layers) if layers else None, params.norm, params.seed,
                asdict(params.autoencoder)]
    data = _digest(*[(prepared / t / f"{s}.jsonl").read_bytes() for t in tasks for s in ("train", "select", "eval")])
    downstream = [data, asdict(params.base), asdict(params.conditions), asdict(params.diffusion),
                  asdict(params.generate), asdict(params.evaluate)]
    return _digest(*upstream), _digest(*upstream, *downstream)


def run_row(params: Params, variant: Variant, tasks: list[str], prepared: Path, corpus_dir: Path,
            cache: Path | None) -> tuple[dict[str, dict[str, float]], float, bool]:
    """One grid row: (results, seconds it took to compute, whether it came from the cache)."""
    autoencoder_key, row_key = _keys(params, variant, tasks, prepared, corpus_dir) if cache else (None, None)
    row_file = cache / f"row-{row_key}.json" if cache else None
    if row_file and row_file.is_file():
        stored = json.loads(row_file.read_text())
        return stored["results"], stored["seconds"], True
    start = time.perf_counter()
    results = run_variant(params, variant, tasks, prepared, corpus_dir,
                          autoencoder_file=cache / f"autoencoder-{autoencoder_key}.pt" if cache else None)
    seconds = time.perf_counter() - start
    if row_file:
        row_file.write_text(json.dumps({"variant": asdict(variant), "results": results, "seconds": seconds}))
    return results, seconds, False


def run_variant(params: Params, variant: Variant, tasks: list[str], prepared: Path, corpus_dir: Path,
                score_eval: bool = True, autoencoder_file: Path | None = None) -> dict[str, dict[str, float]]:
    """Train a generator on `tasks` under `variant`; per task, the generated adapter that is best on
    `select` and its `eval` score. An `autoencoder_file` is reused when it exists, written when not."""
    params = _apply(params, variant)
    layouts, padded_length, num_labels = read_layouts(corpus_dir / "layout.json")
    unknown = [t for t in tasks if t not in layouts]
    if unknown:
        raise KeyError(f"tasks {unknown} are not in the corpus at {corpus_dir}")
    blocks, soups = [], []
    for task in tasks:
        checkpoints, _ = load_task_corpus(corpus_dir / f"{task}.safetensors")
        soups.append(pad_to(checkpoints.mean(dim=0), padded_length))
        if variant.n is not None and not 1 <= variant.n <= len(checkpoints):
            raise ValueError(f"n={variant.n}: the corpus keeps {len(checkpoints)} checkpoints of {task}")
        blocks.append(pad_to(checkpoints[-(variant.n or len(checkpoints)):], padded_length))
    layers = parse_layers(variant.layers) if variant.layers else None
    mask = torch.stack([generated_mask(layouts[t], padded_length, layers) for t in tasks]).any(dim=0)
    corpus = torch.cat(blocks)[:, mask]  # (M, L_generated)
    task_index = torch.cat([torch.full((len(b),), i) for i, b in enumerate(blocks)])
    normalizer = fit_normalizer(params.norm, corpus, task_index, len(tasks))
    normalized = normalizer.transform(corpus, task_index)

    a = params.autoencoder
    if autoencoder_file is not None and autoencoder_file.is_file():
        autoencoder = load_autoencoder(autoencoder_file)
    else:
        autoencoder = train_autoencoder(
            Autoencoder(AutoencoderSpec(corpus.shape[1], tuple(a.channels), a.latent_channels, a.stride,
                                        a.input_noise, a.latent_noise)),
            normalized, a.steps, a.batch_size, a.lr, params.seed)
        if autoencoder_file is not None:
            autoencoder_file.parent.mkdir(parents=True, exist_ok=True)
            save_autoencoder(autoencoder, autoencoder_file)
    with torch.inference_mode():
        latents = autoencoder.encode(normalized)
    train = {t: read_jsonl(prepared / t / "train.jsonl") for t in tasks}
    conditions, _, _ = build_conditions(params.conditions, params.base, tasks, train, params.seed)
    d = params.diffusion
    scale = latents.std().item()
    scheduler = make_scheduler(d.timesteps, d.beta_schedule)
    denoiser = train_diffusion(
        Denoiser(DenoiserSpec(latents.shape[1], conditions.shape[1], tuple(d.channels), d.embed_dim,
                              learned_condition=params.conditions.type is ConditionType.learned)),
        scheduler, latents / scale, conditions[task_index], d.steps, d.batch_size, d.lr, params.seed)
    generator = Generator(autoencoder, denoiser, dict(scheduler.config), scale, normalizer)

    tokenizer = load_tokenizer(params.base)
    results = {}
    for i, task in enumerate(tasks):
        layout = layouts[task]
        generated = generator.generate(conditions[i], i, corpus.shape[1], params.generate.samples,
                                       params.generate.sampler.value, params.generate.inference_steps,
                                       seed=params.seed * 1000 + i)
        full = soups[i].expand(len(generated), -1).clone()
        full[:, mask] = generated
        full = full[:, :layout.length]
        model = build_peft_model(params.base, params.lora, num_labels[task], params.seed)
        select = read_jsonl(prepared / task / "select.jsonl")
        scores = [headline(task, score_vector(model, tokenizer, task, v, layout, select, params.evaluate.batch_size,
                                              params.base.max_length)) for v in full]
        best = max(range(len(scores)), key=scores.__getitem__)
        results[task] = {"select_best": scores[best], "select_mean": sum(scores) / len(scores)}
        if score_eval:
            evaluation = read_jsonl(prepared / task / "eval.jsonl")
            results[task]["eval"] = headline(task, score_vector(
                model, tokenizer, task, full[best], layout, evaluation, params.evaluate.batch_size, params.base.max_length))
    return results
