"""The paper's analysis figures for one pipeline run, each a PNG with the CSV behind it.

1. `similarity`: each adapter's L2 distance to the nearest corpus checkpoint against its `select`
   score: the generated samples, the scored originals (distance to the nearest *other* checkpoint)
   and the no-diffusion analogue (paper Fig. 3f).
2. `embedding`: originals, generated samples and the no-diffusion analogue of each task in 2-D:
   t-SNE, or PCA where a task has too few points for t-SNE; the `method` column says which (Fig. 3e).
3. `trajectory`: the latents of a few samples at ~10 steps of the sampler, decoded to weights,
   projected (PCA) with the task's originals and soup, and scored on `select` (Fig. 4b).
4. `interpolation`: the `select` score of (1-l)A + lB for the two best generated adapters of a task,
   and for the task's best generated adapter with another task's generated LoRA mixed in (the
   target task keeps its own head: heads of different tasks cannot be mixed) (Fig. 4a).

Every score is on `select`; `eval` is never read. Library code: `python -m condpdiff figures` runs it
and logs the files to MLflow.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open

from condpdiff.artifacts import LAYOUTS, ORIGINALS, VECTORS, GeneratorFiles, split_file, task_corpus_file
from condpdiff.config import Params
from condpdiff.corpus import load_task_corpus, spaced_indices
from condpdiff.evaluation import Scorer, nearest_distances, task_scorer
from condpdiff.generator import Generator, generation_seed, load_generator
from condpdiff.glue import Example, read_jsonl
from condpdiff.lora import load_tokenizer, read_layouts
from condpdiff.tracking import newest_finished_run

FIGURES = ("similarity", "embedding", "trajectory", "interpolation")
MIN_TSNE_POINTS = 30  # below this t-SNE's neighbourhoods are meaningless: PCA instead


def write_csv(rows: list[dict], path: Path) -> None:
    """Rows with the same keys -> one CSV with a header (an empty list is an error: a figure without data)."""
    if not rows:
        raise ValueError(f"no rows for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def similarity_rows(task: str, corpus: torch.Tensor, steps: list[int], scored: dict[str, float],
                    generated: torch.Tensor, generated_values: list[float], trivial: torch.Tensor,
                    trivial_values: list[float]) -> list[dict]:
    """One row per adapter: kind (original | generated | no_diffusion), its index (the checkpoint's step for
    originals), L2 to the nearest corpus checkpoint (originals: the nearest other one) and its `select` score."""
    rows = []
    others = nearest_distances(corpus, corpus, exclude_self=True)
    position = {step: i for i, step in enumerate(steps)}
    for step, value in sorted(scored.items(), key=lambda item: int(item[0])):
        rows.append({"task": task, "kind": "original", "index": int(step),
                     "distance": others[position[int(step)]].item(), "select": value})
    for kind, vectors, values in (("generated", generated, generated_values),
                                  ("no_diffusion", trivial, trivial_values)):
        if len(values) != len(vectors):
            raise ValueError(f"{task}: {len(vectors)} {kind} vectors but {len(values)} select scores")
        for k, (distance, value) in enumerate(zip(nearest_distances(vectors, corpus).tolist(), values)):
            rows.append({"task": task, "kind": kind, "index": k, "distance": distance, "select": value})
    return rows


def project(points: torch.Tensor, seed: int) -> tuple[np.ndarray, str]:
    """(n, L) -> (n, 2) and the method: t-SNE from a PCA start with >= MIN_TSNE_POINTS points, else PCA."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    data = points.double().numpy()
    if len(data) < MIN_TSNE_POINTS:
        return PCA(n_components=2, random_state=seed).fit_transform(data), "pca"
    reduced = PCA(n_components=min(50, *data.shape), random_state=seed).fit_transform(data)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (len(data) - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(reduced), "tsne"


def embedding_rows(task: str, groups: dict[str, torch.Tensor], seed: int) -> list[dict]:
    """Every vector of `groups` (kind -> (n, L)) in one 2-D map of the task."""
    kinds = [kind for kind, vectors in groups.items() for _ in range(len(vectors))]
    index = [k for vectors in groups.values() for k in range(len(vectors))]
    xy, method = project(torch.cat(list(groups.values())), seed)
    return [{"task": task, "kind": kind, "index": k, "method": method, "x": float(x), "y": float(y)}
            for kind, k, (x, y) in zip(kinds, index, xy)]


def trajectory_steps(timesteps: list[int], count: int) -> list[int]:
    """`count` of the sampler's timesteps, evenly spaced, the last (the finished sample) always among them."""
    return [timesteps[i] for i in spaced_indices(count, len(timesteps))]


@torch.inference_mode()
def trajectory_rows(task: str, generator: Generator, condition: torch.Tensor, stats_index: int | None, length: int,
                    corpus: torch.Tensor, score: Callable[[torch.Tensor], float], batch: int, samples: int,
                    points: int, sampler: str, inference_steps: int, seed: int,
                    guidance: float = 1.0) -> tuple[list[dict], list[dict], torch.Tensor]:
    """The sampling run of a whole batch of `batch` samples from the task's condition (with the generate stage's
    batch, seed and sampler it is the stage's own run, so each path ends on a stage adapter); the first
    `samples` paths are decoded to weights at `points` of the sampler's steps and scored.

    Returns (path rows, context rows, the finished vectors (batch, L)). A path row: the sample, its position
    (0 = first kept step), the timestep its step started from, L2 to the soup and to the nearest checkpoint,
    the score and a PCA position fitted on the originals, the soup and every path point. A context row: an
    original or the soup at its PCA position and its L2 to the soup."""
    from diffusers import DDIMScheduler, DDPMScheduler
    from sklearn.decomposition import PCA

    if not 1 <= samples <= batch:
        raise ValueError(f"{task}: trajectories of {samples} samples from a batch of {batch}")
    scheduler = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(generator.scheduler_config)
    scheduler.set_timesteps(inference_steps)
    keep = trajectory_steps([int(t) for t in scheduler.timesteps], points)
    latents: dict[int, torch.Tensor] = {}

    def on_step(t: int, x: torch.Tensor) -> None:
        if t in keep:
            latents[t] = x[:samples].clone()

    finished = generator.generate(condition, stats_index, length, batch, sampler, inference_steps, seed, guidance,
                                  on_step)
    soup = corpus.mean(dim=0)
    weights = torch.stack([generator.to_weights(latents[t], condition, stats_index, length) for t in keep], dim=1)
    flat = weights.reshape(-1, length)  # (samples * points, L), sample-major
    context = torch.cat([corpus, soup[None]])
    pca = PCA(n_components=2, random_state=seed).fit(torch.cat([context, flat]).double().numpy())
    context_rows = [{"task": task, "kind": kind, "to_soup": (vector - soup).norm().item(), "x": float(x), "y": float(y)}
                    for kind, vector, (x, y) in zip(["original"] * len(corpus) + ["soup"], context,
                                                   pca.transform(context.double().numpy()))]
    nearest = nearest_distances(flat, corpus)
    positions = pca.transform(flat.double().numpy())
    rows = []
    for row, vector in enumerate(flat):
        sample, position = divmod(row, len(keep))
        rows.append({"task": task, "sample": sample, "position": position, "timestep": keep[position],
                     "to_soup": (vector - soup).norm().item(), "to_corpus": nearest[row].item(),
                     "select": score(vector), "x": float(positions[row, 0]), "y": float(positions[row, 1])})
    return rows, context_rows, finished


def mix_lora(target: torch.Tensor, other: torch.Tensor, weight: float, lora_mask: torch.Tensor) -> torch.Tensor:
    """`target`'s vector with its LoRA entries moved `weight` of the way to `other`'s; the head stays the
    target's. The LoRA entries come first in every task's layout, so they line up across tasks."""
    count = int(lora_mask.sum())
    if not lora_mask[:count].all() or len(other) < count:
        raise ValueError("the layout does not hold its LoRA entries first; cannot mix LoRAs across tasks")
    mixed = target.clone()
    mixed[:count] = (1 - weight) * target[:count] + weight * other[:count]
    return mixed


def interpolation_rows(task: str, generated: torch.Tensor, values: list[float], partner: str,
                       partner_best: torch.Tensor, lora_mask: torch.Tensor, score: Callable[[torch.Tensor], float],
                       points: int) -> list[dict]:
    """The two best generated adapters of `task` on `select` (A, B): (1-l)A + lB; and A's LoRA moved toward
    `partner`'s best generated LoRA, A's head kept. l on `points` evenly spaced values in [0, 1]."""
    order = sorted(range(len(values)), key=lambda k: -values[k])
    if len(order) < 2:
        raise ValueError(f"{task}: interpolation needs two generated adapters, got {len(order)}")
    a, b = generated[order[0]], generated[order[1]]
    rows = []
    for weight in np.linspace(0.0, 1.0, points).tolist():
        rows.append({"task": task, "pair": "two generated", "partner": f"{task} #{order[1]}", "l": weight,
                     "select": score((1 - weight) * a + weight * b)})
        rows.append({"task": task, "pair": "LoRA of another task", "partner": partner, "l": weight,
                     "select": score(mix_lora(a, partner_best, weight, lora_mask))})
    return rows


def select_score(scorer: Scorer, select: list[Example]) -> Callable[[torch.Tensor], float]:
    return lambda vector: scorer.headline(vector, select)




def _grid(count: int, rows: int = 1, width: float = 3.6, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    columns = min(3, count) if rows == 1 else count
    lines = math.ceil(count / columns) if rows == 1 else rows
    figure, axes = plt.subplots(lines, columns, figsize=(width * columns, height * lines), squeeze=False)
    return plt, figure, axes


def _save(plt, figure, axes, used: int, path: Path) -> None:
    """Hide the grid's panels past the first `used`, write the PNG and free the figure."""
    for axis in list(axes.flat)[used:]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _tasks(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["task"] for row in rows))


STYLE = {"original": dict(color="tab:blue", marker="o", s=14), "generated": dict(color="tab:red", marker="^", s=22),
         "no_diffusion": dict(color="tab:gray", marker="x", s=18), "soup": dict(color="black", marker="*", s=90)}


def plot_similarity(rows: list[dict], path: Path) -> None:
    tasks = _tasks(rows)
    plt, figure, axes = _grid(len(tasks))
    for axis, task in zip(axes.flat, tasks):
        for kind in ("original", "no_diffusion", "generated"):
            points = [r for r in rows if r["task"] == task and r["kind"] == kind]
            axis.scatter([float(r["distance"]) for r in points], [float(r["select"]) for r in points],
                         label=kind.replace("_", "-"), **STYLE[kind])
        axis.set_xscale("log")
        axis.set(title=task, xlabel="L2 to nearest corpus checkpoint", ylabel="select score")
    axes.flat[0].legend(fontsize=7)
    _save(plt, figure, axes, len(tasks), path)


def plot_embedding(rows: list[dict], path: Path) -> None:
    tasks = _tasks(rows)
    plt, figure, axes = _grid(len(tasks))
    for axis, task in zip(axes.flat, tasks):
        mine = [r for r in rows if r["task"] == task]
        for kind in ("original", "no_diffusion", "generated"):
            points = [r for r in mine if r["kind"] == kind]
            axis.scatter([float(r["x"]) for r in points], [float(r["y"]) for r in points],
                         label=kind.replace("_", "-"), **STYLE[kind])
        axis.set(title=f"{task} ({mine[0]['method']})", xticks=[], yticks=[])
    axes.flat[0].legend(fontsize=7)
    _save(plt, figure, axes, len(tasks), path)


def plot_trajectory(rows: list[dict], context: list[dict], path: Path) -> None:
    tasks = _tasks(rows)
    plt, figure, axes = _grid(len(tasks), rows=2)
    for column, task in enumerate(tasks):
        mine = [r for r in rows if r["task"] == task]
        top, bottom = axes[0, column], axes[1, column]
        for kind in ("original", "soup"):
            points = [r for r in context if r["task"] == task and r["kind"] == kind]
            top.scatter([float(r["x"]) for r in points], [float(r["y"]) for r in points], label=kind, **STYLE[kind])
        for sample in sorted({int(r["sample"]) for r in mine}):
            line = sorted((r for r in mine if int(r["sample"]) == sample), key=lambda r: int(r["position"]))
            xs, ys = [float(r["x"]) for r in line], [float(r["y"]) for r in line]
            top.plot(xs, ys, color="tab:red", alpha=0.6, marker=".")
            top.scatter(xs[-1:], ys[-1:], label="finished sample" if sample == 0 else None, **STYLE["generated"])
            bottom.plot([int(r["timestep"]) for r in line], [float(r["select"]) for r in line], marker="o",
                        label=f"sample {sample}")
        top.set(title=f"{task}: PCA", xticks=[], yticks=[])
        bottom.set(xlabel="timestep the step started from", ylabel="select score of the decoded latents")
        bottom.invert_xaxis()
        top.legend(fontsize=7)
    _save(plt, figure, axes, axes.size, path)


def plot_interpolation(rows: list[dict], path: Path) -> None:
    tasks = _tasks(rows)
    plt, figure, axes = _grid(len(tasks))
    for axis, task in zip(axes.flat, tasks):
        mine = [r for r in rows if r["task"] == task]
        for pair in dict.fromkeys(r["pair"] for r in mine):
            line = [r for r in mine if r["pair"] == pair]
            axis.plot([float(r["l"]) for r in line], [float(r["select"]) for r in line], marker="o",
                      label=f"{pair} ({line[0]['partner']})")
        axis.set(title=task, xlabel="l in (1-l)A + lB", ylabel="select score")
        axis.legend(fontsize=7)
    _save(plt, figure, axes, len(tasks), path)


LOSSES = {"autoencoder": ("ae_train_mse",), "diffusion": ("diffusion_train_loss",),
          "mean_predictor": ("mean_predictor_loss",)}


def export_losses(client, experiment_id: str, tasks: list[str], out: Path,
                  pipeline_id: str | None = None, log=print) -> list[Path]:
    """The training-loss series of the newest finished run of each training stage (collect: per task; runs of
    `pipeline_id` first) as `<out>/<series>.csv` (run_id, step, the loss: last, where `dvc plots` looks).
    A stage without a run is skipped; a series from a run of another configuration is named in the log
    (a stage this configuration did not re-run, or one whose recipe changed and was not re-run here)."""

    def newest(stage: str, **tags: str):
        return newest_finished_run(client, experiment_id, stage, pipeline_id, **tags)

    series = [(f"collect_{task}", newest("collect", task=task), "train_loss") for task in tasks]
    series += [(name, newest("diffusion" if name == "mean_predictor" else name), key) for name, (key,) in LOSSES.items()]
    written = []
    for name, run, key in series:
        if run is None:
            continue
        if pipeline_id and run.data.tags.get("pipeline_id") != pipeline_id:
            log(f"losses: {name} comes from run {run.info.run_id}, of another configuration than this one")
        history = client.get_metric_history(run.info.run_id, key)
        if not history:
            continue
        rows = [{"run_id": run.info.run_id, "step": m.step, key: m.value} for m in sorted(history, key=lambda m: m.step)]
        write_csv(rows, out / f"{name}.csv")
        written.append(out / f"{name}.csv")
    return written


def build_figures(params: Params, tasks: list[str], prepared: Path, corpus_dir: Path, generated_dir: Path,
                  scores: dict, files: GeneratorFiles, out: Path, samples: int = 2, points: int = 10,
                  mix_points: int = 5, log=print) -> list[Path]:
    """The four figures of one run (a PNG and the CSV behind it each; the trajectory's originals and soup in
    `trajectory_context.csv`) in `out`, from the pipeline's outputs: the corpus, the generated vectors,
    evaluate's per-sample `select` scores (`scores`) and the generator (`files`). Returns the files written.
    The trajectories rerun the generate stage's sampling (its sampler, K and seed) and follow `samples` of them."""
    missing = [task for task in tasks if "generated_values" not in scores.get(task, {}).get("select", {})]
    if missing:
        raise ValueError(f"evaluate's scores hold no per-sample select scores for {missing}: re-run `dvc repro evaluate`")
    layouts, _, _ = read_layouts(corpus_dir / LAYOUTS)
    originals = json.loads((corpus_dir / ORIGINALS).read_text())
    generator = load_generator(files)
    with safe_open(str(files.conditions), "pt") as handle:
        conditions = handle.get_tensor("conditions")
    tokenizer = load_tokenizer(params.base)
    vectors = {}
    for task in tasks:
        with safe_open(str(generated_dir / task / VECTORS), "pt") as handle:
            vectors[task] = {name: handle.get_tensor(name) for name in ("generated", "no_diffusion")}
    cfg = params.generate
    rows: dict[str, list[dict]] = {name: [] for name in (*FIGURES, "trajectory_context")}
    for task in tasks:
        position = params.data.tasks.index(task)
        corpus, steps = load_task_corpus(task_corpus_file(corpus_dir, task))
        select = read_jsonl(split_file(prepared / task, "select"))
        scorer = task_scorer(params.base, params.lora, task, params.evaluate.batch_size, params.seed,
                             tokenizer=tokenizer, layout=layouts[task])
        score = select_score(scorer, select)
        generated, trivial = vectors[task]["generated"], vectors[task]["no_diffusion"]
        values = scores[task]["select"]
        rows["similarity"] += similarity_rows(task, corpus, steps, originals[task]["scored"], generated,
                                              values["generated_values"], trivial, values["no_diffusion_values"])
        rows["embedding"] += embedding_rows(task, {"original": corpus, "generated": generated,
                                                   "no_diffusion": trivial}, params.seed)
        log(f"{task}: trajectories of {samples} of the stage's {cfg.samples} samples, {points} points each")
        path, context, finished = trajectory_rows(
            task, generator, conditions[position], position, layouts[task].length, corpus, score, len(generated),
            samples, points, cfg.sampler.value, cfg.inference_steps, generation_seed(params.seed, position), cfg.guidance)
        if not torch.allclose(finished, generated, atol=1e-6):
            log(f"{task}: the rerun does not end on the stage's adapters (generate params changed since the stage?)")
        rows["trajectory"] += path
        rows["trajectory_context"] += context
        partners = [t for t in tasks if t != task]
        if not partners:
            continue
        partner = partners[tasks.index(task) % len(partners)]  # the next task in `tasks`, as generate's wrong condition
        if layouts[partner].names[:len(lora_names(layouts[task]))] != lora_names(layouts[task]):
            raise ValueError(f"{task} and {partner} hold different LoRA entries; their LoRAs cannot be mixed")
        partner_best = vectors[partner]["generated"][int(np.argmax(scores[partner]["select"]["generated_values"]))]
        log(f"{task}: interpolation ({mix_points} points, partner {partner})")
        rows["interpolation"] += interpolation_rows(task, generated, values["generated_values"], partner,
                                                    partner_best, layouts[task].lora_mask(), score, mix_points)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in rows.items():
        if table:
            write_csv(table, out / f"{name}.csv")
            written.append(out / f"{name}.csv")
    tables = {name: read_csv(out / f"{name}.csv") for name in rows if rows[name]}
    plot_similarity(tables["similarity"], out / "similarity.png")
    plot_embedding(tables["embedding"], out / "embedding.png")
    plot_trajectory(tables["trajectory"], tables["trajectory_context"], out / "trajectory.png")
    if "interpolation" in tables:
        plot_interpolation(tables["interpolation"], out / "interpolation.png")
    return written + [out / f"{name}.png" for name in FIGURES if name in tables]


def lora_names(layout) -> list[str]:
    """The layout's LoRA entry names, in order."""
    return [name for name in layout.names if layout.is_lora(name)]
