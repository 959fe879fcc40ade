"""Does the condition carry the task? One study row: train a generator on the collected corpus under
the params, then measure what decides its adapters.

Every row, per task (K = generate.samples, choices on `select`, `eval` only reported):
- `own` / `wrong`: K samples from the task's own condition and from the next task's condition
  (the whole vector: LoRA and head), scored on `select` (mean and best) and the best on `eval`;
- `splice`: the same samples' LoRA with the task's best original head: does the LoRA part alone
  depend on the condition? A paired bootstrap over the `select` examples gives a 95% interval of
  own minus wrong;
- `trivial`: the generator without diffusion: the mean it would decode around plus its scale times
  N(0, I) (task norm: soup + std_task * N(0, I); cond: the condition's mean + pooled std * N(0, I)),
  same K, same selection; `mean`: that mean alone;
- diagnostics: the autoencoder's reconstruction of a few corpus checkpoints in weight space and in
  the task metric; each sample's distance to its own task's soup and to the nearest other task's;
  how far the denoiser's x0 estimate moves when the condition changes, across timesteps; and the
  size of the last sampling steps' noise in weight space, against the corpus spread.

Knows nothing of MLflow: `python -m condpdiff study` logs each row as a run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from condpdiff.artifacts import LAYOUTS, ORIGINALS, split_file, task_corpus_file
from condpdiff.autoencoder import encode_latents
from condpdiff.baselines import head_only
from condpdiff.comparison import base_vector
from condpdiff.conditions import (build_conditions, held_out_texts, make_text_encoder, read_descriptions,
                                  read_rewordings)
from condpdiff.config import ConditionType, Norm, Params
from condpdiff.corpus import load_task_corpus, pad_to, spaced_indices, stack_corpus
from condpdiff.evaluation import Scorer, nearest_distances, predict, task_scorer
from condpdiff.generator import Generator, generation_seed
from condpdiff.glue import Example, compute_metrics, headline, read_jsonl
from condpdiff.lora import flatten_model, load_tokenizer, load_vector, read_layouts
from condpdiff.training import train_generator

TIMESTEPS = (999, 900, 750, 500, 250, 100, 50, 10, 0)  # where x0(own) and x0(wrong) are compared
FINAL_STEPS = (1, 2, 5, 10)  # the DDPM steps whose added noise is measured in weight space


def predictions(scorer: Scorer, vector: torch.Tensor, examples: list[Example]) -> np.ndarray:
    load_vector(scorer.model, vector, scorer.layout)
    return predict(scorer.model, scorer.tokenizer, scorer.task, examples, scorer.batch_size, scorer.max_length)


def mean_headline(task: str, preds: np.ndarray, labels: np.ndarray) -> float:
    """The headline metric averaged over the rows of `preds` (K, N)."""
    return float(np.mean([headline(task, compute_metrics(task, p, labels)) for p in preds]))


def paired_bootstrap(task: str, own: np.ndarray, wrong: np.ndarray, labels: np.ndarray, rounds: int,
                     seed: int) -> tuple[float, float, float]:
    """(own - wrong, 2.5%, 97.5%) of the mean-over-K headline, resampling the examples (paired)."""
    rng = np.random.default_rng(seed)
    observed = mean_headline(task, own, labels) - mean_headline(task, wrong, labels)
    diffs = []
    for _ in range(rounds):
        index = rng.integers(0, len(labels), len(labels))
        diffs.append(mean_headline(task, own[:, index], labels[index]) - mean_headline(task, wrong[:, index],
                                                                                       labels[index]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return observed, float(low), float(high)


def splice(vectors: torch.Tensor, head_from: torch.Tensor, lora_mask: torch.Tensor) -> torch.Tensor:
    """(K, L) vectors with their LoRA entries kept and every other entry (the head) taken from `head_from`."""
    return torch.where(lora_mask, vectors, head_from.expand_as(vectors))


def x0_estimate(scheduler, output: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
    """The denoiser's estimate of x0 from its output at step t, for the scheduler's prediction type."""
    abar = scheduler.alphas_cumprod[t]
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return output
    if kind == "v_prediction":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * output
    return (x_t - (1 - abar).sqrt() * output) / abar.sqrt()


@torch.inference_mode()
def condition_sensitivity(generator: Generator, latents: torch.Tensor, own: torch.Tensor, wrong: torch.Tensor,
                          seed: int) -> dict[int, float]:
    """||x0_hat(own) - x0_hat(wrong)|| / ||x0|| at each timestep, on the task's (scaled) training latents
    (the conditional model, without guidance).

    A condition path the denoiser ignores shows ~0 at every t; one it reads shows a gap at high noise,
    where only the condition can say which task the sample belongs to."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(generator.scheduler_config)
    x0 = latents / generator.latent_scale
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    result = {}
    for t in TIMESTEPS:
        if t >= scheduler.config.num_train_timesteps:
            continue
        steps = torch.full((len(x0),), t, dtype=torch.long)
        x_t = scheduler.add_noise(x0, noise, steps)
        estimates = [x0_estimate(scheduler, generator.denoiser(x_t, steps, c.expand(len(x0), -1)), x_t, t)
                     for c in (own, wrong)]
        result[t] = ((estimates[0] - estimates[1]).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).median().item()
    return result


@torch.inference_mode()
def final_step_noise(generator: Generator, latents: torch.Tensor, condition: torch.Tensor, stats_index: int | None,
                     length: int, seed: int) -> dict[int, float]:
    """Weight-space L2 size of the noise that DDPM step t (t -> t-1) adds, at the last steps: decode a
    latent with and without sigma_t * N(0, I) added and compare the adapters. This is the DDPM chain over
    every training timestep (generate.sampler=ddpm, inference_steps=timesteps); DDIM adds none."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(generator.scheduler_config)
    x0 = latents / generator.latent_scale
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    result = {}
    for t in FINAL_STEPS:
        abar, abar_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t - 1]
        sigma = ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()  # DDPM's posterior std
        decoded = [generator.to_weights(z, condition, stats_index, length) for z in (x0, x0 + sigma * noise)]
        result[t] = (decoded[1] - decoded[0]).norm(dim=1).median().item()
    return result


def run_study(params: Params, tasks: list[str], prepared, corpus_dir, scored: int = 5, rounds: int = 1000,
              baselines: bool = False, rewordings: Path | None = None, reworded_samples: int = 3,
              light: bool = False, log=print) -> dict:
    """One study row under `params` (its norm, conditions, generator): the results per task and averaged.
    `light` scores only what depends on the denoiser (own, wrong, splice; rewordings if given) and skips
    the no-diffusion analogue, the mean and the reconstructions (they depend on the norm and the autoencoder
    only): the generator-variant rows.
    `baselines` adds the rows that do not depend on the generator: `head_only` (the head trained alone,
    LoRA off) and `base` (the best original's head, LoRA zeroed). `rewordings` (a held-out rewordings file)
    adds `reworded`: per rewording, `reworded_samples` samples from it (with the same few-shot examples as
    the task's own condition), their `select` mean."""
    if len(tasks) < 2:
        raise ValueError(f"a study needs at least two tasks (a wrong condition is another task's), got {tasks}")
    layouts, padded_length, _ = read_layouts(corpus_dir / LAYOUTS)
    originals = json.loads((corpus_dir / ORIGINALS).read_text())
    stacked, task_index = stack_corpus(corpus_dir, tasks, padded_length)
    train = {t: read_jsonl(split_file(prepared / t, "train")) for t in tasks}
    built = build_conditions(params.conditions, params.base, tasks, train, params.seed)
    generator = train_generator(params, stacked, task_index, built.bank,
                                params.conditions.type is ConditionType.learned)
    normalized = generator.normalizer.transform(stacked, task_index)
    latents = encode_latents(generator.autoencoder, normalized)
    tokenizer = load_tokenizer(params.base)
    soups = torch.stack([stacked[task_index == i].mean(dim=0) for i in range(len(tasks))])
    cond_only = generator.condition_only
    held_out = read_rewordings(rewordings) if rewordings is not None else None
    if held_out is not None:
        if params.conditions.type not in (ConditionType.text, ConditionType.text_fewshot):
            raise ValueError(f"rewordings need a text condition, not {params.conditions.type.value}")
        encoder = make_text_encoder(params.conditions, params.base)
        entries = read_descriptions(Path(params.conditions.descriptions))
    results = {}
    for i, task in enumerate(tasks):
        layout, length = layouts[task], layouts[task].length
        other = (i + 1) % len(tasks)
        stats = None if cond_only else i
        select, evaluation = (read_jsonl(split_file(prepared / task, s)) for s in ("select", "eval"))
        labels = np.array([e.label for e in select], dtype=np.float64)
        scorer = task_scorer(params.base, params.lora, task, params.evaluate.batch_size, params.seed,
                             tokenizer=tokenizer, layout=layout)
        init = flatten_model(scorer.model, layout)  # the seeded, untrained head
        corpus, corpus_steps = load_task_corpus(task_corpus_file(corpus_dir, task))
        seed = generation_seed(params.seed, i)
        common = dict(length=length, samples=params.generate.samples, sampler=params.generate.sampler.value,
                      inference_steps=params.generate.inference_steps, seed=seed, guidance=params.generate.guidance)
        own = generator.generate(built.vectors[i], stats, **common)
        wrong = generator.generate(built.vectors[other], stats, **common)
        head = corpus[originals[task]["best_index"]]
        lora_mask = layout.lora_mask()
        scores = {}

        def score(name: str, vectors: torch.Tensor, on_eval: bool = True) -> np.ndarray:
            """`select` mean and best of `vectors`; the best one's `eval` score where the row reports it."""
            preds = np.stack([predictions(scorer, v, select) for v in vectors])
            values = [headline(task, compute_metrics(task, p, labels)) for p in preds]
            best = int(np.argmax(values))
            scores[name] = {"select_mean": float(np.mean(values)), "select_best": values[best],
                            "eval_of_best": scorer.headline(vectors[best], evaluation) if on_eval else float("nan")}
            return preds

        score("own", own)
        score("wrong", wrong, on_eval=False)
        splice_own = score("splice_own", splice(own, head, lora_mask), on_eval=False)
        splice_wrong = score("splice_wrong", splice(wrong, head, lora_mask), on_eval=False)
        diff, low, high = paired_bootstrap(task, splice_own, splice_wrong, labels, rounds, params.seed)
        if cond_only:
            centre = generator.condition_mean(built.vectors[i])[:length]
        elif generator.normalizer.method is Norm.task:
            centre = corpus.mean(dim=0)
        else:
            centre = None
        if centre is not None and not light:
            score("trivial", generator.no_diffusion(built.vectors[i], stats, length, params.generate.samples, seed))
            score("mean", centre[None])
        if baselines:
            score("head_only", head_only(params, scorer, train[task], init)[None])
            score("base", base_vector(head, lora_mask)[None])
        if held_out is not None:
            texts = held_out_texts(params.conditions, entries[task], task, held_out[task], train[task], params.seed)
            values = []
            for text, condition in zip(texts, encoder.encode(texts)):
                vectors = generator.generate(condition, stats, **{**common, "samples": reworded_samples})
                values.append({"text": text, "select_mean": float(np.mean([scorer.headline(v, select) for v in vectors]))})
            scores["reworded"] = {"select_mean": float(np.mean([v["select_mean"] for v in values])),
                                  "select_best": float(max(v["select_mean"] for v in values)),
                                  "eval_of_best": float("nan"), "each": values}
        # the autoencoder alone: decode the latents of `scored` of the checkpoints collect scored, undone with
        # the statistics the autoencoder's input was normalized with (under cond: the task's own mean)
        steps = {step: k for k, step in enumerate(corpus_steps)}
        collect_scores = [(steps[int(step)], value) for step, value in originals[task]["scored"].items()]
        chosen = [collect_scores[k] for k in spaced_indices(scored, len(collect_scores))]
        picked = [index for index, _ in chosen]
        rows = (task_index == i).nonzero()[:, 0][picked]
        decoded = generator.autoencoder.decode(latents[rows])
        reconstructed = generator.normalizer.inverse(decoded, torch.full((len(rows),), i))[:, :length]
        if not light:
            score("reconstructed", reconstructed, on_eval=False)
            values = [value for _, value in chosen]  # collect's scores of the same checkpoints
            scores["original_scored"] = {"select_mean": float(np.mean(values)), "select_best": float(max(values)),
                                         "eval_of_best": float("nan")}
        other_soups = [soups[j, :length] for j in range(len(tasks)) if j != i]
        results[task] = {
            "scores": scores,
            "splice_bootstrap": {"own_minus_wrong": diff, "low": low, "high": high},
            "distance": {
                "corpus_nearest_neighbour_median": nearest_distances(corpus, corpus, exclude_self=True).median().item(),
                "own_to_corpus_median": nearest_distances(own, corpus).median().item(),
                "own_to_own_soup_median": (own - soups[i, :length]).norm(dim=1).median().item(),
                "own_to_nearest_other_soup_median": torch.stack(
                    [(own - s).norm(dim=1) for s in other_soups]).min(dim=0).values.median().item(),
                "reconstruction_error_median": (reconstructed - corpus[picked]).norm(dim=1).median().item(),
                "soup_to_nearest_other_soup": min((soups[i, :length] - s).norm().item() for s in other_soups),
            },
            "condition_sensitivity": condition_sensitivity(generator, latents[task_index == i][:16],
                                                           built.vectors[i], built.vectors[other], seed),
            "final_step_noise": final_step_noise(generator, latents[task_index == i][:8], built.vectors[i], stats,
                                                 length, seed),
        }
        if cond_only:
            results[task]["distance"]["condition_mean_to_soup"] = (centre - soups[i, :length]).norm().item()
        log(task, {k: round(v["select_mean"], 2) for k, v in scores.items()},
            f"splice own-wrong {diff:.2f} [{low:.2f}, {high:.2f}]")
    return {"tasks": results, "average": average(results, tasks)}


def average(results: dict, tasks: list[str]) -> dict[str, float]:
    """Six-task averages of every score, and how many tasks the splice interval puts above zero."""
    names = set.intersection(*(set(results[t]["scores"]) for t in tasks))
    summary = {f"{name}_{key}": float(np.mean([results[t]["scores"][name][key] for t in tasks]))
               for name in sorted(names) for key in ("select_mean", "select_best", "eval_of_best")}
    summary = {k: v for k, v in summary.items() if not math.isnan(v)}
    if "reworded" in names:
        summary["reworded_minus_own_select_mean"] = summary["reworded_select_mean"] - summary["own_select_mean"]
    summary["own_minus_wrong_select_mean"] = summary["own_select_mean"] - summary["wrong_select_mean"]
    summary["splice_tasks_own_above_wrong"] = sum(results[t]["splice_bootstrap"]["low"] > 0 for t in tasks)
    return summary


COLUMNS = (  # (column, key in `average`): the study table
    ("own select mean", "own_select_mean"), ("own select best", "own_select_best"),
    ("own eval (best on select)", "own_eval_of_best"), ("wrong select mean", "wrong_select_mean"),
    ("own - wrong", "own_minus_wrong_select_mean"), ("splice own", "splice_own_select_mean"),
    ("splice wrong", "splice_wrong_select_mean"), ("splice tasks own > wrong (95%)", "splice_tasks_own_above_wrong"),
    ("trivial select best", "trivial_select_best"), ("trivial eval", "trivial_eval_of_best"),
    ("mean-only eval", "mean_eval_of_best"), ("reworded select mean", "reworded_select_mean"),
    ("reworded - own", "reworded_minus_own_select_mean"), ("reconstructed select mean", "reconstructed_select_mean"),
    ("originals select mean", "original_scored_select_mean"),
)


def row_setup(flat: dict) -> str:
    """What the row's generator was, read from the params it recorded (the defaults changed over time)."""
    bare, noise = flat.get("conditions.bare_draws", 0), flat.get("mean_predictor.condition_noise", 0.0)
    extras = (f" ({bare} bare)" if bare else "") + (f", condition noise {noise}" if noise else "")
    return (f"norm={flat['norm']}, {flat['conditions.wordings']}x{flat['conditions.draws']} conditions{extras}, "
            f"{flat['diffusion.prediction']}, {flat['diffusion.conditioning']}")


def row_corpus(flat: dict) -> str:
    """Which corpus the row was measured on: fine-tuned with length-grouped batches (`collect.length_groups`,
    from ec2aa51 on) or with plain shuffled batches (the rows before it record no such key)."""
    groups = flat.get("collect.length_groups", 1)
    return f"length-grouped ({groups})" if groups > 1 else "plain batches"


def study_rows(folder: Path) -> dict[str, dict]:
    """The study rows among the JSON files of `folder` ({name: row}): loto.json and describe's output
    share the folder, and only a study row records both per-task scores and its params."""
    return {path.stem: row for path in sorted(Path(folder).glob("*.json"))
            if {"tasks", "params"} <= set(row := json.loads(path.read_text()))}


def render_study_table(rows: dict[str, dict]) -> str:
    """Markdown: one line per study row (six-task averages, x100), then the per-task diagnostics."""
    lines = ["| row | generator | overrides | corpus | minutes | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|---|---|---|---|---|" + "---|" * len(COLUMNS)]
    for name, row in rows.items():
        cells = [f"{row['average'][key]:.2f}" if key in row["average"] else "n/a" for _, key in COLUMNS]
        lines.append(f"| {name} | {row_setup(row['params'])} | {' '.join(row['overrides']) or 'none'} | "
                     f"{row_corpus(row['params'])} | {row['seconds'] / 60:.1f} | " + " | ".join(cells) + " |")
    for name, row in rows.items():
        lines += ["", f"### {name}: diagnostics per task", "",
                  "| task | corpus NN | own->corpus | own->own soup | own->nearest other soup | soup->nearest other soup "
                  "| AE reconstruction L2 | x0 gap t=999 / 500 / 50 | last-step noise L2 (t=1 / 10) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for task, result in row["tasks"].items():
            d, gap, noise = result["distance"], result["condition_sensitivity"], result["final_step_noise"]
            gaps = " / ".join(f"{gap[t]:.3f}" for t in ("999", "500", "50") if t in gap)
            lines.append(f"| {task} | {d['corpus_nearest_neighbour_median']:.4f} | {d['own_to_corpus_median']:.4f} | "
                         f"{d['own_to_own_soup_median']:.4f} | {d['own_to_nearest_other_soup_median']:.3f} | "
                         f"{d['soup_to_nearest_other_soup']:.3f} | {d['reconstruction_error_median']:.4f} | {gaps} | "
                         f"{noise.get('1', float('nan')):.4f} / {noise.get('10', float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


def run_fold(params: Params, tasks: list[str], held_out: str, prepared: Path, corpus_dir: Path, log=print) -> dict:
    """Leave-one-task-out: train a condition-only generator on every task but `held_out`, then generate
    for `held_out` from its condition alone (none of its checkpoints or statistics reach training).

    Rows (best of K on `select`, its `eval`): generated; its no-diffusion analogue (the predicted mean
    plus the pooled std times N(0, I), same K) and the predicted mean alone; the baselines a task without
    a corpus could use: the mean of the other tasks' soups, the soup of the task whose condition is nearest by cosine,
    a mix of the soups weighted by clipped cosine similarity (the head of each only from tasks whose head
    has this task's shape; when the nearest task's head has another shape, the mean of the same-shape
    tasks' heads); and, as references that read the task's
    own data, the head trained alone (LoRA off), the best original's head with its LoRA zeroed (base) and
    the task's best original (the upper bound).
    A held-out task whose head has another shape than every training task's (STS-B: one output) keeps
    the generated LoRA with the head-only head, and the table says so.
    """
    if params.norm is not Norm.cond:
        raise ValueError(f"leave-one-task-out needs the condition-only generator (norm=cond), not norm={params.norm.value}")
    if held_out not in tasks:
        raise ValueError(f"held-out task {held_out!r} is not in {tasks}")
    seen = [t for t in tasks if t != held_out]
    layouts, padded_length, num_labels = read_layouts(corpus_dir / LAYOUTS)
    stacked, task_index = stack_corpus(corpus_dir, seen, padded_length)
    train = {t: read_jsonl(split_file(prepared / t, "train")) for t in tasks}
    built = build_conditions(params.conditions, params.base, seen, train, params.seed)
    target = build_conditions(params.conditions, params.base, [held_out], train, params.seed).vectors[0]
    generator = train_generator(params, stacked, task_index, built.bank, learned_condition=False)
    layout, length = layouts[held_out], layouts[held_out].length
    same_head = [t for t in seen if num_labels[t] == num_labels[held_out]]
    select, evaluation = (read_jsonl(split_file(prepared / held_out, s)) for s in ("select", "eval"))
    scorer = task_scorer(params.base, params.lora, held_out, params.evaluate.batch_size, params.seed,
                         tokenizer=load_tokenizer(params.base), layout=layout)
    init = flatten_model(scorer.model, layout)
    head = head_only(params, scorer, train[held_out], init)
    lora_mask = layout.lora_mask()
    if not lora_mask[:int(lora_mask.sum())].all():
        raise ValueError(f"{held_out}: the layout does not hold its LoRA entries first; cannot move a LoRA across heads")

    def fit(vectors: torch.Tensor) -> torch.Tensor:
        """Vectors of the training tasks' shared length -> this task's layout (head-only head if no match)."""
        vectors = vectors[:, :length] if same_head else vectors[:, :int(lora_mask.sum())]
        if same_head:
            return vectors
        return splice(torch.nn.functional.pad(vectors, (0, length - vectors.shape[1])), head, lora_mask)

    soups = torch.stack([stacked[task_index == i].mean(dim=0) for i in range(len(seen))])
    similarity = built.vectors @ target

    def mix(weights: torch.Tensor) -> torch.Tensor:
        """A weighted mean of the seen tasks' soups: LoRA from all of them, the head only from tasks with
        this task's head shape (a head of another shape, zero-padded, would be read as garbage)."""
        lora = (weights[:, None] * soups).sum(dim=0) / weights.sum()
        if not same_head:
            return lora[None]
        heads = torch.tensor([num_labels[t] == num_labels[held_out] for t in seen], dtype=torch.float32) * weights
        if heads.sum() == 0:  # no weight on a same-head task: its heads at equal weight
            heads = torch.tensor([num_labels[t] == num_labels[held_out] for t in seen], dtype=torch.float32)
        head_mix = (heads[:, None] * soups).sum(dim=0) / heads.sum()
        return torch.where(pad_to(lora_mask, padded_length), lora, head_mix)[None]

    nearest = torch.zeros(len(seen))
    nearest[similarity.argmax()] = 1.0
    clipped = similarity.clamp(min=0)
    corpus, _ = load_task_corpus(task_corpus_file(corpus_dir, held_out))
    originals = json.loads((corpus_dir / ORIGINALS).read_text())
    seed = generation_seed(params.seed, tasks.index(held_out))
    centre = generator.condition_mean(target)
    original = corpus[originals[held_out]["best_index"]]
    candidates = {
        "generated": fit(generator.generate(target, None, padded_length, params.generate.samples,
                                            params.generate.sampler.value, params.generate.inference_steps,
                                            seed=seed, guidance=params.generate.guidance)),
        "no_diffusion": fit(generator.no_diffusion(target, None, padded_length, params.generate.samples, seed)),
        "condition_mean": fit(centre[None]),
        "mean_of_soups": fit(mix(torch.ones(len(seen)))),
        "nearest_soup": fit(mix(nearest)),
        "weighted_soups": fit(mix(clipped if clipped.sum() > 0 else torch.ones(len(seen)))),
        "head_only": head[None],
        "base": base_vector(original, lora_mask)[None],
        "original": original[None],
    }
    scores = {}
    for name, vectors in candidates.items():
        best, metrics = scorer.best_on_select(vectors, select)
        values = [headline(held_out, m) for m in metrics]
        scores[name] = {"select_best": values[best], "select_mean": float(np.mean(values)),
                        "eval_of_best": scorer.headline(vectors[best], evaluation)}
    log(held_out, {k: round(v["eval_of_best"], 2) for k, v in scores.items()})
    return {"held_out": held_out, "scores": scores, "head": "generated" if same_head else "head-only (no training "
            f"task has num_labels={num_labels[held_out]})", "nearest_task": seen[int(similarity.argmax())],
            "similarity": dict(zip(seen, similarity.tolist())),
            "generated_to_own_soup": (candidates["generated"] - corpus.mean(dim=0)).norm(dim=1).median().item()}


LOTO_ROWS = ("generated", "no_diffusion", "condition_mean", "mean_of_soups", "nearest_soup", "weighted_soups",
             "head_only", "base", "original")


def render_loto_table(folds: list[dict]) -> str:
    """Markdown: `eval` of the best-on-`select` candidate per fold (x100), and `select` best beside it."""
    header = "| held-out task | head | nearest task (condition cosine) | " + " | ".join(LOTO_ROWS) + " |"
    lines = ["## eval (best of K on select)", "", header, "|---|---|---|" + "---|" * len(LOTO_ROWS)]
    for fold in folds:
        lines.append(f"| {fold['held_out']} | {fold['head']} | {fold['nearest_task']} | "
                     + " | ".join(f"{fold['scores'][r]['eval_of_best']:.2f}" for r in LOTO_ROWS) + " |")
    lines.append("| average | | | " + " | ".join(
        f"{np.mean([f['scores'][r]['eval_of_best'] for f in folds]):.2f}" for r in LOTO_ROWS) + " |")
    lines += ["", "## select best", "", header, "|---|---|---|" + "---|" * len(LOTO_ROWS)]
    for fold in folds:
        lines.append(f"| {fold['held_out']} | {fold['head']} | {fold['nearest_task']} | "
                     + " | ".join(f"{fold['scores'][r]['select_best']:.2f}" for r in LOTO_ROWS) + " |")
    lines.append("| average | | | " + " | ".join(
        f"{np.mean([f['scores'][r]['select_best'] for f in folds]):.2f}" for r in LOTO_ROWS) + " |")
    return "\n".join(lines) + "\n"
