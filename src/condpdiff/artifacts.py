"""The file names of every stage output, declared once.

`dvc.yaml` names each stage's output folder; the names of the files inside those folders live
here, so a stage that writes a file and the stages, the bundle and the benchmark that read it
cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

# prepare (one folder per task): outputs/prepared/<task>/ holds `split_file`s and
SIZES = "sizes.json"  # the size of each split
# collect (one folder per task): outputs/collect/<task>/
CHECKPOINTS = "checkpoints.safetensors"  # the kept last-N flat vectors and their steps
TASK_LAYOUT = "layout.json"  # this task's layout and num_labels
ORIGINAL = "original.json"  # the best kept checkpoint on `select`
# gather: outputs/corpus/
LAYOUTS = "layout.json"  # every task's layout, the common padded length, num_labels
ORIGINALS = "originals.json"
# normalize / autoencoder / conditions / diffusion
STATS = "stats.safetensors"
NORMALIZED = "corpus.safetensors"
MODEL = "model.pt"
LATENTS = "latents.safetensors"
SUMMARY = "summary.json"
CONDITIONS = "conditions.safetensors"
CONDITION_TEXTS = "conditions.json"
# generate / evaluate
VECTORS = "vectors.safetensors"
MANIFEST = "manifest.json"
SCORES = "scores.json"


def split_file(task_folder: Path, split: str) -> Path:
    """One split (train | select | eval) of a task, as JSON lines, in its prepared folder."""
    return Path(task_folder) / f"{split}.jsonl"


def task_corpus_file(corpus: Path, task: str) -> Path:
    """A task's checkpoints in the gathered corpus folder."""
    return Path(corpus) / f"{task}.safetensors"


@dataclass(frozen=True)
class GeneratorFiles:
    """Everything generation reads: the trained parts and what they were trained on."""

    autoencoder: Path
    diffusion: Path
    stats: Path
    conditions: Path
    layout: Path

    @classmethod
    def from_outputs(cls, corpus: Path, normalized: Path, autoencoder: Path, conditions: Path,
                     diffusion: Path) -> "GeneratorFiles":
        """The files in the pipeline's stage output folders."""
        return cls(Path(autoencoder) / MODEL, Path(diffusion) / MODEL, Path(normalized) / STATS,
                   Path(conditions) / CONDITIONS, Path(corpus) / LAYOUTS)

    @classmethod
    def in_bundle(cls, folder: Path) -> "GeneratorFiles":
        """The same files copied into one registry bundle folder."""
        folder = Path(folder)
        return cls(folder / "autoencoder.pt", folder / "diffusion.pt", folder / "stats.safetensors",
                   folder / "conditions.safetensors", folder / "layout.json")

    def items(self) -> list[tuple[str, Path]]:
        return [(field.name, getattr(self, field.name)) for field in fields(self)]

    def missing(self) -> list[Path]:
        return [path for _, path in self.items() if not path.is_file()]
