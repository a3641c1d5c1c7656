"""The benchmark scripts still run on the current recipe (smallest sizes).

Speed is not asserted here (see BENCHMARKS.md); only that each script runs
end to end and prints its table.
"""

import pytest
import torch

from benchmarks import bench_channel, bench_train_step, bench_ward

pytestmark = pytest.mark.usefixtures("one_thread")


def table_rows(text):
    """The data rows of the markdown table in ``text``, split into cells."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in lines[1:]
    ]


def test_train_step_benchmark_prints_its_table(capsys):
    bench_train_step.main(
        ["--size=tiny", "--batch=2", "--crop=4000", "--repeats=1"]
    )
    out = capsys.readouterr().out
    assert "| phase | ours precision | reference s/step | ours s/step |" in out
    rows = table_rows(out)
    # On CUDA our step is also timed in bf16.
    precisions = ["fp32", "bf16"] if torch.cuda.is_available() else ["fp32"]
    assert [row[:2] for row in rows] == [
        [phase, precision]
        for phase in ("epochs 1-8 (no LC)", "epochs 9+ (LC)")
        for precision in precisions
    ]
    for row in rows:
        assert len(row) == 9
        assert float(row[2]) > 0 and float(row[3]) > 0
    # No label correction before its epoch, in either step.
    assert rows[0][8] == "0 / 0"


def test_ward_benchmark_finds_the_same_partition_as_scikit_learn(capsys):
    bench_ward.main(["--fraction=0.004"])
    out = capsys.readouterr().out
    assert "same partition: True" in out
    assert [row[0] for row in table_rows(out)] == [
        "scikit-learn ward_tree",
        "ours (ward_on_graph)",
    ]


def test_channel_benchmark_runs_the_same_cascade_both_ways(capsys):
    bench_channel.main(["--crops=5", "--seconds=0.5"])
    out = capsys.readouterr().out
    assert [row[0] for row in table_rows(out)] == [
        "torchaudio biquads (baseline)",
        "scipy sosfilt (ours)",
    ]
    # float32 recursions (torchaudio) against float64 ones on crops of RMS
    # 0.05: differences of ~1e-5, far below a wrong filter's.
    difference = float(out.split("largest output difference ")[1].split()[0])
    assert difference < 1e-3
