"""Shards over ``torchrun`` processes (gloo, CPU): a killed process loses only
the shard it was on, and a rerun with another process count reuses the rest.

The processes run ``tests/shards_worker.py``, the library's
``run_sharded`` on numbered items whose work is known.
"""

import pathlib

import pytest
import torch

from speechbrain_ext.dataio.shards import (
    deal_shards,
    load_shard,
    plan_shards,
    shard_path,
)
from speechbrain_ext.utils.io_utils import safe_torch_load
from tests.shards_worker import COSTS, KEYS, SHARD_COST


def logged_shards(folder, shards):
    """Shard numbers computed, from the workers' logs."""
    positions = {tuple(shard): index for index, shard in enumerate(shards)}
    found = []
    for log in sorted(pathlib.Path(folder).glob("rank*.txt")):
        for line in log.read_text().splitlines():
            found.append(positions[tuple(map(int, line.split()))])
    return found


@pytest.mark.slow
def test_killed_process_and_rerun_with_another_process_count(
    tmp_path, torchrun
):
    shards = plan_shards(COSTS, SHARD_COST)
    costs = [sum(COSTS[i] for i in shard) for shard in shards]
    rank1 = deal_shards(costs, 2)[1]
    assert len(rank1) >= 2, "the test needs 2 shards on rank 1"
    folder = tmp_path / "run"
    worker = "tests/shards_worker.py"

    killed = torchrun(
        worker, 2, folder, tmp_path / "log1", "--die_rank=1", "--die_at=2"
    )
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert not (folder / "result.pt").exists()
    saved = {
        index
        for index, shard in enumerate(shards)
        if load_shard(
            shard_path(str(folder / "shards"), index),
            [KEYS[i] for i in shard],
            "v1",
        )
        is not None
    }
    # Rank 1 finished its first shard, which was kept, and lost the one it
    # was killed on.
    assert rank1[0] in saved
    assert rank1[1] not in saved

    rerun = torchrun(worker, 3, folder, tmp_path / "log2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    computed = logged_shards(tmp_path / "log2", shards)
    assert sorted(computed) == sorted(set(range(len(shards))) - saved)
    result = safe_torch_load(folder / "result.pt")["x"][:, 0]
    assert torch.equal(result, torch.arange(len(KEYS), dtype=torch.float32) * 2)


@pytest.mark.slow
def test_the_main_process_waits_for_every_shard(tmp_path, torchrun):
    # Rank 1 takes a second per shard: rank 0 is done long before it.
    result = torchrun(
        "tests/shards_worker.py",
        2,
        tmp_path / "run",
        tmp_path / "log",
        "--slow_rank=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shards = plan_shards(COSTS, SHARD_COST)
    assert sorted(logged_shards(tmp_path / "log", shards)) == list(
        range(len(shards))
    )
    values = safe_torch_load(tmp_path / "run" / "result.pt")["x"][:, 0]
    assert torch.equal(values, torch.arange(len(KEYS), dtype=torch.float32) * 2)
