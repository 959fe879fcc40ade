"""Stage collect (one per style): LoRA-fine-tune the base model on the style's images, keep the last
`keep_last` checkpoints (one every `stride` steps) as flat vectors, and score a spaced subset of them
on `select` (KID): the best is the style's original."""
import argparse
import json
from pathlib import Path

import mlflow
import torch
from safetensors.torch import load_file

from condpdiff.artifacts import CHECKPOINTS, ORIGINAL, TASK_LAYOUT
from condpdiff.config import load_params
from condpdiff.conditions import hash_seed
from condpdiff.corpus import save_task_corpus, spaced_indices
from condpdiff.lora import flatten_model, save_layouts
from condpdiff.tracking import metric_logger, stage_run
from condpdiff.vision.backbone import load_base, train_style_lora
from condpdiff.vision.imagesets import load_style_set, style_set_file
from condpdiff.vision.scoring import StyleScorer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--style", required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--styles", type=Path, required=True)
    parser.add_argument("--references", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    v, recipe = params.vision, params.vision.collect
    with stage_run("collect", params, task=args.style):
        images = load_style_set(style_set_file(args.styles, args.style))
        select = load_file(str(style_set_file(args.references, args.style)))["select"].numpy()
        backbone, captions, _ = load_base(args.base)
        scorer = StyleScorer(backbone, captions, v.base, v.lora, v.score)
        kept_steps = [recipe.steps - recipe.stride * i for i in reversed(range(recipe.keep_last))]
        kept = []
        seed = hash_seed(params.seed, args.style)

        def keep(step: int) -> None:
            if step in kept_steps:
                kept.append(flatten_model(backbone.transformer, scorer.layout))

        train_style_lora(backbone, captions, images, recipe, v.base.caption_dropout, seed, on_step=metric_logger(),
                         on_checkpoint=keep)
        scored = spaced_indices(recipe.originals_scored, len(kept))
        best, kids = scorer.best_of([kept[i] for i in scored], select, seed)
        args.out.mkdir(parents=True, exist_ok=True)
        save_task_corpus(args.out / CHECKPOINTS, torch.stack(kept), kept_steps)
        save_layouts(args.out / TASK_LAYOUT, {args.style: scorer.layout}, scorer.layout.length, {args.style: 0})
        original = {"best_index": scored[best], "best_step": kept_steps[scored[best]], "best_select_kid": kids[best],
                    "scored": {kept_steps[i]: k for i, k in zip(scored, kids)},
                    "select_images": v.score.select_images}
        (args.out / ORIGINAL).write_text(json.dumps(original, indent=1))
        mlflow.log_metrics({"best_select_kid": kids[best]})
        print(args.style, "best original on select: KID", round(kids[best], 4), "at step", original["best_step"])


if __name__ == "__main__":
    main()
