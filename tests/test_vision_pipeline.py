"""The vision branch end to end: `dvc repro vision/dvc.yaml` on profiles/vision-tiny.yaml in a fresh copy
of the repository leaves every declared output, a Table 2 with every row for every style, and finite
scores. Tiny sizes: it proves the wiring, not the results (the README's table has those)."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from condpdiff.vision.report import ROWS
from conftest import REPO, copy_repo

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))


@pytest.fixture(scope="module")
def vision_repo(tmp_path_factory, glue_dir) -> Path:
    repo = tmp_path_factory.mktemp("vision")
    copy_repo(repo, glue_dir)
    shutil.copytree(REPO / "data" / "fashion-mnist", repo / "data" / "fashion-mnist")
    shutil.copy(REPO / "profiles" / "vision-tiny.yaml", repo / "vision" / "params.yaml")
    (repo / "vision" / "dvc.lock").unlink(missing_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlruns.db'}"}
    result = subprocess.run([DVC, "repro", "vision/dvc.yaml"], cwd=repo, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo


def test_tiny_vision_repro_leaves_every_declared_output(vision_repo):
    stages = yaml.safe_load((REPO / "vision" / "dvc.yaml").read_text())["stages"]
    styles = yaml.safe_load((vision_repo / "vision" / "params.yaml").read_text())["vision"]["data"]["styles"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for entry in body.get("outs", []) + body.get("metrics", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            for item in (styles if "${item}" in path else [None]):
                assert (vision_repo / path.replace("${item}", item or "")).exists(), f"{name}: {path}"


def test_tiny_vision_table_has_every_row_and_finite_scores(vision_repo):
    scores = json.loads((vision_repo / "outputs" / "vision" / "evaluation" / "scores.json").read_text())
    assert list(scores) == ["sketch", "negative"]
    for style, result in scores.items():
        assert list(result["rows"]) == list(ROWS)
        for row in result["rows"].values():
            assert math.isfinite(row["kid"]) and math.isfinite(row["fid"]) and row["images"] == 4
    table = (vision_repo / "reports" / "vision" / "table2.md").read_text()
    assert "Cond P-Diff (another style's exemplars)" in table and "4 generated images" in table
    summary = json.loads((vision_repo / "metrics" / "vision_eval.json").read_text())
    assert summary["styles"] == 2 and 0 <= summary["own_beats_wrong_styles"] <= 2
    for image in ("styles.png", "base_samples.png", "grid_sketch.png", "interpolation.png"):
        assert (vision_repo / "reports" / "vision" / image).stat().st_size > 0
    base = json.loads((vision_repo / "metrics" / "vision_base.json").read_text())
    confusion = base["confusion_asked_by_labelled"]  # rows: the caption's class; columns: the classifier's label
    assert sum(map(sum, confusion)) == base["samples_checked"]
    assert sum(confusion[c][c] for c in range(10)) / base["samples_checked"] == pytest.approx(base["recognised"])


def test_style_lora_cli_writes_adapters_that_load_into_the_base_model(vision_repo, tmp_path):
    """Exemplar PNGs in, peft LoRA folders out; a colour or wrongly sized exemplar is named, nothing written."""
    import numpy as np
    import torch
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from PIL import Image
    from safetensors.torch import load_file

    from condpdiff.vision.backbone import load_base
    from condpdiff.vision.imagesets import load_style_set, style_set_file, to_uint8

    images = load_style_set(style_set_file(vision_repo / "outputs" / "vision" / "styles", "sketch"))["select"]
    paths = []
    for index, image in enumerate(images[:2]):
        paths.append(tmp_path / f"exemplar{index}.png")
        Image.fromarray(to_uint8(image[None])[0, :, :, 0], mode="L").save(paths[-1])
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    command = [sys.executable, "-m", "condpdiff", "style-lora", "--out", str(tmp_path / "adapters"), "--exemplars"]
    refused = subprocess.run(command + [str(paths[0]), str(tmp_path / "colour.png")], cwd=vision_repo,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "colour.png: 32x32 mode RGB" in refused.stderr
    assert not (tmp_path / "adapters").exists()
    written = subprocess.run(command + [str(p) for p in paths] + ["--samples", "2"], cwd=vision_repo,
                             capture_output=True, text=True)
    assert written.returncode == 0, written.stderr[-3000:]
    folders = written.stdout.split()
    assert len(folders) == 2
    backbone, _, _ = load_base(vision_repo / "outputs" / "vision" / "base")
    config = LoraConfig.from_pretrained(folders[0])
    model = inject_adapter_in_model(config, backbone.transformer)
    result = set_peft_model_state_dict(model, load_file(str(Path(folders[0]) / "adapter_model.safetensors")))
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k]
