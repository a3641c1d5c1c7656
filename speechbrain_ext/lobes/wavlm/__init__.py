"""WavLM written for this recipe: all hidden states of a padded batch, exact
padding, and the original and Hugging Face checkpoint layouts.

``config`` holds the hyper-parameters and their translation, ``model`` the
network, ``state_dict`` the parameter-name mapping and checks, and
``checkpoint`` file loading and saving.

Example
-------
>>> import torch
>>> model = WavLM(WavLMConfig.tiny()).eval()
>>> model(torch.randn(1, 16000)).shape
torch.Size([3, 1, 49, 64])
"""

from speechbrain_ext.lobes.wavlm.checkpoint import load_wavlm, save_wavlm
from speechbrain_ext.lobes.wavlm.config import (
    WavLMCheckpointError,
    WavLMConfig,
    format_conv_feature_layers,
    parse_conv_feature_layers,
)
from speechbrain_ext.lobes.wavlm.model import WavLM
from speechbrain_ext.lobes.wavlm.state_dict import (
    state_dict_from_hf,
    state_dict_to_hf,
)

__all__ = [
    "WavLM",
    "WavLMCheckpointError",
    "WavLMConfig",
    "format_conv_feature_layers",
    "load_wavlm",
    "parse_conv_feature_layers",
    "save_wavlm",
    "state_dict_from_hf",
    "state_dict_to_hf",
]
