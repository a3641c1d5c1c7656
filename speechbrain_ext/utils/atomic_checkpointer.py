"""A SpeechBrain Checkpointer whose checkpoints appear only when complete.

SpeechBrain's ``Checkpointer`` writes a checkpoint's ``CKPT.yaml`` first and
the parameter files after it; a run killed in between leaves a folder that
looks like a checkpoint but holds truncated files, and the next run fails
when it recovers from it. Here ``CKPT.yaml`` is written last (renamed into
place once every file is saved), so an interrupted save leaves a folder
that SpeechBrain does not list as a checkpoint, and recovery uses the
previous one; such leftovers are deleted when the next run recovers.

A checkpoint is refused (one-line error, nothing written) when a module or
optimizer holds NaN or infinite values, and a save that fails (disk full)
is removed and reported with the folder. Recovering a checkpoint that does
not fit the model built from the hparams, or that would need arbitrary code
to unpickle, is one line naming the file.

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
import pickle
import shutil

import torch
from speechbrain.utils.checkpoints import METAFNAME, Checkpointer
from speechbrain.utils.distributed import ddp_barrier, if_main_process
from speechbrain.utils.logger import get_logger

from speechbrain_ext.utils.finite import check_recoverables
from speechbrain_ext.utils.io_utils import (
    OutputWriteError,
    UnsafeCheckpointError,
    load_error,
    safe_torch_load,
)

logger = get_logger(__name__)

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

        Raises
        ------
        NonFiniteCheckpointError
            A module or optimizer holds NaN or infinity; nothing is written.
        OutputWriteError
            The save failed (disk full...); the partial folder is removed.
        """
        check_recoverables(self.recoverables, str(self.checkpoints_dir))
        self._pending = None
        try:
            checkpoint = super().save_checkpoint(*args, **kwargs)
            if if_main_process() and self._pending is not None:
                pending, final = self._pending
                os.replace(pending, final)
            # Every process must see the checkpoint complete before going
            # on: SpeechBrain's delete_checkpoints lists the folder on each
            # process and calls a collective per checkpoint to delete, so
            # a process that listed it before the rename would deadlock.
            ddp_barrier()
        except OSError as error:
            if self._pending is not None and if_main_process():
                shutil.rmtree(self._pending[0].parent, ignore_errors=True)
            raise OutputWriteError(
                error.errno,
                f"{self.checkpoints_dir}: cannot save a checkpoint: "
                f"{error.strerror or error}; the last good checkpoint is kept",
            ) from None
        finally:
            self._pending = None
        return checkpoint

    def remove_incomplete(self):
        """Delete ``CKPT+*`` folders whose save never completed.

        Returns
        -------
        list of str
            The folders removed (on the main process only).
        """
        removed = []
        if not if_main_process() or not self.checkpoints_dir.is_dir():
            return removed
        for folder in self.checkpoints_dir.glob("CKPT+*"):
            if folder.is_dir() and not (folder / METAFNAME).exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
        if removed:
            logger.info(
                "removed %d incomplete checkpoint(s) of an interrupted "
                "save: %s",
                len(removed),
                ", ".join(removed),
            )
        return removed

    def recover_if_possible(self, *args, **kwargs):
        """Remove incomplete checkpoints, then recover the chosen one.

        Arguments
        ---------
        *args, **kwargs
            As :meth:`speechbrain.utils.checkpoints.Checkpointer.
            recover_if_possible`.

        Returns
        -------
        Checkpoint or None
        """
        self.remove_incomplete()
        return super().recover_if_possible(*args, **kwargs)

    def load_checkpoint(self, checkpoint):
        """Load a checkpoint; a file that does not fit is one clear error.

        Arguments
        ---------
        checkpoint : Checkpoint
            The checkpoint to load.

        Raises
        ------
        CheckpointMismatchError
            A module's file does not fit the model built from the hparams.
        UnsafeCheckpointError, CorruptFileError
            A file needs arbitrary code to unpickle, or is unreadable.
        """
        try:
            super().load_checkpoint(checkpoint)
        except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
            raise self._diagnose(checkpoint, error) from None

    def _diagnose(self, checkpoint, error):
        """The one-line error for a checkpoint that failed to load."""
        from speechbrain_ext.pretrained.checkpoints import (
            CheckpointMismatchError,
            check_state_dict,
        )

        for name, recoverable in self.recoverables.items():
            path = checkpoint.paramfiles.get(name)
            if path is None or not isinstance(recoverable, torch.nn.Module):
                continue
            try:
                state = safe_torch_load(path)
                check_state_dict(recoverable.state_dict(), state, str(path))
            except CheckpointMismatchError as mismatch:
                return CheckpointMismatchError(
                    f"{mismatch} (resuming {checkpoint.path}: use the hparams "
                    "of that run, or another output_folder)"
                )
            except (UnsafeCheckpointError, RuntimeError) as bad:
                return bad
        return load_error(str(checkpoint.path), error)
