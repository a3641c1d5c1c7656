"""A SpeechBrain ``FileTrainLogger`` that logs each epoch once across resumes.

The epoch line is written before the end-of-epoch checkpoint; a run killed
in between (or after any later line) re-runs that part after recovery and
would log it again. As a Checkpointer recoverable, this logger records the
length of its file in every checkpoint and, when a checkpoint is recovered,
cuts the file back to that length, so the resumed run writes each line
exactly once.

Example
-------
>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> log = ResumableFileTrainLogger(os.path.join(folder, "train_log.txt"))
>>> log.log_stats({"epoch": 1}, train_stats={"loss": 1.0})
>>> log.save(os.path.join(folder, "train_log.ckpt"))
>>> log.log_stats({"epoch": 2}, train_stats={"loss": 0.5})
>>> log.load(os.path.join(folder, "train_log.ckpt"))
>>> print(open(log.save_file).read().strip())
epoch: 1 - train loss: 1.00e+00
"""

import json
import os

from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.train_logger import FileTrainLogger


@register_checkpoint_hooks
class ResumableFileTrainLogger(FileTrainLogger):
    """``FileTrainLogger`` whose file is cut back to a recovered checkpoint.

    Arguments
    ---------
    save_file : str
        The log file.
    precision : int
        Digits of the logged numbers.
    """

    def _size(self):
        try:
            return os.path.getsize(self.save_file)
        except FileNotFoundError:
            return 0

    @mark_as_saver
    def save(self, path):
        """Record the current length of the log file.

        Arguments
        ---------
        path : str
            File to write.
        """
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"bytes": self._size()}, f)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Cut the log file back to the length it had at the checkpoint.

        Arguments
        ---------
        path : str
            File to read.
        end_of_epoch : bool
            Unused.
        """
        del end_of_epoch
        with open(path, encoding="utf-8") as f:
            length = int(json.load(f)["bytes"])
        if if_main_process() and self._size() > length:
            os.truncate(self.save_file, length)
