"""The whole pipeline: the real `dvc repro` on the tiny profile, in a temporary copy of the repo.

One repro is shared by the module (it takes minutes); each test puts the copy back as it found
it (the committed params.yaml and dvc.lock, every output as the lock says), even when it fails.
Every stage run of the module lands in the copy's own MLflow store.
"""
import contextlib
import hashlib
import os
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from condpdiff import servers
from conftest import copy_repo

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))
TEXT_PIPELINE = "dvc.yaml"  # the target of status/checkout/push/pull: vision/dvc.yaml is never run in this copy


def _store(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"


def _run(repo: Path, *command: str, check: bool = True, uri: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri or _store(repo)}
    result = subprocess.run(list(command), cwd=repo, capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _commit(repo: Path, message: str) -> str:
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return _run(repo, "git", "rev-parse", "HEAD").stdout.strip()


@contextlib.contextmanager
def _restored(repo: Path):
    """Whatever the test does, end on the committed HEAD with every output checked out."""
    head = _run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    try:
        yield head
    finally:
        _run(repo, "git", "checkout", "-q", "-f", "main", check=False)
        _run(repo, "git", "reset", "-q", "--hard", head)
        _run(repo, DVC, "checkout", "-f", TEXT_PIPELINE, check=False)


def _snapshot(repo: Path) -> dict[str, str]:
    """md5 of every file the pipeline produced."""
    return {p.relative_to(repo).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for folder in ("outputs", "metrics", "reports") for p in sorted((repo / folder).rglob("*")) if p.is_file()}


def _set_param(repo: Path, dotted: str, value) -> None:
    tree = yaml.safe_load((repo / "params.yaml").read_text())
    *parents, key = dotted.split(".")
    node = tree
    for name in parents:
        node = node[name]
    node[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def _ran(output: str) -> set[str]:
    """The stages `dvc repro` ran (not the ones it skipped)."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _declared_outputs(repo: Path) -> list[Path]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return [repo / out["path"] for stage in lock.values() for out in stage.get("outs", [])]


def _finite(tree) -> bool:
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    return not isinstance(tree, float) or math.isfinite(tree)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, glue_dir) -> Path:
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    copy_repo(repo, glue_dir)
    _run(repo, "git", "branch", "-M", "main")
    _run(repo, DVC, "repro")
    _commit(repo, "tiny run: dvc.lock")
    return repo


def test_tiny_dvc_repro_leaves_every_output(tiny_repo):
    outputs = _declared_outputs(tiny_repo)
    assert {"outputs/collect/sst2", "outputs/collect/stsb", "outputs/corpus"} <= \
        {p.relative_to(tiny_repo).as_posix() for p in outputs}
    for path in outputs:
        assert path.exists(), f"declared output missing: {path}"
        if path.is_dir():
            assert any(p.is_file() and p.stat().st_size > 0 for p in path.rglob("*")), f"empty output: {path}"
        else:
            assert path.stat().st_size > 0, f"empty output: {path}"
    metrics = json.loads((tiny_repo / "metrics" / "eval.json").read_text())
    assert metrics["eval"] and _finite(metrics)
    assert {"average_no_diffusion", "average_head_only", "stsb_head_only"} <= set(metrics["eval"])
    table = (tiny_repo / "reports" / "table1.md").read_text()
    assert "| generated (best on select) |" in table and "| head trained alone (LoRA off) |" in table
    assert "no per-task statistics are read" in table  # the tiny profile runs the default, condition-only mode
    adapter = tiny_repo / "outputs" / "generated" / "sst2" / "adapter_00"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert "up to date" in _run(tiny_repo, DVC, "status", TEXT_PIPELINE).stdout.lower()


def test_a_typo_in_params_removes_nothing_and_names_the_key(tiny_repo):
    before = _snapshot(tiny_repo)
    text = (tiny_repo / "params.yaml").read_text()
    with _restored(tiny_repo):
        for typo, key in ((text.replace("\nautoencoder:", "\nautoencoderr:"), "autoencoderr"),
                          (text.replace("\n  latent_noise:", "\n  latent_nois:"), "latent_nois")):
            (tiny_repo / "params.yaml").write_text(typo)
            result = _run(tiny_repo, DVC, "repro", check=False)
            assert result.returncode != 0
            lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
            assert len(lines) == 1 and key in lines[0], result.stdout + result.stderr
            assert "Traceback" not in result.stdout + result.stderr
            assert _snapshot(tiny_repo) == before  # every output in place, byte for byte
    assert "up to date" in _run(tiny_repo, DVC, "status", TEXT_PIPELINE).stdout.lower()


def test_runs_that_differ_in_a_generate_param_show_it_on_the_evaluate_run(tiny_repo):
    """What the MLflow compare view reads: the evaluate runs carry the generate param that made them differ."""
    with _restored(tiny_repo):
        _set_param(tiny_repo, "generate.inference_steps", 7)
        ran = _ran(_run(tiny_repo, DVC, "repro").stdout)
        assert {"generate", "evaluate"} <= ran and not any(s.startswith(("collect", "prepare")) for s in ran)
        mlflow.set_tracking_uri(_store(tiny_repo))
        runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'evaluate'")
        assert set(runs["params.generate.inference_steps"]) == {"5", "7"}
        assert set(runs["params.generate.sampler"]) == {"ddim"}
        assert runs["metrics.eval_average_generated"].notna().all()
    assert "up to date" in _run(tiny_repo, DVC, "status", TEXT_PIPELINE).stdout.lower()


def test_queued_experiments_run_two_at_a_time_and_land_on_a_shared_server_under_their_names(tiny_repo, tmp_path):
    """`dvc exp run --queue` of two -S variants, `dvc queue start -j 2`, one tracking server for both."""
    server = servers.TrackingServer(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path).start()
    uri = server.url
    try:
        with _restored(tiny_repo):
            for steps in (3, 4):
                _run(tiny_repo, DVC, "exp", "run", "--queue", "-S", f"generate.inference_steps={steps}",
                     "-S", "evaluate.score_all_on_eval=false", "-n", f"steps{steps}", uri=uri)  # the cheaper evaluate
            _run(tiny_repo, DVC, "queue", "start", "-j", "2", uri=uri)
            deadline = time.time() + 900
            while True:
                status = _run(tiny_repo, DVC, "queue", "status", uri=uri).stdout
                if not any(word in status for word in ("Queued", "Running")) or time.time() > deadline:
                    break
                time.sleep(1)
            logs = "".join(_run(tiny_repo, DVC, "queue", "logs", name, check=False, uri=uri).stdout[-2000:]
                           for name in ("steps3", "steps4") if f"{name}" in status and "Failed" in status)
            assert status.count("Success") == 2, status + logs
    finally:
        _run(tiny_repo, DVC, "queue", "stop", check=False, uri=uri)
        server.stop()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'shared.db'}")  # the server's own store
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'FINISHED'")
    spans = []
    for name, steps in (("steps3", "3"), ("steps4", "4")):
        mine = runs[runs["tags.dvc_experiment"] == name]
        assert {"generate", "evaluate", "register"} <= set(mine["tags.stage"]), name
        assert set(mine["params.generate.inference_steps"]) == {steps}
        spans.append((mine["start_time"].min(), mine["end_time"].max()))
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # -j 2: the two ran at the same time


def test_an_old_lock_restores_the_old_corpus(tiny_repo, tmp_path):
    """Commit, change a collect param and re-run; the old lock and `dvc checkout` (or `dvc pull` from a
    remote, with the cache gone) bring back the old corpus bytes."""
    corpus = tiny_repo / "outputs" / "corpus" / "sst2.safetensors"
    old_bytes = corpus.read_bytes()
    with _restored(tiny_repo) as old_commit:
        _run(tiny_repo, DVC, "remote", "add", "--local", "-f", "scratch", str(tmp_path / "remote"))
        _run(tiny_repo, DVC, "push", "-r", "scratch", TEXT_PIPELINE)
        _set_param(tiny_repo, "collect.lr_head", 0.01)
        _run(tiny_repo, DVC, "repro")
        assert corpus.read_bytes() != old_bytes
        _commit(tiny_repo, "another corpus")
        _run(tiny_repo, "git", "checkout", "-q", old_commit)
        _run(tiny_repo, DVC, "checkout", TEXT_PIPELINE)
        assert corpus.read_bytes() == old_bytes
        _run(tiny_repo, "rm", "-rf", ".dvc/cache", "outputs")
        _run(tiny_repo, DVC, "pull", "-r", "scratch", TEXT_PIPELINE)
        assert corpus.read_bytes() == old_bytes
    assert "up to date" in _run(tiny_repo, DVC, "status", TEXT_PIPELINE).stdout.lower()


def test_adding_a_task_runs_only_its_own_prepare_and_collect(tiny_repo):
    with _restored(tiny_repo):
        _set_param(tiny_repo, "data.tasks", ["sst2", "stsb", "rte"])
        ran = _ran(_run(tiny_repo, DVC, "repro").stdout)
        assert {"prepare@rte", "collect@rte", "headonly@rte", "gather", "normalize", "evaluate"} <= ran
        assert not ran & {"prepare@sst2", "prepare@stsb", "collect@sst2", "collect@stsb", "headonly@sst2"}
        assert (tiny_repo / "outputs" / "corpus" / "rte.safetensors").is_file()
        assert "rte_generated" in json.loads((tiny_repo / "metrics" / "eval.json").read_text())["eval"]


def test_study_and_leave_one_task_out_run_on_the_tiny_corpus(tiny_repo):
    """The research commands on a real (tiny) corpus: condition-only rows with every baseline, the held-out
    rewordings, and both folds (STS-B's one-output head takes the head-only path, SST-2's the generated)."""
    cond = ["-S", "norm=cond", "-S", "conditions.wordings=2", "-S", "conditions.draws=2"]
    _run(tiny_repo, sys.executable, "-m", "condpdiff", "study", "tiny-cond", *cond, "--baselines", "--scored", "2",
         "--rewordings", "data/task_rewordings.yaml", "--out", "outputs/study")
    row = json.loads((tiny_repo / "outputs" / "study" / "tiny-cond.json").read_text())
    assert {"own", "wrong", "splice_own", "splice_wrong", "trivial", "mean", "head_only", "base", "reworded",
            "reconstructed", "original_scored"} <= set(row["tasks"]["sst2"]["scores"])
    assert len(row["tasks"]["stsb"]["scores"]["reworded"]["each"]) == 4
    assert _finite(row["average"]) and _finite(row["tasks"]["sst2"]["distance"])
    assert "| tiny-cond |" in (tiny_repo / "outputs" / "study" / "study.md").read_text()
    _run(tiny_repo, sys.executable, "-m", "condpdiff", "loto", *cond, "--out", "outputs/study")
    folds = {f["held_out"]: f for f in json.loads((tiny_repo / "outputs" / "study" / "loto.json").read_text())["folds"]}
    assert folds["sst2"]["head"].startswith("head-only") and folds["stsb"]["head"].startswith("head-only")
    for fold in folds.values():
        assert set(fold["scores"]) == {"generated", "no_diffusion", "condition_mean", "mean_of_soups", "nearest_soup",
                                       "weighted_soups", "head_only", "base", "original"} and _finite(fold["scores"])
    runs = mlflow.MlflowClient(_store(tiny_repo)).search_runs(
        [mlflow.MlflowClient(_store(tiny_repo)).get_experiment_by_name("condpdiff").experiment_id],
        "tags.stage = 'loto'")
    assert {r.data.tags["held_out"] for r in runs} == {"sst2", "stsb"}
    # a study row after loto.json shares the folder: the table still renders
    _run(tiny_repo, sys.executable, "-m", "condpdiff", "study", "tiny-light", *cond, "-S", "diffusion.conditioning=film",
         "--light", "--out", "outputs/study")
    light = json.loads((tiny_repo / "outputs" / "study" / "tiny-light.json").read_text())
    assert set(light["tasks"]["sst2"]["scores"]) == {"own", "wrong", "splice_own", "splice_wrong"}
    assert _finite(light["average"])
    assert "| tiny-light |" in (tiny_repo / "outputs" / "study" / "study.md").read_text()


def test_probe_places_unseen_wordings_on_the_tiny_corpus(tiny_repo):
    """The weight-space proxy on a real (tiny) corpus: every set is scored, each value is finite, and the own
    condition, which training saw, lands nearer its task's mean than anything else."""
    _run(tiny_repo, sys.executable, "-m", "condpdiff", "probe", "tiny", "-S", "mean_predictor.steps=300",
         "--free", "data/new_user_conditions.yaml", "--out", "outputs/probe")
    sets = json.loads((tiny_repo / "outputs" / "probe" / "tiny.json").read_text())["sets"]
    assert set(sets) == {"own", "rewordings", "new_user_conditions"}
    assert sets["own"]["count"] == 2 and sets["rewordings"]["count"] == 8 and sets["new_user_conditions"]["count"] == 6
    assert _finite({k: v["relative_mean"] for k, v in sets.items()})
    assert sets["own"]["nearest"] == 1.0 and sets["own"]["relative_max"] < 0.3  # 0.5: a predictor that never moved
    assert "| tiny | norm=cond, 2x2 conditions (1 bare), condition noise 0.05," in \
        (tiny_repo / "outputs" / "probe" / "probe.md").read_text()


def test_the_four_figures_build_from_the_tiny_run(tiny_repo):
    """`figures` on the tiny run: each CSV has its rows and columns and finite values, each PNG exists, the loss
    series are written, and the files are artifacts of the run that made them."""
    from condpdiff.figures import read_csv

    result = _run(tiny_repo, sys.executable, "-m", "condpdiff", "figures", "--points", "3", "--mix-points", "3",
                  "--out", "outputs/figures")
    assert "does not end on the stage's adapters" not in result.stdout  # the rerun is the stage's own sampling
    out = tiny_repo / "outputs" / "figures"
    rows = {name: read_csv(out / f"{name}.csv") for name in ("similarity", "embedding", "trajectory", "interpolation")}
    assert all((out / f"{name}.png").read_bytes()[:4] == b"\x89PNG" for name in rows)

    def finite(table, *columns):
        return all(math.isfinite(float(r[c])) for r in table for c in columns)

    # per task: 2 scored originals, K = 2 generated, K = 2 no-diffusion
    assert [(r["task"], r["kind"]) for r in rows["similarity"]].count(("stsb", "original")) == 2
    assert len(rows["similarity"]) == 2 * (2 + 2 + 2) and finite(rows["similarity"], "distance", "select")
    assert len(rows["embedding"]) == 2 * (4 + 2 + 2) and {r["method"] for r in rows["embedding"]} == {"pca"}
    assert finite(rows["embedding"], "x", "y")
    path, context = rows["trajectory"], read_csv(out / "trajectory_context.csv")
    assert len(path) == 2 * 2 * 3 and finite(path, "select", "to_soup", "to_corpus", "x", "y")  # 2 samples x 3 points
    assert [r["kind"] for r in context].count("soup") == 2 and finite(context, "to_soup", "x", "y")
    assert set(rows["interpolation"][0]) == {"task", "pair", "partner", "l", "select"}
    assert len(rows["interpolation"]) == 2 * 2 * 3 and finite(rows["interpolation"], "l", "select")
    assert {r["partner"] for r in rows["interpolation"] if r["task"] == "sst2" and r["pair"] != "two generated"} \
        == {"stsb"}
    assert {"collect_sst2.csv", "autoencoder.csv", "diffusion.csv"} <= {p.name for p in (out / "losses").iterdir()}
    client = mlflow.MlflowClient(_store(tiny_repo))
    run = client.search_runs([client.get_experiment_by_name("condpdiff").experiment_id], "tags.stage = 'figures'")[0]
    assert run.info.status == "FINISHED"
    assert {"figures/similarity.png", "figures/trajectory.csv"} <= \
        {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
