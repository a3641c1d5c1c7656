#!/usr/bin/env python3
"""Fine-tune WavLM + MHFA on pseudo-labels (a round, or LMFT).

Loss: AAM-softmax cross-entropy per sample; the dynamic loss gate leaves out
samples whose log-loss lies above the crossing of a 2-component GMM fitted on
the previous epoch (from ``gate_start_epoch``); label correction re-labels
rejected samples from their clean view (from ``lc_start_epoch``); L2-SP keeps
the transformer near its pre-trained weights.

``encoder: ecapa`` fine-tunes stage 1's ECAPA-TDNN (started from the DINO
checkpoint) instead of WavLM + MHFA, with the same loss, gate, label
correction and L2-SP (towards the DINO weights): the iterative
pseudo-labelling encoder for runs without a pre-trained WavLM.

DDP: ``batch_size`` is the global batch. Every process takes an equal slice
of each global batch; per-sample losses are gathered so the gate, the loss
normalisation and the recorded losses are those of the global batch, and one
step of N processes equals one step of a single process.

Usage::

    python train.py hparams/round1.yaml --data_folder=WAVROOT \\
        --train_list=PL.txt --pretrained_wavlm=WavLM-Base+.pt \\
        --output_folder=OUT [--noise_folder=MUSAN --rir_folder=RIRS]
    torchrun --nproc_per_node=2 train.py hparams/round1.yaml ...
"""

import speechbrain_ext.preflight  # noqa: F401

import os
import sys

import soundfile
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from data_prep.augmentation import prepare_augmentation
from speechbrain_ext.dataio.audio import AudioError, read_audio, wrap_pad
from speechbrain_ext.dataio.lists import TrainListError, read_train_list
from speechbrain_ext.dataio.sampler import SpeakerBalancedBatchSampler
from speechbrain_ext.lobes.ecapa_embedding import FbankECAPA
from speechbrain_ext.nnet.l2sp import L2SP
from speechbrain_ext.nnet.loss_gate import default_plot_path
from speechbrain_ext.nnet.pseudo_label_objective import (
    COUNTER_KEYS,
    PseudoLabelObjective,
)
from speechbrain_ext.pretrained.checkpoints import (
    CheckpointNotFoundError,
    load_state,
)
from speechbrain_ext.utils.finite import stop_on_nonfinite_loss
from speechbrain_ext.utils.io_utils import safe_torch_load
from speechbrain_ext.utils.random_state import item_seed
from speechbrain_ext.utils.stage_utils import (
    TRAINING_ERRORS,
    check_output_paths,
    exit_on_input_errors,
    parse_stage_arguments,
    preview_hparams,
    removed_on_failure,
)
from speechbrain_ext.verification.training_diagnostics import (
    EpochHistory,
    label_diagnostics,
    label_truth,
)

logger = get_logger(__name__)

#: The epoch's counters: the objective's, and the number of steps.
STAT_KEYS = COUNTER_KEYS + ("steps",)


@register_checkpoint_hooks
class EpochStats:
    """Counters of the running epoch, saved in intra-epoch checkpoints.

    Example
    -------
    >>> stats = EpochStats()
    >>> stats.add(samples=4, kept=3)
    >>> stats.counts["kept"]
    3.0
    """

    def __init__(self):
        self.reset()

    def reset(self):
        """Zero all counters."""
        self.counts = dict.fromkeys(STAT_KEYS, 0.0)

    def add(self, **values):
        """Add to counters.

        Arguments
        ---------
        **values
            Counter name -> amount.
        """
        for key, value in values.items():
            self.counts[key] += float(value)

    @mark_as_saver
    def save(self, path):
        """Write the counters.

        Arguments
        ---------
        path : str
            File to write.
        """
        torch.save(self.counts, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Read the counters.

        Arguments
        ---------
        path : str
            File to read.
        end_of_epoch : bool
            At the end of an epoch the counters start from zero.
        """
        self.reset()
        if not end_of_epoch:
            self.counts.update(safe_torch_load(path))


def freeze_wavlm(wavlm):
    """Freeze everything of WavLM except its transformer layers.

    Arguments
    ---------
    wavlm : speechbrain_ext.lobes.wavlm.WavLM
        Modified in place.

    Returns
    -------
    speechbrain_ext.lobes.wavlm.WavLM
        The same module.
    """
    wavlm.requires_grad_(False)
    for layer in wavlm.transformer_layers():
        layer.requires_grad_(True)
    return wavlm


def describe_fit(gate):
    """The gate fit of an epoch in words, for the epoch history.

    Arguments
    ---------
    gate : dict
        As returned by ``DynamicLossGate.end_epoch``.

    Returns
    -------
    str or None
        ``"ok"``, ``"degenerate (REASON)"``, or None when no fit was made.

    Example
    -------
    >>> describe_fit({"fitted": True, "degenerate": None})
    'ok'
    """
    if not gate["fitted"]:
        return None
    if gate["degenerate"]:
        return f"degenerate ({gate['degenerate']})"
    return "ok"


def prepare_encoder(model):
    """Freeze what a round does not train; return what L2-SP anchors.

    WavLM + MHFA (the reference): only the transformer layers of WavLM (and
    the MHFA) are trained, and L2-SP pulls the WavLM towards its pre-trained
    weights. ECAPA-TDNN: the whole network is trained, and L2-SP pulls it
    towards its stage-1 (DINO) weights.

    Arguments
    ---------
    model : WavLMMHFA or FbankECAPA
        Modified in place.

    Returns
    -------
    torch.nn.Module
        The module whose trainable weights L2-SP anchors.
    """
    if not isinstance(model, FbankECAPA):
        freeze_wavlm(model.wavlm)
    return anchored_module(model)


def anchored_module(model):
    """The part of the embedding model that L2-SP anchors.

    Arguments
    ---------
    model : WavLMMHFA or FbankECAPA
        The embedding model.

    Returns
    -------
    torch.nn.Module
        The WavLM, or the ECAPA-TDNN.
    """
    return model.backbone if isinstance(model, FbankECAPA) else model.wavlm


def parameter_groups(model, classifier, hparams):
    """The optimiser's parameter groups (the reference's for WavLM + MHFA).

    Arguments
    ---------
    model : WavLMMHFA or FbankECAPA
        The embedding model.
    classifier : torch.nn.Module
        The AAM head.
    hparams : namespace
        ``lr_backend``, and ``lr_wavlm`` / ``llrd`` or ``lr_ecapa``.

    Returns
    -------
    list of dict
        MHFA + head at ``lr_backend``, then transformer layer ``i`` at
        ``lr_wavlm * llrd**i``; for the ECAPA-TDNN, the head at
        ``lr_backend`` and the ECAPA-TDNN at ``lr_ecapa``.
    """
    head = list(classifier.parameters())
    if isinstance(model, FbankECAPA):
        return [
            {"params": head, "lr": hparams.lr_backend},
            {
                "params": list(model.backbone.parameters()),
                "lr": hparams.lr_ecapa,
            },
        ]
    groups = [
        {
            "params": list(model.mhfa.parameters()) + head,
            "lr": hparams.lr_backend,
        }
    ]
    for i, layer in enumerate(model.wavlm.transformer_layers()):
        groups.append(
            {
                "params": list(layer.parameters()),
                "lr": hparams.lr_wavlm * hparams.llrd**i,
            }
        )
    return groups


def _unwrap(module):
    return module.module if hasattr(module, "module") else module


class PseudoLabelBrain(sb.core.Brain):
    """Brain for pseudo-label fine-tuning (rounds and LMFT).

    Expects ``modules`` ``embedding_model`` (WavLMMHFA, or FbankECAPA) and
    ``classifier`` (CosineClassifier), and hparams ``aam_loss``,
    ``loss_gate``, the learning rates and the gate/LC settings of
    ``hparams/round1.yaml``. Only the MHFA, the head and the transformer
    layers are trained (for the ECAPA-TDNN: all of it and the head).

    Arguments
    ---------
    l2sp : L2SP, optional
        The regulariser with its anchor weights; by default a snapshot of
        the encoder as given (see :func:`prepare_encoder`).
    **kwargs
        Passed to :class:`speechbrain.core.Brain`.
    """

    def __init__(self, l2sp=None, **kwargs):
        super().__init__(**kwargs)
        anchored = prepare_encoder(self.modules.embedding_model)
        self.encoder_lr_name = (
            "lr_ecapa"
            if isinstance(self.modules.embedding_model, FbankECAPA)
            else "lr_wavlm"
        )
        self.l2sp = (L2SP(anchored) if l2sp is None else l2sp).to(self.device)
        self.objective = PseudoLabelObjective(
            self.hparams.aam_loss,
            self.hparams.loss_gate,
            self.hparams.lc_start_epoch,
            self.hparams.lc_temperature,
            self.hparams.lc_min_prob,
            self.l2sp,
            self.hparams.l2sp_weight,
            self.hparams.l2sp_eps,
        )
        self.stats = EpochStats()
        self.history = EpochHistory(self.hparams.epoch_stats_file)
        self.epoch = 0
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("epoch_stats", self.stats)

    def on_fit_batch_start(self, batch, should_step):
        """Seed dropout etc. from (seed, epoch, step, rank): resumable.

        Arguments
        ---------
        batch : PaddedBatch
            Its ``path`` is kept to name the files of a bad batch.
        should_step : bool
            Unused.
        """
        rank = int(os.environ.get("RANK", 0))
        torch.manual_seed(
            item_seed(self.hparams.seed, self.epoch, self.step, rank)
        )
        self.batch_files = batch.path

    def check_loss_isfinite(self, loss):
        """Stop at a NaN/infinite loss, naming the batch's files.

        A step on such a loss would write NaN into every weight; under
        fp16, SpeechBrain's check runs instead (the gradient scaler skips
        overflowing steps).

        Arguments
        ---------
        loss : torch.Tensor
            The scaled loss of the batch.
        """
        if self.scaler.is_enabled():
            super().check_loss_isfinite(loss)
        else:
            stop_on_nonfinite_loss(loss, self.step, self.batch_files)

    def compute_forward(self, batch, stage):
        """Embed the augmented view and score it against every class.

        Arguments
        ---------
        batch : PaddedBatch
            With ``aug`` waveforms ``[B, S]`` (equal lengths, unpadded).
        stage : sb.Stage
            Training only.

        Returns
        -------
        torch.Tensor
            ``[B, n_classes]`` cosines.
        """
        wavs = batch.aug.data.to(self.device)
        embeddings = self.modules.embedding_model(wavs)
        return self.modules.classifier(embeddings)

    def compute_objectives(self, cosine, batch, stage):
        """The round's objective (:class:`PseudoLabelObjective`) and counters.

        Its L2-SP term's gradient is added in :meth:`optimizers_step`.

        Arguments
        ---------
        cosine : torch.Tensor
            ``[B, n_classes]`` from :meth:`compute_forward`.
        batch : PaddedBatch
            With ``label``, ``ok`` and (for LC) ``clean``.
        stage : sb.Stage
            Training only.

        Returns
        -------
        torch.Tensor
            The scalar objective.
        """
        loss, counts = self.objective(
            cosine,
            batch.label.data.reshape(-1).to(self.device),
            self.epoch,
            ok=batch.ok.data.reshape(-1).to(self.device),
            label_right=batch.label_right.data.reshape(-1).to(self.device),
            speaker_label=batch.speaker_label.data.reshape(-1).to(self.device),
            clean_embeddings=lambda rows: self.clean_embeddings(batch, rows),
            class_weights=_unwrap(self.modules.classifier).weight.detach(),
        )
        self.stats.add(**counts, steps=1)
        return loss

    def clean_embeddings(self, batch, index):
        """Embeddings of the clean views of some samples, without gradients.

        Only label correction needs them, and only for rejected samples.

        Arguments
        ---------
        batch : PaddedBatch
            With ``clean`` waveforms.
        index : torch.Tensor
            Rows of the batch.

        Returns
        -------
        torch.Tensor
            ``[len(index), 1, emb]``.
        """
        clean = batch.clean.data[index.cpu()].to(self.device)
        model = _unwrap(self.modules.embedding_model)
        # WavLM runs in training mode, as in the reference. The ECAPA-TDNN
        # has batch norms: a few rejected clean crops would both normalise
        # each other and move the running statistics, so it runs in eval.
        ecapa = isinstance(model, FbankECAPA) and model.training
        if ecapa:
            model.eval()
        try:
            with torch.no_grad():
                return model(clean)
        finally:
            if ecapa:
                model.train()

    def fit_batch(self, batch):
        """One step; returns the mean CE of the batch for the progress bar.

        Arguments
        ---------
        batch : PaddedBatch
            The batch.

        Returns
        -------
        torch.Tensor
            Mean per-sample CE (all valid samples of the global batch).
        """
        before = dict(self.stats.counts)
        super().fit_batch(batch)
        samples = self.stats.counts["samples"] - before["samples"]
        ce_sum = self.stats.counts["ce_sum"] - before["ce_sum"]
        return torch.tensor(ce_sum / max(samples, 1.0))

    def optimizers_step(self):
        """Add the L2-SP gradient, then step (every accumulation cycle)."""
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.objective.add_regulariser_gradient(
            anchored_module(_unwrap(self.modules.embedding_model)), scale
        )
        super().optimizers_step()

    def init_optimizers(self):
        """AdamW with the reference's parameter groups and the hparams'
        ``lr_scheduler`` (the reference's decay) on them."""
        groups = parameter_groups(
            _unwrap(self.modules.embedding_model),
            _unwrap(self.modules.classifier),
            self.hparams,
        )
        self.optimizer = self.opt_class(groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.lr_scheduler = self.hparams.lr_scheduler(self.optimizer)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_fit_start(self):
        """Recover the checkpoint; a run from scratch starts a new history."""
        super().on_fit_start()
        if self.hparams.epoch_counter.current == 0 and if_main_process():
            self.history.reset()

    def on_stage_start(self, stage, epoch=None):
        """Remember the epoch.

        Arguments
        ---------
        stage : sb.Stage
            Training only.
        epoch : int
            1-based epoch.
        """
        self.epoch = epoch

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Fit the next gate threshold, decay the LR, log, checkpoint.

        Arguments
        ---------
        stage : sb.Stage
            Training only.
        stage_loss : float
            Average of :meth:`fit_batch` values.
        epoch : int
            1-based epoch.
        """
        used = (
            self.hparams.loss_gate.threshold
            if self.hparams.loss_gate.active(epoch)
            else None
        )
        plot = default_plot_path(self.hparams.plot_folder, epoch)
        gate = self.hparams.loss_gate.end_epoch(
            epoch,
            plot if if_main_process() else None,
            name=self.hparams.run_name,
        )
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr_scheduler.step()
        counts = self.stats.counts
        samples = max(counts["samples"], 1.0)
        train_stats = {
            "loss": counts["ce_sum"] / samples,
            "gated_loss": counts["gated_loss_sum"] / max(counts["steps"], 1.0),
            "kept_fraction": counts["kept"] / samples,
            "threshold": "none" if used is None else round(used, 4),
            "next_threshold": "none"
            if gate["threshold"] is None
            else round(gate["threshold"], 4),
            "corrected": int(counts["corrected"]),
            "rejected": int(counts["rejected"]),
            "bad_audio": int(counts["bad_audio"]),
        }
        if gate["degenerate"]:
            reason = gate["degenerate"].replace(",", ";")
            train_stats["gate_fit"] = f"degenerate ({reason})"
        diagnostics = {
            "epoch": epoch,
            "threshold": used,
            "kept_fraction": counts["kept"] / samples,
            "next_threshold": gate["threshold"],
            "gate_fit": describe_fit(gate),
            "corrected": int(counts["corrected"]),
            **label_diagnostics(counts),
        }
        if if_main_process():
            self.history.update(diagnostics)
        self.hparams.train_logger.log_stats(
            stats_meta={
                "epoch": epoch,
                "lr_backend": lrs[0],
                self.encoder_lr_name: lrs[1] if len(lrs) > 1 else 0.0,
            },
            train_stats=train_stats,
        )
        self.stats.reset()
        self.checkpointer.save_and_keep_only(
            meta={"epoch": epoch, "loss": train_stats["loss"]},
            num_to_keep=self.hparams.ckpt_to_keep,
        )

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **kw):
        """Build the train loader around the already distributed sampler.

        SpeechBrain would wrap a batch sampler in a
        ``DistributedSamplerWrapper`` (whole batches per process); ours
        gives each process its slice of every global batch instead.

        Arguments
        ---------
        dataset : DynamicItemDataset
            The training set.
        stage : sb.Stage
            Training only.
        ckpt_prefix : str
            Checkpoint name prefix of the loader (saves its position).
        **kw
            DataLoader options, including ``batch_sampler``.

        Returns
        -------
        SaveableDataLoader
        """
        self.train_sampler = kw["batch_sampler"]
        loader = sb.dataio.dataloader.make_dataloader(dataset, **kw)
        if self.checkpointer is not None and ckpt_prefix is not None:
            self.checkpointer.add_recoverable(ckpt_prefix + stage.name, loader)
        return loader


def dataio_prep(hparams, labels, paths):
    """Dataset (clean crop, augmented view, label) and its batch sampler.

    Arguments
    ---------
    hparams : dict
        Loaded hparams.
    labels : list of int
        Pseudo-label of each utterance.
    paths : list of str
        Audio files.

    Returns
    -------
    dataset : DynamicItemDataset
    sampler : SpeakerBalancedBatchSampler
    """
    # Diagnostics only (never used in the loss): is each pseudo-label right,
    # and what is the majority label of the true speaker (-1: unknown).
    right, speaker_label = label_truth(
        labels, [os.path.relpath(p, hparams["data_folder"]) for p in paths]
    )
    data = {
        str(i): {
            "idx": i,
            "path": p,
            "label": y,
            "label_right": float(right[i]),
            "speaker_label": int(speaker_label[i]),
        }
        for i, (p, y) in enumerate(zip(paths, labels))
    }
    dataset = sb.dataio.dataset.DynamicItemDataset(data)
    sampler = SpeakerBalancedBatchSampler(
        labels,
        hparams["batch_size"],
        hparams["max_per_speaker"],
        seed=hparams["seed"],
        defer_repeats=hparams["defer_repeated_speakers"],
    )
    augmenter = hparams["augmenter"]
    augmenter.log_coverage()
    crop = hparams["crop_samples"]
    rate = hparams["sample_rate"]
    seed = hparams["seed"]

    @sb.utils.data_pipeline.takes("path", "idx")
    @sb.utils.data_pipeline.provides("clean", "aug", "ok")
    def audio_pipeline(path, idx):
        """Random crop (wrap-padded) and its augmented view.

        Every random draw (crop, augmentation, noise and RIR files) comes
        from a generator seeded by (seed, epoch, item): an item is the same
        in every run, in any worker, before and after a resume.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(seed, sampler.epoch, idx))
            try:
                frames = soundfile.info(path).frames
                # The reference's start: int(random() * (frames - crop)).
                start = int(torch.randint(0, max(1, frames - crop), ()))
                wav = read_audio(path, rate, start, min(frames, start + crop))
                clean, ok = wrap_pad(wav, crop), True
            except (AudioError, soundfile.LibsndfileError, OSError) as error:
                logger.warning(
                    "Skipping unusable audio: %s",
                    error,
                    main_process_only=False,
                )
                clean, ok = torch.zeros(crop), False
            aug = augmenter(clean)[0] if ok else clean
        yield clean
        yield aug
        yield torch.tensor([ok])

    dataset.add_dynamic_item(audio_pipeline)
    dataset.set_output_keys(
        [
            "id",
            "path",
            "clean",
            "aug",
            "ok",
            "label",
            "label_right",
            "speaker_label",
        ]
    )
    return dataset, sampler


def init_from_checkpoint(path, embedding_model, classifier=None):
    """Load ``embedding_model`` and ``classifier`` from a round's checkpoint.

    Arguments
    ---------
    path : str
        A ``CKPT+...`` folder, or a save folder (its latest end-of-epoch
        checkpoint is used).
    embedding_model : torch.nn.Module
        Receives ``embedding_model.ckpt``.
    classifier : torch.nn.Module, optional
        Receives ``classifier.ckpt`` (same number of classes); None leaves
        the head as it is (a new round's classes are new).

    Returns
    -------
    str
        The checkpoint folder used.

    Raises
    ------
    CheckpointNotFoundError, CheckpointMismatchError
        One line naming the folder or file (e.g. another architecture).
    """
    folder = path
    if not os.path.isfile(os.path.join(folder, "embedding_model.ckpt")):
        ckpt = sb.utils.checkpoints.Checkpointer(path).find_checkpoint(
            ckpt_predicate=lambda c: "brain_intra_epoch_ckpt" not in c.meta
        )
        if ckpt is None:
            raise CheckpointNotFoundError(
                f"{path}: no training checkpoint found"
            )
        folder = str(ckpt.path)
    load_state(embedding_model, folder, "embedding_model")
    if classifier is not None:
        load_state(classifier, folder, "classifier")
    return folder


def main(argv):
    """Run training from command-line arguments.

    Bad inputs (train list, ``--pretrained_wavlm``, ``--init_from``, a
    checkpoint of another architecture, an unwritable output) exit with one
    line naming the file or key; an output folder made by this run is then
    removed. A non-finite loss or a failed checkpoint save stops training
    with one line; the last good checkpoint is kept.

    Arguments
    ---------
    argv : list of str
        ``hparams.yaml`` followed by overrides.

    Returns
    -------
    PseudoLabelBrain
    """
    hparams_file, run_opts, overrides = parse_stage_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    preview = preview_hparams(hparams_file, overrides)
    check_output_paths(preview)
    output_folder = preview["output_folder"]
    with (
        removed_on_failure(output_folder),
        exit_on_input_errors(TRAINING_ERRORS + (TrainListError,)),
    ):
        labels, paths = read_train_list(
            preview["train_list"], preview["data_folder"], preview["n_classes"]
        )
        with open(hparams_file, encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(fin, overrides)
        run_on_main(
            prepare_augmentation,
            args=[hparams["augmentation_folder"]],
            kwargs={
                "noise_folder": hparams["noise_folder"],
                "rir_folder": hparams["rir_folder"],
                "sample_rate": hparams["sample_rate"],
            },
        )
        # The L2-SP anchor is the pre-trained WavLM (stage 1's DINO weights
        # for the ECAPA encoder), also when LMFT starts from a round's
        # weights.
        if hparams["init_encoder_from"]:
            used = init_from_checkpoint(
                hparams["init_encoder_from"], hparams["embedding_model"]
            )
            logger.info("Encoder initialised from %s", used)
        l2sp = L2SP(prepare_encoder(hparams["embedding_model"]))
        if hparams["init_from"]:
            used = init_from_checkpoint(
                hparams["init_from"],
                hparams["embedding_model"],
                hparams["classifier"],
            )
            logger.info("Initialised from %s", used)
        dataset, sampler = dataio_prep(hparams, labels, paths)
        sb.create_experiment_directory(
            experiment_directory=hparams["output_folder"],
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )
        hparams["checkpointer"].add_recoverable("sampler", sampler)
        brain = PseudoLabelBrain(
            l2sp=l2sp,
            modules=hparams["modules"],
            opt_class=hparams["opt_class"],
            hparams=hparams,
            run_opts=run_opts,
            checkpointer=hparams["checkpointer"],
        )
    with exit_on_input_errors(TRAINING_ERRORS):
        brain.fit(
            brain.hparams.epoch_counter,
            dataset,
            train_loader_kwargs={
                "batch_sampler": sampler,
                "num_workers": hparams["num_workers"],
            },
        )
    return brain


if __name__ == "__main__":
    main(sys.argv[1:])
