"""Optuna glue: the LoRA hyperparameter search (`tune`) and the paper's ablation grids (`ablate`).

Every trial is an MLflow run nested under the study's run; a failing trial is FAILED in both
Optuna and MLflow and the study goes on. Storage: SQLite under mlruns/ by default (created
once, before workers start), or any RDB URL shared by workers on many machines (PostgreSQL:
README, Running as a team). A running trial beats a heartbeat; a trial whose worker died
(SIGKILL, a lost machine) is FAILED by the next worker that starts a trial after the grace
period, and its parameters are tried once more.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna

from condpdiff.ablation import Variant, parse_layers, run_row
from condpdiff.artifacts import LAYOUTS, split_file, task_corpus_file
from condpdiff.config import GRACE_HEARTBEATS, HEARTBEAT_SECONDS, SEARCH_RANKS, TASKS, Params
from condpdiff.corpus import load_task_corpus
from condpdiff.finetune import finetune_and_collect
from condpdiff.evaluation import task_scorer
from condpdiff.glue import read_jsonl
from condpdiff.lora import flatten_model, load_tokenizer
from condpdiff.report import AblationRow, write_ablation_tables
from condpdiff.tracking import PROCESS_TAG, fail_abandoned_runs, process_identity, repo_root, setup_experiment

ALPHAS = [1, 2, 4, 8, 16, 32]
ABLATION_TASKS = ["sst2", "stsb", "mrpc"]


class TuneError(ValueError):
    pass


def default_storage() -> str:
    store = repo_root() / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'optuna.db'}"


def rdb_storage(url: str, heartbeat: int = HEARTBEAT_SECONDS) -> optuna.storages.RDBStorage:
    """`url` with heartbeats: a dead worker's trial becomes FAIL and is retried once with the same parameters."""
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=heartbeat * GRACE_HEARTBEATS,
                                      heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))


def open_study(name: str, storage: str, direction: str, sampler=None, pruner=None,
               heartbeat: int = HEARTBEAT_SECONDS) -> optuna.Study:
    """Create the study once or join it; a study of that name with another direction is an error."""
    try:
        study = optuna.create_study(study_name=name, storage=rdb_storage(storage, heartbeat), direction=direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    except Exception as error:  # unreachable or invalid storage: say which
        raise TuneError(f"cannot open Optuna storage {storage!r}: {error}") from None
    if study.direction.name.lower() != direction:
        raise TuneError(f"study {name!r} exists with direction {study.direction.name.lower()}, not {direction}")
    return study


def _study_run(study: optuna.Study, kind: str) -> str:
    """The MLflow run all trials nest under: made by whoever opens the study first."""
    run_id = study.user_attrs.get("mlflow_run_id")
    if run_id is None:
        experiment_id = setup_experiment()
        with mlflow.start_run(run_name=f"{kind}:{study.study_name}", experiment_id=experiment_id,
                              tags={"stage": kind, "optuna_study": study.study_name}) as run:
            run_id = run.info.run_id
        study.set_user_attr("mlflow_run_id", run_id)
    return run_id


def _trial_run(study: optuna.Study, trial: optuna.Trial, parent: str):
    return mlflow.start_run(run_name=f"trial-{trial.number}", experiment_id=setup_experiment(), parent_run_id=parent,
                            tags={"optuna_study": study.study_name, "optuna_trial": str(trial.number),
                                  PROCESS_TAG: process_identity()})


def lora_objective(params: Params, prepared: Path, tasks: list[str], steps: int, study: optuna.Study, parent: str,
                   ranks: Sequence[int] = SEARCH_RANKS):
    """Mean `select` headline of the fine-tuned adapters (never `eval`), pruned on intermediate scores."""
    tokenizer = load_tokenizer(params.base)
    data = {t: {s: read_jsonl(split_file(prepared / t, s)) for s in ("train", "select")} for t in tasks}

    def objective(trial: optuna.Trial) -> float:
        r = trial.suggest_categorical("lora.r", ranks)
        alpha = trial.suggest_categorical("lora.alpha", ALPHAS)
        lr = trial.suggest_float("collect.lr_lora", 1e-4, 1e-2, log=True)
        lora = replace(params.lora, r=r, alpha=alpha)
        collect = replace(params.collect, steps=steps, lr_lora=lr, keep_last=1,
                          warmup_steps=min(params.collect.warmup_steps, steps // 4))
        # on_step fires every 10 steps: report at the nearest multiple of 10 to each quarter
        checkpoints = {max(10, round(steps * k / 40) * 10) for k in (1, 2, 3)} - {steps}
        with _trial_run(study, trial, parent):
            mlflow.log_params({"lora.r": r, "lora.alpha": alpha, "collect.lr_lora": lr, "steps": steps})
            finals = []
            for position, task in enumerate(tasks):
                scorer = task_scorer(params.base, lora, task, params.collect.eval_batch_size, params.seed,
                                     tokenizer=tokenizer)

                def select_score() -> float:
                    value = scorer.headline(flatten_model(scorer.model, scorer.layout), data[task]["select"])
                    scorer.model.train()
                    return value

                def on_step(step: int, metrics: dict) -> None:
                    if step in checkpoints:
                        # the running mean over finished tasks and this one's current score
                        value = (sum(finals) + select_score()) / (len(finals) + 1)
                        trial.report(value, position * steps + step)
                        mlflow.log_metric("select_running_mean", value, step=position * steps + step)
                        if trial.should_prune():
                            raise optuna.TrialPruned()

                finetune_and_collect(scorer.model, tokenizer, task, data[task]["train"], collect, scorer.layout,
                                     params.base.max_length, params.seed, on_step=on_step)
                finals.append(select_score())
                mlflow.log_metric(f"select_{task}", finals[-1])
            value = sum(finals) / len(finals)
            mlflow.log_metric("select_mean", value)
            return value

    return objective


def run_tune(params: Params, prepared: Path, tasks: list[str], trials: int, steps: int, storage: str | None,
             study_name: str, out: Path, ranks: Sequence[int] = SEARCH_RANKS,
             heartbeat: int = HEARTBEAT_SECONDS) -> str | None:
    """`ranks` narrows the rank choices (every worker of a study must pass the same ones): the generator's
    cost grows with the LoRA vector, so r=16 makes the applied `dvc exp run` far slower on CPU."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise TuneError(f"unknown task(s) {unknown}")
    if not ranks or any(r not in SEARCH_RANKS for r in ranks):
        raise TuneError(f"ranks must be a non-empty subset of {list(SEARCH_RANKS)}, got {ranks}")
    if heartbeat < 1:
        raise TuneError(f"heartbeat must be at least 1 second, got {heartbeat}")
    missing = [t for t in tasks if not split_file(prepared / t, "select").is_file()]
    if missing:
        raise TuneError(f"no prepared splits for {missing} in {prepared}: run `dvc repro prepare`")
    study = open_study(study_name, storage or default_storage(), "maximize",
                       pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=steps // 2),
                       heartbeat=heartbeat)
    parent = _study_run(study, "tune")
    fail_abandoned_runs(mlflow.MlflowClient(), setup_experiment())  # trial runs of workers killed on this host
    if trials > 0:
        study.optimize(lora_objective(params, prepared, tasks, steps, study, parent, ranks), n_trials=trials,
                       catch=(Exception,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    best = study.best_trial
    line = "dvc exp run " + " ".join(f"-S {k}={v}" for k, v in best.params.items())
    text = (f"best trial {best.number}: select mean {best.value:.2f} with {best.params}\n"
            f"apply it with:\n{line}\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


ABLATIONS = ("n", "norm", "condition", "layers")


def ablation_grid(name: str, n_grid: list[int], layer_grid: list[str]) -> list:
    if name not in ABLATIONS:
        raise TuneError(f"unknown ablation {name!r}: one of {list(ABLATIONS)}")
    grid = {"n": n_grid, "norm": ["none", "batch", "task"],
            "condition": ["onehot", "learned", "text", "text_fewshot"], "layers": layer_grid}[name]
    if not grid:
        raise TuneError(f"the {name} grid is empty")
    return list(grid)


def check_ablation_inputs(name: str, grid: list, corpus: Path, tasks: list[str]) -> None:
    """Bad input is an error before any row trains: a missing corpus or task, n beyond the kept, bad layers."""
    if not (corpus / LAYOUTS).is_file():
        raise TuneError(f"no corpus at {corpus}: run `dvc repro gather` first")
    missing = [t for t in tasks if not task_corpus_file(corpus, t).is_file()]
    if missing:
        raise TuneError(f"tasks {missing} are not in the corpus at {corpus}")
    if name == "n":
        kept = min(len(load_task_corpus(task_corpus_file(corpus, t))[1]) for t in tasks)
        beyond = [n for n in grid if not 1 <= n <= kept]
        if beyond:
            raise TuneError(f"n grid values {beyond} are outside 1..{kept}, the checkpoints the corpus at {corpus} keeps")
    if name == "layers":
        for text in grid:
            parse_layers(text)


def run_ablation(name: str, params: Params, grid: list, prepared: Path, corpus: Path, storage: str | None,
                 out_dir: Path, tasks: list[str] = ABLATION_TASKS, cache: Path | None = None) -> Path:
    """Each grid value is one Optuna trial (GridSampler); writes reports/ablation_<name>.md and .csv.
    With a `cache` folder, a row already computed with identical inputs (by any grid) is reused."""
    check_ablation_inputs(name, grid, corpus, tasks)
    study = open_study(f"ablation-{name}-{int(time.time())}", storage or default_storage(), "maximize",
                       sampler=optuna.samplers.GridSampler({name: grid}, seed=params.seed))
    parent = _study_run(study, f"ablate-{name}")

    def objective(trial: optuna.Trial) -> float:
        value = trial.suggest_categorical(name, grid)
        with _trial_run(study, trial, parent):
            mlflow.log_param(name, value)
            results, seconds, cached = run_row(params, Variant(**{name: value}), tasks, prepared, corpus, cache)
            for task, scores in results.items():
                mlflow.log_metrics({f"{task}_{k}": v for k, v in scores.items()})
                trial.set_user_attr(task, scores)
            trial.set_user_attr("seconds", seconds)
            trial.set_user_attr("cached", cached)
            mlflow.log_metric("seconds", seconds)
            mlflow.set_tag("cached", str(cached).lower())
            return sum(s["select_best"] for s in results.values()) / len(results)

    study.optimize(objective, n_trials=len(grid), catch=(Exception,))
    return write_ablation_report(name, study, tasks, out_dir)


def write_ablation_report(name: str, study: optuna.Study, tasks: list[str], out_dir: Path) -> Path:
    """The study's trials as table rows, in the grid's order (1, 25, 50, 100), not the trials' order."""

    def order(trial: optuna.trial.FrozenTrial):
        grid, value = trial.system_attrs.get("search_space", {}).get(name, []), trial.params.get(name)
        return (grid.index(value) if value in grid else len(grid), str(value))

    rows = [AblationRow(trial.params.get(name, "?"), trial.state.name, trial.user_attrs.get("seconds", 0.0),
                        bool(trial.user_attrs.get("cached")), {t: trial.user_attrs.get(t, {}) for t in tasks})
            for trial in sorted(study.trials, key=order)]
    return write_ablation_tables(name, rows, tasks, out_dir)
