"""SpeechBrain pretrained interface of an exported WavLM + MHFA model.

An exported folder (``recipes/export_pretrained.py``) loads with SpeechBrain
alone::

    from speechbrain.inference.speaker import SpeakerRecognition
    model = SpeakerRecognition.from_hparams(source=DIR, savedir=TMP)
    model.encode_batch(wavs, wav_lens)          # [B, 1, D]
    score, same = model.verify_files(a, b)      # threshold 0.25 (built in)

SpeechBrain's ``verify_batch`` / ``verify_files`` take SpeechBrain's default
threshold (0.25) unless given one. :class:`WavLMSpeakerVerification` is the
same interface whose ``verify_*`` default to the threshold stored in the
folder's ``hyperparams.yaml`` (calibrated on a development trial list), and
whose ``from_hparams`` checks that a local folder is complete first::

    from speechbrain_ext.pretrained.inference import WavLMSpeakerVerification
    model = WavLMSpeakerVerification.from_hparams(source=DIR, savedir=TMP)
    score, same = model.verify_files(a, b)      # the stored threshold

The folder also carries ``custom.py`` so that
``speechbrain.inference.interfaces.foreign_class(source=DIR,
pymodule_file="custom.py", classname="WavLMSpeakerVerification")`` gives the
same class.
"""

import os
import pickle

import torch
from speechbrain.inference.speaker import SpeakerRecognition

from speechbrain_ext.pretrained.checkpoints import (
    check_exported_folder,
    load_exported_model,
)
from speechbrain_ext.utils.io_utils import load_error


class PassThrough(torch.nn.Module):
    """Identity module taking optional relative lengths.

    SpeechBrain's ``encode_batch`` calls ``compute_features(wavs)`` and
    ``mean_var_norm(feats, wav_lens)``; WavLM takes the waveform itself, so
    both are this module.

    Example
    -------
    >>> PassThrough()(torch.ones(2, 3), torch.ones(2)).shape
    torch.Size([2, 3])
    """

    def forward(self, x, lengths=None):
        """Return ``x`` unchanged.

        Arguments
        ---------
        x : torch.Tensor
            Anything.
        lengths : torch.Tensor, optional
            Ignored.

        Returns
        -------
        torch.Tensor
        """
        return x


class WavLMSpeakerVerification(SpeakerRecognition):
    """SpeechBrain ``SpeakerRecognition`` using the folder's threshold.

    Arguments
    ---------
    *args, **kwargs
        As :class:`speechbrain.inference.speaker.SpeakerRecognition`.

    Example
    -------
    >>> WavLMSpeakerVerification.from_hparams(source="/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent: not a folder (expected an exported model)
    """

    HPARAMS_NEEDED = ["threshold"]

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", **kwargs):
        """Load an exported folder, checking first that it is complete.

        Arguments
        ---------
        source : str
            The exported folder (a remote source is passed on unchecked).
        hparams_file : str
            The hyperparameters file in it.
        **kwargs
            Passed to SpeechBrain's ``from_hparams`` (``savedir``...).

        Returns
        -------
        WavLMSpeakerVerification

        Raises
        ------
        FileNotFoundError
            One line naming the folder and the missing file(s).
        UnsafeCheckpointError, CorruptFileError
            One line naming the weights file, which is refused (never
            executed) when it would need arbitrary code to unpickle.
        CheckpointMismatchError
            One line naming the weights file and the first missing,
            unexpected or mis-shaped tensors, when they do not fit the
            architecture of ``hyperparams.yaml``.
        """
        if not _looks_local(source):
            return super().from_hparams(source, hparams_file, **kwargs)
        check_exported_folder(source)
        try:
            return super().from_hparams(source, hparams_file, **kwargs)
        except pickle.UnpicklingError as error:
            weights = os.path.join(source, "embedding_model.ckpt")
            raise load_error(weights, error) from None
        except RuntimeError as error:
            if "Error(s) in loading state_dict" not in str(error):
                raise
            # torch lists every key; say it in one line (file, first keys).
            load_exported_model(source)
            raise

    @property
    def threshold(self):
        """The cosine threshold stored in the folder."""
        return float(self.hparams.threshold)

    def verify_batch(
        self, wavs1, wavs2, wav1_lens=None, wav2_lens=None, threshold=None
    ):
        """Cosine scores and decisions for pairs of waveform batches.

        Arguments
        ---------
        wavs1, wavs2 : torch.Tensor
            ``[batch, samples]`` at 16 kHz.
        wav1_lens, wav2_lens : torch.Tensor, optional
            Relative lengths; padding does not change the embeddings.
        threshold : float, optional
            Decision threshold; the stored one by default.

        Returns
        -------
        score : torch.Tensor
            ``[batch, 1]`` cosine similarities.
        decision : torch.Tensor
            ``score > threshold``.
        """
        threshold = self.threshold if threshold is None else threshold
        return super().verify_batch(
            wavs1, wavs2, wav1_lens, wav2_lens, threshold=threshold
        )

    def verify_files(self, path_x, path_y, threshold=None, **kwargs):
        """Score two audio files (resampled and down-mixed as needed).

        Arguments
        ---------
        path_x, path_y : str
            Audio files.
        threshold : float, optional
            Decision threshold; the stored one by default.
        **kwargs
            Passed to ``load_audio``.

        Returns
        -------
        score : torch.Tensor
            Cosine similarity ``[1]``.
        decision : torch.Tensor
            ``score > threshold``.
        """
        batch_x = self.load_audio(path_x, **kwargs).unsqueeze(0)
        batch_y = self.load_audio(path_y, **kwargs).unsqueeze(0)
        score, decision = self.verify_batch(
            batch_x, batch_y, threshold=threshold
        )
        return score[0], decision[0]


def _looks_local(source):
    """Whether ``source`` is meant as a local path (not a hub id)."""
    source = os.fspath(source)
    return (
        os.path.isabs(source)
        or source.startswith(".")
        or os.path.exists(source)
    )
