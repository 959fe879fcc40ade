"""The free-conditions file of `python -m condpdiff describe` is checked before any generation."""
import pytest

from condpdiff.freetext import read_free_conditions


@pytest.mark.parametrize("text, message", [
    ("nosuch:\n  - description: x\n", "unknown task 'nosuch'"),
    ("sst2: []\n", "non-empty list"),
    ("sst2:\n  - description: '  '\n", "without a description"),
    ("sst2:\n  - description: x\n    examples: a -> b\n", "list of strings"),
    ("sst2:\n  - description: x\n    label: positive\n", "description, examples"),
])
def test_bad_free_conditions_are_named(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_free_conditions(path)


def test_missing_file_and_the_shipped_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.*none.yaml"):
        read_free_conditions(tmp_path / "none.yaml")
    shipped = read_free_conditions("data/new_user_conditions.yaml")
    assert sorted(shipped) == ["cola", "mrpc", "qnli", "rte", "sst2", "stsb"]
    assert all(len(entries) == 3 and entries[2]["examples"] for entries in shipped.values())


@pytest.mark.parametrize("uri, version", [("models:/condpdiff-generator/3", "3"), ("runs:/abc123/generator", "not registered"),
                                          ("outputs/registry/model", "not registered")])
def test_describe_names_the_registry_version_only_of_a_registry_uri(uri, version):
    from condpdiff.cli import registry_version

    assert registry_version(uri) == version


def test_describe_reads_an_alias_from_the_registry(monkeypatch):
    import mlflow

    from condpdiff.cli import registry_version

    class Client:
        def get_model_version_by_alias(self, name, alias):
            assert (name, alias) == ("condpdiff-generator", "candidate")
            return type("Version", (), {"version": "7"})()

    monkeypatch.setattr(mlflow, "MlflowClient", Client)
    assert registry_version("models:/condpdiff-generator@candidate") == "7"
