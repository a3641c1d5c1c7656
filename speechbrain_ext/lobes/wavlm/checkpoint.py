"""Loading and saving WavLM checkpoints in the original layout
(``WavLM-Base+.pt``: a dict with ``cfg`` and ``model``) or from a Hugging
Face folder (``config.json`` + weights), the layout detected.

Example
-------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "wavlm.pt")
>>> save_wavlm(WavLM(WavLMConfig.tiny()), path)
>>> load_wavlm(path).config.encoder_layers
2
"""

import json
import os

from speechbrain.utils.logger import get_logger

from speechbrain_ext.lobes.wavlm.config import WavLMCheckpointError, WavLMConfig
from speechbrain_ext.lobes.wavlm.model import WavLM
from speechbrain_ext.lobes.wavlm.state_dict import (
    check_state_dict,
    first_keys,
    state_dict_from_hf,
)
from speechbrain_ext.utils.io_utils import (
    CorruptFileError,
    atomic_torch_save,
    safe_torch_load,
)

logger = get_logger(__name__)


def _load_hf_folder(folder):
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{folder}: neither a WavLM checkpoint file nor a Hugging Face "
            "folder (no config.json)"
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            hf_config = json.load(f)
        normalize = None
        preprocessor = os.path.join(folder, "preprocessor_config.json")
        if os.path.isfile(preprocessor):
            with open(preprocessor, encoding="utf-8") as f:
                normalize = json.load(f).get("do_normalize")
        config = WavLMConfig.from_hf_config(hf_config, normalize=normalize)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise WavLMCheckpointError(f"{config_path}: {error}") from None
    safetensors_path = os.path.join(folder, "model.safetensors")
    bin_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        source = safetensors_path
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(
                f"{source}: reading it needs the 'safetensors' package "
                "(pip install safetensors)"
            ) from None
        try:
            hf_state = load_file(source)
        except (SafetensorError, OSError) as error:
            raise CorruptFileError(
                f"{source}: cannot be read as safetensors ({error})"
            ) from None
    elif os.path.isfile(bin_path):
        source = bin_path
        hf_state = safe_torch_load(source)
    else:
        raise FileNotFoundError(
            f"{folder}: no model.safetensors or pytorch_model.bin"
        )
    if not isinstance(hf_state, dict):
        raise WavLMCheckpointError(f"{source}: not a state dict")
    state, dropped = state_dict_from_hf(hf_state, config.extractor_mode)
    model = WavLM(config)
    check_state_dict(model.state_dict(), state, source)
    model.load_state_dict(state)
    if dropped:
        logger.info(
            "%s: ignored keys not used for features: %s",
            source,
            ", ".join(dropped),
        )
    return model


def load_wavlm(path, map_location="cpu"):
    """Load a pre-trained WavLM (eval mode), detecting the layout.

    Arguments
    ---------
    path : str or os.PathLike
        The original checkpoint file (``WavLM-Base+.pt``: a dict with
        ``cfg`` and ``model``) or a Hugging Face folder (``config.json`` and
        ``model.safetensors`` or ``pytorch_model.bin``). Read with
        ``weights_only=True``: a file needing arbitrary code is refused.
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    WavLM

    Raises
    ------
    FileNotFoundError, UnsafeCheckpointError, CorruptFileError,
    WavLMCheckpointError
        With one line naming the file and the problem.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "wavlm.pt")
    >>> save_wavlm(WavLM(WavLMConfig.tiny()), path)
    >>> load_wavlm(path).training
    False
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        model = _load_hf_folder(path)
    else:
        checkpoint = safe_torch_load(path)
        if not (
            isinstance(checkpoint, dict)
            and "cfg" in checkpoint
            and "model" in checkpoint
        ):
            found = (
                f"keys {first_keys(sorted(map(str, checkpoint)))}"
                if isinstance(checkpoint, dict)
                else f"a {type(checkpoint).__name__}"
            )
            raise WavLMCheckpointError(
                f"{path}: not a WavLM checkpoint (expected a dict with 'cfg' "
                f"and 'model', found {found})"
            )
        try:
            config = WavLMConfig.from_original_cfg(checkpoint["cfg"])
        except (ValueError, TypeError) as error:
            raise WavLMCheckpointError(f"{path}: bad cfg: {error}") from None
        model = WavLM(config)
        model.load_original_state_dict(checkpoint["model"], source=path)
    return model.to(map_location).eval()


def save_wavlm(model, path):
    """Save a WavLM in the original checkpoint layout (atomically).

    The file is ``{"cfg": dict, "model": state_dict}`` like
    ``WavLM-Base+.pt``; pre-training-only tensors (``mask_emb``) are not
    written.

    Arguments
    ---------
    model : WavLM
        The model.
    path : str or os.PathLike
        Destination file.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "wavlm.pt")
    >>> save_wavlm(WavLM(WavLMConfig.tiny()), path)
    >>> sorted(safe_torch_load(path))
    ['cfg', 'model']
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {"cfg": model.config.to_original_cfg(), "model": state}, path
    )
