"""Benchmark: WavLM Base+ + MHFA forward/backward, ours vs. transformers.

Both models get the same random weights (mapped from the Hugging Face model
into ours), the same MHFA back-end weights and the same batch of crops; the
CNN feature encoder is frozen in both (as in training), the transformer and
MHFA receive gradients. Reported per device / precision: median time per
training step (forward + backward) after warm-up, interleaving the two
models, and peak memory of one step (CPU: peak resident set size above the
level before the step, measured in a fresh child process per model; GPU:
``torch.cuda.max_memory_allocated``).

Usage::

    python -m benchmarks.bench_wavlm [--batch 4 --seconds 3 --steps 3]
"""

import argparse
import copy
import gc
import os
import platform
import statistics
import sys
import threading
import time

import psutil
import torch

from benchmarks.common import machine
from speechbrain_ext.lobes.mhfa import MHFA
from speechbrain_ext.lobes.wavlm import (
    WavLM,
    WavLMConfig,
    state_dict_from_hf,
)


class HFHidden(torch.nn.Module):
    """transformers ``WavLMModel`` returning stacked hidden states.

    Arguments
    ---------
    model : transformers.WavLMModel
        The wrapped model.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, wavs):
        """[B, S] -> [L + 1, B, T, D]."""
        out = self.model(wavs, output_hidden_states=True)
        return torch.stack(out.hidden_states)


def build_models(layers, seed=0):
    """Ours and the Hugging Face WavLM Base+ (same weights) with one MHFA
    each (same weights), in training mode with the CNN frozen."""
    import transformers

    torch.manual_seed(seed)
    config = WavLMConfig.base_plus(encoder_layers=layers, encoder_layerdrop=0.0)
    hf_model = transformers.WavLMModel(
        transformers.WavLMConfig(**config.to_hf_config())
    )
    hf_model.freeze_feature_encoder()
    ours = WavLM(config)
    state, _ = state_dict_from_hf(hf_model.state_dict(), config.extractor_mode)
    ours.load_state_dict(state)
    mhfa = MHFA(
        n_layers=layers + 1,
        input_size=768,
        n_heads=64,
        compression_size=128,
        output_size=256,
    )
    return {
        "ours": (ours.train(), mhfa.train()),
        "transformers": (HFHidden(hf_model).train(), copy.deepcopy(mhfa)),
    }


def make_batch(batch, seconds, device, seed=1):
    """A batch of random 16 kHz crops."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, int(seconds * 16000), generator=generator).to(
        device
    )


def train_step(models, wavs, dtype):
    """One forward + backward of WavLM + MHFA."""
    encoder, mhfa = models
    device_type = wavs.device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        embeddings = mhfa(encoder(wavs))
        loss = embeddings.float().square().mean()
    loss.backward()
    encoder.zero_grad(set_to_none=True)
    mhfa.zero_grad(set_to_none=True)
    if device_type == "cuda":
        torch.cuda.synchronize()


def check_same_outputs(models, wavs):
    """Largest relative difference of the embeddings (eval mode, fp32)."""
    outputs = []
    for name in ("ours", "transformers"):
        encoder, mhfa = models[name]
        encoder.eval()
        with torch.no_grad():
            outputs.append(mhfa(encoder(wavs)))
        encoder.train()
    ours, reference = outputs
    return float((ours - reference).abs().max() / reference.abs().max())


def time_steps(models, wavs, dtype, steps, warmup):
    """Median wall-clock and process CPU seconds per step of each model,
    steps interleaved (CPU time is robust to other load on the machine)."""
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for step in range(warmup + steps):
        for name, pair in models.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            train_step(pair, wavs, dtype)
            if step >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {
        name: (statistics.median(wall[name]), statistics.median(cpu[name]))
        for name in models
    }


def gpu_peak_memory(models, wavs, dtype):
    """Peak allocated GPU memory (MiB) of one step of each model."""
    peaks = {}
    for name, pair in models.items():
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(pair, wavs, dtype)
        peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return peaks


def cpu_peak_memory(models, wavs):
    """Peak resident-set increase (MiB) over one CPU step of each model,
    sampled every 0.5 ms by a thread (torch ops release the GIL). Needs
    ``MALLOC_MMAP_THRESHOLD_`` set (see :func:`main`) so that freed tensors
    leave the resident set."""
    process = psutil.Process()
    peaks = {}
    for name, pair in models.items():
        gc.collect()
        before = process.memory_info().rss
        peak = [before]
        done = threading.Event()

        def _sample():
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.0005)

        sampler = threading.Thread(target=_sample)
        sampler.start()
        train_step(pair, wavs, None)
        done.set()
        sampler.join()
        peaks[name] = (peak[0] - before) / 2**20
    return peaks


def machine_info():
    """The machine line plus the transformers and Python versions."""
    import transformers

    return (
        f"CPU: {machine()}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}"
    )


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--devices",
        default="cpu,cuda",
        help="comma-separated; cuda is skipped when not available",
    )
    args = parser.parse_args(argv)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # A fixed glibc mmap threshold returns every large freed block to the
        # OS at once, so the resident set follows live tensors (by default
        # the threshold adapts and freed memory stays resident).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
        module = ["-m", __spec__.name]
        os.execve(sys.executable, [sys.executable, *module, *sys.argv[1:]], env)
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = []
    devices = args.devices.split(",")
    if "cpu" in devices:
        runs.append(("cpu", "fp32", None))
    if "cuda" in devices and torch.cuda.is_available():
        runs += [("cuda", "fp32", None), ("cuda", "bf16", torch.bfloat16)]
    models = build_models(args.layers)
    rows = []
    for device, precision, dtype in runs:
        for encoder, mhfa in models.values():
            encoder.to(device)
            mhfa.to(device)
        wavs = make_batch(args.batch, args.seconds, device)
        if precision == "fp32":
            error = check_same_outputs(models, wavs)
            assert error < 1e-3, f"outputs differ ({error:.2e})"
        times = time_steps(models, wavs, dtype, args.steps, args.warmup)
        if device == "cuda":
            memory = gpu_peak_memory(models, wavs, dtype)
        else:
            memory = cpu_peak_memory(models, wavs)
        rows.append((device, precision, times, memory))

    print(
        f"WavLM Base+ ({args.layers} layers) + MHFA, forward + backward, "
        f"CNN frozen; batch {args.batch} x {args.seconds:g} s, median of "
        f"{args.steps} steps after {args.warmup} warm-up"
    )
    print(
        "| device | precision | ours s/step | transformers s/step | speed-up "
        "| speed-up (CPU time) | ours peak MiB | transformers peak MiB "
        "| memory ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for device, precision, times, memory in rows:
        (ours, ours_cpu), (hf, hf_cpu) = times["ours"], times["transformers"]
        mem_ours, mem_hf = memory["ours"], memory["transformers"]
        print(
            f"| {device} | {precision} | {ours:.3f} | {hf:.3f} | "
            f"{hf / ours:.2f}x | {hf_cpu / ours_cpu:.2f}x | {mem_ours:.0f} "
            f"| {mem_hf:.0f} | {mem_ours / mem_hf:.2f} |"
        )
    print(machine_info())


if __name__ == "__main__":
    main()
