"""Shards: a plan independent of the process count, dealt by duration, resumed.

The multi-process behaviour (``torchrun``, a killed process, a rerun with
another process count) is in ``test_shards_ddp.py``.
"""

import os

import numpy as np
import pytest

from speechbrain_ext.dataio.shards import (
    NonFiniteError,
    deal_shards,
    distributed_map,
    load_shard,
    plan_shards,
    run_sharded,
    shard_path,
)


def test_plan_cuts_the_length_sorted_list_into_bounded_shards():
    costs = [7, 2, 9, 2, 30, 4, 1, 5]
    # Sorted by cost (ties in input order): 6:1 1:2 3:2 5:4 7:5 0:7 2:9 4:30;
    # a shard is closed before it would exceed 10.
    assert plan_shards(costs, 10) == [[6, 1, 3, 5], [7], [0], [2], [4]]
    shards = plan_shards(costs, 12)
    assert sorted(i for shard in shards for i in shard) == list(range(8))
    for shard in shards:
        total = sum(costs[i] for i in shard)
        assert total <= 12 or len(shard) == 1
    with pytest.raises(ValueError, match="positive"):
        plan_shards(costs, 0)


def test_a_short_list_still_makes_enough_shards_for_many_processes():
    # 10 h shards would hold all of these; at least 4 shards are wanted:
    # each gets at most 10 // 4 = 2 of the 10 equal items.
    assert plan_shards([1] * 10, 36000, min_shards=4) == [
        [0, 1],
        [2, 3],
        [4, 5],
        [6, 7],
        [8, 9],
    ]
    assert len(plan_shards([1] * 100, 36000, min_shards=64)) >= 64
    assert len(plan_shards([5, 3], 36000, min_shards=64)) == 2


def test_shares_are_balanced_by_duration_not_file_count():
    # 100 files of 1 s and 10 of 10 s: shards of 20 s hold 20 short or 2
    # long files; each of 2 processes gets 55 s of audio, not 55 files.
    costs = [1] * 100 + [10] * 10
    shards = plan_shards(costs, 20)
    shard_costs = [sum(costs[i] for i in shard) for shard in shards]
    assert shard_costs == [20] * 10
    for n_processes in (1, 2, 3, 4):
        dealt = deal_shards(shard_costs, n_processes)
        assert sorted(i for part in dealt for i in part) == list(range(10))
        loads = [sum(shard_costs[i] for i in part) for part in dealt]
        # Longest-processing-time dealing: no process more than one shard
        # above the least loaded.
        assert max(loads) - min(loads) <= max(shard_costs)
    dealt = deal_shards(shard_costs, 2)
    loads = [sum(shard_costs[i] for i in part) for part in dealt]
    files = [sum(len(shards[i]) for i in part) for part in dealt]
    assert loads == [100, 100]
    assert files[0] != files[1]


def test_dealing_uneven_shards_and_more_processes_than_shards():
    assert deal_shards([9, 5, 4, 3, 1], 2) == [[0, 3], [1, 2, 4]]
    assert deal_shards([3], 4) == [[0], [], [], []]
    assert deal_shards([], 2) == [[], []]


def test_distributed_map_in_one_process_keeps_the_order_and_errors():
    assert distributed_map(lambda xs: [x + 1 for x in xs], [3, 1, 2]) == [
        4,
        2,
        3,
    ]

    def fail(xs):
        raise KeyError("bad item")

    with pytest.raises(KeyError, match="bad item"):
        distributed_map(fail, [1], (KeyError,))


class Recorder:
    """``work`` that records the positions it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, positions):
        self.calls.append(list(positions))
        values = np.array(positions, dtype=np.float32)
        return {"x": values[:, None] * 2, "y": values[:, None, None] + 0.5}


def test_run_sharded_returns_input_order_and_resumes(tmp_path):
    keys = [f"k{i}" for i in range(9)]
    costs = [5, 3, 8, 1, 9, 2, 7, 4, 6]
    folder = str(tmp_path / "shards")

    def run(work, fingerprint="A"):
        return run_sharded(
            work, keys, costs, folder, fingerprint, 10, min_shards=1
        )

    first_work = Recorder()
    result = run(first_work)
    expected = np.arange(9, dtype=np.float32)
    assert np.array_equal(result["x"][:, 0], expected * 2)
    assert np.array_equal(result["y"][:, 0, 0], expected + 0.5)
    shards = plan_shards(costs, 10)
    assert sorted(first_work.calls) == sorted(shards)
    assert sorted(os.listdir(folder)) == [
        os.path.basename(shard_path(folder, i)) for i in range(len(shards))
    ]

    # Shard 1 lost, shard 2 truncated: only those two are computed again.
    os.remove(shard_path(folder, 1))
    with open(shard_path(folder, 2), "r+b") as f:
        f.truncate(20)
    again = Recorder()
    resumed = run(again)
    assert sorted(again.calls) == sorted([shards[1], shards[2]])
    for name in ("x", "y"):
        assert np.array_equal(resumed[name], result[name])

    # Another fingerprint (model or settings): everything again.
    other = Recorder()
    run(other, fingerprint="B")
    assert len(other.calls) == len(shards)
    shard_keys = [keys[i] for i in shards[0]]
    assert load_shard(shard_path(folder, 0), shard_keys, "A") is None
    assert load_shard(shard_path(folder, 0), shard_keys, "B") is not None


def test_a_shard_with_non_finite_values_is_not_saved(tmp_path):
    keys = ["a.wav", "b.wav", "c.wav"]

    def work(positions):
        values = np.ones((len(positions), 2), dtype=np.float32)
        values[[keys[i] == "b.wav" for i in positions]] = np.nan
        return {"full": values}

    folder = tmp_path / "shards"
    with pytest.raises(NonFiniteError, match="b.wav: non-finite full"):
        run_sharded(work, keys, [1, 1, 1], str(folder), "A", 10, min_shards=1)
    # The folder appears with the first finished shard.
    assert not folder.exists()
