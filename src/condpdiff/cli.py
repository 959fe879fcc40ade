"""`python -m condpdiff ...`: generate adapters from a registered generator; promote a version."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from condpdiff.bundle import BundleError, Request
from condpdiff.config import GRACE_HEARTBEATS, HEARTBEAT_SECONDS, SEARCH_RANKS
from condpdiff.tracking import tracking_uri


def _generate(args) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    model = mlflow.pyfunc.load_model(args.model).unwrap_python_model()
    request = Request(task=args.task, description=args.description, examples=args.example, num_labels=args.num_labels,
                      stats_task=args.stats_task, num_samples=args.samples, seed=args.seed, sampler=args.sampler,
                      steps=args.steps)
    for folder in model.bundle.write_adapters(request, Path(args.out)):
        print(folder)


def _promote(args) -> None:
    import mlflow

    from condpdiff.registry import promote

    mlflow.set_tracking_uri(tracking_uri())
    version = promote(args.version, args.margin, args.force, args.reason)
    print(f"@champion -> version {version}")


def _tune(args) -> None:
    from condpdiff.config import load_params
    from condpdiff.tune import run_tune

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    text = run_tune(params, Path(args.prepared), args.tasks, args.trials, args.steps or params.collect.steps,
                    args.storage, args.study, Path(args.out), args.ranks, args.heartbeat)
    print(text or "no completed trial yet")


def _ablate(args) -> None:
    from condpdiff.config import load_params
    from condpdiff.tune import ablation_grid, run_ablation

    params = load_params(args.params)
    keep = params.collect.keep_last
    n_grid = args.n_grid or sorted({1, keep // 4, keep // 2, keep} - {0})
    grid = ablation_grid(args.name, n_grid, args.layer_grid)
    path = run_ablation(args.name, params, grid, Path(args.prepared), Path(args.corpus), args.storage,
                        Path(args.out), args.tasks, None if args.no_cache else Path(args.cache))
    print(path.read_text())


def _study(args) -> None:
    import json
    import time

    import mlflow

    from condpdiff.config import flatten_dict, load_params, params_to_dict
    from condpdiff.study import render_study_table, run_study, study_rows
    from condpdiff.tracking import stage_run

    params = load_params(args.params, tuple(args.set))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with stage_run("study", params, row=args.name, overrides=" ".join(args.set)) as run:
        start = time.perf_counter()
        result = run_study(params, params.data.tasks if args.tasks is None else args.tasks, Path(args.prepared),
                           Path(args.corpus), scored=args.scored, baselines=args.baselines,
                           rewordings=Path(args.rewordings) if args.rewordings else None, light=args.light)
        result.update(seconds=time.perf_counter() - start, overrides=args.set, run_id=run.info.run_id,
                      params=flatten_dict(params_to_dict(params)))
        (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
        mlflow.log_metrics({k: float(v) for k, v in result["average"].items()})
        mlflow.log_artifact(str(out / f"{args.name}.json"))
    (out / "study.md").write_text(render_study_table(study_rows(out)))
    print((out / "study.md").read_text())


def registry_version(uri: str) -> str:
    """The registry version a model URI names: `models:/name@alias` (looked up), `models:/name/3`; any
    other URI (runs:/, a path) is not a registry version and says so."""
    if not uri.startswith("models:/"):
        return "not registered"
    name, _, alias = uri.removeprefix("models:/").partition("@")
    if alias:
        import mlflow

        return mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
    return name.rpartition("/")[2]


def _describe(args) -> None:
    import json

    import mlflow

    from condpdiff.config import load_params
    from condpdiff.freetext import read_free_conditions, render_free_table, score_free_conditions
    from condpdiff.registry import MODEL_NAME
    from condpdiff.tracking import stage_run

    params = load_params(args.params)
    conditions = read_free_conditions(Path(args.conditions))
    with stage_run("describe", params, model=args.model, conditions=args.conditions) as run:
        version = registry_version(args.model)
        bundle = mlflow.pyfunc.load_model(args.model).unwrap_python_model().bundle
        result = score_free_conditions(bundle, conditions, Path(args.prepared), args.samples, args.seed)
        result.update(model=args.model, version=version, samples=args.samples, seed=args.seed, run_id=run.info.run_id,
                      registered_model=MODEL_NAME)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render_free_table(result, args.conditions))
        mlflow.log_metrics(result["average"])
        mlflow.log_artifact(str(out.with_suffix(".md")))
        mlflow.log_artifact(str(out.with_suffix(".json")))
    print(out.with_suffix(".md").read_text())


def _probe(args) -> None:
    import json

    import mlflow

    from condpdiff.conditions import read_rewordings
    from condpdiff.config import flatten_dict, load_params, params_to_dict
    from condpdiff.freetext import read_free_conditions
    from condpdiff.probe import probe_rows, render_probe_table, run_probe
    from condpdiff.tracking import stage_run

    params = load_params(args.params, tuple(args.set))
    rewordings = read_rewordings(Path(args.rewordings)) if args.rewordings else None
    free = {Path(path).stem: read_free_conditions(Path(path)) for path in args.free}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with stage_run("probe", params, row=args.name, overrides=" ".join(args.set)) as run:
        sets = run_probe(params, params.data.tasks, Path(args.prepared), Path(args.corpus), rewordings, free)
        (out / f"{args.name}.json").write_text(json.dumps({"sets": sets, "overrides": args.set, "run_id": run.info.run_id,
                                                           "params": flatten_dict(params_to_dict(params))}, indent=1))
        mlflow.log_metrics({f"{name}_{key}": value[key] for name, value in sets.items()
                            for key in ("relative_mean", "relative_max", "nearest")})
    (out / "probe.md").write_text(render_probe_table(probe_rows(out)))
    print((out / "probe.md").read_text())


def _loto(args) -> None:
    import json

    import mlflow

    from condpdiff.study import render_loto_table, run_fold
    from condpdiff.tracking import stage_run

    from condpdiff.config import Norm, load_params

    params = load_params(args.params, tuple(args.set))
    if params.norm is not Norm.cond:
        raise ValueError(f"leave-one-task-out needs the condition-only generator: add -S norm=cond (got {params.norm.value})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = []
    for task in args.folds or params.data.tasks:
        with stage_run("loto", params, held_out=task, overrides=" ".join(args.set)):
            fold = run_fold(params, params.data.tasks, task, Path(args.prepared), Path(args.corpus))
            mlflow.log_metrics({f"{row}_{key}": value for row, values in fold["scores"].items()
                                for key, value in values.items()})
            folds.append(fold)
    (out / "loto.json").write_text(json.dumps({"overrides": args.set, "folds": folds}, indent=1))
    (out / "loto.md").write_text("# Leave-one-task-out\n\n" + render_loto_table(folds))
    print((out / "loto.md").read_text())


def _figures(args) -> None:
    import json
    import time

    import mlflow

    from condpdiff.artifacts import SCORES, GeneratorFiles
    from condpdiff.config import load_params, params_hash
    from condpdiff.figures import build_figures, export_losses
    from condpdiff.tracking import stage_run

    params = load_params(args.params)
    tasks = args.tasks or params.data.tasks
    unknown = sorted(set(tasks) - set(params.data.tasks))
    if unknown:
        raise ValueError(f"--tasks {unknown} are not in data.tasks {params.data.tasks}")
    for name, value, least in (("--samples", args.samples, 1), ("--points", args.points, 2),
                               ("--mix-points", args.mix_points, 2)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    scores_path = Path(args.evaluation) / SCORES
    if not scores_path.is_file():
        raise FileNotFoundError(f"{scores_path} is missing: run `dvc repro` (the evaluate stage) first")
    files = GeneratorFiles.from_outputs(Path(args.corpus), Path(args.normalized), Path(args.autoencoder),
                                        Path(args.conditions), Path(args.diffusion))
    out = Path(args.out)
    with stage_run("figures", params) as run:
        start = time.perf_counter()
        written = build_figures(params, tasks, Path(args.prepared), Path(args.corpus), Path(args.generated),
                                json.loads(scores_path.read_text()), files, out, args.samples, args.points,
                                args.mix_points)
        written += export_losses(mlflow.MlflowClient(), run.info.experiment_id, params.data.tasks, out / "losses",
                                 params_hash(params))
        mlflow.log_metric("seconds", time.perf_counter() - start)
        for path in written:  # only this run's files, not whatever else lies in the folder
            mlflow.log_artifact(str(path), artifact_path=path.parent.relative_to(out.parent).as_posix())
    for path in written:
        print(path)
    print(f"MLflow run {run.info.run_id}")


def _style_lora(args) -> None:
    from condpdiff.config import load_params
    from condpdiff.vision.generation import read_exemplars, write_style_adapters

    exemplars = read_exemplars(args.exemplars)  # checked before any model loads
    params = load_params(args.params)
    for folder in write_style_adapters(params, Path(args.outputs), exemplars, args.samples, args.seed, Path(args.out)):
        print(folder)


def _cleanup(args) -> None:
    import mlflow

    from condpdiff.tracking import fail_abandoned_runs, setup_experiment

    failed = fail_abandoned_runs(mlflow.MlflowClient(), setup_experiment(), args.older_than)
    print(f"marked FAILED: {', '.join(failed) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m condpdiff")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="write PEFT adapter folders for a condition")
    generate.add_argument("--model", default="models:/condpdiff-generator@champion")
    generate.add_argument("--task", help="a known task (sst2, cola, mrpc, rte, qnli, stsb)")
    generate.add_argument("--description", help="a free task description (a task with no corpus)")
    generate.add_argument("--example", action="append", help="an example for the description (repeatable)")
    generate.add_argument("--num-labels", type=int, default=2)
    generate.add_argument("--stats-task", help="norm=task: whose normalization statistics a description uses")
    generate.add_argument("--samples", type=int, default=1)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--sampler", choices=("ddpm", "ddim"))
    generate.add_argument("--steps", type=int)
    generate.add_argument("--out", required=True)
    generate.set_defaults(run=_generate)
    promote = commands.add_parser("promote", help="move @champion to a version that beats it on select")
    promote.add_argument("--version", help="default: the @candidate version")
    promote.add_argument("--margin", type=float, default=0.0, help="select points the candidate must gain")
    promote.add_argument("--force", action="store_true")
    promote.add_argument("--reason")
    promote.set_defaults(run=_promote)
    tune = commands.add_parser("tune", help="Optuna search over LoRA rank, alpha and learning rate")
    tune.add_argument("--params", default="params.yaml")
    tune.add_argument("--prepared", default="outputs/prepared")
    tune.add_argument("--tasks", nargs="+", default=["sst2", "stsb", "mrpc"])
    tune.add_argument("--trials", type=int, default=10, help="trials for this worker (0: only create the study)")
    tune.add_argument("--steps", type=int, help="fine-tuning steps a trial (default: collect.steps)")
    tune.add_argument("--ranks", type=int, nargs="+", default=SEARCH_RANKS, help="LoRA ranks to search")
    tune.add_argument("--storage", help="Optuna storage URL (default: sqlite under mlruns/); share it across workers")
    tune.add_argument("--study", default="lora-search")
    tune.add_argument("--out", default="reports/tune_best.txt")
    tune.add_argument("--threads", type=int, help="torch threads of this worker (workers sharing a machine: "
                                                   "cores / workers)")
    tune.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS,
                      help=f"seconds between a trial's heartbeats (default {HEARTBEAT_SECONDS}); a trial silent for "
                           f"{GRACE_HEARTBEATS} of them is FAILED and retried")
    tune.set_defaults(run=_tune)
    ablate = commands.add_parser("ablate", help="one of the paper's ablation grids, on the collected corpus")
    ablate.add_argument("name", help="n | norm | condition | layers")
    ablate.add_argument("--params", default="params.yaml")
    ablate.add_argument("--prepared", default="outputs/prepared")
    ablate.add_argument("--corpus", default="outputs/corpus")
    ablate.add_argument("--tasks", nargs="+", default=["sst2", "stsb", "mrpc"])
    ablate.add_argument("--n-grid", type=int, nargs="+", help="default: 1, N/4, N/2, N (N = collect.keep_last)")
    ablate.add_argument("--layer-grid", nargs="+", default=["0-1", "0-2", "0-4", "0-5"])
    ablate.add_argument("--storage")
    ablate.add_argument("--cache", default="outputs/ablation/cache",
                        help="rows and autoencoders shared by identical runs across grids")
    ablate.add_argument("--no-cache", action="store_true", help="compute every row afresh")
    ablate.add_argument("--out", default="reports")
    ablate.set_defaults(run=_ablate)
    study = commands.add_parser("study", help="does the condition carry the task? one generator variant, measured")
    study.add_argument("name", help="the row's name: reports/conditional/<name>.json")
    study.add_argument("-S", "--set", action="append", default=[], help="key=value over params.yaml (repeatable)")
    study.add_argument("--params", default="params.yaml")
    study.add_argument("--prepared", default="outputs/prepared")
    study.add_argument("--corpus", default="outputs/corpus")
    study.add_argument("--tasks", nargs="+", help="default: data.tasks")
    study.add_argument("--scored", type=int, default=3, help="corpus checkpoints reconstructed and scored per task")
    study.add_argument("--baselines", action="store_true", help="also the head-only and base rows")
    study.add_argument("--rewordings", help="held-out rewordings (data/task_rewordings.yaml): score them too")
    study.add_argument("--light", action="store_true",
                       help="only the rows the denoiser decides (own, wrong, splice): a generator-variant row")
    study.add_argument("--out", default="reports/conditional")
    study.set_defaults(run=_study)
    describe = commands.add_parser("describe", help="score conditions a user typed (a YAML per task) through a "
                                                    "registered generator, beside each task's own condition")
    describe.add_argument("conditions", help="YAML: {task: [{description, examples}, ...]}")
    describe.add_argument("--model", default="models:/condpdiff-generator@candidate")
    describe.add_argument("--params", default="params.yaml")
    describe.add_argument("--prepared", default="outputs/prepared")
    describe.add_argument("--samples", type=int, default=3, help="adapters per condition (K)")
    describe.add_argument("--seed", type=int, default=0)
    describe.add_argument("--out", default="reports/conditional/new_user", help="writes <out>.md and <out>.json")
    describe.set_defaults(run=_describe)
    probe = commands.add_parser("probe", help="where the mean predictor puts unseen wordings, in weight space "
                                              "(minutes; a proxy that picks which condition recipe to study)")
    probe.add_argument("name", help="the row's name: <out>/<name>.json")
    probe.add_argument("-S", "--set", action="append", default=[], help="key=value over params.yaml (repeatable)")
    probe.add_argument("--params", default="params.yaml")
    probe.add_argument("--prepared", default="outputs/prepared")
    probe.add_argument("--corpus", default="outputs/corpus")
    probe.add_argument("--rewordings", default="data/task_rewordings.yaml")
    probe.add_argument("--free", nargs="*", default=["data/new_user_conditions.yaml"],
                       help="free-condition YAMLs (describe's format); each is one set, named by its file")
    probe.add_argument("--out", default="reports/conditional/probe")
    probe.set_defaults(run=_probe)
    loto = commands.add_parser("loto", help="leave-one-task-out: generate for each task from a generator trained "
                                            "on the others (norm=cond)")
    loto.add_argument("-S", "--set", action="append", default=[], help="key=value over params.yaml (repeatable)")
    loto.add_argument("--params", default="params.yaml")
    loto.add_argument("--prepared", default="outputs/prepared")
    loto.add_argument("--corpus", default="outputs/corpus")
    loto.add_argument("--folds", nargs="+", help="the held-out tasks (default: data.tasks)")
    loto.add_argument("--out", default="reports/conditional")
    loto.set_defaults(run=_loto)
    figures = commands.add_parser("figures", help="the paper's analysis figures of the current run (PNG + CSV; "
                                                  "minutes, outside `dvc repro`)")
    figures.add_argument("--params", default="params.yaml")
    for name in ("prepared", "corpus", "generated", "evaluation", "normalized", "autoencoder", "conditions",
                 "diffusion"):
        figures.add_argument(f"--{name}", default=f"outputs/{name}")
    figures.add_argument("--tasks", nargs="+", help="the tasks drawn (default: data.tasks)")
    figures.add_argument("--samples", type=int, default=2, help="sampling trajectories per task (of the stage's K)")
    figures.add_argument("--points", type=int, default=10, help="decoded and scored steps per trajectory")
    figures.add_argument("--mix-points", type=int, default=5, help="values of l per interpolation line")
    figures.add_argument("--out", default="reports/figures")
    figures.set_defaults(run=_figures)
    style = commands.add_parser("style-lora", help="vision: PixArt style LoRAs generated from exemplar images of a "
                                                   "style (32x32 gray PNGs), by the vision pipeline's generator")
    style.add_argument("--exemplars", nargs="+", required=True)
    style.add_argument("--out", required=True)
    style.add_argument("--samples", type=int, default=1)
    style.add_argument("--seed", type=int, default=0)
    style.add_argument("--params", default="vision/params.yaml")
    style.add_argument("--outputs", default="outputs/vision", help="the vision pipeline's outputs folder")
    style.set_defaults(run=_style_lora)
    runs = commands.add_parser("runs", help="MLflow runs: `runs cleanup` ends runs whose process died as FAILED")
    runs_commands = runs.add_subparsers(dest="action", required=True)
    cleanup = runs_commands.add_parser("cleanup", help="RUNNING runs of a dead process on this host become FAILED")
    cleanup.add_argument("--older-than", type=float, metavar="HOURS",
                         help="also runs of other hosts RUNNING for longer than this (their process cannot be seen)")
    cleanup.set_defaults(run=_cleanup)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (BundleError, RuntimeError, ValueError, KeyError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
