"""Stage 1's network as a fine-tunable embedding model (the IPL encoder).

Without a pre-trained WavLM, a round that trains a tiny random transformer
from scratch on noisy pseudo-labels learns less than stage 1 already knows
(issue 12). The classic iterative pseudo-labelling (IPL) systems instead
fine-tune the self-supervised stage-1 network itself on its pseudo-labels.
:class:`FbankECAPA` is that network as a waveform-to-embedding model with
the interface of :class:`~speechbrain_ext.lobes.embedding_model.WavLMMHFA`
(``forward(wavs, wav_lens) -> [B, 1, D]``): Fbank features, per-utterance
mean normalisation and SpeechBrain's ECAPA-TDNN, exactly the pipeline stage
1 embeds with, so :func:`load_dino_backbone` starts it from the DINO
checkpoint and it gives the stage-1 embeddings before any fine-tuning.
"""

import os

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization
from torch import nn

from speechbrain_ext.utils.io_utils import safe_torch_load

DINO_NETWORKS = ("student", "teacher")


class FbankECAPA(nn.Module):
    """Waveforms -> Fbank -> sentence mean normalisation -> ECAPA-TDNN.

    Arguments
    ---------
    n_mels : int
        Mel filters of the Fbank features.
    channels : list of int
        ECAPA-TDNN channels (5 entries).
    attention_channels : int
        Channels of the attentive statistics pooling.
    se_channels : int
        Channels of the squeeze-excitation blocks.
    embedding_size : int
        Output size.

    Example
    -------
    >>> model = FbankECAPA(20, [16, 16, 16, 16, 48], 8, 8, 12).eval()
    >>> model(torch.randn(2, 16000), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 1, 12])
    """

    def __init__(
        self,
        n_mels=80,
        channels=(512, 512, 512, 512, 1536),
        attention_channels=128,
        se_channels=128,
        embedding_size=192,
    ):
        super().__init__()
        self.arguments = {
            "n_mels": int(n_mels),
            "channels": [int(c) for c in channels],
            "attention_channels": int(attention_channels),
            "se_channels": int(se_channels),
            "embedding_size": int(embedding_size),
        }
        self.compute_features = Fbank(n_mels=n_mels)
        self.mean_var_norm = InputNormalization(
            norm_type="sentence", std_norm=False
        )
        self.backbone = ECAPA_TDNN(
            n_mels,
            channels=list(channels),
            kernel_sizes=[5, 3, 3, 3, 1],
            dilations=[1, 2, 3, 4, 1],
            attention_channels=attention_channels,
            se_channels=se_channels,
            lin_neurons=embedding_size,
        )

    def forward(self, wavs, wav_lens=None):
        """Embed a padded batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``, 16 kHz.
        wav_lens : torch.Tensor, optional
            Relative lengths ``[batch]`` (the pooling and the normalisation
            ignore the padding; the convolutions near the end see it).

        Returns
        -------
        torch.Tensor
            ``[batch, 1, embedding_size]``.
        """
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        with torch.no_grad():
            feats = self.compute_features(wavs)
            feats = self.mean_var_norm(feats, wav_lens)
        embeddings = self.backbone(feats, wav_lens)
        return embeddings.reshape(wavs.shape[0], 1, -1)


def load_dino_backbone(model, source, network="student"):
    """Start a :class:`FbankECAPA` from a stage-1 DINO checkpoint.

    Arguments
    ---------
    model : FbankECAPA
        Its ``backbone`` receives the weights.
    source : str
        The DINO stage's ``save`` folder (its latest checkpoint is used), a
        ``CKPT+*`` folder, or the DINO output folder.
    network : str
        ``"student"`` or ``"teacher"``: the network stage 1 extracted its
        embeddings with (``extract_network`` of ``hparams/dino.yaml``).

    Returns
    -------
    str
        The checkpoint file read.

    Raises
    ------
    ValueError
        For an unknown ``network``.
    speechbrain_ext.pretrained.checkpoints.CheckpointMismatchError
        When the backbone's tensors do not fit the model (one line naming
        the file and the keys or shapes).
    """
    from speechbrain_ext.pretrained.checkpoints import (
        check_state_dict,
        find_checkpoint,
    )

    if network not in DINO_NETWORKS:
        raise ValueError(
            f"dino_network={network!r}: expected one of {DINO_NETWORKS}"
        )
    folder = find_checkpoint(os.fspath(source), name=network)
    path = os.path.join(folder, f"{network}.ckpt")
    state = safe_torch_load(path)
    prefix = "backbone."
    backbone = {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix)
    }
    check_state_dict(model.backbone.state_dict(), backbone, path)
    model.backbone.load_state_dict(backbone)
    return path
