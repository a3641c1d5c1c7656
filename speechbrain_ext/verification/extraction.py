"""Batched embedding extraction: full utterances and evenly spaced crops.

Full utterances are sorted by length and grouped into buckets bounded by a
number of utterances and of padded samples, so a batch wastes little on
padding; the model masks the padding it gets through SpeechBrain relative
lengths (``wav_lens``), so a batched embedding equals the one-at-a-time one.
Audio is read in ``DataLoader`` workers while the model runs. Crops all have
the same length, so the crops of several files make one unpadded batch.

Example
-------
>>> length_batches([5, 1, 3, 2], max_batch_size=2, max_batch_samples=100)
[[1, 3], [2, 0]]
"""

import hashlib
import json
import os
import shutil
import time

import numpy as np
import torch
from speechbrain.utils.distributed import ddp_broadcast, if_main_process
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from speechbrain_ext.dataio.audio import (
    WAVLM_MIN_SAMPLES,
    AudioError,
    audio_frames,
    evenly_spaced_crops,
    read_audio,
)
from speechbrain_ext.dataio.embeddings_io import normalise_key
from speechbrain_ext.dataio.shards import distributed_map, run_sharded
from speechbrain_ext.utils.io_utils import (
    CorruptFileError,
    atomic_torch_save,
    safe_torch_load,
)

logger = get_logger(__name__)

#: Samples per second of every audio file the recipe reads.
SAMPLE_RATE = 16000


def model_digest(model, architecture=""):
    """A SHA-256 of a model's weights and architecture: the cache key.

    Two models with equal tensors (names, dtypes, shapes, values) and the
    same ``architecture`` text embed alike, wherever their weights were
    loaded from: a training checkpoint and its exported folder share one
    digest, so their cached embeddings are shared too.

    Arguments
    ---------
    model : torch.nn.Module
        The embedding model.
    architecture : str
        What else decides its outputs (e.g. the exported ``hyperparams.yaml``
        text of :func:`speechbrain_ext.pretrained.export.model_yaml`).

    Returns
    -------
    str
        64 hexadecimal digits.

    Example
    -------
    >>> a, b = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> model_digest(a) == model_digest(b)
    True
    >>> model_digest(a) == model_digest(a, "another architecture")
    False
    """
    digest = hashlib.sha256(architecture.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(
            f"\n{name} {tensor.dtype} {list(tensor.shape)}\n".encode()
        )
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_batch_size(value, device, gpu_value):
    """The batch size to use on ``device``.

    Batching pays on a GPU; on a CPU, WavLM Base+ already runs one
    utterance near the machine's matrix-product rate, and batches are
    slower (BENCHMARKS.md), so ``"auto"`` means one there.

    Arguments
    ---------
    value : int or str
        A batch size, or ``"auto"``.
    device : str or torch.device
        Where the model runs.
    gpu_value : int
        What ``"auto"`` means on a GPU.

    Returns
    -------
    int

    Example
    -------
    >>> resolve_batch_size("auto", "cpu", 16), resolve_batch_size(4, "cpu", 16)
    (1, 4)
    >>> resolve_batch_size("auto", "cuda:0", 16)
    16
    """
    if value == "auto":
        return 1 if torch.device(device).type == "cpu" else gpu_value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"batch size must be 'auto' or >= 1, got {value!r}")
    return value


def length_batches(lengths, max_batch_size=16, max_batch_samples=4_000_000):
    """Group indices sorted by length into padded-size-bounded batches.

    Arguments
    ---------
    lengths : sequence of int
        Length (samples) of each item.
    max_batch_size : int
        Most items per batch.
    max_batch_samples : int
        Most padded samples per batch (``len(batch) * longest``); a single
        longer item still gets a batch of its own.

    Returns
    -------
    list of list of int
        Batches of indices, shortest first.

    Example
    -------
    >>> length_batches([10, 10, 10, 50], max_batch_size=8,
    ...                max_batch_samples=60)
    [[0, 1, 2], [3]]
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, current = [], []
    for index in order.tolist():
        longest = lengths[index]
        too_big = (len(current) + 1) * longest > max_batch_samples
        if current and (len(current) == max_batch_size or too_big):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class _FullUtterances(torch.utils.data.Dataset):
    """Batches of full utterances (capped), padded, with relative lengths."""

    def __init__(self, paths, batches, max_samples):
        self.paths = paths
        self.batches = batches
        self.max_samples = max_samples

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        batch = self.batches[index]
        wavs = [read_audio(self.paths[i], stop=self.max_samples) for i in batch]
        longest = max(w.shape[0] for w in wavs)
        padded = torch.zeros(len(wavs), longest)
        for row, wav in enumerate(wavs):
            padded[row, : wav.shape[0]] = wav
        lens = torch.tensor([w.shape[0] / longest for w in wavs])
        return torch.tensor(batch), padded, lens


class _Crops(torch.utils.data.Dataset):
    """Batches of files, each as ``n_crops`` evenly spaced crops."""

    def __init__(self, paths, batches, crop_samples, n_crops):
        self.paths = paths
        self.batches = batches
        self.crop_samples = crop_samples
        self.n_crops = n_crops

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        batch = self.batches[index]
        crops = [
            evenly_spaced_crops(
                read_audio(self.paths[i]), self.crop_samples, self.n_crops
            )
            for i in batch
        ]
        return torch.tensor(batch), torch.cat(crops), None


def audio_lengths(paths, max_samples=None, min_samples=WAVLM_MIN_SAMPLES):
    """Number of samples of each file (capped), from the file headers.

    Files that are not 16 kHz mono, empty, shorter than ``min_samples`` (by
    default WavLM's receptive field) or unreadable are refused here, before
    any extraction starts.

    Arguments
    ---------
    paths : sequence of str
        Audio files.
    max_samples : int, optional
        Cap applied to each length.
    min_samples : int
        Fewest samples a file may have.

    Returns
    -------
    list of int

    Example
    -------
    >>> import os, tempfile, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.zeros(800, dtype="float32"), 16000)
    >>> audio_lengths([path], max_samples=500)
    [500]
    """
    lengths = []
    for path in paths:
        frames = audio_frames(path, min_samples=min_samples)
        lengths.append(
            frames if max_samples is None else min(frames, max_samples)
        )
    return lengths


def _run(
    model,
    dataset,
    n_items,
    device,
    num_workers,
    progress,
    description,
    log_summary=True,
):
    """Embed every batch of ``dataset``; return ``(indices, embeddings)``.

    The bar disappears when done (the log keeps the throughput line, when
    ``log_summary``).
    """
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
    )
    all_indices, all_embeddings = [], []
    start = time.perf_counter()
    bar = tqdm(
        total=n_items,
        desc=description,
        unit="utt",
        disable=not progress,
        leave=False,
    )
    model.eval()
    with torch.inference_mode(), bar:
        for indices, wavs, lens in loader:
            wavs = wavs.to(device)
            lens = None if lens is None else lens.to(device)
            embeddings = model(wavs, lens).reshape(wavs.shape[0], -1)
            all_indices.append(indices)
            all_embeddings.append(embeddings.float().cpu())
            bar.update(len(indices))
    elapsed = time.perf_counter() - start
    if log_summary:
        logger.info(
            "%s: %d utterances in %.1f s (%.1f utt/s)",
            description,
            n_items,
            elapsed,
            n_items / max(elapsed, 1e-9),
        )
    return torch.cat(all_indices), torch.cat(all_embeddings)


def embed_full_utterances(
    model,
    paths,
    max_samples=700_000,
    max_batch_size="auto",
    max_batch_samples=4_000_000,
    device="cpu",
    num_workers=0,
    progress=True,
    lengths=None,
    log_summary=True,
):
    """One embedding per file from the whole (capped) utterance, batched.

    Arguments
    ---------
    model : torch.nn.Module
        ``model(wavs [B, S], wav_lens [B]) -> [B, 1, D]`` (or ``[B, D]``).
    paths : sequence of str
        Audio files (16 kHz mono).
    max_samples : int or None
        Keep at most this many samples of each file (the reference's
        700,000); ``None`` keeps everything.
    max_batch_size : int or str
        Most utterances per batch; ``"auto"``: 16 on a GPU, 1 on a CPU
        (see :func:`resolve_batch_size`).
    max_batch_samples : int
        Most padded samples per batch.
    device : str or torch.device
        Where the model runs.
    num_workers : int
        ``DataLoader`` workers reading audio.
    progress : bool
        Show a progress bar (utterances/s).
    lengths : sequence of int, optional
        Known lengths (samples, capped); read from the headers otherwise.
    log_summary : bool
        Log the throughput line (off inside shards: their own line says it).

    Returns
    -------
    numpy.ndarray
        float32 ``[len(paths), D]`` in the order of ``paths``.

    Example
    -------
    >>> import os, tempfile, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, f"{n}.wav") for n in (1, 2)]
    >>> soundfile.write(paths[0], np.full(450, 0.5, "float32"), 16000)
    >>> soundfile.write(paths[1], np.full(500, 0.25, "float32"), 16000)
    >>> class Mean(torch.nn.Module):  # mean over the valid samples
    ...     def forward(self, wavs, lens):
    ...         valid = torch.arange(wavs.shape[1]) < lens[:, None] * 500
    ...         return ((wavs * valid).sum(1) / valid.sum(1))[:, None, None]
    >>> embed_full_utterances(Mean(), paths, progress=False).tolist()
    [[0.5], [0.25]]
    """
    if len(paths) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if lengths is None:
        lengths = audio_lengths(paths, max_samples)
    max_batch_size = resolve_batch_size(max_batch_size, device, 16)
    batches = length_batches(lengths, max_batch_size, max_batch_samples)
    dataset = _FullUtterances(list(paths), batches, max_samples)
    indices, embeddings = _run(
        model,
        dataset,
        len(paths),
        device,
        num_workers,
        progress,
        "full",
        log_summary,
    )
    result = torch.empty_like(embeddings)
    result[indices] = embeddings
    return result.numpy()


def embed_crops(
    model,
    paths,
    crop_samples=64_240,
    n_crops=15,
    files_per_batch="auto",
    device="cpu",
    num_workers=0,
    progress=True,
    log_summary=True,
):
    """``n_crops`` evenly spaced crop embeddings per file, batched.

    Audio shorter than a crop is wrap-padded (as in training).

    Arguments
    ---------
    model : torch.nn.Module
        ``model(wavs [B, S], None) -> [B, 1, D]`` (or ``[B, D]``).
    paths : sequence of str
        Audio files.
    crop_samples : int
        Crop length (the reference's 4 s: 400 frames, 64,240 samples).
    n_crops : int
        Crops per file.
    files_per_batch : int or str
        Files per batch (``files_per_batch * n_crops`` crops); ``"auto"``:
        2 on a GPU, 1 on a CPU (see :func:`resolve_batch_size`).
    device : str or torch.device
        Where the model runs.
    num_workers : int
        ``DataLoader`` workers reading audio.
    progress : bool
        Show a progress bar.
    log_summary : bool
        Log the throughput line (off inside shards: their own line says it).

    Returns
    -------
    numpy.ndarray
        float32 ``[len(paths), n_crops, D]``.
    """
    if len(paths) == 0:
        return np.zeros((0, n_crops, 0), dtype=np.float32)
    audio_lengths(paths)
    files_per_batch = resolve_batch_size(files_per_batch, device, 2)
    order = list(range(len(paths)))
    batches = [
        order[i : i + files_per_batch]
        for i in range(0, len(order), files_per_batch)
    ]
    dataset = _Crops(list(paths), batches, crop_samples, n_crops)
    # Batches hold consecutive files and the loader keeps their order.
    _, embeddings = _run(
        model,
        dataset,
        len(paths),
        device,
        num_workers,
        progress,
        "crops",
        log_summary,
    )
    return embeddings.reshape(len(paths), n_crops, -1).numpy()


def embed_in_shards(
    model,
    paths,
    keys,
    shard_folder,
    shard_seconds=36_000,
    fingerprint="",
    max_samples=700_000,
    progress=True,
    **kwargs,
):
    """:func:`embed_full_utterances` over every process, in resumable shards.

    The files, sorted by length, are cut into shards of at most
    ``shard_seconds`` of audio, dealt to the ``torchrun`` processes (or all
    run by this one) and saved to ``shard_folder`` as they finish; a rerun,
    with any number of processes, reuses every shard whose keys and
    ``fingerprint`` match (see :mod:`speechbrain_ext.dataio.shards`). The folder
    appears with the first finished shard: bad input found before leaves
    nothing behind. Every process must call it alike.

    Arguments
    ---------
    model : torch.nn.Module
        The embedding model.
    paths : sequence of str
        Audio files.
    keys : sequence of str
        One key per file (stored in the shards to validate them).
    shard_folder : str
        Where shards are kept.
    shard_seconds : float
        Most audio per shard, in seconds (after the ``max_samples`` cap).
    fingerprint : str
        Identifies the model and settings; shards with another one are
        recomputed.
    max_samples : int or None
        Cap of each utterance (see :func:`embed_full_utterances`).
    progress : bool
        Show the batch progress bar (on the main process).
    **kwargs
        Passed to :func:`embed_full_utterances`.

    Returns
    -------
    numpy.ndarray or None
        float32 ``[len(paths), D]`` in the order of ``paths`` on the main
        process; None on the others.
    """
    lengths = distributed_map(
        lambda part: audio_lengths(part, max_samples), paths, (AudioError,)
    )
    show = progress and if_main_process()

    def work(positions):
        """Full-utterance embeddings of the files at ``positions``."""
        return {
            "full": embed_full_utterances(
                model,
                [paths[i] for i in positions],
                max_samples=max_samples,
                progress=show,
                lengths=[lengths[i] for i in positions],
                log_summary=False,
                **kwargs,
            )
        }

    arrays = run_sharded(
        work,
        keys,
        lengths,
        shard_folder,
        fingerprint,
        round(shard_seconds * SAMPLE_RATE),
        SAMPLE_RATE,
    )
    return None if arrays is None else arrays["full"]


def find_wavs(folder):
    """Every ``.wav`` under ``folder``, as sorted relative paths.

    Arguments
    ---------
    folder : str
        The wav root.

    Returns
    -------
    list of str

    Example
    -------
    >>> import tempfile
    >>> find_wavs(tempfile.mkdtemp())
    []
    """
    keys = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(".wav"):
                relative = os.path.relpath(os.path.join(root, name), folder)
                keys.append(normalise_key(relative))
    return sorted(keys)


def evaluation_embeddings(
    model,
    keys,
    data_folder,
    cache_path,
    fingerprint,
    n_crops=15,
    crop_samples=64_240,
    max_samples=700_000,
    crop_files_per_batch="auto",
    shard_seconds=36_000,
    progress=True,
    **kwargs,
):
    """Crop and full-utterance embeddings of files, cached on disk.

    The cache (one ``torch.save`` file) holds the keys, the embeddings and
    the settings they were made with; files already in a cache with the
    same settings are not recomputed, new ones are added (so evaluating
    VoxCeleb1-O then -E reuses the work). New files are embedded over every
    ``torchrun`` process in resumable shards (``<cache_path>.shards``, see
    :func:`embed_in_shards`), balanced by the audio the model reads (the
    capped utterance plus the crops); the main process writes the cache.
    Every process must call it alike.

    Arguments
    ---------
    model : torch.nn.Module
        The embedding model.
    keys : sequence of str
        Paths relative to ``data_folder``.
    data_folder : str
        The wav root.
    cache_path : str
        The cache file.
    fingerprint : str
        Identifies the model: its weights and architecture
        (:func:`model_digest`), not where they were loaded from.
    n_crops, crop_samples : int
        Evenly spaced crops per file and their length.
    max_samples : int or None
        Cap of the full-utterance input.
    crop_files_per_batch : int or str
        Files per crop batch (see :func:`embed_crops`).
    shard_seconds : float
        Most model input (seconds of audio, crops included) per shard.
    progress : bool
        Show progress bars (on the main process).
    **kwargs
        ``device``, ``num_workers`` and the batching options of
        :func:`embed_full_utterances`.

    Returns
    -------
    crops : numpy.ndarray or None
        ``[len(keys), n_crops, D]`` on the main process, None elsewhere.
    full : numpy.ndarray or None
        ``[len(keys), D]`` on the main process, None elsewhere.
    """
    settings = {
        "fingerprint": fingerprint,
        "n_crops": n_crops,
        "crop_samples": crop_samples,
        "max_samples": max_samples,
    }
    # Only the main process reads the cache (it may hold gigabytes); the
    # others learn which files are new.
    main = if_main_process()
    cached = _load_cache(cache_path, settings) if main else None
    new = ddp_broadcast(_missing(keys, cached) if main else None)
    if new:
        if main:
            logger.info(
                "embedding %d files (%d cached)",
                len(new),
                len(keys) - len(new),
            )
        arrays = _embed_new_files(
            model,
            [os.path.join(data_folder, key) for key in new],
            new,
            cache_path + ".shards",
            settings,
            crop_files_per_batch,
            shard_seconds,
            progress=progress and main,
            **kwargs,
        )
        if main:
            cached = {
                "settings": settings,
                "keys": cached["keys"] + new,
                "full": _append(cached["full"], arrays["full"]),
                "crops": _append(cached["crops"], arrays["crops"]),
            }
            atomic_torch_save(cached, cache_path)
            shutil.rmtree(cache_path + ".shards", ignore_errors=True)
    if not main:
        return None, None
    position = {key: i for i, key in enumerate(cached["keys"])}
    rows = torch.tensor([position[key] for key in keys], dtype=torch.long)
    return cached["crops"][rows].numpy(), cached["full"][rows].numpy()


def _missing(keys, cached):
    """The keys not in the cache, in order."""
    known = set(cached["keys"])
    return [key for key in keys if key not in known]


def _embed_new_files(
    model,
    paths,
    keys,
    shard_folder,
    settings,
    crop_files_per_batch,
    shard_seconds,
    progress,
    **kwargs,
):
    """Full and crop embeddings of ``paths`` through :func:`run_sharded`."""
    n_crops, crop_samples = settings["n_crops"], settings["crop_samples"]
    max_samples = settings["max_samples"]
    lengths = distributed_map(
        lambda part: audio_lengths(part, max_samples), paths, (AudioError,)
    )
    common = {k: kwargs[k] for k in ("device", "num_workers") if k in kwargs}

    def work(positions):
        """Both kinds of embeddings of the files at ``positions``."""
        part = [paths[i] for i in positions]
        return {
            "full": embed_full_utterances(
                model,
                part,
                max_samples,
                progress=progress,
                lengths=[lengths[i] for i in positions],
                log_summary=False,
                **kwargs,
            ),
            "crops": embed_crops(
                model,
                part,
                crop_samples,
                n_crops,
                crop_files_per_batch,
                progress=progress,
                log_summary=False,
                **common,
            ),
        }

    return run_sharded(
        work,
        keys,
        [length + n_crops * crop_samples for length in lengths],
        shard_folder,
        json.dumps(settings, sort_keys=True),
        round(shard_seconds * SAMPLE_RATE),
        SAMPLE_RATE,
    )


def _append(old, new):
    """Rows of ``new`` (numpy) after those of ``old`` (tensor or None)."""
    new = torch.from_numpy(new)
    return new if old is None else torch.cat([old, new])


def _load_cache(path, settings):
    """A matching evaluation cache, else an empty one."""
    empty = {"settings": settings, "keys": [], "full": None, "crops": None}
    if not os.path.isfile(path):
        return empty
    try:
        cached = safe_torch_load(path)
    except CorruptFileError as error:
        logger.warning("ignoring the embeddings cache: %s", error)
        return empty
    if not isinstance(cached, dict) or cached.get("settings") != settings:
        logger.info("%s: made with another model or settings, ignored", path)
        return empty
    return cached
