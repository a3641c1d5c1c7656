"""Work spread over ``torchrun`` processes in resumable shards.

Embedding extraction and evaluation embed every file of a list. Here the
files (items) are sorted by cost (the number of samples the model reads)
and cut into consecutive shards of at most ``shard_cost`` each (smaller
on a short list, so that there are at least :data:`MIN_SHARDS`). Shards
depend only on the items and their costs, never on the number of
processes, so a rerun with another number of processes reuses every
finished shard. The pending shards are dealt to the processes by cost
(largest first, each to the least loaded process), so every process gets
about the same amount of audio, not the same number of files. Each process
saves each shard it finishes atomically (``shard_NNNNN.pt``: keys,
fingerprint, arrays); once all are done, the main process assembles the
arrays in the input order. A process that dies loses only the shard it was
working on.

One process (no ``torchrun``) runs the same shards, one after the other,
so its result is the same (the same batches, the same arithmetic).

Example
-------
>>> plan_shards([5, 1, 3, 2], shard_cost=4)
[[1, 3], [2], [0]]
>>> deal_shards([3, 3, 5], n_processes=2)
[[2], [0, 1]]
"""

import heapq
import os
import time

import numpy as np
import torch
from speechbrain.utils.distributed import (
    ddp_barrier,
    if_main_process,
    run_on_main,
)
from speechbrain.utils.logger import get_logger

from speechbrain_ext.utils.io_utils import (
    CorruptFileError,
    atomic_torch_save,
    safe_torch_load,
)

logger = get_logger(__name__)

#: Seconds between two progress lines of a process's shards (the last
#: shard always logs one).
SHARD_LOG_S = 30.0

#: Fewest shards :func:`run_sharded` cuts a list into (when it has as many
#: items), so that up to this many processes (8 nodes of 8 GPUs) all get
#: work also on a small list.
MIN_SHARDS = 64


class NonFiniteError(ValueError):
    """Raised when the work gives non-finite values (names the item)."""


def process_rank():
    """This process's rank and the number of processes.

    Returns
    -------
    rank : int
    world_size : int
        ``(0, 1)`` without an initialised process group.

    Example
    -------
    >>> process_rank()
    (0, 1)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def plan_shards(costs, shard_cost, min_shards=1):
    """Cut the items, sorted by cost, into consecutive shards.

    A shard holds at most ``shard_cost``, and at most ``1 / min_shards`` of
    the total cost, rounded down (a single costlier item gets a shard of
    its own). Ties
    keep the input order, so the plan depends only on the arguments, never
    on the number of processes.

    Arguments
    ---------
    costs : sequence of int
        Cost of each item (samples the model reads).
    shard_cost : int
        Most cost per shard.
    min_shards : int
        Make shards small enough for at least this many (when there are
        as many items), so that as many processes all get work.

    Returns
    -------
    list of list of int
        Input positions of the items of each shard, cheapest shard first.

    Example
    -------
    >>> plan_shards([10, 10, 10, 50], shard_cost=25)
    [[0, 1], [2], [3]]
    >>> plan_shards([10, 10, 10, 50], shard_cost=25, min_shards=8)
    [[0], [1], [2], [3]]
    >>> plan_shards([], shard_cost=25)
    []
    """
    if shard_cost <= 0:
        raise ValueError(f"shard cost must be positive, got {shard_cost}")
    total = int(np.sum(costs, dtype=np.int64))
    shard_cost = min(shard_cost, max(1, total // max(1, min_shards)))
    order = np.argsort(np.asarray(costs, dtype=np.int64), kind="stable")
    shards, current, total = [], [], 0
    for index in order.tolist():
        if current and total + costs[index] > shard_cost:
            shards.append(current)
            current, total = [], 0
        current.append(index)
        total += costs[index]
    if current:
        shards.append(current)
    return shards


def deal_shards(shard_costs, n_processes):
    """Deal shards to processes so that their total costs are balanced.

    Largest shard first, each to the process with the least cost so far
    (ties: the lowest rank), the classic longest-processing-time rule: no
    process ends more than one shard's cost above the average.

    Arguments
    ---------
    shard_costs : sequence of int
        Cost of each shard to deal.
    n_processes : int
        Number of processes.

    Returns
    -------
    list of list of int
        For each rank, positions in ``shard_costs``, largest first.

    Example
    -------
    >>> deal_shards([4, 1, 3, 2], n_processes=2)
    [[0, 1], [2, 3]]
    >>> deal_shards([7], n_processes=3)
    [[0], [], []]
    """
    loads = [(0, rank) for rank in range(n_processes)]
    dealt = [[] for _ in range(n_processes)]
    order = sorted(range(len(shard_costs)), key=lambda i: (-shard_costs[i], i))
    for index in order:
        load, rank = heapq.heappop(loads)
        dealt[rank].append(index)
        heapq.heappush(loads, (load + shard_costs[index], rank))
    return dealt


def distributed_map(function, items, errors=()):
    """``function(items)`` computed in parts by every process, gathered.

    Each process runs ``function`` on every ``world_size``-th item from its
    rank on; the results come back in the order of ``items`` on every
    process. An exception of ``errors`` raised on any process is raised on
    every process (the first one, by rank), so none waits for the others.

    Arguments
    ---------
    function : callable
        ``function(list) -> list`` of the same length.
    items : sequence
        The inputs.
    errors : tuple of type
        Exceptions to pass on to every process.

    Returns
    -------
    list

    Example
    -------
    >>> distributed_map(lambda xs: [x * 2 for x in xs], [1, 2, 3])
    [2, 4, 6]
    """
    rank, world_size = process_rank()
    try:
        mine, failure = function(list(items[rank::world_size])), None
    except errors as error:
        mine, failure = None, error
    if world_size == 1:
        if failure is not None:
            raise failure
        return mine
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, (mine, failure))
    for _, error in gathered:
        if error is not None:
            raise error
    result = [None] * len(items)
    for part, (values, _) in enumerate(gathered):
        result[part::world_size] = values
    return result


def shard_path(folder, index):
    """The file of shard ``index`` in ``folder``.

    Example
    -------
    >>> shard_path("out", 7)
    'out/shard_00007.pt'
    """
    return os.path.join(folder, f"shard_{index:05d}.pt")


def load_shard(path, keys, fingerprint):
    """A finished shard's arrays, or None when absent or not matching.

    Arguments
    ---------
    path : str
        The shard file.
    keys : list of str
        The keys it must hold, in order.
    fingerprint : str
        The settings it must have been made with.

    Returns
    -------
    dict of numpy.ndarray or None
    """
    if not os.path.isfile(path):
        return None
    try:
        shard = safe_torch_load(path)
    except CorruptFileError as error:
        logger.warning(
            "recomputing a corrupt shard: %s", error, main_process_only=False
        )
        return None
    if (
        not isinstance(shard, dict)
        or shard.get("keys") != keys
        or shard.get("fingerprint") != fingerprint
    ):
        logger.warning(
            "%s: other files or settings, recomputing it",
            path,
            main_process_only=False,
        )
        return None
    return {name: array.numpy() for name, array in shard["arrays"].items()}


def _finished(folder, shard_keys, fingerprint):
    """Which shards are already in ``folder`` (the main process checks)."""
    return [
        load_shard(shard_path(folder, index), keys, fingerprint) is not None
        for index, keys in enumerate(shard_keys)
    ]


def _assemble(folder, shards, shard_keys, fingerprint, n_items):
    """Every shard's arrays, rows back in the input order."""
    arrays = {}
    for index, (positions, keys) in enumerate(zip(shards, shard_keys)):
        path = shard_path(folder, index)
        shard = load_shard(path, keys, fingerprint)
        if shard is None:
            raise RuntimeError(f"{path}: shard missing after every process")
        for name, values in shard.items():
            if name not in arrays:
                shape = (n_items,) + values.shape[1:]
                arrays[name] = np.empty(shape, dtype=values.dtype)
            arrays[name][positions] = values
    return arrays


def run_sharded(
    work,
    keys,
    costs,
    folder,
    fingerprint,
    shard_cost,
    sample_rate=16000,
    min_shards=MIN_SHARDS,
):
    """Run ``work`` over every item in shards, across every process.

    Every process must call it with the same arguments (under ``torchrun``
    after :func:`speechbrain.utils.distributed.ddp_init_group`; alone
    otherwise).

    Arguments
    ---------
    work : callable
        ``work(positions) -> dict of numpy.ndarray``: the arrays (one row
        per position, same order) of the items at those input positions.
    keys : sequence of str
        One key per item, stored in the shards to validate them.
    costs : sequence of int
        Cost of each item: samples the model reads.
    folder : str
        Where the shards are kept.
    fingerprint : str
        Identifies the model and settings; a shard made with another one is
        recomputed.
    shard_cost : int
        Most cost (samples) per shard.
    sample_rate : int
        Samples per second, to report audio hours.
    min_shards : int
        Fewest shards (see :func:`plan_shards`).

    Returns
    -------
    dict of numpy.ndarray or None
        On the main process, each array with its rows in the input order;
        None on the others.

    Example
    -------
    >>> import tempfile
    >>> work = lambda positions: {"x": np.array(positions)[:, None] * 2.0}
    >>> result = run_sharded(work, ["a", "b", "c"], [30, 10, 20],
    ...                      tempfile.mkdtemp(), "v1", shard_cost=25)
    >>> result["x"].tolist()
    [[0.0], [2.0], [4.0]]
    """
    rank, world_size = process_rank()
    shards = plan_shards(costs, shard_cost, min_shards)
    shard_keys = [[keys[i] for i in positions] for positions in shards]
    shard_costs = [sum(costs[i] for i in positions) for positions in shards]
    done = run_on_main(_finished, args=[folder, shard_keys, fingerprint])
    pending = [index for index, finished in enumerate(done) if not finished]
    dealt = deal_shards([shard_costs[i] for i in pending], world_size)
    mine = [pending[i] for i in dealt[rank]]
    if rank == 0:
        logger.info(
            "%d files in %d shards (%.2f h of audio): %d done, %d to do "
            "over %d process(es)",
            len(keys),
            len(shards),
            sum(shard_costs) / sample_rate / 3600,
            len(shards) - len(pending),
            len(pending),
            world_size,
        )
    start = time.perf_counter()
    _work_on(
        work,
        mine,
        shards,
        shard_keys,
        shard_costs,
        folder,
        fingerprint,
        sample_rate,
    )
    ddp_barrier()
    if not if_main_process():
        return None
    elapsed = time.perf_counter() - start
    files = sum(len(shards[i]) for i in pending)
    hours = sum(shard_costs[i] for i in pending) / sample_rate / 3600
    logger.info(
        "done: %d files (%.4f h of audio) in %.2f s with %d process(es): "
        "%.2f files/s, %.4f audio h/s",
        files,
        hours,
        elapsed,
        world_size,
        files / max(elapsed, 1e-9),
        hours / max(elapsed, 1e-9),
    )
    return _assemble(folder, shards, shard_keys, fingerprint, len(keys))


def _work_on(
    work,
    mine,
    shards,
    shard_keys,
    shard_costs,
    folder,
    fingerprint,
    sample_rate,
):
    """Compute and save this process's shards; an ETA line every 30 s."""
    rank, world_size = process_rank()
    total = sum(shard_costs[i] for i in mine)
    start, finished = time.perf_counter(), 0
    logged = start
    for count, index in enumerate(mine, start=1):
        arrays = work(shards[index])
        _check_finite(arrays, shard_keys[index])
        atomic_torch_save(
            {
                "keys": shard_keys[index],
                "fingerprint": fingerprint,
                "arrays": {
                    name: torch.from_numpy(np.ascontiguousarray(values))
                    for name, values in arrays.items()
                },
            },
            shard_path(folder, index),
        )
        finished += shard_costs[index]
        now = time.perf_counter()
        if count < len(mine) and now - logged < SHARD_LOG_S:
            continue
        logged, elapsed = now, now - start
        logger.info(
            "rank %d/%d: shard %d done (%d of %d here), %d files, "
            "%.3f h of audio; %.0fx real time, ETA %.0f s",
            rank,
            world_size,
            index,
            count,
            len(mine),
            len(shards[index]),
            shard_costs[index] / sample_rate / 3600,
            finished / sample_rate / max(elapsed, 1e-9),
            elapsed * (total - finished) / max(finished, 1),
            main_process_only=False,
        )


def _check_finite(arrays, keys):
    """Refuse a shard holding NaN or infinity (it would be reused)."""
    for name, values in arrays.items():
        finite = np.isfinite(values).reshape(len(keys), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise NonFiniteError(
                f"{keys[bad[0]]}: non-finite {name} embedding ({len(bad)} "
                "file(s) of its shard); nothing saved for them"
            )
