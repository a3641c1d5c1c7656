"""Stage 1 (DINO) under DDP: 2 CPU processes (gloo) equal 1 process.

A whole ``train_dino.py`` run cannot use DDP on CPU: SpeechBrain turns the
ECAPA-TDNN batch norms into ``SyncBatchNorm``, which runs on GPU only. So the
recipe's own ``DINOBrain`` trains a batch-norm-free student here, through
``fit_batch`` (student DDP-wrapped by SpeechBrain, DINO loss with the
all-reduced center, EMA teacher), two processes each holding half of every
batch against one process holding all of it (RDINO's batch-statistics
regulariser included, gathered over the processes).
"""

import importlib.util
import os
import pathlib
import socket

import pytest
import speechbrain.core as sb_core
import torch
import torch.multiprocessing as mp
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization

from speechbrain_ext.lobes.dino import DINOHead, DINONetwork, make_teacher
from speechbrain_ext.nnet.dino_loss import DINOLoss
from speechbrain_ext.nnet.embedding_regularization import EmbeddingRegularizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "train_dino.py"

BATCH = 4
STEPS = 3
N_GLOBAL, N_LOCAL = 2, 2
N_MELS = 8
OUTPUT_SIZE = 32
HPARAMS = {
    "lr": 0.5,
    "min_lr": 0.01,
    "warmup_epochs": 0,
    "number_of_epochs": 2,
    "teacher_momentum": 0.9,
    "warmup_teacher_temperature": 0.04,
    "teacher_temperature": 0.07,
    "warmup_teacher_temperature_epochs": 1,
    # RDINO's regulariser on batch statistics: gathered over the processes.
    "regularization_weight": 0.2,
    "regularization_start_weight": 0.05,
    "regularization_warmup_epochs": 2,
    "embedding_regularizer": EmbeddingRegularizer(N_GLOBAL),
}


class ConvBackbone(torch.nn.Module):
    """A backbone without batch norm: ``[B, T, F]`` -> ``[B, size]``."""

    def __init__(self, n_mels, size):
        super().__init__()
        self.conv = torch.nn.Conv1d(n_mels, size, 3)

    def forward(self, features, lengths=None):
        return self.conv(features.transpose(1, 2)).relu().mean(dim=-1)


def load_recipe_module():
    spec = importlib.util.spec_from_file_location("train_dino", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_brain(recipe, make_backbone):
    """A ``DINOBrain`` with the same initial weights in every process."""
    torch.manual_seed(0)
    student = DINONetwork(make_backbone(), DINOHead(12, 16, 8, OUTPUT_SIZE))
    modules = {
        "compute_features": Fbank(n_mels=N_MELS),
        "mean_var_norm": InputNormalization(norm_type="sentence"),
        "student": student,
        "teacher": make_teacher(student),
        "dino_loss": DINOLoss(OUTPUT_SIZE, N_GLOBAL, center_momentum=0.8),
    }
    brain = recipe.DINOBrain(
        modules=modules,
        opt_class=lambda params: torch.optim.SGD(params, lr=HPARAMS["lr"]),
        hparams=HPARAMS,
        run_opts={"device": "cpu", "distributed_backend": "gloo"},
    )
    brain.steps_per_epoch = STEPS
    return brain


def batches():
    """The same ``STEPS`` full batches of crops in every process."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        yield [
            {
                "id": f"utt{item}",
                "global_crops": torch.randn(
                    N_GLOBAL, 1600, generator=generator
                ),
                "local_crops": torch.randn(N_LOCAL, 800, generator=generator),
            }
            for item in range(BATCH)
        ]


def train(rank, world_size):
    """Train ``STEPS`` steps on this rank's share of each batch.

    Returns
    -------
    dict
        The loss of each step, the center after each step, and the final
        student and teacher parameters.
    """
    recipe = load_recipe_module()
    brain = make_brain(recipe, lambda: ConvBackbone(N_MELS, 12))
    brain.on_fit_start()
    brain.modules.train()
    share = BATCH // world_size
    losses, centers = [], []
    for step, items in enumerate(batches(), 1):
        brain.step = step
        mine = PaddedBatch(items[rank * share : (rank + 1) * share])
        losses.append(brain.fit_batch(mine))
        centers.append(brain.modules.dino_loss.center.clone())
    student = getattr(brain.modules.student, "module", brain.modules.student)
    return {
        "losses": torch.stack(losses),
        "centers": torch.stack(centers),
        "student": {k: v.clone() for k, v in student.state_dict().items()},
        "teacher": {
            k: v.clone() for k, v in brain.modules.teacher.state_dict().items()
        },
    }


def teacher_norm_types():
    """Batch-norm classes in the teacher of a brain set up for fitting."""
    recipe = load_recipe_module()
    brain = make_brain(
        recipe,
        lambda: ECAPA_TDNN(
            N_MELS,
            channels=[16, 16, 16, 16, 48],
            attention_channels=8,
            se_channels=8,
            lin_neurons=12,
        ),
    )
    # DDP refuses SyncBatchNorm on CPU: leave the student unwrapped.
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(sb_core, "DDP", lambda module, **kwargs: module)
    try:
        brain.on_fit_start()
    finally:
        monkeypatch.undo()
    return {
        type(m).__name__
        for m in brain.modules.teacher.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }


def worker(rank, world_size, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
    )
    try:
        result = train(rank, world_size)
        result["teacher_norms"] = teacher_norm_types()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("dino_ddp")
    mp.spawn(worker, args=(2, free_port(), str(out_dir)), nprocs=2)
    return [
        torch.load(out_dir / f"rank{rank}.pt", weights_only=True)
        for rank in range(2)
    ]


@pytest.fixture(scope="module")
def one_process():
    assert os.environ.get("RANK") is None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(0, 1)
    finally:
        torch.set_num_threads(threads)


def test_loss_is_the_mean_of_the_per_process_losses(two_processes, one_process):
    mean = (two_processes[0]["losses"] + two_processes[1]["losses"]) / 2
    torch.testing.assert_close(mean, one_process["losses"])
    # The halves differ: the check is not one of identical copies.
    assert not torch.allclose(
        two_processes[0]["losses"], two_processes[1]["losses"]
    )


def test_center_is_updated_from_the_whole_batch(two_processes, one_process):
    assert one_process["centers"].abs().sum() > 0
    for result in two_processes:
        torch.testing.assert_close(result["centers"], one_process["centers"])


def test_student_and_ema_teacher_follow_the_whole_batch(
    two_processes, one_process
):
    for network in ("student", "teacher"):
        for result in two_processes:
            for key, value in result[network].items():
                torch.testing.assert_close(
                    value, one_process[network][key], msg=f"{network} {key}"
                )
    moved = [
        key
        for key, value in one_process["teacher"].items()
        if not torch.equal(value, one_process["student"][key])
    ]
    assert moved, "the teacher should lag the student"


def test_teacher_batch_norms_are_synchronised(two_processes):
    for result in two_processes:
        assert result["teacher_norms"] == {"SyncBatchNorm"}
