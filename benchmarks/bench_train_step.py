"""Time per training step: our step vs. the reference's way, same batch.

The reference computes the clean view's embedding with gradients in every
step (one forward/backward over the clean + augmented batch); ours skips the
clean view before label correction (LC) and, once LC is on, embeds only the
rejected samples' clean views without gradients. Both use the same weights,
batch, gate threshold and loss code; the loss values must agree.

CPU default: a mid-size WavLM (Base+ layout with 256 conv channels, 4
layers of width 384, 6 heads, FFN 1536) and MHFA 16 heads x 64, batch 8 of
3 s crops, no dropout; Base+ itself is too slow for repeated steps on a
shared 2-core machine (``--size base_plus`` runs it). On CUDA it also times
our step in bf16.

    python -m benchmarks.bench_train_step [--size mid] [--repeats 3]
"""

import argparse
import copy
import functools
import statistics
import time

import torch
from speechbrain.dataio.batch import PaddedBatch

from benchmarks.common import machine
from speechbrain_ext.lobes.classifier import CosineClassifier
from speechbrain_ext.nnet.aam import AAMCrossEntropy
from speechbrain_ext.nnet.loss_gate import DynamicLossGate
from speechbrain_ext.pretrained.model_factory import build_embedding_model
from train import PseudoLabelBrain

NO_DROPOUT = dict(
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    encoder_layerdrop=0.0,
    dropout_input=0.0,
)
SIZES = {
    "mid": dict(
        conv_layers=((256, 10, 5),) + ((256, 3, 2),) * 4 + ((256, 2, 2),) * 2,
        encoder_layers=4,
        encoder_embed_dim=384,
        encoder_ffn_embed_dim=1536,
        encoder_attention_heads=6,
        conv_pos_groups=16,
        **NO_DROPOUT,
    ),
    "base_plus": dict(NO_DROPOUT),
}


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


def make_brain(cls, model, head, device, precision):
    """A Brain around copies of the model and head."""
    hparams = dict(
        seed=0,
        aam_loss=AAMCrossEntropy(0.2, 30.0),
        loss_gate=DynamicLossGate(start_epoch=5),
        lc_start_epoch=9,
        lc_temperature=0.1,
        lc_min_prob=0.5,
        l2sp_weight=0.01,
        l2sp_eps=1e-5,
        lr_backend=5e-3,
        lr_wavlm=2e-5,
        llrd=1.0,
        lr_scheduler=functools.partial(
            torch.optim.lr_scheduler.ExponentialLR, gamma=0.95
        ),
    )
    brain = cls(
        modules={
            "embedding_model": copy.deepcopy(model),
            "classifier": copy.deepcopy(head),
        },
        opt_class=functools.partial(torch.optim.AdamW, weight_decay=0.01),
        hparams=hparams,
        run_opts={
            "device": device,
            "precision": precision,
            "max_grad_norm": 1e6,
        },
    )
    brain.modules.train()
    return brain


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
    """Run the benchmark and print the table."""
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
    torch.manual_seed(0)
    model = build_embedding_model(
        None, "base_plus", 16, 64, 256, wavlm_overrides=SIZES[args.size]
    )
    head = CosineClassifier(256, 1000)
    with torch.no_grad():
        # Larger class weights make label correction confident (it uses the
        # un-normalised weights), so its loss term is exercised too.
        head.weight.mul_(200.0)
    examples = [
        {
            "id": str(i),
            "path": f"{i}.wav",
            "clean": torch.randn(args.crop) * 0.1,
            "aug": torch.randn(args.crop) * 0.1,
            "ok": torch.tensor([True]),
            "label": i,
        }
        for i in range(args.batch)
    ]
    batch = PaddedBatch(examples)
    ours = make_brain(PseudoLabelBrain, model, head, device, "fp32")
    with torch.no_grad():
        cosine = ours.compute_forward(batch, None)
        labels = batch.label.data.to(ours.device)
        log_ce = ours.hparams.aam_loss(cosine, labels).log()
    # A threshold that rejects a quarter of the batch (LC phase).
    threshold = float(log_ce.quantile(0.75))
    brains = {
        "reference": make_brain(
            ReferenceStepBrain, model, head, device, "fp32"
        ),
        "fp32": ours,
    }
    if device.startswith("cuda"):
        brains["bf16"] = make_brain(
            PseudoLabelBrain, model, head, device, "bf16"
        )
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
