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

from condpdiff.artifacts import LAYOUTS, split_file, task_corpus_file
from condpdiff.autoencoder import load_autoencoder, save_autoencoder
from condpdiff.conditions import build_conditions
from condpdiff.config import ConditionType, Norm, Params
from condpdiff.corpus import load_task_corpus, pad_to, stack_corpus
from condpdiff.evaluation import task_scorer
from condpdiff.generator import generation_seed
from condpdiff.glue import headline, read_jsonl
from condpdiff.lora import load_tokenizer, read_layouts
from condpdiff.training import train_generator


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


def paper_protocol(params: Params, variant: Variant) -> Params:
    """The paper's grids run under the paper's protocol, whatever the default: task norm and one
    description per task (condition-only generation is measured by `python -m condpdiff study`);
    the variant then changes one thing."""
    conditions = replace(params.conditions, wordings=1, draws=1, bare_draws=0)
    return replace(params, norm=Norm(variant.norm) if variant.norm else Norm.task,
                   conditions=replace(conditions, type=ConditionType(variant.condition))
                   if variant.condition else conditions)


def _digest(*parts) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return hasher.hexdigest()[:16]


def _canonical(variant: Variant, tasks: list[str], corpus_dir: Path) -> tuple[int | None, range | None]:
    """The variant's n and layers with the no-op values (the whole corpus, every layer) as None."""
    layouts, _, _ = read_layouts(corpus_dir / LAYOUTS)
    kept = {len(load_task_corpus(task_corpus_file(corpus_dir, t))[1]) for t in tasks}
    n = None if variant.n is not None and kept == {variant.n} else variant.n
    layers = parse_layers(variant.layers) if variant.layers else None
    present = set().union(*(layouts[t].layer_indices() for t in tasks))
    return n, None if layers is not None and present <= set(layers) else layers


def _keys(params: Params, variant: Variant, tasks: list[str], prepared: Path, corpus_dir: Path) -> tuple[str, str]:
    """(autoencoder key, row key): hashes of everything that decides the autoencoder / the row's scores.

    The library's source is part of both: a row cached before a change to the training or scoring
    code is never reused after it.
    """
    n, layers = _canonical(variant, tasks, corpus_dir)
    params = paper_protocol(params, variant)
    corpus_files = [corpus_dir / LAYOUTS, *(task_corpus_file(corpus_dir, t) for t in tasks)]
    corpus = _digest(*[path.read_bytes() for path in corpus_files])
    code = _digest(*[path.read_bytes() for path in sorted(Path(__file__).parent.glob("*.py"))])
    upstream = [code, corpus, tasks, n, list(layers) if layers else None, params.norm, params.seed,
                asdict(params.autoencoder)]
    data = _digest(*[split_file(prepared / t, s).read_bytes() for t in tasks for s in ("train", "select", "eval")])
    downstream = [data, asdict(params.base), asdict(params.lora), asdict(params.conditions),
                  asdict(params.diffusion), asdict(params.generate), asdict(params.evaluate)]
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
    params = paper_protocol(params, variant)
    layouts, padded_length, _ = read_layouts(corpus_dir / LAYOUTS)
    unknown = [t for t in tasks if t not in layouts]
    if unknown:
        raise KeyError(f"tasks {unknown} are not in the corpus at {corpus_dir}")
    soups = [pad_to(load_task_corpus(task_corpus_file(corpus_dir, t))[0].mean(dim=0), padded_length) for t in tasks]
    stacked, task_index = stack_corpus(corpus_dir, tasks, padded_length, last_n=variant.n)
    layers = parse_layers(variant.layers) if variant.layers else None
    mask = torch.stack([layouts[t].mask(layers, padded_length) for t in tasks]).any(dim=0)
    corpus = stacked[:, mask]  # (M, L_generated): the other layers keep the soup's values

    train = {t: read_jsonl(split_file(prepared / t, "train")) for t in tasks}
    built = build_conditions(params.conditions, params.base, tasks, train, params.seed)
    conditions = built.vectors
    reuse = load_autoencoder(autoencoder_file) if autoencoder_file is not None and autoencoder_file.is_file() else None
    generator = train_generator(params, corpus, task_index, built.bank,
                                params.conditions.type is ConditionType.learned, autoencoder=reuse)
    if autoencoder_file is not None and reuse is None:
        autoencoder_file.parent.mkdir(parents=True, exist_ok=True)
        save_autoencoder(generator.autoencoder, autoencoder_file)

    tokenizer = load_tokenizer(params.base)
    results = {}
    for i, task in enumerate(tasks):
        layout = layouts[task]
        generated = generator.generate(conditions[i], i, corpus.shape[1], params.generate.samples,
                                       params.generate.sampler.value, params.generate.inference_steps,
                                       seed=generation_seed(params.seed, i), guidance=params.generate.guidance)
        full = soups[i].expand(len(generated), -1).clone()
        full[:, mask] = generated
        full = full[:, :layout.length]
        scorer = task_scorer(params.base, params.lora, task, params.evaluate.batch_size, params.seed,
                             tokenizer=tokenizer, layout=layout)
        best, scores = scorer.best_on_select(full, read_jsonl(split_file(prepared / task, "select")))
        values = [headline(task, m) for m in scores]
        results[task] = {"select_best": values[best], "select_mean": sum(values) / len(values)}
        if score_eval:
            results[task]["eval"] = scorer.headline(full[best], read_jsonl(split_file(prepared / task, "eval")))
    return results
