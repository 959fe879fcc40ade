from pathlib import Path

import pytest
import yaml

from condpdiff.config import ConfigError, Norm, load_params, params_hash

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _edit(section: str | None, key: str, value) -> dict:
    tree = yaml.safe_load(yaml.safe_dump(TINY))
    (tree if section is None else tree[section])[key] = value
    return tree


def test_default_and_profiles_load():
    for path in (REPO / "params.yaml", REPO / "profiles" / "tiny.yaml", REPO / "profiles" / "paper.yaml"):
        params = load_params(path)
        assert params.norm in Norm


@pytest.mark.parametrize("tree, names", [
    (_edit(None, "norm", "foo"), "norm"),
    (_edit("collect", "stepz", 3), "collect.stepz"),
    (_edit("collect", "steps", "abc"), "collect.steps"),
    (_edit("data", "tasks", ["sst2", "mnli"]), "mnli"),
    (_edit("generate", "samples", 0), "generate.samples"),
    (_edit(None, "unknown_section", 1), "unknown_section"),
    (_edit("diffusion", "grad_clip", -1.0), "diffusion.grad_clip"),
    (_edit("collect", "per_task", {"mnli": {"steps": 9}}), "collect.per_task: unknown task 'mnli'"),
    (_edit("collect", "per_task", {"cola": {"stepz": 9}}), "collect.per_task.cola.stepz"),
    (_edit("collect", "per_task", {"cola": {"steps": "many"}}), "collect.per_task.cola.steps: expected int"),
    (_edit("collect", "per_task", {"cola": {"steps": 1}}), "collect.per_task.cola: keep_last"),
    (_edit("conditions", "bare_draws", 2), "conditions.bare_draws"),
    (_edit("mean_predictor", "condition_noise", -0.1), "mean_predictor.condition_noise"),
])
def test_bad_params_name_the_key_in_one_line(tmp_path, tree, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")) as error:
        load_params(_write(tmp_path, tree))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("section, key", [("autoencoder", "weight_decay"), (None, "seed"), ("data", "tasks")])
def test_a_missing_key_is_an_error_not_a_default(tmp_path, section, key):
    tree = yaml.safe_load(yaml.safe_dump(TINY))
    del (tree if section is None else tree[section])[key]
    with pytest.raises(ConfigError, match=key) as error:
        load_params(_write(tmp_path, tree))
    assert "\n" not in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_hash_changes_with_norm(tmp_path):
    a = load_params(_write(tmp_path, _edit(None, "norm", "task")))
    b = load_params(_write(tmp_path, _edit(None, "norm", "batch")))
    assert params_hash(a) != params_hash(b)


def test_overrides_apply_before_validation_and_name_themselves():
    from condpdiff.config import ConfigError, Norm, load_params

    params = load_params("params.yaml", ("norm=cond", "conditions.wordings=8", "generate.samples=3"))
    assert params.norm is Norm.cond and params.conditions.wordings == 8 and params.generate.samples == 3
    with pytest.raises(ConfigError, match="params.yaml with -S generate.samples=x: generate.samples"):
        load_params("params.yaml", ("generate.samples=x",))


def test_a_task_recipe_overrides_only_its_own_keys(tmp_path):
    params = load_params(_write(tmp_path, _edit("collect", "per_task", {"cola": {"steps": 40, "lr_lora": 1}})))
    cola, sst2 = params.collect.for_task("cola"), params.collect.for_task("sst2")
    assert (cola.steps, cola.lr_lora, cola.batch_size) == (40, 1, params.collect.batch_size)
    assert (sst2.steps, sst2.lr_lora) == (params.collect.steps, params.collect.lr_lora) and not cola.per_task
