"""Speaker-balanced batch sampler for pseudo-label training.

Each epoch takes at most ``max_per_speaker`` utterances of every
pseudo-speaker, shuffles them, and packs them into global batches in which no
pseudo-speaker appears twice; an incomplete last batch is dropped. As in the
reference, an utterance whose pseudo-speaker is already in the batch being
filled is dropped for this epoch (``defer_repeats=True`` keeps it for a later
batch instead, using about 6 % more samples per epoch at VoxCeleb scale).
The order depends only on ``(seed, epoch)``.

DDP: the sampler is already distributed. ``batch_size`` is the *global*
batch; rank ``r`` of ``R`` processes gets the ``r``-th of ``R`` equal slices
of every global batch, so ``R`` processes with a global batch of ``B`` see
exactly the samples one process with batch ``B`` sees (``B`` must be divisible
by ``R``). The training Brain builds its loader without SpeechBrain's
``DistributedSamplerWrapper`` for this reason.
"""

import collections

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from speechbrain_ext.utils.io_utils import safe_torch_load


def _world():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


@register_checkpoint_hooks
class SpeakerBalancedBatchSampler(torch.utils.data.Sampler):
    """Yields lists of dataset indices, one list per (local) batch.

    Arguments
    ---------
    labels : sequence of int
        Pseudo-speaker of each dataset item.
    batch_size : int
        Global batch size (all ranks together).
    max_per_speaker : int
        At most this many utterances of one pseudo-speaker per epoch.
    seed : int
        Base seed; epoch ``e`` uses ``(seed, e)``.
    num_replicas : int, optional
        Number of DDP processes (default: from ``torch.distributed``).
    rank : int, optional
        This process (default: from ``torch.distributed``).
    defer_repeats : bool
        Keep an utterance whose pseudo-speaker is already in the batch for
        a later batch instead of dropping it (the reference drops it).

    Example
    -------
    >>> labels = [0, 0, 0, 1, 1, 2, 2, 3]
    >>> sampler = SpeakerBalancedBatchSampler(labels, batch_size=2,
    ...                                       max_per_speaker=2)
    >>> sampler.set_epoch(1)
    >>> batches = list(sampler)
    >>> len(batches), len(sampler)
    (3, 3)
    >>> all(labels[a] != labels[b] for a, b in batches)
    True
    """

    def __init__(
        self,
        labels,
        batch_size,
        max_per_speaker=500,
        seed=0,
        num_replicas=None,
        rank=None,
        defer_repeats=False,
    ):
        world, this_rank = _world()
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = this_rank if rank is None else rank
        if batch_size % self.num_replicas:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by the "
                f"{self.num_replicas} DDP processes"
            )
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = batch_size
        self.max_per_speaker = max_per_speaker
        self.seed = seed
        self.defer_repeats = defer_repeats
        self.epoch = 0
        self._cache = None
        self._by_speaker = None

    def set_epoch(self, epoch):
        """Select the epoch whose order is produced next.

        Arguments
        ---------
        epoch : int
            Epoch number.
        """
        self.epoch = int(epoch)

    def epoch_order(self):
        """The selected utterances of the current epoch, shuffled.

        Returns
        -------
        list of int
            Dataset indices, at most ``max_per_speaker`` per pseudo-speaker.
        """
        if self._by_speaker is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
            self._by_speaker = np.split(order, bounds)
        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = [
            rng.permutation(items)[: self.max_per_speaker]
            for items in self._by_speaker
        ]
        if not chosen:
            return []
        return rng.permutation(np.concatenate(chosen)).tolist()

    def global_batches(self):
        """All global batches of the current epoch.

        Returns
        -------
        list of list of int
            Dataset indices; every list has ``batch_size`` items with
            distinct labels.
        """
        key = (self.seed, self.epoch)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        order = self.epoch_order()
        if self.defer_repeats:
            batches = self._pack_deferring(order)
        else:
            batches = self._pack_dropping(order)
        self._cache = (key, batches)
        return batches

    def _pack_dropping(self, order):
        """The reference: drop an item whose label is in the open batch."""
        batches, batch, speakers = [], [], set()
        for index in order:
            label = self.labels[index]
            if label in speakers:
                continue
            batch.append(index)
            speakers.add(label)
            if len(batch) == self.batch_size:
                batches.append(batch)
                batch, speakers = [], set()
        return batches

    def _pack_deferring(self, order):
        """Keep an item whose label is in the open batch for a later one."""
        pending = collections.deque(order)
        batches = []
        while len(pending) >= self.batch_size:
            batch, speakers, deferred = [], set(), []
            while pending and len(batch) < self.batch_size:
                index = pending.popleft()
                label = self.labels[index]
                if label in speakers:
                    deferred.append(index)
                else:
                    batch.append(index)
                    speakers.add(label)
            pending.extendleft(reversed(deferred))
            if len(batch) < self.batch_size:
                break
            batches.append(batch)
        return batches

    def __iter__(self):
        """Yield this rank's slice of every global batch."""
        share = self.batch_size // self.num_replicas
        start = self.rank * share
        for batch in self.global_batches():
            yield batch[start : start + share]

    def __len__(self):
        """Number of batches in the current epoch."""
        return len(self.global_batches())

    @mark_as_saver
    def save(self, path):
        """Save seed and epoch (the position is the data loader's).

        Arguments
        ---------
        path : str
            File to write.
        """
        torch.save({"seed": self.seed, "epoch": self.epoch}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restore seed and epoch.

        Arguments
        ---------
        path : str
            File to read.
        end_of_epoch : bool
            Unused.
        """
        del end_of_epoch
        state = safe_torch_load(path)
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
