"""Stage base: the base text-to-image model (PixArt's transformer, pixel space) trained on plain
Fashion-MNIST, and the classifier that checks its samples show the class their caption names."""
import argparse
import json
from pathlib import Path

import mlflow
import torch

from condpdiff.config import load_params
from condpdiff.tracking import metric_logger, stage_run
from condpdiff.vision.backbone import base_captions, sample_images, save_base, train_base
from condpdiff.vision.classifier import accuracy, recognition, train_classifier
from condpdiff.vision.data import load_split
from condpdiff.vision.imagesets import save_grid, to_model_range


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--grid", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    data, base = params.vision.data, params.vision.base
    with stage_run("base", params):
        train, train_labels = load_split(Path(data.folder), "train")
        test, test_labels = load_split(Path(data.folder), "test")
        images, labels = to_model_range(train), torch.from_numpy(train_labels)
        classifier = train_classifier(images, labels, base.classifier_steps, params.seed)
        real_accuracy = accuracy(classifier, to_model_range(test), torch.from_numpy(test_labels))
        captions = base_captions(base)
        backbone = train_base(base, captions, images[:data.base_images], labels[:data.base_images], params.seed,
                              on_step=metric_logger("base_"))
        asked = torch.arange(base.check_images) % len(captions.states)  # every class equally often
        samples = sample_images(backbone, captions, asked, base.sampler, base.sample_steps, base.guidance, params.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        save_base(args.out, backbone, captions, classifier, base.pretrained)
        save_grid([samples[asked == c][:12] for c in range(len(captions.states))], args.grid)
        metrics = {**recognition(classifier, samples, asked, len(captions.states)),
                   "classifier_accuracy_real_test": real_accuracy, "samples_checked": base.check_images}
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(metrics, indent=1))
        mlflow.log_metrics({"recognised": metrics["recognised"], "classifier_accuracy_real_test": real_accuracy})
        mlflow.log_artifact(str(args.grid))
        print(metrics)


if __name__ == "__main__":
    main()
