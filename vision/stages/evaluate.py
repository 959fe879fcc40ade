"""Stage evaluate: the Table 2 analogue. Per style, KID and FID on `eval` of images drawn with
original / soup / no-LoRA / no-diffusion / generated / generated-from-another-style's-exemplars LoRAs;
best-of-K rows are picked on `select`. Grids per style and an interpolation strip go to reports/."""
import argparse
import json
from dataclasses import asdict
from pathlib import Path

import mlflow
import torch
from safetensors.torch import load_file, save_file

from condpdiff.artifacts import CONDITIONS, GeneratorFiles, ORIGINALS, VECTORS, task_corpus_file
from condpdiff.config import load_params
from condpdiff.corpus import load_task_corpus
from condpdiff.generator import generation_seed, load_generator
from condpdiff.tracking import stage_run
from condpdiff.vision.backbone import load_base
from condpdiff.vision.imagesets import load_style_set, save_grid, style_set_file
from condpdiff.vision.report import ROWS, interpolation_strip, render_table2
from condpdiff.vision.scoring import StyleScorer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    for name in ("base", "styles", "references", "corpus", "normalized", "autoencoder", "conditions", "diffusion",
                 "out", "reports"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    v, styles = params.vision, params.groups
    with stage_run("evaluate", params):
        generator = load_generator(GeneratorFiles.from_outputs(args.corpus, args.normalized, args.autoencoder,
                                                               args.conditions, args.diffusion))
        conditions = load_file(str(args.conditions / CONDITIONS))["generation"]  # (S, D)
        originals = json.loads((args.corpus / ORIGINALS).read_text())
        backbone, captions, _ = load_base(args.base)
        scorer = StyleScorer(backbone, captions, v.base, v.lora, v.score)
        length, g = scorer.layout.length, params.generate
        results, vectors, grids = {}, {}, {}
        for position, style in enumerate(styles):
            references = load_file(str(style_set_file(args.references, style)))
            select, evaluation = references["select"].numpy(), references["eval"].numpy()
            corpus, _ = load_task_corpus(task_corpus_file(args.corpus, style))
            seed = generation_seed(params.seed, position)
            other = (position + 1) % len(styles)  # the style whose exemplars make the wrong condition
            candidates = {
                "generated": generator.generate(conditions[position], None, length, g.samples, g.sampler.value,
                                                g.inference_steps, seed, g.guidance),
                "wrong_style": generator.generate(conditions[other], None, length, g.samples, g.sampler.value,
                                                  g.inference_steps, seed, g.guidance),
                "no_diffusion": generator.no_diffusion(conditions[position], None, length, g.samples, seed),
            }
            chosen = {"original": corpus[originals[style]["best_index"]], "soup": corpus.mean(0),
                      "no_lora": torch.zeros(length)}
            picks = {}
            for row, candidate in candidates.items():
                best, kids = scorer.best_of(candidate, select, seed)
                chosen[row], picks[row] = candidate[best], {"index": best, "select_kids": kids}
            style_rows, images = {}, [load_style_set(style_set_file(args.styles, style))["eval"][:10]]
            for row in ROWS:
                score, drawn = scorer.score(chosen[row], evaluation, v.score.images, seed + 1, with_fid=True)
                style_rows[row] = asdict(score)
                images.append(drawn[:10])
                vectors[f"{style}/{row}"] = chosen[row].contiguous()
            results[style] = {"rows": style_rows, "picks": picks, "wrong_condition_from": styles[other]}
            grids[style] = images
            print(style, {row: round(r["kid"], 4) for row, r in style_rows.items()})
        args.out.mkdir(parents=True, exist_ok=True)
        args.reports.mkdir(parents=True, exist_ok=True)
        save_file(vectors, str(args.out / VECTORS))
        for style, images in grids.items():
            save_grid(images, args.reports / f"grid_{style}.png")
        strip = interpolation_strip(scorer, chosen_a=vectors[f"{styles[0]}/generated"],
                                    chosen_b=vectors[f"{styles[1]}/generated"], seed=params.seed)
        save_grid(strip, args.reports / "interpolation.png")
        table, summary = render_table2(results, v.score, v.data.style_eval)
        (args.reports / "table2.md").write_text(table)
        (args.out / "scores.json").write_text(json.dumps(results, indent=1))
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(summary, indent=1))
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.log_artifacts(str(args.reports), "reports")
        print(table)


if __name__ == "__main__":
    main()
