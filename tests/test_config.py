from pathlib import Path

import pytest

from condpdiff.config import ConfigError, Norm, load_params, params_hash

REPO = Path(__file__).resolve().parents[1]


def test_default_and_profiles_load():
    for path in (REPO / "params.yaml", REPO / "profiles" / "tiny.yaml", REPO / "profiles" / "paper.yaml"):
        params = load_params(path)
        assert params.norm in Norm


@pytest.mark.parametrize("text, names", [
    ("norm: foo\n", "norm"),
    ("collect:\n  stepz: 3\n", "collect.stepz"),
    ("collect:\n  steps: abc\n", "collect.steps"),
    ("data:\n  tasks: [sst2, mnli]\n", "mnli"),
    ("generate:\n  samples: 0\n", "generate.samples"),
    ("unknown_section: 1\n", "unknown_section"),
])
def test_bad_params_name_the_key(tmp_path, text, names):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_params(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_hash_changes_with_norm(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("norm: task\n")
    b.write_text("norm: batch\n")
    assert params_hash(load_params(a)) != params_hash(load_params(b))
