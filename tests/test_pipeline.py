"""The whole pipeline: the real `dvc repro` on the tiny profile, in a temporary copy of the repo."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo

pytestmark = pytest.mark.slow


def _declared_outputs(repo: Path) -> list[Path]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in stages.values():
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            paths.append(repo / (entry if isinstance(entry, str) else next(iter(entry))))
    return paths


def _finite(tree) -> bool:
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    return not isinstance(tree, float) or math.isfinite(tree)


def test_tiny_dvc_repro_leaves_every_output(tmp_path, glue_dir):
    repo = tmp_path / "repo"
    copy_repo(repo, glue_dir)
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc), "repro"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for path in _declared_outputs(repo):
        assert path.exists(), f"declared output missing: {path}"
        if path.is_dir():
            assert any(p.is_file() and p.stat().st_size > 0 for p in path.rglob("*")), f"empty output: {path}"
        else:
            assert path.stat().st_size > 0, f"empty output: {path}"
    metrics = json.loads((repo / "metrics" / "eval.json").read_text())
    assert metrics["eval"] and _finite(metrics)
    assert "| generated (best on select) |" in (repo / "reports" / "table1.md").read_text()
    adapter = repo / "outputs" / "generated" / "sst2" / "adapter_00"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    again = subprocess.run([str(dvc), "status"], cwd=repo, capture_output=True, text=True)
    assert "up to date" in again.stdout.lower(), again.stdout
