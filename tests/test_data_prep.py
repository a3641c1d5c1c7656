"""VoxCeleb manifests, trial lists, m4a conversion and augmentation CSVs."""

import csv
import logging
import os
import shutil
import stat
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.augment.preparation import write_csv
from speechbrain.augment.time_domain import AddNoise, AddReverb

from data_prep import convert_m4a
from data_prep.augmentation import (
    AugmentationDataError,
    augmentation_csvs,
    check_speechbrain_csv,
    prepare_augmentation,
)
from data_prep.voxceleb import (
    main,
    manifest_dataset,
    prepare_voxceleb,
    scan_folder,
)
from speechbrain_ext.dataio.audio import read_audio
from speechbrain_ext.dataio.lists import TrialListError, read_trials
from speechbrain_ext.utils import io_utils

GOOD = {
    "id10001/AAAAAAAAAAA/00001.wav": 1.0,
    "id10001/AAAAAAAAAAA/00002.wav": 1.5,
    "id10001/BBBBBBBBBBB/00001.wav": 2.0,
    "id10002/CCCCCCCCCCC/00001.wav": 0.75,
}
BAD = {
    "id10002/CCCCCCCCCCC/00002.wav": "unreadable",
    "id10002/CCCCCCCCCCC/00003.wav": "empty file (0 bytes)",
    "id10002/CCCCCCCCCCC/00004.wav": "no samples",
    "id10002/CCCCCCCCCCC/00005.wav": "sample rate 8000 Hz, expected 16000",
    "id10002/DDDDDDDDDDD/00001.wav": "2 channels, expected mono",
    "id10002/DDDDDDDDDDD/00002.wav": "shorter than min_duration",
    "id10002/stray.wav": "not in the SPEAKER/VIDEO/UTT.wav layout",
    "id10002/DDDDDDDDDDD/a b.wav": "name has whitespace or '$'",
}


HEADER_LINE = "ID,duration,wav,wav_format,wav_opts\n"


def write(path, samples, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, samples, rate, subtype="PCM_16", format="WAV")


@pytest.fixture
def vox_tree(tmp_path):
    """A VoxCeleb-layout tree with good files and one of each bad case."""
    root = tmp_path / "wav"
    rng = np.random.default_rng(0)
    for relpath, seconds in GOOD.items():
        write(
            str(root / relpath), 0.1 * rng.standard_normal(int(16000 * seconds))
        )
    bad = {relpath: str(root / relpath) for relpath in BAD}
    with open(bad["id10002/CCCCCCCCCCC/00002.wav"], "wb") as f:
        f.write(b"RIFF\x00\x01garbage, not a wav file at all" * 4)
    open(bad["id10002/CCCCCCCCCCC/00003.wav"], "wb").close()
    write(bad["id10002/CCCCCCCCCCC/00004.wav"], np.zeros(0))
    write(bad["id10002/CCCCCCCCCCC/00005.wav"], np.zeros(8000), rate=8000)
    write(bad["id10002/DDDDDDDDDDD/00001.wav"], np.zeros((16000, 2)))
    write(bad["id10002/DDDDDDDDDDD/00002.wav"], np.zeros(3200))
    write(bad["id10002/stray.wav"], np.zeros(16000))
    write(bad["id10002/DDDDDDDDDDD/a b.wav"], np.zeros(16000))
    (root / "id10001" / "AAAAAAAAAAA" / "notes.txt").write_text("ignored")
    return str(root)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_skips_every_bad_file_with_one_line_each(
    vox_tree, tmp_path, caplog
):
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="data_prep.voxceleb"):
        outputs = prepare_voxceleb(vox_tree, out, min_duration=0.5, n_jobs=1)
    rows = read_csv(outputs["csv"])
    assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "video"]
    assert [row["ID"] for row in rows] == sorted(GOOD)
    for row in rows:
        assert float(row["duration"]) == pytest.approx(GOOD[row["ID"]])
        assert row["wav"] == "$data_root/" + row["ID"]
        speaker, video, _ = row["ID"].split("/")
        assert (row["spk_id"], row["video"]) == (speaker, video)
    with open(outputs["list"]) as f:
        assert f.read().splitlines() == [
            f"{path.split('/')[0]} {path}" for path in sorted(GOOD)
        ]
    with open(outputs["skipped"]) as f:
        skipped = dict(line.rstrip("\n").split("\t") for line in f)
    assert sorted(skipped) == sorted(BAD)
    for relpath, problem in BAD.items():
        assert problem in skipped[relpath], (relpath, skipped[relpath])
    messages = [r.getMessage() for r in caplog.records]
    for relpath in BAD:
        assert sum(relpath in m for m in messages) == 1, relpath
    assert len(messages) == len(BAD)


def test_unreadable_folder_is_reported_not_fatal(vox_tree, monkeypatch):
    scandir = os.scandir
    locked = os.path.join(vox_tree, "id10001", "BBBBBBBBBBB")

    def failing_scandir(path):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", failing_scandir)
    good, bad = scan_folder(vox_tree, min_duration=0.5, n_jobs=1)
    assert "id10001/BBBBBBBBBBB/00001.wav" not in dict(good)
    assert len(good) == len(GOOD) - 1
    assert (
        "id10001/BBBBBBBBBBB/",
        "unreadable folder (Permission denied)",
    ) in bad


def test_final_count_is_logged(vox_tree, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="data_prep.voxceleb"):
        prepare_voxceleb(vox_tree, str(tmp_path / "o"), min_duration=0.5)
    assert any(
        "4 files" in r.getMessage() and "8 skipped" in r.getMessage()
        for r in caplog.records
    )


def test_manifest_loads_with_data_root_replacement(vox_tree, tmp_path):
    outputs = prepare_voxceleb(vox_tree, str(tmp_path / "out"), n_jobs=1)
    moved = str(tmp_path / "moved")
    shutil.move(vox_tree, moved)
    data = manifest_dataset(outputs["csv"], moved)
    data.set_output_keys(["id", "wav", "duration", "spk_id"])
    item = data[0]
    assert item["wav"] == os.path.join(moved, item["id"])
    assert read_audio(item["wav"]).shape[0] == int(16000 * item["duration"])


def test_parallel_scan_equals_serial_scan(tiny_corpus):
    serial = scan_folder(tiny_corpus["data_folder"], n_jobs=1)
    parallel = scan_folder(tiny_corpus["data_folder"], n_jobs=2)
    assert serial == parallel
    # 8 train, 6 test and 3 development speakers x 2 videos x 3 utterances.
    assert len(serial[0]) == (8 + 6 + 3) * 2 * 3 and serial[1] == []


def test_skips_when_done_and_redoes_when_settings_change(vox_tree, tmp_path):
    out = str(tmp_path / "out")
    outputs = prepare_voxceleb(vox_tree, out, n_jobs=1)
    before = os.stat(outputs["csv"]).st_mtime_ns
    prepare_voxceleb(vox_tree, out, n_jobs=1)
    assert os.stat(outputs["csv"]).st_mtime_ns == before
    prepare_voxceleb(vox_tree, out, min_duration=0.9, n_jobs=1)
    ids = [row["ID"] for row in read_csv(outputs["csv"])]
    assert "id10002/CCCCCCCCCCC/00001.wav" not in ids and len(ids) == 3
    os.remove(outputs["list"])
    prepare_voxceleb(vox_tree, out, min_duration=0.9, n_jobs=1)
    assert os.path.isfile(outputs["list"])


def test_interrupted_rewrite_is_not_taken_as_done(
    vox_tree, tmp_path, monkeypatch
):
    out = str(tmp_path / "out")
    outputs = prepare_voxceleb(vox_tree, out, n_jobs=1)
    original = io_utils.atomic_open

    def interrupted(path, *args, **kwargs):
        if path == outputs["list"]:
            raise KeyboardInterrupt
        return original(path, *args, **kwargs)

    monkeypatch.setattr(io_utils, "atomic_open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_voxceleb(vox_tree, out, min_duration=0.9, n_jobs=1)
    monkeypatch.undo()
    # The csv has the new settings, the list the old ones: both are redone.
    assert len(read_csv(outputs["csv"])) == 3
    prepare_voxceleb(vox_tree, out, n_jobs=1)
    assert len(read_csv(outputs["csv"])) == len(GOOD) + 1


def test_trials_are_read_checked_and_copied(tiny_corpus, tmp_path):
    outputs = prepare_voxceleb(
        tiny_corpus["data_folder"],
        str(tmp_path / "out"),
        name="test",
        trial_lists=[tiny_corpus["trials"]],
    )
    copied = outputs["trials"]["trials.txt"]
    assert read_trials(copied) == read_trials(tiny_corpus["trials"])
    assert len(read_trials(copied)) == 40


@pytest.mark.parametrize(
    "line, problem",
    [
        ("1 id1/a/1.wav", "expected 'LABEL ENROL TEST', got 2 fields"),
        ("1 id1/a/1.wav id1/b/1.wav extra", "got 4 fields"),
        ("yes id1/a/1.wav id1/b/1.wav", "label must be 0 or 1, got 'yes'"),
        ("1 /abs/a/1.wav id1/b/1.wav", "is not a relative SPEAKER/VIDEO/UTT"),
        ("0 id1/a/1.wav 1.wav", "'1.wav' is not a relative"),
    ],
)
def test_malformed_trial_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "veri_test2.txt"
    path.write_text(f"1 id1/a/1.wav id1/b/2.wav\n\n{line}\n")
    with pytest.raises(TrialListError) as error:
        read_trials(str(path))
    assert str(error.value).startswith(f"{path}:3: ")
    assert problem in str(error.value)


def test_empty_trial_list_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n")
    with pytest.raises(TrialListError, match="no trials"):
        read_trials(str(path))


def test_trials_naming_missing_files_list_first_ones_and_count(
    vox_tree, tmp_path
):
    trials = tmp_path / "list_test_all2.txt"
    lines = [
        f"0 id10001/AAAAAAAAAAA/00001.wav id19999/XXXXXXXXXXX/{i:05d}.wav"
        for i in range(12)
    ]
    lines.append(
        "1 id10001/AAAAAAAAAAA/00001.wav id10002/DDDDDDDDDDD/00001.wav"
    )
    trials.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(TrialListError) as error:
        prepare_voxceleb(vox_tree, str(out), trial_lists=[str(trials)])
    message = str(error.value)
    assert message.startswith(f"{trials}: 13 of 14 files named")
    assert (
        "id10002/DDDDDDDDDDD/00001.wav (2 channels, expected mono)" in message
    )
    assert "id19999/XXXXXXXXXXX/00000.wav (missing)" in message
    assert "id19999/XXXXXXXXXXX/00008.wav (missing), ..." in message
    assert "00009.wav" not in message
    assert not out.exists()


def test_cli_reports_errors_with_exit_status(vox_tree, tmp_path, caplog):
    out = str(tmp_path / "out")
    assert main(["--data_folder", vox_tree, "--output_folder", out]) == 0
    assert os.path.isfile(os.path.join(out, "train.csv"))
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a b c\n")
    with caplog.at_level(logging.ERROR):
        status = main(
            [
                "--data_folder",
                vox_tree,
                "--output_folder",
                str(tmp_path / "o2"),
                "--trials",
                str(bad),
            ]
        )
    assert status == 1
    assert f"{bad}:1: expected 'LABEL ENROL TEST'" in caplog.text


# ---------------------------------------------------------------- m4a


FAKE_FFMPEG = """\
#!{python}
# Stands in for ffmpeg: decodes a wav (whatever its name), writes 16 kHz mono.
import sys
import soundfile
args = sys.argv[1:]
source, target = args[args.index("-i") + 1], args[-1]
assert args[args.index("-ar") + 1] == "16000"
assert args[args.index("-ac") + 1] == "1"
try:
    audio, rate = soundfile.read(source, always_2d=True)
except Exception:
    print(source + ": Invalid data found", file=sys.stderr)
    sys.exit(1)
soundfile.write(target, audio.mean(axis=1), {rate}, format="WAV")
"""


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """Put a fake ffmpeg (a Python script writing a wav) first on PATH."""

    def install(rate=16000):
        folder = tmp_path / f"bin{rate}"
        folder.mkdir()
        script = folder / "ffmpeg"
        script.write_text(FAKE_FFMPEG.format(python=sys.executable, rate=rate))
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    return install


@pytest.fixture
def m4a_tree(tmp_path):
    """Fake m4a files (wav data under an .m4a name), one of them corrupt."""
    root = tmp_path / "aac"
    for i, relpath in enumerate(
        [
            "id00001/VVVVVVVVVVV/00001",
            "id00001/VVVVVVVVVVV/00002",
            "id00002/W/1",
        ]
    ):
        write(str(root / f"{relpath}.m4a"), np.full((1600 * (i + 1), 2), 0.1))
    (root / "id00002" / "W" / "2.m4a").write_bytes(b"not audio")
    return str(root)


def test_conversion_is_parallel_resumable_and_reports_failures(
    fake_ffmpeg, m4a_tree, tmp_path, caplog
):
    fake_ffmpeg()
    out = str(tmp_path / "wav")
    with caplog.at_level(logging.INFO, logger="data_prep.convert_m4a"):
        counts = convert_m4a.convert_folder(m4a_tree, out, n_jobs=2)
    assert counts == {"converted": 3, "done": 0, "failed": 1}
    failed = os.path.join(m4a_tree, "id00002", "W", "2.m4a")
    assert f"{failed}: ffmpeg exited with 1 (" in caplog.text
    target = os.path.join(out, "id00001", "VVVVVVVVVVV", "00002.wav")
    info = soundfile.info(target)
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 3200)
    assert not os.path.exists(os.path.join(out, "id00002", "W", "2.wav"))
    leftovers = [n for _, _, names in os.walk(out) for n in names if "tmp" in n]
    assert leftovers == []

    # A second run only redoes what is missing or broken.
    before = os.stat(target).st_mtime_ns
    broken = os.path.join(out, "id00002", "W", "1.wav")
    open(broken, "w").close()
    counts = convert_m4a.convert_folder(m4a_tree, out, n_jobs=2)
    assert counts == {"converted": 1, "done": 2, "failed": 1}
    assert os.stat(target).st_mtime_ns == before
    assert soundfile.info(broken).frames == 4800


def test_output_that_is_not_16k_mono_is_refused(
    fake_ffmpeg, m4a_tree, tmp_path
):
    fake_ffmpeg(rate=8000)
    out = str(tmp_path / "wav")
    status, message = convert_m4a.convert_file(
        "ffmpeg",
        os.path.join(m4a_tree, "id00002", "W", "1.m4a"),
        os.path.join(out, "1.wav"),
    )
    assert status == "failed" and "not a 16 kHz mono wav" in message
    assert os.listdir(out) == []


def test_missing_ffmpeg_says_how_to_install_it(
    m4a_tree, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    with pytest.raises(
        convert_m4a.FfmpegNotFoundError, match="apt-get install"
    ):
        convert_m4a.convert_folder(m4a_tree, str(tmp_path / "wav"))
    with caplog.at_level(logging.ERROR):
        status = convert_m4a.main(
            ["--input_folder", m4a_tree, "--output_folder", str(tmp_path / "w")]
        )
    assert status == 1
    assert len(caplog.records) == 1
    assert "ffmpeg not found on PATH" in caplog.text
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------- augmentation


def test_musan_and_rir_csvs_drive_addnoise_and_addreverb(tiny_corpus, tmp_path):
    outputs = prepare_augmentation(
        str(tmp_path / "aug"),
        noise_folder=tiny_corpus["noise_folder"],
        rir_folder=tiny_corpus["rir_folder"],
    )
    assert sorted(outputs) == ["music", "noise", "rir", "speech"]
    for category in ("music", "speech", "noise"):
        rows = read_csv(outputs[category])
        assert len(rows) == 2
        assert all(f"/musan/{category}/" in row["wav"] for row in rows)
    assert len(read_csv(outputs["rir"])) == 6

    torch.manual_seed(0)
    clean = torch.zeros(3, 16000)
    clean[:, ::400] = 1.0
    lengths = torch.ones(3)
    for category in ("music", "speech", "noise"):
        noisy = AddNoise(csv_file=outputs[category], snr_low=0, snr_high=0)(
            clean, lengths
        )
        added = noisy - 0.5 * clean
        assert torch.isfinite(noisy).all()
        assert (added.pow(2).mean(dim=1) > 1e-4).all(), category
    reverberant = AddReverb(csv_file=outputs["rir"])(clean)
    assert reverberant.shape == clean.shape
    # Reverberation spreads each impulse over the following samples.
    assert (reverberant[:, 1:400].abs().sum(dim=1) > 0.1).all()


def test_csvs_of_an_earlier_preparation_do_not_linger(tiny_corpus, tmp_path):
    folder = str(tmp_path / "aug")
    first = prepare_augmentation(
        folder,
        noise_folder=tiny_corpus["noise_folder"],
        rir_folder=tiny_corpus["rir_folder"],
    )
    assert augmentation_csvs(folder) == first
    second = prepare_augmentation(folder, rir_folder=tiny_corpus["rir_folder"])
    assert sorted(second) == ["rir"]
    assert augmentation_csvs(folder) == second
    assert sorted(os.listdir(folder)) == ["rirs.csv"]


def test_speechbrain_csv_is_checked_and_passed_through(tiny_corpus, tmp_path):
    rirs = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(tiny_corpus["rir_folder"])
        for name in names
    )
    sb_csv = str(tmp_path / "sb_rirs.csv")
    write_csv(rirs, sb_csv)
    out = check_speechbrain_csv(sb_csv, str(tmp_path / "rirs.csv"))
    assert [row["wav"] for row in read_csv(out)] == rirs
    assert AddReverb(csv_file=out)(torch.randn(2, 8000)).shape == (2, 8000)

    outputs = prepare_augmentation(str(tmp_path / "aug"), rir_folder=sb_csv)
    assert read_csv(outputs["rir"]) == read_csv(out)


def test_speechbrain_csv_with_replacements_and_bad_rows(
    tiny_corpus, tmp_path, caplog
):
    noise = tiny_corpus["noise_folder"]
    path = tmp_path / "noise.csv"
    path.write_text(
        textwrap.dedent(
            """\
            ID,duration,wav,wav_format,wav_opts
            n1,3.0,$noise_root/noise/synth/noise-synth-0000.wav,wav,
            n2,3.0,$noise_root/noise/synth/missing.wav,wav,
            """
        )
    )
    with caplog.at_level(logging.WARNING):
        out = check_speechbrain_csv(
            str(path),
            str(tmp_path / "out.csv"),
            replacements={"noise_root": noise},
        )
    rows = read_csv(out)
    assert [row["ID"] for row in rows] == ["n1"]
    assert rows[0]["wav"] == f"{noise}/noise/synth/noise-synth-0000.wav"
    assert "missing.wav: unreadable" in caplog.text
    with pytest.raises(AugmentationDataError, match="needs a replacement"):
        check_speechbrain_csv(str(path), str(tmp_path / "o.csv"))

    bad_header = tmp_path / "bad_header.csv"
    bad_header.write_text("wav,duration\nx.wav,1.0\n")
    with pytest.raises(
        AugmentationDataError, match=f"{bad_header}:1: expected"
    ):
        check_speechbrain_csv(str(bad_header), str(tmp_path / "o.csv"))
    pickled = tmp_path / "pickled.csv"
    pickled.write_text(HEADER_LINE + "r,1.0,x.pkl,pkl,\n")
    with pytest.raises(AugmentationDataError, match=":2: format 'pkl'"):
        check_speechbrain_csv(str(pickled), str(tmp_path / "o.csv"))


def test_musan_tree_problems(tiny_corpus, tmp_path, caplog):
    musan = tmp_path / "musan"
    shutil.copytree(tiny_corpus["noise_folder"], musan)
    write(str(musan / "music" / "synth" / "low-rate.wav"), np.zeros(800), 8000)
    with caplog.at_level(logging.WARNING):
        outputs = prepare_augmentation(
            str(tmp_path / "aug"), noise_folder=str(musan)
        )
    assert len(read_csv(outputs["music"])) == 2
    assert (
        "low-rate.wav: sample rate 8000 Hz, expected 16000, skipped"
        in caplog.text
    )
    assert "music.csv: 1 of 3 files skipped" in caplog.text

    shutil.rmtree(musan / "speech")
    with pytest.raises(AugmentationDataError, match="speech: MUSAN category"):
        prepare_augmentation(str(tmp_path / "aug2"), noise_folder=str(musan))
    assert not (tmp_path / "aug2").exists()
    (tmp_path / "rirs" / "smallroom").mkdir(parents=True)
    with pytest.raises(AugmentationDataError, match="no TYPE/ROOM/FILE.wav"):
        prepare_augmentation(
            str(tmp_path / "aug3"), rir_folder=str(tmp_path / "rirs")
        )
