"""The Table 2 analogue (KID / FID per style and row), its summary, and the interpolation strip."""
from __future__ import annotations

import torch

from condpdiff.config import ImageScoreConfig

ROWS = ("original", "soup", "no_lora", "no_diffusion", "generated", "wrong_style")
ROW_NAMES = {"original": "original (best kept checkpoint on select)", "soup": "model soup (mean of the corpus)",
             "no_lora": "no LoRA (base model)", "no_diffusion": "no diffusion (condition mean + std * N(0, I))",
             "generated": "Cond P-Diff (own exemplars)", "wrong_style": "Cond P-Diff (another style's exemplars)"}
INTERPOLATION = (0.0, 0.25, 0.5, 0.75, 1.0)


def summarize(results: dict) -> dict:
    """Averages over styles per row, and the acceptance checks as numbers."""
    styles = list(results)
    average = {row: sum(results[s]["rows"][row]["kid"] for s in styles) / len(styles) for row in ROWS}
    original_std = sum(results[s]["rows"]["original"]["kid_std"] for s in styles) / len(styles)
    summary = {f"kid_{row}": value for row, value in average.items()}
    summary.update({f"fid_{row}": sum(results[s]["rows"][row]["fid"] for s in styles) / len(styles) for row in ROWS})
    summary["kid_original_std"] = original_std
    summary["generated_within_original_2std"] = float(average["generated"] <= average["original"] + 2 * original_std)
    summary["generated_below_half_no_lora"] = float(average["generated"] <= 0.5 * average["no_lora"])
    summary["own_beats_wrong_styles"] = float(sum(
        results[s]["rows"]["wrong_style"]["kid"] > results[s]["rows"]["generated"]["kid"] for s in styles))
    summary["styles"] = len(styles)
    return summary


def render_table2(results: dict, score: ImageScoreConfig, eval_images: int) -> tuple[str, dict]:
    """Markdown: KID x 100 (+- std over subsets) and FID per style and row; the image counts behind them."""
    summary = summarize(results)
    styles = list(results)
    lines = ["# Vision: style LoRAs generated from a style image (Table 2 analogue)", "",
             f"KID x 100 (mean +- std over {score.kid_subsets} subsets of {score.kid_subset_size}) and FID, each "
             f"from {score.images} generated images against the style's {eval_images} `eval` images (Inception "
             f"pool3 through clean-fid's clean resize). Best-of-K rows were picked on `select` "
             f"({score.select_images} images per candidate). FID at these counts is biased upwards (the "
             "covariance of 2048 features from ~100 images is singular): KID is the measure, FID is beside it.", "",
             "| row | " + " | ".join(styles) + " | average |", "|---|" + "---|" * (len(styles) + 1)]
    for row in ROWS:
        cells = [f"{100 * results[s]['rows'][row]['kid']:.2f} +- {100 * results[s]['rows'][row]['kid_std']:.2f} "
                 f"/ {results[s]['rows'][row]['fid']:.1f}" for s in styles]
        lines.append(f"| {ROW_NAMES[row]} | " + " | ".join(cells) +
                     f" | {100 * summary[f'kid_{row}']:.2f} / {summary[f'fid_{row}']:.1f} |")
    lines += ["", "Cells: KID x 100 +- std / FID. The wrong-style row uses the exemplars of: " +
              ", ".join(f"{s} <- {results[s]['wrong_condition_from']}" for s in styles) + ".", "",
              f"- generated KID within the original's KID + 2 std (averages): "
              f"{'yes' if summary['generated_within_original_2std'] else 'no'}",
              f"- generated KID <= 0.5 x no-LoRA KID (averages): "
              f"{'yes' if summary['generated_below_half_no_lora'] else 'no'}",
              f"- own exemplars beat another style's on {int(summary['own_beats_wrong_styles'])} of {len(styles)} "
              "styles", ""]
    return "\n".join(lines), summary


def interpolation_strip(scorer, chosen_a: torch.Tensor, chosen_b: torch.Tensor, seed: int,
                        images: int = 10) -> list[torch.Tensor]:
    """Rows of images from (1 - l) A + l B for l in INTERPOLATION, the same noise in every row."""
    return [scorer.images((1 - weight) * chosen_a + weight * chosen_b, images, seed) for weight in INTERPOLATION]
