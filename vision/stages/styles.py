"""Stage styles: each style's train / select / eval images, how well a small classifier tells the styles
apart, and a grid of every style."""
import argparse
import json
from pathlib import Path

import mlflow

from condpdiff.config import load_params
from condpdiff.tracking import stage_run
from condpdiff.vision.imagesets import build_style_sets, save_grid, save_style_set, style_set_file
from condpdiff.vision.styles import style_separability


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    data = params.vision.data
    with stage_run("styles", params):
        sizes = {"train": data.style_train, "select": data.style_select, "eval": data.style_eval}
        sets = build_style_sets(Path(data.folder), data.styles, data.base_images, sizes, params.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        for style, tensors in sets.items():
            save_style_set(style_set_file(args.out, style), tensors)
        separability = style_separability(
            {style: ((tensors["train"][:, 0] + 1) / 2).numpy() for style, tensors in sets.items()}, params.seed)
        save_grid([tensors["eval"][:12] for tensors in sets.values()], args.grid)
        summary = {"styles": data.styles, "images_per_style": sizes, "style_separability": separability}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        mlflow.log_metrics({"style_separability": separability})
        mlflow.log_artifact(str(args.grid))
        print(summary)


if __name__ == "__main__":
    main()
