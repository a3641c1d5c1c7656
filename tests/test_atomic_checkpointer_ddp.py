"""AtomicCheckpointer under DDP: saving and pruning never deadlocks.

SpeechBrain's ``delete_checkpoints`` lists the checkpoint folder on every
process and runs one collective per checkpoint it deletes, so every process
must list the same checkpoints. The main process renames ``CKPT.yaml`` into
place after the parameter files; a process that lists the folder before that
rename sees one checkpoint fewer and the processes stop in different
collectives (seen as a hang of ``torchrun train.py`` once several epochs had
been saved). Here the main process's rename is made slow on purpose.
"""

import datetime
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from speechbrain_ext.utils import atomic_checkpointer
from speechbrain_ext.utils.atomic_checkpointer import AtomicCheckpointer

SAVES = 4
KEEP = 2
# A collective that waits this long has deadlocked: fail instead of hanging.
TIMEOUT = datetime.timedelta(seconds=20)


def slow_replace(source, destination, replace=os.replace):
    """``os.replace`` that lets the other process run ahead first."""
    time.sleep(0.5)
    replace(source, destination)


def worker(rank, world_size, port, folder):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=TIMEOUT,
    )
    try:
        if rank == 0:
            atomic_checkpointer.os.replace = slow_replace
        checkpointer = AtomicCheckpointer(
            os.path.join(folder, "save"), {"model": torch.nn.Linear(2, 2)}
        )
        for epoch in range(1, SAVES + 1):
            checkpointer.save_and_keep_only(
                meta={"epoch": epoch}, num_to_keep=KEEP
            )
        with open(os.path.join(folder, f"done{rank}"), "w") as f:
            f.write("ok")
    finally:
        torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_save_and_prune_without_deadlock(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    assert sorted(p.name for p in tmp_path.glob("done*")) == ["done0", "done1"]
    checkpointer = AtomicCheckpointer(tmp_path / "save", {})
    kept = sorted(c.meta["epoch"] for c in checkpointer.find_checkpoints())
    assert kept == [SAVES - 1, SAVES]
