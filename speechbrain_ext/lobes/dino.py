"""DINO for speaker embeddings: projection head, EMA teacher, multi-crop.

The self-supervised stage 1 of the recipe (RDINO-style, Chen et al., ICASSP
2023, after DINO, Caron et al., ICCV 2021): a student network (a speaker
embedding backbone, e.g. SpeechBrain's ECAPA-TDNN, followed by a projection
head) is trained with :class:`speechbrain_ext.nnet.dino_loss.DINOLoss` to
match a teacher whose weights are an exponential moving average (EMA) of the
student's. The student sees several global and local crops of one
utterance, the teacher only the global ones. No label is used anywhere; the
backbone's embeddings then seed the pseudo-label clustering.

Example
-------
>>> from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
>>> backbone = ECAPA_TDNN(20, channels=[16, 16, 16, 16, 48],
...                       attention_channels=8, se_channels=8,
...                       lin_neurons=12)
>>> student = DINONetwork(backbone, DINOHead(12, 32, 8, 64))
>>> teacher = make_teacher(student)
>>> embeddings, projections = student(torch.randn(3, 50, 20))
>>> embeddings.shape, projections.shape
(torch.Size([3, 12]), torch.Size([3, 64]))
>>> ema_update(teacher, student, momentum=0.996)
"""

import copy
import math

import numpy as np
import torch

from speechbrain_ext.dataio.audio import random_crop
from speechbrain_ext.dataio.embeddings_io import (
    EmbeddingsFileError,
    normalise_key,
)


class DINOHead(torch.nn.Module):
    """DINO projection head: MLP, bottleneck, L2 norm, weight-normed layer.

    Arguments
    ---------
    input_size : int
        Dimension of the backbone embedding.
    hidden_size : int
        Width of the hidden MLP layers (GELU activations).
    bottleneck_size : int
        Dimension of the bottleneck that is L2-normalised.
    output_size : int
        Number of output logits (prototypes).
    n_layers : int
        Number of linear layers before the last one (at least 1).
    norm_last_layer : bool
        Fix the norm of the last layer's weight rows to 1 (the weight-norm
        magnitude is not trained), which stabilises training.

    Example
    -------
    >>> head = DINOHead(192, hidden_size=2048, bottleneck_size=256,
    ...                 output_size=65536)
    >>> head(torch.randn(2, 192)).shape
    torch.Size([2, 65536])
    >>> sum(p.numel() for p in head.parameters() if p.requires_grad)
    21893376
    """

    def __init__(
        self,
        input_size,
        hidden_size=2048,
        bottleneck_size=256,
        output_size=65536,
        n_layers=3,
        norm_last_layer=True,
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be at least 1")
        sizes = [input_size] + [hidden_size] * (n_layers - 1)
        layers = []
        for size_in, size_out in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(size_in, size_out), torch.nn.GELU()]
        layers.append(torch.nn.Linear(sizes[-1], bottleneck_size))
        self.mlp = torch.nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.trunc_normal_(module.weight, std=0.02)
                torch.nn.init.zeros_(module.bias)
        self.last_layer = torch.nn.utils.parametrizations.weight_norm(
            torch.nn.Linear(bottleneck_size, output_size, bias=False)
        )
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x):
        """Project embeddings to DINO logits.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, input_size]``.

        Returns
        -------
        torch.Tensor
            ``[B, output_size]``.
        """
        x = torch.nn.functional.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)


class DINONetwork(torch.nn.Module):
    """A speaker embedding backbone followed by a DINO head.

    Arguments
    ---------
    backbone : torch.nn.Module
        Maps ``(features [B, T, F], lengths [B])`` to embeddings ``[B, D]``
        or ``[B, 1, D]`` (SpeechBrain's ECAPA-TDNN convention).
    head : DINOHead
        The projection head.

    Example
    -------
    >>> from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    >>> backbone = ECAPA_TDNN(80, lin_neurons=192)
    >>> network = DINONetwork(backbone, DINOHead(192, output_size=65536))
    >>> sum(p.numel() for p in backbone.parameters())
    6194048
    >>> embeddings, logits = network(torch.randn(2, 100, 80))
    >>> embeddings.shape, logits.shape
    (torch.Size([2, 192]), torch.Size([2, 65536]))
    """

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def embed(self, features, lengths=None):
        """Backbone embeddings only.

        Arguments
        ---------
        features : torch.Tensor
            ``[B, T, F]`` input features.
        lengths : torch.Tensor, optional
            ``[B]`` relative lengths in (0, 1].

        Returns
        -------
        torch.Tensor
            ``[B, D]``.
        """
        embeddings = self.backbone(features, lengths)
        return embeddings.reshape(embeddings.shape[0], -1)

    def forward(self, features, lengths=None):
        """Backbone embeddings and head outputs.

        Arguments
        ---------
        features : torch.Tensor or list of torch.Tensor
            ``[B, T, F]`` input features, or a list of such groups of
            different lengths (e.g. global and local crops: one call, as
            DDP wants), whose outputs are concatenated in order.
        lengths : torch.Tensor, optional
            ``[B]`` relative lengths in (0, 1] (single tensor input only).

        Returns
        -------
        embeddings : torch.Tensor
            ``[B, D]`` (``[sum B_i, D]`` for a list).
        logits : torch.Tensor
            ``[B, output_size]`` (``[sum B_i, output_size]`` for a list).
        """
        if isinstance(features, (list, tuple)):
            embeddings = torch.cat([self.embed(f) for f in features])
        else:
            embeddings = self.embed(features, lengths)
        return embeddings, self.head(embeddings)


class WaveformEmbedder(torch.nn.Module):
    """A DINO network's backbone as ``model(wavs, wav_lens) -> [B, 1, D]``.

    Features, their per-utterance normalisation and the backbone, the way
    stage 1 embeds: the interface of the recipe's embedding models, so the
    library's batched extraction (:mod:`speechbrain_ext.verification.
    extraction`) embeds with it.

    Arguments
    ---------
    compute_features : torch.nn.Module
        ``wavs [B, S] -> [B, T, F]`` (e.g. SpeechBrain's ``Fbank``).
    mean_var_norm : torch.nn.Module
        ``(feats, lengths) -> feats`` (e.g. ``InputNormalization``).
    network : DINONetwork
        Its backbone embeds (the head is not used).

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    >>> from speechbrain.processing.features import InputNormalization
    >>> backbone = ECAPA_TDNN(20, channels=[16, 16, 16, 16, 48],
    ...                       attention_channels=8, se_channels=8,
    ...                       lin_neurons=12)
    >>> model = WaveformEmbedder(
    ...     Fbank(n_mels=20),
    ...     InputNormalization(norm_type="sentence", std_norm=False),
    ...     DINONetwork(backbone, DINOHead(12, 32, 8, 64)),
    ... ).eval()
    >>> model(torch.randn(2, 16000), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 1, 12])
    """

    def __init__(self, compute_features, mean_var_norm, network):
        super().__init__()
        self.compute_features = compute_features
        self.mean_var_norm = mean_var_norm
        self.network = network

    def forward(self, wavs, wav_lens=None):
        """Embed a padded batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, S]``, 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths in (0, 1]; None: all full.

        Returns
        -------
        torch.Tensor
            ``[B, 1, D]``.
        """
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        feats = self.mean_var_norm(self.compute_features(wavs), wav_lens)
        return self.network.embed(feats, wav_lens).unsqueeze(1)


def make_teacher(student):
    """A frozen copy of the student, to be updated only by :func:`ema_update`.

    Arguments
    ---------
    student : torch.nn.Module

    Returns
    -------
    torch.nn.Module
        A deep copy with ``requires_grad=False`` on every parameter.

    Example
    -------
    >>> teacher = make_teacher(torch.nn.Linear(2, 2))
    >>> any(p.requires_grad for p in teacher.parameters())
    False
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher, student, momentum):
    """``teacher <- momentum * teacher + (1 - momentum) * student``.

    Parameters are matched by name (a DDP wrapper around the student is
    looked through). Buffers such as batch-norm statistics are not copied:
    the teacher keeps the ones its own forward passes produce.

    Arguments
    ---------
    teacher : torch.nn.Module
    student : torch.nn.Module
        Same architecture as ``teacher``.
    momentum : float
        In [0, 1]; 1 leaves the teacher unchanged.

    Example
    -------
    >>> student, teacher = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    >>> with torch.no_grad():
    ...     _ = student.weight.fill_(1.0), teacher.weight.fill_(0.0)
    >>> ema_update(teacher, student, momentum=0.75)
    >>> teacher.weight.item()
    0.25
    """
    student = getattr(student, "module", student)
    student_params = dict(student.named_parameters())
    teacher_params = dict(teacher.named_parameters())
    if {n: p.shape for n, p in student_params.items()} != {
        n: p.shape for n, p in teacher_params.items()
    }:
        raise ValueError("teacher and student have different parameters")
    names = list(teacher_params)
    torch._foreach_lerp_(
        [teacher_params[n].data for n in names],
        [student_params[n].data.to(teacher_params[n].dtype) for n in names],
        1.0 - momentum,
    )


def cosine_schedule(step, total_steps, start, end):
    """A value going from ``start`` to ``end`` on a half cosine.

    Used for the teacher's EMA momentum (0.996 -> 1) and the learning rate.

    Arguments
    ---------
    step : int
        Steps done so far.
    total_steps : int
        Steps of the whole schedule; at and after it, ``end``.
    start : float
        Value at step 0.
    end : float
        Value at ``total_steps``.

    Returns
    -------
    float

    Example
    -------
    >>> [round(cosine_schedule(s, 10, 0.9, 1.0), 3) for s in (0, 5, 10, 20)]
    [0.9, 0.95, 1.0, 1.0]
    """
    progress = min(1.0, max(0.0, step / max(1, total_steps)))
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


class MultiCrop:
    """Random global and local crops of one utterance (wrap-padded).

    Arguments
    ---------
    global_length : int
        Samples per global crop (e.g. 4 s).
    local_length : int
        Samples per local crop (e.g. 2 s).
    n_global : int
        Number of global crops.
    n_local : int
        Number of local crops (0 allowed).

    Example
    -------
    >>> crop = MultiCrop(400, 200, n_global=2, n_local=3)
    >>> global_crops, local_crops = crop(torch.randn(300))
    >>> global_crops.shape, local_crops.shape
    (torch.Size([2, 400]), torch.Size([3, 200]))
    """

    def __init__(self, global_length, local_length, n_global=2, n_local=4):
        if n_global < 1 or n_local < 0:
            raise ValueError("need n_global >= 1 and n_local >= 0")
        self.global_length = int(global_length)
        self.local_length = int(local_length)
        self.n_global = n_global
        self.n_local = n_local

    def __call__(self, wav, generator=None):
        """Crop ``wav`` ``[S]``; return ``[n_global, G]`` and ``[n_local, L]``.

        Arguments
        ---------
        wav : torch.Tensor
            ``[samples]``.
        generator : torch.Generator, optional
            Source of randomness.

        Returns
        -------
        global_crops : torch.Tensor
        local_crops : torch.Tensor
        """
        global_crops = torch.stack(
            [
                random_crop(wav, self.global_length, generator)
                for _ in range(self.n_global)
            ]
        )
        local_crops = (
            torch.stack(
                [
                    random_crop(wav, self.local_length, generator)
                    for _ in range(self.n_local)
                ]
            )
            if self.n_local
            else wav.new_zeros(0, self.local_length)
        )
        return global_crops, local_crops


def select_embeddings(keys, matrix, wanted, source):
    """Rows of ``matrix`` for the ``wanted`` keys, refusing missing ones.

    Used to accept an external embeddings file (e.g. from another DINO
    toolkit) instead of stage 1: it must cover the whole training list.

    Arguments
    ---------
    keys : list of str
        Keys of the embeddings file (paths relative to the wav root).
    matrix : numpy.ndarray
        ``[len(keys), D]``.
    wanted : list of str
        Paths of the training list, relative to the same root.
    source : str
        Name of the file, for error messages.

    Returns
    -------
    numpy.ndarray
        ``[len(wanted), D]`` in the order of ``wanted``.

    Raises
    ------
    EmbeddingsFileError
        One line with the number of missing keys and the first one.

    Example
    -------
    >>> m = np.arange(6, dtype="float32").reshape(3, 2)
    >>> select_embeddings(["a.wav", "b.wav", "c.wav"], m, ["c.wav", "a.wav"],
    ...                   "e.pt").tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    >>> select_embeddings(["a.wav"], m[:1], ["a.wav", "x.wav"], "e.pt")
    Traceback (most recent call last):
    ...
    speechbrain_ext.dataio.embeddings_io.EmbeddingsFileError: e.pt: 1 of 2 \
utterances of the training list have no embedding (first: 'x.wav')
    """
    index = {normalise_key(key): row for row, key in enumerate(keys)}
    rows, missing = [], []
    for key in wanted:
        row = index.get(normalise_key(key))
        if row is None:
            missing.append(key)
        else:
            rows.append(row)
    if missing:
        raise EmbeddingsFileError(
            f"{source}: {len(missing)} of {len(wanted)} utterances of the "
            f"training list have no embedding (first: {missing[0]!r})"
        )
    return np.asarray(matrix)[np.asarray(rows, dtype=np.int64)]
