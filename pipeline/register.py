"""Stage register: log the generator as an MLflow model, register a version, point @candidate at it."""
import argparse
import json
import os
from pathlib import Path

from safetensors import safe_open

from condpdiff.config import load_params, params_hash
from condpdiff.registry import MODEL_NAME, register_generator
from condpdiff.tracking import git_commit, stage_run

parser = argparse.ArgumentParser()
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--corpus", type=Path, required=True)
parser.add_argument("--normalized", type=Path, required=True)
parser.add_argument("--autoencoder", type=Path, required=True)
parser.add_argument("--conditions", type=Path, required=True)
parser.add_argument("--diffusion", type=Path, required=True)
parser.add_argument("--metrics", type=Path, required=True)
parser.add_argument("--report", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
params = load_params(args.params)

with stage_run("register", params, ("generate",)) as run:
    metrics = json.loads(args.metrics.read_text())
    with safe_open(str(args.conditions / "conditions.safetensors"), "pt") as handle:
        encoder = handle.metadata()["encoder"]
    outputs = {"autoencoder": args.autoencoder / "model.pt", "diffusion": args.diffusion / "model.pt",
               "stats": args.normalized / "stats.safetensors", "conditions": args.conditions / "conditions.safetensors",
               "layout": args.corpus / "layout.json"}
    tags = {"git_commit": git_commit(), "dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
            "pipeline_id": params_hash(params), "norm": params.norm.value,
            "condition_type": params.conditions.type.value, "eval_table": args.report.read_text()[:4900]}
    version = register_generator(params, outputs, encoder, metrics, tags)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": MODEL_NAME, "version": version, "run_id": run.info.run_id}, indent=1))
    print(f"registered {MODEL_NAME} version {version} (@candidate)")
