"""Time per training step: our step vs. the reference's way, same batch.

The reference computes the clean view's embedding with gradients in every
step (one forward/backward over the clean + augmented batch); ours skips the
clean view before label correction (LC) and, once LC is on, embeds only the
rejected samples' clean views without gradients. Both use the same weights,
batch, gate threshold and loss code; the loss values must agree.

The model, head, loss, gate, optimiser, LR scheduler and run options come
from ``hparams/round1.yaml`` (a random WavLM of the chosen size), so both
steps are the recipe's :class:`train.PseudoLabelBrain` step.

CPU default: a mid-size WavLM (Base+ layout with 256 conv channels, 4
layers of width 384, 6 heads, FFN 1536) and MHFA 16 heads x 64, 1,000
classes, batch 8 of 3 s crops, no dropout; Base+ itself is too slow for
repeated steps on a shared 2-core machine (``--size base_plus`` runs it;
``--size tiny`` is the smoke test's). On CUDA it also times our step in
bf16.

    python -m benchmarks.bench_train_step [--size mid] [--repeats 3]
"""

import argparse
import copy
import pathlib
import statistics
import tempfile
import time

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch

from benchmarks.common import machine
from speechbrain_ext.nnet.aam import log_cross_entropy
from speechbrain_ext.verification.training_diagnostics import label_truth
from train import PseudoLabelBrain

HPARAMS = pathlib.Path(__file__).resolve().parents[1] / "hparams/round1.yaml"
NO_DROPOUT = dict(
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    encoder_layerdrop=0.0,
    dropout_input=0.0,
)
MHFA_16X64 = dict(mhfa_heads=16, mhfa_compression=64, emb_dim=256)
#: Overrides of ``hparams/round1.yaml`` per model size.
SIZES = {
    "tiny": dict(
        wavlm_preset="tiny",
        wavlm_overrides=NO_DROPOUT,
        mhfa_heads=2,
        mhfa_compression=4,
        emb_dim=8,
        n_classes=16,
    ),
    "mid": dict(
        wavlm_preset="base_plus",
        wavlm_overrides=dict(
            conv_layers=[[256, 10, 5]] + [[256, 3, 2]] * 4 + [[256, 2, 2]] * 2,
            encoder_layers=4,
            encoder_embed_dim=384,
            encoder_ffn_embed_dim=1536,
            encoder_attention_heads=6,
            conv_pos_groups=16,
            **NO_DROPOUT,
        ),
        n_classes=1000,
        **MHFA_16X64,
    ),
    "base_plus": dict(
        wavlm_preset="base_plus",
        wavlm_overrides=NO_DROPOUT,
        n_classes=1000,
        **MHFA_16X64,
    ),
}


def load_hparams(size, output_folder):
    """The recipe's training hparams with a random WavLM of ``size``.

    Arguments
    ---------
    size : str
        A key of :data:`SIZES`.
    output_folder : str
        Where the recipe's logger and checkpointer would write (nothing is
        written by the benchmark).

    Returns
    -------
    dict
        Loaded ``hparams/round1.yaml``.
    """
    overrides = {
        "data_folder": "unused",
        "train_list": "unused",
        "pretrained_wavlm": None,
        "output_folder": output_folder,
        **SIZES[size],
    }
    with open(HPARAMS, encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides)


class ReferenceStepBrain(PseudoLabelBrain):
    """The reference's step: clean + augmented views in one forward."""

    def compute_forward(self, batch, stage):
        """Embed clean and augmented views together, with gradients.

        Arguments
        ---------
        batch : PaddedBatch
            With ``clean`` and ``aug``.
        stage : sb.Stage
            Training.

        Returns
        -------
        torch.Tensor
            Cosines of the augmented view.
        """
        n = batch.aug.data.shape[0]
        wavs = torch.cat([batch.clean.data, batch.aug.data]).to(self.device)
        embeddings = self.modules.embedding_model(wavs)
        self._clean = embeddings[:n]
        return self.modules.classifier(embeddings[n:])

    def clean_embeddings(self, batch, index):
        """The clean embeddings computed in the forward pass.

        Arguments
        ---------
        batch : PaddedBatch
            Unused.
        index : torch.Tensor
            Rows.

        Returns
        -------
        torch.Tensor
        """
        return self._clean[index]


def make_brain(cls, hparams, device, precision):
    """A Brain of the recipe around copies of its model, head and gate.

    Arguments
    ---------
    cls : type
        :class:`train.PseudoLabelBrain` or :class:`ReferenceStepBrain`.
    hparams : dict
        From :func:`load_hparams`; not modified.
    device : str
        Torch device.
    precision : str
        ``fp32`` or ``bf16``.

    Returns
    -------
    PseudoLabelBrain
    """
    own = copy.deepcopy(
        {
            "modules": hparams["modules"],
            "loss_gate": hparams["loss_gate"],
        }
    )
    brain = cls(
        modules=own["modules"],
        opt_class=hparams["opt_class"],
        hparams={**hparams, "loss_gate": own["loss_gate"]},
        run_opts={
            "device": device,
            "precision": precision,
            "max_grad_norm": hparams["max_grad_norm"],
        },
    )
    brain.modules.train()
    return brain


def make_batch(size, crop):
    """Random clean and augmented crops with the recipe's batch keys.

    Arguments
    ---------
    size : int
        Batch size (at most the number of classes: labels are 0..size-1).
    crop : int
        Samples per crop.

    Returns
    -------
    PaddedBatch
        The keys of ``train.dataio_prep``'s items.
    """
    labels = list(range(size))
    paths = [f"{i}.wav" for i in labels]
    right, speaker_label = label_truth(labels, paths)
    return PaddedBatch(
        [
            {
                "id": str(i),
                "path": paths[i],
                "clean": torch.randn(crop) * 0.1,
                "aug": torch.randn(crop) * 0.1,
                "ok": torch.tensor([True]),
                "label": i,
                "label_right": float(right[i]),
                "speaker_label": int(speaker_label[i]),
            }
            for i in labels
        ]
    )


def time_phase(brains, batch, epoch, threshold, repeats, device):
    """Median seconds of one step of each brain, alternating between them.

    Every step starts from the same weights and a fresh optimiser.

    Returns
    -------
    dict
        name -> (wall seconds, CPU seconds, (mean CE, gated loss, corrected
        count)).
    """
    times = {name: [] for name in brains}
    cpu_times = {name: [] for name in brains}
    values = {}
    for i in range(repeats + 1):
        for name, (brain, start) in brains.items():
            brain.modules.load_state_dict(start)
            brain.init_optimizers()
            brain.stats.reset()
            brain.hparams.loss_gate.threshold = threshold
            brain.epoch = epoch
            brain.step = 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            begin, cpu_begin = time.perf_counter(), time.process_time()
            brain.fit_batch(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times[name].append(time.perf_counter() - begin)
                cpu_times[name].append(time.process_time() - cpu_begin)
            else:
                counts = brain.stats.counts
                values[name] = (
                    counts["ce_sum"] / counts["samples"],
                    counts["gated_loss_sum"],
                    int(counts["corrected"]),
                )
    return {
        name: (
            statistics.median(times[name]),
            statistics.median(cpu_times[name]),
            values[name],
        )
        for name in brains
    }


def main(argv=None):
    """Run the benchmark and print the table.

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=48240)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as output_folder:
        hparams = load_hparams(args.size, output_folder)
    with torch.no_grad():
        # Larger class weights make label correction confident (it uses the
        # un-normalised weights), so its loss term is exercised too.
        hparams["classifier"].weight.mul_(200.0)
    batch = make_batch(args.batch, args.crop)
    ours = make_brain(PseudoLabelBrain, hparams, device, "fp32")
    with torch.no_grad():
        cosine = ours.compute_forward(batch, None)
        labels = batch.label.data.to(ours.device)
        log_ce = log_cross_entropy(
            ours.hparams.aam_loss.logits(cosine, labels), labels
        )
    # A threshold that rejects a quarter of the batch (LC phase).
    threshold = float(log_ce.quantile(0.75))
    brains = {
        "reference": make_brain(ReferenceStepBrain, hparams, device, "fp32"),
        "fp32": ours,
    }
    if device.startswith("cuda"):
        brains["bf16"] = make_brain(PseudoLabelBrain, hparams, device, "bf16")
    brains = {
        name: (brain, copy.deepcopy(brain.modules.state_dict()))
        for name, brain in brains.items()
    }
    rows = []
    for phase, epoch in (("epochs 1-8 (no LC)", 3), ("epochs 9+ (LC)", 10)):
        result = time_phase(
            brains, batch, epoch, threshold, args.repeats, device
        )
        ref = result.pop("reference")
        for precision, ours_result in result.items():
            rows.append((phase, precision, ref, ours_result))
    print(f"machine: {machine()}, device {device}")
    print(
        f"model: {args.size}, batch {args.batch} x {args.crop} samples, "
        f"{args.repeats} timed steps each (median, alternating), 25% of the "
        "batch rejected in the LC phase"
    )
    print(
        "| phase | ours precision | reference s/step | ours s/step | "
        "speed-up | speed-up (CPU time) | mean CE ref / ours | "
        "gated loss ref / ours | corrected ref / ours |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for phase, precision, ref, ours_result in rows:
        (t_ref, c_ref, v_ref), (t_ours, c_ours, v_ours) = ref, ours_result
        print(
            f"| {phase} | {precision} | {t_ref:.3f} | {t_ours:.3f} | "
            f"{t_ref / t_ours:.2f}x | {c_ref / c_ours:.2f}x | "
            f"{v_ref[0]:.6f} / {v_ours[0]:.6f} | "
            f"{v_ref[1]:.6f} / {v_ours[1]:.6f} | {v_ref[2]} / {v_ours[2]} |"
        )


if __name__ == "__main__":
    main()
