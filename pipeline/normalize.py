"""Stage normalize: stack every task's corpus (a style's, in the vision branch) at the common length and fit
`norm` (cond | task | batch | none)."""
import argparse
from pathlib import Path

import mlflow
from safetensors.torch import save_file

from condpdiff.artifacts import LAYOUTS, NORMALIZED, STATS
from condpdiff.config import load_params
from condpdiff.corpus import stack_corpus
from condpdiff.lora import read_layouts
from condpdiff.normalize import fit_normalizer
from condpdiff.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    with stage_run("normalize", params):
        tasks = params.groups
        _, padded_length, _ = read_layouts(args.corpus / LAYOUTS)
        corpus, task_index = stack_corpus(args.corpus, tasks, padded_length)  # (T * N, L), (T * N,)
        normalizer = fit_normalizer(params.norm, corpus, task_index, len(tasks))
        normalized = normalizer.transform(corpus, task_index)
        error = (normalizer.inverse(normalized, task_index) - corpus).abs().max().item()
        args.out.mkdir(parents=True, exist_ok=True)
        normalizer.save(args.out / STATS)
        save_file({"corpus": normalized.contiguous(), "task_index": task_index}, str(args.out / NORMALIZED),
                  metadata={"tasks": ",".join(tasks)})
        mlflow.log_metrics({"inverse_max_abs_error": error, "normalized_std": normalized.std().item()})
        print(f"norm={params.norm.value}: {tuple(corpus.shape)} corpus, inverse error {error:.2e}")


if __name__ == "__main__":
    main()
