"""The speaker embedding model: WavLM hidden states pooled by MHFA.

``WavLMMHFA`` maps a padded batch of waveforms and SpeechBrain relative
lengths to embeddings ``[batch, 1, size]``, the interface of SpeechBrain's
speaker embedding models, so it can be built with ``!new:`` in hparams and
used by ``speechbrain.inference.speaker.SpeakerRecognition``.
"""

import torch
from torch import nn


class WavLMMHFA(nn.Module):
    """WavLM followed by the MHFA back-end.

    Arguments
    ---------
    wavlm : speechbrain_ext.lobes.wavlm.WavLM
        The speech transformer; returns ``[L + 1, B, T, D]`` hidden states.
    mhfa : speechbrain_ext.lobes.mhfa.MHFA
        The back-end; its ``n_layers`` must be ``L + 1``.
    freeze_transformer : bool
        If True, WavLM runs without gradients and only the back-end trains.

    Example
    -------
    >>> from speechbrain_ext.lobes.mhfa import MHFA
    >>> from speechbrain_ext.lobes.wavlm import WavLM, WavLMConfig
    >>> config = WavLMConfig.tiny()
    >>> model = WavLMMHFA(
    ...     WavLM(config),
    ...     MHFA(n_layers=config.encoder_layers + 1,
    ...          input_size=config.encoder_embed_dim, n_heads=4,
    ...          compression_size=8, output_size=16),
    ... ).eval()
    >>> wavs = torch.randn(2, 16000)
    >>> model(wavs, torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 1, 16])
    """

    def __init__(self, wavlm, mhfa, freeze_transformer=False):
        super().__init__()
        expected = wavlm.config.encoder_layers + 1
        if mhfa.n_layers != expected:
            raise ValueError(
                f"MHFA n_layers={mhfa.n_layers} but WavLM gives {expected} "
                "hidden states (encoder_layers + 1)"
            )
        self.wavlm = wavlm
        self.mhfa = mhfa
        self.freeze_transformer = freeze_transformer
        if freeze_transformer:
            self.wavlm.requires_grad_(False)

    def forward(self, wavs, wav_lens=None):
        """Embed a padded batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``, 16 kHz.
        wav_lens : torch.Tensor, optional
            Relative lengths ``[batch]``; padding does not change the result.

        Returns
        -------
        torch.Tensor
            ``[batch, 1, output_size]``.
        """
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and not self.freeze_transformer
        ):
            hidden = self.wavlm(wavs, wav_lens)
        frames = self.wavlm.valid_frames(wav_lens, wavs.shape[-1])
        return self.forward_hidden(hidden, frames)

    def forward_hidden(self, hidden, frames=None):
        """Run only the back-end on precomputed hidden states.

        Arguments
        ---------
        hidden : torch.Tensor
            ``[L + 1, batch, frames, dim]`` from WavLM.
        frames : torch.LongTensor, optional
            Valid frames of each utterance ``[batch]`` (from
            ``wavlm.valid_frames``); None: all.

        Returns
        -------
        torch.Tensor
            ``[batch, 1, output_size]``.
        """
        return self.mhfa(hidden, frames).unsqueeze(1)
