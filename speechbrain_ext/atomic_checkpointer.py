"""A SpeechBrain Checkpointer whose checkpoints appear only when complete.

SpeechBrain's ``Checkpointer`` writes a checkpoint's ``CKPT.yaml`` first and
the parameter files after it; a run killed in between leaves a folder that
looks like a checkpoint but holds truncated files, and the next run fails
when it recovers from it. Here ``CKPT.yaml`` is written last (renamed into
place once every file is saved), so an interrupted save leaves a folder
that SpeechBrain does not list as a checkpoint, and recovery uses the
previous one.

Example
-------
>>> import tempfile, torch
>>> model = torch.nn.Linear(2, 2)
>>> folder = tempfile.mkdtemp()
>>> checkpointer = AtomicCheckpointer(folder, {"model": model})
>>> checkpoint = checkpointer.save_checkpoint(meta={"epoch": 1})
>>> sorted(p.name for p in checkpoint.path.iterdir())
['CKPT.yaml', 'model.ckpt']
>>> checkpointer.find_checkpoint().meta["epoch"]
1
"""

import os

from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import if_main_process

PENDING_SUFFIX = ".pending"


class AtomicCheckpointer(Checkpointer):
    """``Checkpointer`` that writes the checkpoint's meta file last.

    Same arguments and behaviour as
    :class:`speechbrain.utils.checkpoints.Checkpointer`.

    Example
    -------
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> checkpointer = AtomicCheckpointer(folder, {"m": torch.nn.Linear(1, 1)})
    >>> first = checkpointer.save_checkpoint(meta={"step": 1})
    >>> # A save killed half-way: files written, no CKPT.yaml yet.
    >>> broken = checkpointer.checkpoints_dir / "CKPT+killed"
    >>> broken.mkdir()
    >>> _ = (broken / "m.ckpt").write_bytes(b"trunc")
    >>> _ = (broken / ("CKPT.yaml" + PENDING_SUFFIX)).write_text("step: 2")
    >>> checkpointer.find_checkpoint().meta["step"]
    1
    """

    _pending = None

    def _save_checkpoint_metafile(
        self, fpath, meta_to_include={}, end_of_epoch=True
    ):
        pending = fpath.parent / (fpath.name + PENDING_SUFFIX)
        saved = super()._save_checkpoint_metafile(
            pending, meta_to_include, end_of_epoch
        )
        self._pending = (pending, fpath)
        return saved

    def save_checkpoint(self, *args, **kwargs):
        """Save a checkpoint; it becomes visible only once complete.

        Arguments
        ---------
        *args, **kwargs
            As :meth:`speechbrain.utils.checkpoints.Checkpointer.
            save_checkpoint`.

        Returns
        -------
        Checkpoint
            The saved checkpoint (None on non-main processes).
        """
        checkpoint = super().save_checkpoint(*args, **kwargs)
        if if_main_process() and self._pending is not None:
            pending, final = self._pending
            os.replace(pending, final)
            self._pending = None
        return checkpoint
