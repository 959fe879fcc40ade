"""Stage references: Inception features of every style's select and eval images, computed once (the
Inception costs ~0.1-0.25 s an image on 2 cores) for collect and evaluate."""
import argparse
from pathlib import Path

from safetensors.torch import save_file

from condpdiff.config import load_params
from condpdiff.tracking import stage_run
from condpdiff.vision.features import InceptionFeatures
from condpdiff.vision.imagesets import load_style_set, style_set_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--styles", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    with stage_run("references", params):
        inception = InceptionFeatures()
        args.out.mkdir(parents=True, exist_ok=True)
        for style in params.groups:
            images = load_style_set(style_set_file(args.styles, style))
            save_file({split: inception(images[split]).contiguous() for split in ("select", "eval")},
                      str(style_set_file(args.out, style)))
            print(style, "select", len(images["select"]), "eval", len(images["eval"]))


if __name__ == "__main__":
    main()
