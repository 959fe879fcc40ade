"""`python -m condpdiff ...`: generate adapters from a registered generator; promote a version."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from condpdiff.bundle import BundleError, Request
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
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (BundleError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
