"""Flat vectors, adapters and the merged weight, on the real MiniLM base."""
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from condpdiff.lora import (build_peft_model, flatten_model, flatten_state, load_base_model, load_vector,
                            merged_weight, model_layout, unflatten_vector, write_adapter)
from conftest import TINY_PARAMS

BASE, LORA = TINY_PARAMS.base, TINY_PARAMS.lora


@pytest.fixture(scope="module")
def model():
    return build_peft_model(BASE, LORA, num_labels=2, seed=0)


def test_lora_targets_attention_not_feed_forward(model):
    layout = model_layout(model)
    lora_names = [n for n in layout.names if ".lora_A." in n]
    assert len(lora_names) == 6 * 4  # 6 layers x (query, key, value, attention output dense)
    assert not any("intermediate" in n or (".output.dense" in n and "attention" not in n) for n in lora_names)
    assert layout.length == 24 * 2 * 384 + 2 * 384 + 2


def test_flatten_unflatten_is_bit_exact(model):
    layout = model_layout(model)
    vector = torch.randn(layout.length)
    state = unflatten_vector(vector, layout)
    assert torch.equal(flatten_state(state, layout), vector)
    padded = torch.cat([vector, torch.zeros(7)])
    assert torch.equal(flatten_state(unflatten_vector(padded, layout), layout), vector)


def test_nan_vector_is_refused(model):
    layout = model_layout(model)
    vector = torch.zeros(layout.length)
    vector[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        load_vector(model, vector, layout)


def test_merged_weight_from_flat_vector(model):
    layout = model_layout(model)
    vector = torch.randn(layout.length) * 0.1
    load_vector(model, vector, layout)
    name = "base_model.model.bert.encoder.layer.2.attention.self.value"
    state = unflatten_vector(vector, layout)
    a, b = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"]
    layer = model.get_submodule(name)
    expected = merged_weight(layer.base_layer.weight.detach(), a, b, LORA.alpha, LORA.r)
    x = torch.randn(3, 384)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ expected.T + layer.base_layer.bias, rtol=1e-5, atol=1e-5)
    copy = build_peft_model(BASE, LORA, num_labels=2, seed=0)
    load_vector(copy, vector, layout)
    merged = copy.merge_and_unload()
    torch.testing.assert_close(merged.get_submodule(name.removeprefix("base_model.model.")).weight, expected)


def test_written_adapter_loads_with_no_missing_or_unexpected_keys(model, tmp_path):
    layout = model_layout(model)
    vector = torch.randn(layout.length) * 0.05
    write_adapter(model, vector, layout, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 1 and config["lora_alpha"] == 8
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert len(saved) == len(layout.names)
    loaded = PeftModel.from_pretrained(load_base_model(BASE, 2, seed=123), str(tmp_path / "adapter"))
    # peft reports key mismatches of from_pretrained through load_adapter's result; re-load to read it
    result = loaded.load_adapter(str(tmp_path / "adapter"), adapter_name="check")
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    loaded.set_adapter("default")
    assert torch.equal(flatten_model(loaded, layout), vector)


def test_layer_mask_covers_the_chosen_layers_and_the_head():
    layout = model_layout(build_peft_model(TINY_PARAMS.base, TINY_PARAMS.lora, 2, seed=0))
    mask = layout.mask(range(0, 2), length=layout.length + 3)
    for name, shape, offset in zip(layout.names, layout.shapes, layout.offsets):
        expected = not layout.is_lora(name) or ".layer.0." in name or ".layer.1." in name
        assert bool(mask[offset]) == expected, name
    assert int(mask.sum()) == 2 * 4 * 2 * 384 + 2 * 384 + 2 and not mask[layout.length:].any()
    assert bool(layout.mask().all()) and layout.layer_indices() == set(range(6))
