"""Random states that survive a kill: per-item seeds and a recoverable.

A run killed at any moment and resumed from its checkpoint must give
bit-identical results. Two mechanisms make that so:

- :func:`item_seed`: everything random about a training item (crop,
  augmentation choice, noise files, SNR, RIR) is drawn from a generator
  seeded by ``(seed, epoch, item)``; the per-step randomness of the model
  (dropout, layer drop) from ``(seed, epoch, step, rank)``. Such draws do not
  depend on what ran before, in which data-loading worker, nor on whether
  the run was resumed, so there is no stream position to save.
- :class:`GlobalRandomState`: a Checkpointer recoverable holding the global
  generators of torch (CPU and CUDA), numpy and Python's ``random``, for any
  other consumer; they are restored as they were at the checkpoint.

Example
-------
>>> item_seed(1986, 2, 17) == item_seed(1986, 2, 17)
True
>>> item_seed(1986, 2, 17) == item_seed(1986, 3, 17)
False
"""

import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from speechbrain_ext.utils.io_utils import safe_torch_load


def item_seed(*key):
    """A 32-bit seed from a tuple of non-negative integers.

    Arguments
    ---------
    *key : int
        E.g. ``(seed, epoch, item index)``.

    Returns
    -------
    int

    Example
    -------
    >>> item_seed(0, 1, 2)
    3884055042
    """
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


@register_checkpoint_hooks
class GlobalRandomState:
    """The global random generators as a Checkpointer recoverable.

    Saves torch's CPU generator, every CUDA generator (when CUDA is
    initialised), numpy's legacy global generator and Python's ``random``;
    loading restores all of them.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "rng.ckpt")
    >>> state = GlobalRandomState()
    >>> _ = torch.manual_seed(3); np.random.seed(3); random.seed(3)
    >>> state.save(path)
    >>> expected = (torch.rand(1), np.random.rand(), random.random())
    >>> state.load(path)
    >>> (torch.rand(1), np.random.rand(), random.random()) == expected
    True
    """

    @mark_as_saver
    def save(self, path):
        """Write the generators' states.

        Arguments
        ---------
        path : str
            File to write.
        """
        numpy_state = np.random.get_state()
        python_state = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": numpy_state[0],
                "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                "pos": int(numpy_state[2]),
                "has_gauss": int(numpy_state[3]),
                "cached_gaussian": float(numpy_state[4]),
            },
            "python": {
                "version": python_state[0],
                "internal": list(python_state[1]),
                "gauss_next": python_state[2],
            },
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restore the generators' states.

        Arguments
        ---------
        path : str
            File to read.
        end_of_epoch : bool
            Unused: the states are restored in any case.
        """
        del end_of_epoch
        state = safe_torch_load(path)
        torch.set_rng_state(state["torch"])
        numpy_state = state["numpy"]
        np.random.set_state(
            (
                numpy_state["kind"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        python_state = state["python"]
        random.setstate(
            (
                python_state["version"],
                tuple(python_state["internal"]),
                python_state["gauss_next"],
            )
        )
        if "cuda" in state and torch.cuda.is_available():
            cuda_states = state["cuda"]
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
