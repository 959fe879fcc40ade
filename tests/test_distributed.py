"""DDP on the single-process code path: two gloo ranks reach the weights one process reaches with the same
global batch (fine-tuning, autoencoder, denoiser), and a run on another batch does not."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from condpdiff.distributed import World
from conftest import REPO

WORKER = str(REPO / "tests" / "ddp_worker.py")


def test_a_rank_keeps_its_share_of_the_global_batch_and_uneven_shares_are_refused():
    assert World(1, 2).shard(list(range(8))) == [1, 3, 5, 7]
    assert torch.equal(World(0, 2).shard(torch.arange(8)), torch.tensor([0, 2, 4, 6]))
    assert World().shard([3, 1]) == [3, 1]
    with pytest.raises(ValueError, match="batch size 7 does not split into 2"):
        World(0, 2).check_batch(7, "collect")


def _train(out: Path, batches: list[int], ranks: int) -> dict[int, dict]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE")}
    out.mkdir()
    result = subprocess.run([*(launcher if ranks > 1 else [sys.executable]), WORKER, str(out), *map(str, batches)],
                            capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {batch: load_file(str(out / f"batch{batch}.safetensors")) for batch in batches}


@pytest.mark.slow  # three trainings of the tiny model (two in one process, one under torchrun): ~20 s
def test_two_gloo_ranks_reach_the_weights_of_one_process_with_the_same_global_batch(tmp_path, glue_dir):
    single, other = _train(tmp_path / "single", [8, 4], ranks=1).values()
    ddp = _train(tmp_path / "ddp", [8], ranks=2)[8]
    assert single.keys() == ddp.keys() == {"lora", "autoencoder", "denoiser"}
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(other[key], value, rtol=1e-4, atol=1e-4), key  # the check can fail
