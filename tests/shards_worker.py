"""A ``torchrun`` worker for ``test_shards_ddp.py``: ``run_sharded`` on items.

Items ``k00``, ``k01``... with the costs of :data:`COSTS`; the work of an
item is its number times 2. Each process appends the positions of every
shard it computes to ``LOG_FOLDER/rank<R>.txt`` (before saving it), and the
main process saves the assembled result to ``FOLDER/result.pt``. With
``--die_rank R --die_at K`` process R kills itself (SIGKILL) when it starts
its K-th shard; with ``--slow_rank R`` process R takes a second per shard.

    torchrun --nproc_per_node=2 tests/shards_worker.py FOLDER LOG_FOLDER \\
        [--die_rank 1 --die_at 2] [--slow_rank 1]
"""

import argparse
import os
import signal
import time

import numpy as np
import torch
from speechbrain.utils.distributed import ddp_init_group

from speechbrain_ext.dataio.shards import process_rank, run_sharded
from speechbrain_ext.utils.io_utils import atomic_torch_save

COSTS = [5, 3, 8, 1, 9, 2, 7, 4, 6, 5, 2, 8, 3, 7]
SHARD_COST = 10
KEYS = [f"k{i:02d}" for i in range(len(COSTS))]


def main():
    """Run the shards of :data:`COSTS` in this process group."""
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("log_folder")
    parser.add_argument("--die_rank", type=int, default=-1)
    parser.add_argument("--die_at", type=int, default=0)
    parser.add_argument("--slow_rank", type=int, default=-1)
    args = parser.parse_args()
    ddp_init_group({"distributed_backend": "gloo"})
    rank, _ = process_rank()
    os.makedirs(args.log_folder, exist_ok=True)
    started = []

    def work(positions):
        """Item number x 2; logs the shard, or dies when told to."""
        started.append(positions)
        if rank == args.die_rank and len(started) == args.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == args.slow_rank:
            time.sleep(1)
        log = os.path.join(args.log_folder, f"rank{rank}.txt")
        with open(log, "a", encoding="utf-8") as f:
            f.write(" ".join(map(str, positions)) + "\n")
        numbers = np.array([int(KEYS[i][1:]) for i in positions])
        return {"x": numbers[:, None].astype(np.float32) * 2}

    result = run_sharded(
        work,
        KEYS,
        COSTS,
        os.path.join(args.folder, "shards"),
        "v1",
        SHARD_COST,
        min_shards=1,
    )
    if result is not None:
        atomic_torch_save(
            {"x": torch.from_numpy(result["x"])},
            os.path.join(args.folder, "result.pt"),
        )


if __name__ == "__main__":
    main()
