#!/usr/bin/env python3
"""Stage 1: self-supervised DINO speaker embeddings, no labels anywhere.

A student ECAPA-TDNN (on Fbank features) with a DINO projection head learns
to match an EMA teacher across crops of one utterance: 2 global (~4 s) and
several local (~2 s) crops, each optionally augmented with noise and
reverberation. At the end, the teacher's (or student's) backbone embeds every
training utterance, and the embeddings file seeds the pseudo-label
clustering (``recipes/pseudo_label.py``).

Instead of training, an embeddings file made elsewhere (the reference's
route) can be given with ``--external_embeddings=E.pt``: it is checked to
cover the whole training list and written to ``embeddings_file``.

To run::

    python recipes/train_dino.py hparams/dino.yaml \\
        --data_folder=WAVROOT --train_list=LIST --output_folder=OUT \\
        [--noise_folder=MUSAN --rir_folder=RIRS]

LIST has ``SPEAKER RELPATH`` lines (or ``RELPATH`` alone); only the path is
read. Multi-GPU: ``torchrun --nproc_per_node=N recipes/train_dino.py ...``.
"""

import speechbrain_ext.preflight  # noqa: F401

import csv
import json
import os
import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from data_prep.augmentation import (
    AugmentationDataError,
    prepare_augmentation,
)
from speechbrain_ext.dataio.audio import (
    AudioError,
    audio_frames,
    read_audio,
)
from speechbrain_ext.dataio.embeddings_io import (
    EmbeddingsFileError,
    load_embeddings,
    save_embeddings,
)
from speechbrain_ext.dataio.lists import read_utterance_list
from speechbrain_ext.lobes.dino import (
    WaveformEmbedder,
    cosine_schedule,
    ema_update,
    select_embeddings,
)
from speechbrain_ext.nnet.dino_loss import teacher_temperature
from speechbrain_ext.nnet.embedding_regularization import (
    regularization_weight,
)
from speechbrain_ext.utils.finite import stop_on_nonfinite_loss
from speechbrain_ext.utils.io_utils import atomic_open
from speechbrain_ext.utils.random_state import item_seed
from speechbrain_ext.utils.stage_utils import (
    TRAINING_ERRORS,
    load_stage_hparams,
)
from speechbrain_ext.verification.extraction import embed_full_utterances
from speechbrain_ext.verification.metrics import verification_metrics
from speechbrain_ext.verification.scoring import (
    check_files_exist,
    normalise_rows,
    read_trials,
    score_trials,
)

logger = get_logger(__name__)


class DINOBrain(sb.Brain):
    """Trains the student with the DINO loss; the teacher follows by EMA.

    Expects in ``modules``: ``student`` and ``teacher``
    (:class:`speechbrain_ext.lobes.dino.DINONetwork`), ``dino_loss``
    (:class:`speechbrain_ext.nnet.dino_loss.DINOLoss`), ``compute_features`` and
    ``mean_var_norm``; in ``hparams`` the embedding regulariser
    (:class:`speechbrain_ext.nnet.embedding_regularization.EmbeddingRegularizer`)
    and its weight schedule. ``steps_per_epoch`` must be set before ``fit`` (it
    drives the learning-rate, momentum and temperature schedules).
    """

    steps_per_epoch = None

    def progress_epochs(self):
        """Training progress in (fractional) epochs, from the step counter."""
        return self.optimizer_step / self.steps_per_epoch

    def _features(self, wavs):
        feats = self.modules.compute_features(wavs)
        return self.modules.mean_var_norm(
            feats, torch.ones(wavs.shape[0], device=wavs.device)
        )

    @staticmethod
    def _crop_major(crops):
        """``[B, n, S]`` -> ``[n * B, S]``: all of crop 0, then crop 1..."""
        return crops.transpose(0, 1).reshape(-1, crops.shape[-1])

    def compute_forward(self, batch, stage):
        """Student outputs on all crops, teacher outputs on global ones."""
        batch = batch.to(self.device)
        global_wavs = self._crop_major(batch.global_crops.data)
        groups = [self._features(global_wavs)]
        if hasattr(batch, "local_crops"):
            local_wavs = self._crop_major(batch.local_crops.data)
            groups.append(self._features(local_wavs))
        student_emb, student_out = self.modules.student(groups)
        with torch.no_grad():
            teacher_emb, teacher_out = self.modules.teacher(groups[0])
        return student_emb, student_out, teacher_emb, teacher_out

    def compute_objectives(self, predictions, batch, stage):
        """The DINO loss at the current teacher temperature, plus RDINO's
        embedding regulariser at its current weight."""
        student_emb, student_out, teacher_emb, teacher_out = predictions
        epoch = self.progress_epochs()
        self.temperature = teacher_temperature(
            epoch,
            self.hparams.warmup_teacher_temperature,
            self.hparams.teacher_temperature,
            self.hparams.warmup_teacher_temperature_epochs,
        )
        loss = self.modules.dino_loss(
            student_out, teacher_out, self.temperature
        )
        self.reg_weight = regularization_weight(
            epoch,
            self.hparams.regularization_weight,
            self.hparams.regularization_start_weight,
            self.hparams.regularization_warmup_epochs,
        )
        if self.reg_weight > 0:
            loss = loss + self.reg_weight * (
                self.hparams.embedding_regularizer(student_emb, teacher_emb)
            )
        return loss

    def on_fit_batch_start(self, batch, should_step):
        """Set the learning rate of this step (linear warm-up, cosine)."""
        self.batch_files = batch.id
        if not should_step:
            return
        total = self.hparams.number_of_epochs * self.steps_per_epoch
        warmup = self.hparams.warmup_epochs * self.steps_per_epoch
        step = self.optimizer_step
        if step < warmup:
            lr = self.hparams.lr * (step + 1) / warmup
        else:
            lr = cosine_schedule(
                step - warmup,
                total - warmup,
                self.hparams.lr,
                self.hparams.min_lr,
            )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.lr = lr

    def check_loss_isfinite(self, loss):
        """Stop at a NaN/infinite loss, naming the batch's files.

        A step on such a loss would make the student, then the teacher,
        NaN; under fp16, SpeechBrain's check runs instead.

        Arguments
        ---------
        loss : torch.Tensor
            The scaled loss of the batch.
        """
        if self.scaler.is_enabled():
            super().check_loss_isfinite(loss)
        else:
            stop_on_nonfinite_loss(loss, self.step, self.batch_files)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Move the teacher towards the student (cosine momentum)."""
        if not should_step:
            return
        self.momentum = cosine_schedule(
            self.optimizer_step,
            self.hparams.number_of_epochs * self.steps_per_epoch,
            self.hparams.teacher_momentum,
            1.0,
        )
        ema_update(self.modules.teacher, self.modules.student, self.momentum)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the epoch and save a checkpoint."""
        if stage != sb.Stage.TRAIN:
            return
        stats = {
            "loss": stage_loss,
            "lr": getattr(self, "lr", self.hparams.lr),
            "teacher_momentum": getattr(self, "momentum", None),
            "teacher_temperature": getattr(self, "temperature", None),
            "regularization_weight": getattr(self, "reg_weight", None),
        }
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch}, train_stats=stats
        )
        self.checkpointer.save_and_keep_only(
            meta={"epoch": epoch}, num_to_keep=self.hparams.ckpt_to_keep
        )

    def on_fit_start(self):
        """Under DDP, also make the teacher's batch norms synchronised.

        SpeechBrain converts only modules with trainable parameters, so the
        teacher would normalise with per-process batch statistics, unlike a
        single-process run (DINO syncs the teacher's batch norms too).
        """
        if self.distributed_launch:
            self.modules.teacher = (
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(
                    self.modules.teacher
                )
            )
        super().on_fit_start()

    def init_optimizers(self):
        """One optimizer for the student (the teacher has no gradients)."""
        self.optimizer = self.opt_class(self.modules.student.parameters())
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)


def embed_files(brain, hparams, paths, lengths=None):
    """Embed whole utterances (capped) with the trained backbone, batched.

    Arguments
    ---------
    brain : DINOBrain
        Trained (or recovered) brain.
    hparams : dict
        ``extract_network``, ``extract_max_samples``,
        ``extract_batch_size``.
    paths : list of str
        Audio files.
    lengths : list of int, optional
        Their lengths in samples (capped); read from the headers otherwise.

    Returns
    -------
    numpy.ndarray
        ``[len(paths), D]`` float32.
    """
    network = getattr(brain.modules, hparams["extract_network"])
    model = WaveformEmbedder(
        brain.modules.compute_features,
        brain.modules.mean_var_norm,
        getattr(network, "module", network),
    )
    return embed_full_utterances(
        model,
        paths,
        max_samples=hparams["extract_max_samples"],
        max_batch_size=hparams["extract_batch_size"],
        device=brain.device,
        progress=not brain.noprogressbar,
        lengths=lengths,
    )


def write_embeddings(brain, hparams, items):
    """Embed every usable training utterance; write ``embeddings_file``.

    Arguments
    ---------
    brain : DINOBrain
        Trained (or recovered) brain.
    hparams : dict
    items : list of (str, str, int)
        ``(key, path, samples)`` rows of the audio manifest.
    """
    cap = hparams["extract_max_samples"]
    keys = [key for key, _, _ in items]
    embeddings = embed_files(
        brain,
        hparams,
        [path for _, path, _ in items],
        [min(samples, cap) for _, _, samples in items],
    )
    save_embeddings(
        (keys, torch.from_numpy(embeddings)), hparams["embeddings_file"]
    )
    logger.info(
        "%d %s embeddings -> %s",
        len(keys),
        hparams["extract_network"],
        hparams["embeddings_file"],
    )


def evaluate_trials(brain, hparams):
    """Cosine-score a trial list on whole-utterance embeddings.

    Writes ``eval_file`` (JSON: ``EER`` in percent, ``minDCF_0.05``,
    ``minDCF_0.01``, counts) and logs the result.

    Arguments
    ---------
    brain : DINOBrain
        Trained (or recovered) brain.
    hparams : dict

    Returns
    -------
    dict
        The metrics written.
    """
    trials = read_trials(hparams["trials"])
    files = trials.files
    check_files_exist(files, hparams["data_folder"], hparams["trials"])
    vectors = normalise_rows(
        embed_files(
            brain,
            hparams,
            [os.path.join(hparams["data_folder"], key) for key in files],
        )
    )
    scores = score_trials(vectors, *trials.indices(files))
    metrics = verification_metrics(scores, trials.labels, hparams["trials"])
    metrics["n_trials"] = len(trials.labels)
    with atomic_open(hparams["eval_file"]) as f:
        json.dump(metrics, f, indent=2)
    logger.info(
        "%s: EER %.2f%%, minDCF_0.01 %.4f (%d trials) -> %s",
        hparams["trials"],
        metrics["EER"],
        metrics["minDCF_0.01"],
        len(trials.labels),
        hparams["eval_file"],
    )
    return metrics


def scan_audio(data_folder, keys, manifest, bad_list, on_bad_audio):
    """Check every listed file's header; write the usable ones to a CSV.

    Skipped when ``manifest`` exists. Unreadable, missing, non-16 kHz,
    multi-channel or float files holding NaN or infinite samples (the only
    ones that can) are either fatal (``on_bad_audio="error"``) or left
    out and written to ``bad_list`` with the reason, with a warning giving
    the count and the first one.

    Arguments
    ---------
    data_folder : str
        The wav root.
    keys : list of str
        Paths relative to ``data_folder``.
    manifest : str
        Output CSV with columns ``ID,wav,samples``.
    bad_list : str
        Output text file, one ``RELPATH<TAB>problem`` line per bad file.
    on_bad_audio : str
        ``"skip"`` or ``"error"``.
    """
    if os.path.isfile(manifest):
        return
    rows, bad = [], []
    for key in tqdm(keys, desc="checking audio", mininterval=5):
        path = os.path.join(data_folder, key)
        try:
            frames = audio_frames(path, check_values=True)
        except AudioError as error:
            if on_bad_audio == "error":
                raise
            bad.append((key, str(error)))
            continue
        rows.append((key, path, frames))
    if not rows:
        raise AudioError(f"{data_folder}: none of the listed files is usable")
    if bad:
        logger.warning(
            "%d of %d listed files are unusable and left out (first: %s); "
            "see %s",
            len(bad),
            len(keys),
            bad[0][1],
            bad_list,
        )
    with atomic_open(bad_list) as f:
        f.writelines(f"{key}\t{problem}\n" for key, problem in bad)
    with atomic_open(manifest) as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "wav", "samples"])
        writer.writerows(rows)


def read_manifest(manifest):
    """``(key, path, samples)`` rows of the CSV written by :func:`scan_audio`.

    Arguments
    ---------
    manifest : str

    Returns
    -------
    list of tuple
    """
    with open(manifest, encoding="utf-8", newline="") as f:
        return [
            (row["ID"], row["wav"], int(row["samples"]))
            for row in csv.DictReader(f)
        ]


def _augment_rows(augmenter, crops):
    return (
        torch.stack([augmenter(crop)[0] for crop in crops])
        if len(crops)
        else crops
    )


def dataio_prep(hparams, items, augmenter=None):
    """The training set: each item yields its global and local crops.

    Arguments
    ---------
    hparams : dict
    items : list of (str, str, int)
        ``(key, path, samples)``.
    augmenter : callable, optional
        Applied to each crop apart (``wav -> (wav, choice)``), in the
        data-loading workers.

    Returns
    -------
    speechbrain.dataio.dataset.DynamicItemDataset
    """
    data = {
        key: {"wav": path, "idx": index}
        for index, (key, path, _) in enumerate(items)
    }
    dataset = sb.dataio.dataset.DynamicItemDataset(data)
    multi_crop = hparams["multi_crop"]
    epoch_counter = hparams["epoch_counter"]
    seed = hparams["seed"]

    @sb.utils.data_pipeline.takes("wav", "idx")
    @sb.utils.data_pipeline.provides("global_crops", "local_crops")
    def crop_pipeline(path, index):
        """Global and local crops of one file, each augmented apart.

        Every random draw comes from a generator seeded by (seed, epoch,
        item): an item is the same in every run, in any worker, before and
        after a resume.
        """
        wav = read_audio(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(seed, epoch_counter.current, index))
            global_crops, local_crops = multi_crop(wav)
            if augmenter is not None:
                global_crops = _augment_rows(augmenter, global_crops)
                local_crops = _augment_rows(augmenter, local_crops)
        yield global_crops
        yield local_crops

    sb.dataio.dataset.add_dynamic_item([dataset], crop_pipeline)
    # Without local crops the batch has none: padding empty crops fails.
    keys = ["id", "global_crops"] + (
        ["local_crops"] if multi_crop.n_local else []
    )
    sb.dataio.dataset.set_output_keys([dataset], keys)
    return dataset


def build_crop_augmenter(hparams):
    """The crop augmentation from the noise/RIR folders given (or none).

    The MUSAN / RIR manifests are written (on the main process) in the
    hparams' ``augmentation_folder``, which ``crop_augmenter`` reads.

    Arguments
    ---------
    hparams : dict

    Returns
    -------
    speechbrain_ext.dataio.augment.SixWayAugment or None
        None when neither ``noise_folder`` nor ``rir_folder`` is given and
        no random channel is used.
    """
    augmenter = hparams["crop_augmenter"]
    if hparams["noise_folder"] or hparams["rir_folder"]:
        run_on_main(
            prepare_augmentation,
            kwargs={
                "output_folder": hparams["augmentation_folder"],
                "noise_folder": hparams["noise_folder"],
                "rir_folder": hparams["rir_folder"],
            },
        )
    elif not augmenter.uses_channel:
        logger.info("no noise_folder or rir_folder: crops are not augmented")
        return None
    augmenter.log_coverage()
    return augmenter


def write_external_embeddings(hparams, keys):
    """Check an external embeddings file covers the list; write our copy.

    Arguments
    ---------
    hparams : dict
    keys : list of str
        The training list's paths.
    """
    source = hparams["external_embeddings"]
    file_keys, matrix = load_embeddings(source)
    rows = select_embeddings(file_keys, matrix, keys, source)
    save_embeddings((keys, rows), hparams["embeddings_file"])
    logger.info(
        "external embeddings %s: %d utterances, dim %d -> %s",
        source,
        len(keys),
        rows.shape[1],
        hparams["embeddings_file"],
    )


def main(argv):
    """Run stage 1 from the command line (see the module docstring)."""
    hparams_file, run_opts, overrides, hparams = load_stage_hparams(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    try:
        keys = read_utterance_list(hparams["train_list"])
    except ValueError as error:
        sys.exit(str(error))
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if hparams["external_embeddings"]:
        try:
            run_on_main(write_external_embeddings, args=[hparams, keys])
        except (EmbeddingsFileError, OSError, RuntimeError) as error:
            sys.exit(str(error))
        return

    manifest = os.path.join(hparams["save_folder"], "train_audio.csv")
    scan_kwargs = {
        "data_folder": hparams["data_folder"],
        "keys": keys,
        "manifest": manifest,
        "bad_list": os.path.join(hparams["output_folder"], "bad_audio.txt"),
        "on_bad_audio": hparams["on_bad_audio"],
    }
    try:
        run_on_main(scan_audio, kwargs=scan_kwargs)
    except AudioError as error:
        sys.exit(str(error))
    items = read_manifest(manifest)
    try:
        augmenter = build_crop_augmenter(hparams)
    except AugmentationDataError as error:
        sys.exit(str(error))
    train_set = dataio_prep(hparams, items, augmenter)

    brain = DINOBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    loader_options = dict(hparams["dataloader_options"])
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    per_process = len(items) // world_size
    brain.steps_per_epoch = max(1, per_process // loader_options["batch_size"])
    if per_process < loader_options["batch_size"]:
        sys.exit(
            f"{hparams['train_list']}: {per_process} usable utterances per "
            f"process, fewer than batch_size={loader_options['batch_size']}"
        )
    if hparams["regularization_weight"] > 0 and (
        loader_options["batch_size"] * world_size < 2
    ):
        sys.exit(
            "regularization_weight > 0 needs at least 2 utterances per step "
            f"(batch_size={loader_options['batch_size']} x {world_size} "
            "processes): the regulariser uses batch statistics"
        )
    try:
        brain.fit(
            brain.hparams.epoch_counter,
            train_set,
            train_loader_kwargs=loader_options,
        )
    except TRAINING_ERRORS as error:
        sys.exit(str(error))

    if if_main_process():
        write_embeddings(brain, hparams, items)
        if hparams["trials"]:
            evaluate_trials(brain, hparams)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1:])
