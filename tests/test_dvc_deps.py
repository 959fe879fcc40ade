"""`dvc.yaml` deps are checked, not trusted: every module a stage's script reaches is one of its deps.

A module the script imports (directly or through other modules of `src/condpdiff`) but that the
stage does not list lets `dvc repro` report "up to date" on outputs that an edit made stale.
"""
import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "condpdiff"

# Modules no stage lists, each with the reason it cannot change an output.
EXEMPT = {
    "src/condpdiff/tracking.py": "MLflow glue: it logs runs, it never computes or writes a stage output",
    "src/condpdiff/config.py": "the schema holds no defaults: every value comes from the params file, which the "
                               "stages declare as params (and the validate stage checks whole)",
    "src/condpdiff/__init__.py": "empty",
}


def module_file(root: Path, name: str) -> Path | None:
    """src/condpdiff/<name>.py for a dotted module name inside the package, else None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    path = root / "src" / Path(*parts).with_suffix(".py")
    return path if path.is_file() else None


def imported_files(root: Path, source: Path) -> set[Path]:
    """The package modules `source` imports, at any depth of its syntax tree (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {path for name in names if (path := module_file(root, name))}
    return found


def reached_modules(root: Path, script: Path) -> set[str]:
    """Every package module `script` reaches, transitively, as repo-relative paths."""
    seen, frontier = set(), [script]
    while frontier:
        for path in imported_files(root, frontier.pop()):
            if path not in seen:
                seen.add(path)
                frontier.append(path)
    return {path.relative_to(root).as_posix() for path in seen}


PIPELINES = ("dvc.yaml", "vision/dvc.yaml")  # every stage runs from the repository root (vision: wdir ..)
SCRIPT_FOLDERS = ("pipeline/", "vision/stages/")


def stage_definitions(root: Path) -> dict[str, dict]:
    """Stage name (prefixed by its dvc.yaml) -> its definition; a foreach/matrix stage's `do` template
    stands for all its instances."""
    definitions = {}
    for pipeline in PIPELINES:
        if (root / pipeline).is_file():
            stages = yaml.safe_load((root / pipeline).read_text())["stages"]
            definitions.update({f"{pipeline}:{name}": stage.get("do", stage) for name, stage in stages.items()})
    return definitions


def missing_deps(root: Path) -> dict[str, list[str]]:
    """Per stage, the reached modules it does not list (exempt ones aside)."""
    missing = {}
    for name, stage in stage_definitions(root).items():
        scripts = [word for word in stage["cmd"].split() if word.startswith(SCRIPT_FOLDERS) and word.endswith(".py")]
        deps = {dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])}
        reached = set().union(*(reached_modules(root, root / script) for script in scripts)) if scripts else set()
        absent = sorted(reached - deps - set(EXEMPT) - set(scripts))
        if absent or not set(scripts) <= deps:
            missing[name] = absent + sorted(set(scripts) - deps)
    return missing


def test_every_module_a_stage_reaches_is_one_of_its_deps():
    assert missing_deps(REPO) == {}


def test_declared_code_deps_exist():
    for name, stage in stage_definitions(REPO).items():
        for dep in stage.get("deps", []):
            if isinstance(dep, str) and dep.startswith(("src/", *SCRIPT_FOLDERS)):
                assert (REPO / dep).is_file(), f"{name}: dep {dep} does not exist"


def test_exempt_config_holds_no_defaults():
    """The config module is exempt only while its schema has no default that could reach an output."""
    import dataclasses

    from condpdiff import config

    for cls in (getattr(config, n) for n in dir(config)):
        if dataclasses.is_dataclass(cls):
            for field in dataclasses.fields(cls):
                assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING, \
                    f"{cls.__name__}.{field.name} has a default: config.py can no longer be exempt"


def test_a_missing_dep_is_caught(tmp_path):
    """The check can fail: drop a module the normalize stage reaches and it is reported."""
    for path in ("pipeline", "src"):
        (tmp_path / path).symlink_to(REPO / path)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages["stages"]["normalize"]["deps"].remove("src/condpdiff/corpus.py")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    assert missing_deps(tmp_path) == {"dvc.yaml:normalize": ["src/condpdiff/corpus.py"]}


@pytest.mark.parametrize("script", sorted(p.relative_to(REPO).as_posix() for folder in SCRIPT_FOLDERS
                                           for p in (REPO / folder).glob("*.py")))
def test_every_stage_script_is_a_stage(script):
    commands = " ".join(stage["cmd"] for stage in stage_definitions(REPO).values())
    assert script in commands.split(), f"{script} is run by no stage of {' or '.join(PIPELINES)}"
