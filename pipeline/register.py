"""Stage register: log the generator as an MLflow model, register a version, point @candidate at it.

The version is tagged with the sha256 of every generator file and every task's corpus file it was
built from: lineage from a registry version back to the exact corpus.
"""
import argparse
import json
import os
from pathlib import Path

from condpdiff.artifacts import CONDITION_TEXTS, GeneratorFiles, task_corpus_file
from condpdiff.config import load_params, params_hash
from condpdiff.registry import MODEL_NAME, lineage_tags, register_generator
from condpdiff.tracking import git_commit, stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("corpus", "normalized", "autoencoder", "conditions", "diffusion", "metrics", "report", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    with stage_run("register", params) as run:
        files = GeneratorFiles.from_outputs(args.corpus, args.normalized, args.autoencoder, args.conditions,
                                            args.diffusion)
        metrics = json.loads(args.metrics.read_text())
        encoder = json.loads((args.conditions / CONDITION_TEXTS).read_text())["encoder"]
        tags = {"git_commit": git_commit(), "dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
                "pipeline_id": params_hash(params), "norm": params.norm.value,
                "condition_type": params.conditions.type.value, "eval_table": args.report.read_text()[:4900],
                **lineage_tags(files, {t: task_corpus_file(args.corpus, t) for t in params.data.tasks})}
        version = register_generator(params, files, encoder, metrics, tags)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": MODEL_NAME, "version": version, "run_id": run.info.run_id},
                                       indent=1))
        print(f"registered {MODEL_NAME} version {version} (@candidate)")


if __name__ == "__main__":
    main()
