"""The whole pipeline: the real `dvc repro` on the tiny profile, in a temporary copy of the repo."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow


def _copy_repo(target: Path, glue_dir: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file() and not name.startswith(("outputs/", "metrics/", "reports/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    shutil.copytree(glue_dir, target / "data" / "glue")
    shutil.copy(REPO / "profiles" / "tiny.yaml", target / "params.yaml")
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        subprocess.run(command, cwd=target, check=True)


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
    _copy_repo(repo, glue_dir)
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
