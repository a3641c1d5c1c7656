#!/usr/bin/env python3
"""The whole recipe in one command, as resumable WeSpeaker-style stages.

Stages (each a SpeechBrain script run as a subprocess with its hparams file
and overrides, writing under ``<output_folder>/<stage>/``)::

    dino                  recipes/train_dino.py   stage-1 embeddings + EER
    pseudo_labels_dino    recipes/pseudo_label.py K-Means + AHC, NMI
    round1                train.py                fine-tune on those labels
    eval_round1           recipes/evaluate.py     EER / minDCF on the trials
    embeddings_round1     recipes/extract_embeddings.py
    pseudo_labels_round1  recipes/pseudo_label.py
    round2, eval_round2   (one more round per n_rounds)
    embeddings_round2, pseudo_labels_round2
                          with cluster_last_round: the last round's NMI
    lmft, eval_lmft       train.py hparams/lmft.yaml from the last round
    export                recipes/export_pretrained.py -> <output_folder>/model

A stage that completes writes ``<output_folder>/stages/<stage>.json`` (its
command and wall time); a re-run skips completed stages and re-runs an
interrupted one, which resumes from its own checkpoints (the log says
``running (resuming)``). ``--rerun=[a,b]``
deletes those stages' outputs (and marks every later stage as not done) and
runs them again; ``--stages=[a,b]`` runs only those. ``--launcher`` starts
the training, embedding and evaluation stages (e.g. with ``torchrun``, one
process per GPU); ``--train_launcher``, when given, overrides it for
training. At the end a summary
(stage, NMI of the pseudo-labels made from its embeddings, EER in percent
and its scoring method, minDCF at P_target 0.01, wall time split into
training, embedding, evaluation and clustering) is printed and written as
``summary.json``, ``summary.md`` and ``summary.png``. The export stores
the cosine threshold at the EER point of ``dev_trials`` (a development
trial list on speakers of neither the training list nor the test trials;
the built-in corpus writes one), or SpeechBrain's uncalibrated 0.25, with a
warning, when none is given.

One pipeline per output folder: it holds a lock (``OUT/.lock``, with its
PID) while it runs; a second one on the same folder stops with one line
naming that PID, and a lock left by a killed run is taken over. Killing
the pipeline also ends the stage it started (Linux), and temporary files
left by killed runs are removed when the next one starts.

To run::

    python recipes/pipeline.py hparams/pipeline.yaml --data_folder=WAVROOT \\
        --train_list=LIST --trials=TRIALS --output_folder=OUT \\
        [--pretrained_wavlm=WavLM-Base+.pt]
    python recipes/pipeline.py hparams/demo.yaml   # built-in toy corpus
    python recipes/pipeline.py hparams/pipeline.yaml ... \\
        --launcher="[torchrun, --nproc_per_node=4]"   # 4 GPUs
"""

import speechbrain_ext.preflight  # noqa: F401

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import speechbrain as sb
from speechbrain.utils.logger import get_logger

from speechbrain_ext.utils.folder_lock import (
    FolderLock,
    FolderLockedError,
    end_with_parent,
)
from speechbrain_ext.utils.io_utils import (
    atomic_open,
    atomic_path,
    remove_stale_temporaries,
    round_floats,
)
from speechbrain_ext.utils.stage_output import StageOutput
from speechbrain_ext.utils.stage_utils import load_stage_hparams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = get_logger(__name__)

SUMMARY_KEYS = (
    "stage",
    "NMI",
    "purity",
    "session_pairs",
    "EER",
    "EER_cosine",
    "minDCF_0.01",
    "scoring",
    "n_trials",
    "train_s",
    "embed_s",
    "eval_s",
    "cluster_s",
    "wall_s",
    "epochs",
)

#: What each script's wall time counts as in the summary.
TIME_KINDS = {
    "recipes/train_dino.py": "train_s",
    "train.py": "train_s",
    "recipes/extract_embeddings.py": "embed_s",
    "recipes/evaluate.py": "eval_s",
    "recipes/pseudo_label.py": "cluster_s",
    "recipes/export_pretrained.py": None,
}

#: Stage 1's scoring (recipes/train_dino.py's own evaluation).
DINO_SCORING = "cosine (full-utterance cosine)"
EPOCH_KEYS = (
    "epoch",
    "threshold",
    "kept_fraction",
    "kept_purity",
    "rejected_purity",
    "corrected",
    "lc_agreement",
    "gate_fit",
)

#: Seconds between saves of a running stage's wall time.
ATTEMPT_RECORD_S = 30

#: Seconds to wait for the rest of a stage's output once it has ended.
OUTPUT_DRAIN_S = 30


class StageError(RuntimeError):
    """A stage command failed; the message names the stage and its log."""


@dataclass
class Stage:
    """One step of the pipeline.

    Arguments
    ---------
    name : str
        Unique name; also the name of its output folder.
    command : list of str
        The command line (run from the repository root).
    folder : str
        Its output folder (deleted when the stage is re-run).
    row : str or None
        The summary row (model) whose wall time it adds to.
    time_kind : str or None
        The summary column its wall time goes to (``train_s``,
        ``embed_s``, ``eval_s``, ``cluster_s``; see :data:`TIME_KINDS`).
    """

    name: str
    command: list
    folder: str
    row: str = None
    time_kind: str = None


class StageRunner:
    """Runs stages once: completion markers, logs, wall times.

    Arguments
    ---------
    output_folder : str
        The experiment folder; markers go to ``stages/``, logs to ``logs/``.
    env : dict, optional
        Environment of the commands (default: this process's), always with
        unbuffered Python output (progress reaches the console at once).
    console : file, optional
        Where each stage's output is shown as it runs (default: standard
        output; see :class:`speechbrain_ext.utils.stage_output.StageOutput`).

    Example
    -------
    >>> import io, tempfile
    >>> out = tempfile.mkdtemp()
    >>> runner = StageRunner(out, console=io.StringIO())
    >>> stage = Stage("hello", [sys.executable, "-c", "print(1)"],
    ...               os.path.join(out, "hello"))
    >>> runner.run(stage), runner.run(stage)
    ('ran', 'skipped')
    >>> runner.is_done("hello")
    True
    """

    def __init__(self, output_folder, env=None, console=None):
        self.output_folder = output_folder
        self.marker_folder = os.path.join(output_folder, "stages")
        self.log_folder = os.path.join(output_folder, "logs")
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.console = console

    def marker(self, name):
        """Path of a stage's completion marker."""
        return os.path.join(self.marker_folder, f"{name}.json")

    def is_done(self, name):
        """Whether the stage completed (its marker exists)."""
        return os.path.isfile(self.marker(name))

    def info(self, name):
        """The marker's content (``wall_s``, ``command``...) or None."""
        if not self.is_done(name):
            return None
        with open(self.marker(name), encoding="utf-8") as f:
            return json.load(f)

    def _attempts_file(self, name):
        return os.path.join(self.marker_folder, f"{name}.attempts.json")

    def _earlier_wall(self, name):
        try:
            with open(self._attempts_file(name), encoding="utf-8") as f:
                return float(json.load(f)["wall_s"])
        except (OSError, ValueError, KeyError):
            return 0.0

    def reset(self, stage):
        """Forget a stage: delete its marker, attempts and output folder.

        Arguments
        ---------
        stage : Stage
        """
        for path in (self.marker(stage.name), self._attempts_file(stage.name)):
            if os.path.exists(path):
                os.remove(path)
        if os.path.isdir(stage.folder):
            shutil.rmtree(stage.folder)

    def run(self, stage):
        """Run a stage unless it is done; record its marker.

        The command's output goes to ``logs/<name>.log`` (appended across
        attempts, progress bars reduced to their final state) and to the
        console (bars moving on a terminal, else a progress line every
        :data:`~speechbrain_ext.utils.stage_output.PROGRESS_LINE_S`
        seconds). Time spent in failed or interrupted attempts is added to
        the wall time of the one that completes. A stage started before
        (and not completed) is announced as ``running (resuming)``. The
        command ends with this process: on Linux it is sent SIGTERM when
        the pipeline dies, even by ``kill -9``.

        Arguments
        ---------
        stage : Stage

        Returns
        -------
        str
            ``"skipped"`` or ``"ran"``.

        Raises
        ------
        StageError
            When the command exits with a non-zero status.
        """
        if self.is_done(stage.name):
            logger.info("stage %s: done, skipped", stage.name)
            return "skipped"
        os.makedirs(self.log_folder, exist_ok=True)
        os.makedirs(self.marker_folder, exist_ok=True)
        log_path = os.path.join(self.log_folder, f"{stage.name}.log")
        resuming = os.path.exists(self._attempts_file(stage.name))
        earlier = self._earlier_wall(stage.name)
        logger.info(
            "stage %s: running%s (log: %s)",
            stage.name,
            " (resuming)" if resuming else "",
            log_path,
        )
        start = time.perf_counter()

        def record_attempt():
            """Save the wall time so far: a killed attempt still counts."""
            with atomic_open(self._attempts_file(stage.name)) as f:
                json.dump({"wall_s": earlier + time.perf_counter() - start}, f)

        record_attempt()
        console = self.console or sys.stdout
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(stage.command)}\n")
            log.flush()
            output = StageOutput(log, console, live=console.isatty())
            process = subprocess.Popen(
                stage.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=self.env,
                preexec_fn=end_with_parent,
            )
            copier = threading.Thread(
                target=output.copy_from,
                args=(process.stdout.fileno(),),
                daemon=True,
            )
            copier.start()
            try:
                while True:
                    try:
                        returncode = process.wait(timeout=ATTEMPT_RECORD_S)
                        break
                    except subprocess.TimeoutExpired:
                        record_attempt()
            finally:
                if process.poll() is None:  # interrupted: end the stage too
                    process.terminate()
                    process.wait()
                # A process the stage left behind may hold the pipe open.
                copier.join(timeout=OUTPUT_DRAIN_S)
                if not copier.is_alive():
                    process.stdout.close()
                    output.close()
        wall = earlier + time.perf_counter() - start
        if returncode != 0:
            record_attempt()
        if returncode != 0:
            raise StageError(
                f"stage {stage.name} failed (exit code {returncode}); "
                f"last lines of {log_path}:\n" + _tail(log_path)
            )
        with atomic_open(self.marker(stage.name)) as f:
            json.dump(
                {
                    "stage": stage.name,
                    "command": stage.command,
                    "wall_s": wall,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
                f,
                indent=2,
            )
        if os.path.exists(self._attempts_file(stage.name)):
            os.remove(self._attempts_file(stage.name))
        logger.info("stage %s: done in %.1f s", stage.name, wall)
        return "ran"


def _tail(path, n_lines=15):
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-n_lines:])


def format_overrides(overrides):
    """``--key=value`` arguments for a SpeechBrain script.

    Lists and dicts are written as YAML flow (JSON), ``None`` as ``null``.

    Arguments
    ---------
    overrides : dict

    Returns
    -------
    list of str

    Example
    -------
    >>> format_overrides({"a": 1, "b": None, "c": [1, 2], "d": {"x": 0}})
    ['--a=1', '--b=null', '--c=[1, 2]', '--d={"x": 0}']
    """
    arguments = []
    for key, value in overrides.items():
        if value is None:
            text = "null"
        elif isinstance(value, (list, tuple, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        arguments.append(f"--{key}={text}")
    return arguments


def _as_list(value):
    """``None`` -> ``[]``; ``"a,b"`` -> ``["a", "b"]``; lists unchanged."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return list(value)


def launcher_command(value):
    """A ``launcher`` / ``train_launcher`` value as a list of arguments.

    A list, or one string of shell-style words. Each list item is split
    into words too: SpeechBrain's command-line parser turns a ``=`` inside
    an override value into a space, so ``--launcher=[torchrun,
    --nproc_per_node=2]`` arrives as ``["torchrun", "--nproc_per_node 2"]``.

    Arguments
    ---------
    value : list, str or None

    Returns
    -------
    list of str
        Empty for None.

    Example
    -------
    >>> launcher_command(["torchrun", "--nproc_per_node 2"])
    ['torchrun', '--nproc_per_node', '2']
    >>> launcher_command("torchrun --nproc_per_node=4")
    ['torchrun', '--nproc_per_node=4']
    >>> launcher_command(None)
    []
    """
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    return [word for item in items for word in shlex.split(str(item))]


def launched_run_options(run_options):
    """Run options of a stage started by a launcher (one process per GPU).

    A ``--device=cuda:N`` is left out: each ``torchrun`` process then takes
    the GPU of its ``LOCAL_RANK`` instead of all sharing GPU N.

    Arguments
    ---------
    run_options : sequence of str

    Returns
    -------
    list of str

    Example
    -------
    >>> launched_run_options(["--device=cuda:0", "--noprogressbar"])
    ['--noprogressbar']
    >>> launched_run_options(["--device=cpu"])
    ['--device=cpu']
    """
    return [
        option
        for option in run_options
        if not option.startswith("--device=cuda")
    ]


def plan_stages(hparams, run_options=()):
    """The stages of a run, in order, from the pipeline hparams.

    Arguments
    ---------
    hparams : dict
        Loaded ``hparams/pipeline.yaml`` (or ``demo.yaml``).
    run_options : sequence of str
        SpeechBrain run options passed to every stage (e.g.
        ``--device=cuda:0``).

    Returns
    -------
    list of Stage
    """
    out = hparams["output_folder"]
    python = [sys.executable]
    parallel = launcher_command(hparams["launcher"]) or python
    train_launcher = launcher_command(hparams["train_launcher"]) or parallel
    data = {"data_folder": hparams["data_folder"]}
    augmentation = {
        "noise_folder": hparams["noise_folder"],
        "rir_folder": hparams["rir_folder"],
    }
    model = dict(hparams["model"])
    stages = []

    def add(name, launcher, script, hparams_file, overrides, row):
        """Append a stage running ``script`` with ``hparams_file``."""
        options = list(run_options)
        if launcher != python:
            options = launched_run_options(options)
        command = (
            launcher
            + [os.path.join(ROOT, script), os.path.join(ROOT, hparams_file)]
            + format_overrides(overrides)
            + options
        )
        stages.append(
            Stage(
                name, command, os.path.join(out, name), row, TIME_KINDS[script]
            )
        )

    def pseudo_labels(source, embeddings):
        """Append a clustering stage; return its label file."""
        name = f"pseudo_labels_{source}"
        labels = os.path.join(out, name, "labels.txt")
        add(
            name,
            python,
            "recipes/pseudo_label.py",
            hparams["pseudo_label_hparams"],
            {
                "embeddings_file": embeddings,
                "output_file": labels,
                "n_clusters": hparams["n_kmeans_clusters"],
                "n_clusters_ahc": hparams["n_pseudo_speakers"],
                **hparams["pseudo_label_overrides"],
            },
            source,
        )
        return labels

    def evaluate(source):
        """Append the evaluation of a training stage's checkpoint."""
        add(
            f"eval_{source}",
            parallel,
            "recipes/evaluate.py",
            hparams["evaluate_hparams"],
            {
                **data,
                "trials": hparams["trials"],
                "model_source": os.path.join(out, source, "save"),
                "output_folder": os.path.join(out, f"eval_{source}"),
                **hparams["evaluate_overrides"],
            },
            source,
        )

    dino = os.path.join(out, "dino")
    add(
        "dino",
        python,
        "recipes/train_dino.py",
        hparams["dino_hparams"],
        {
            **data,
            "train_list": hparams["train_list"],
            "trials": hparams["trials"],
            "output_folder": dino,
            "external_embeddings": hparams["external_embeddings"],
            **augmentation,
            **hparams["dino_overrides"],
        },
        "dino",
    )
    labels = pseudo_labels("dino", os.path.join(dino, "embeddings.pt"))
    n_rounds = int(hparams["n_rounds"])
    training = {
        **data,
        **augmentation,
        "pretrained_wavlm": hparams["pretrained_wavlm"],
        "n_classes": hparams["n_pseudo_speakers"],
        **model,
    }
    if model.get("encoder") == "ecapa":
        # Every round (and LMFT's L2-SP anchor) starts from stage 1's
        # network, as the reference restarts from the pre-trained WavLM.
        training["dino_checkpoint"] = os.path.join(dino, "save")
        training["dino_network"] = hparams["dino_overrides"].get(
            "extract_network", "teacher"
        )
    for index in range(1, n_rounds + 1):
        name = f"round{index}"
        add(
            name,
            train_launcher,
            "train.py",
            hparams["round1_hparams"]
            if index == 1
            else hparams["later_round_hparams"],
            {
                **training,
                "train_list": labels,
                "output_folder": os.path.join(out, name),
                "run_name": name,
                "init_encoder_from": os.path.join(
                    out, f"round{index - 1}", "save"
                )
                if hparams["continue_rounds"] and index > 1
                else None,
                **hparams["round_overrides"],
            },
            name,
        )
        evaluate(name)
        if index < n_rounds or hparams["cluster_last_round"]:
            embeddings = os.path.join(out, f"embeddings_{name}", "emb.pt")
            add(
                f"embeddings_{name}",
                parallel,
                "recipes/extract_embeddings.py",
                hparams["extract_hparams"],
                {
                    **data,
                    "utterance_list": hparams["train_list"],
                    "model_source": os.path.join(out, name, "save"),
                    "output_file": embeddings,
                    **hparams["extract_overrides"],
                },
                name,
            )
            last_labels = pseudo_labels(name, embeddings)
            if index < n_rounds:
                labels = last_labels
    final = f"round{n_rounds}"
    if hparams["lmft"]:
        add(
            "lmft",
            train_launcher,
            "train.py",
            hparams["lmft_hparams"],
            {
                **training,
                "train_list": labels,
                "init_from": os.path.join(out, final, "save"),
                "output_folder": os.path.join(out, "lmft"),
                **hparams["lmft_overrides"],
            },
            "lmft",
        )
        evaluate("lmft")
        final = "lmft"
    add(
        "export",
        python,
        "recipes/export_pretrained.py",
        hparams["export_hparams"],
        {
            "model_source": os.path.join(out, final, "save"),
            "output_folder": os.path.join(out, "export"),
            "dev_trials": hparams["dev_trials"],
            "data_folder": hparams["data_folder"]
            if hparams["dev_trials"]
            else None,
            **hparams["export_overrides"],
        },
        None,
    )
    return stages


def select_stages(stages, only=None, rerun=None):
    """Check ``--stages`` / ``--rerun`` names; the stages to reset and run.

    Arguments
    ---------
    stages : list of Stage
        All stages in order.
    only : list of str or None
        Run only these (``None``: all).
    rerun : list of str or None
        Run these again from scratch; every later stage is reset too
        (its inputs change).

    Returns
    -------
    to_reset : list of Stage
    to_run : list of Stage

    Raises
    ------
    ValueError
        For an unknown stage name (the message lists the valid ones).

    Example
    -------
    >>> st = [Stage(n, [], n) for n in ("a", "b", "c")]
    >>> reset, run = select_stages(st, only=["b", "c"], rerun=["b"])
    >>> [s.name for s in reset], [s.name for s in run]
    (['b', 'c'], ['b', 'c'])
    """
    names = [stage.name for stage in stages]
    for name in _as_list(only) + _as_list(rerun):
        if name not in names:
            raise ValueError(
                f"unknown stage {name!r}; stages: {', '.join(names)}"
            )
    wanted = set(_as_list(only)) or set(names)
    rerun = set(_as_list(rerun))
    first = min((names.index(n) for n in rerun), default=len(names))
    to_reset = stages[first:] if rerun else []
    to_run = [stage for stage in stages if stage.name in wanted]
    return to_reset, to_run


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def collect_summary(stages, runner):
    """One row per model (dino, rounds, lmft) from the stages' outputs.

    Arguments
    ---------
    stages : list of Stage
    runner : StageRunner

    Returns
    -------
    list of dict
        ``SUMMARY_KEYS``; EER in percent (``EER``: the evaluation's main
        scoring, named in ``scoring``; ``EER_cosine``: full-utterance
        cosine, stage 1's only scoring), ``n_trials`` scored; ``None`` where
        not (yet) available. NMI, purity and ``session_pairs`` (see
        :func:`~speechbrain_ext.verification.clustering.session_pair_agreement`)
        are those of the pseudo-labels clustered from the stage's
        embeddings (against the true speakers, when the keys carry them).
        Wall times in seconds: ``train_s``
        (stage 1's includes its own embedding and evaluation), ``embed_s``
        (embeddings for the next clustering), ``eval_s``, ``cluster_s``
        and their sum ``wall_s``. ``epochs`` lists a training stage's
        per-epoch gate and label-correction figures (``EPOCH_KEYS``).
    """
    by_name = {stage.name: stage for stage in stages}
    rows = {}
    for stage in stages:
        if stage.row is None:
            continue
        row = rows.setdefault(
            stage.row,
            dict.fromkeys(SUMMARY_KEYS, None) | {"stage": stage.row},
        )
        info = runner.info(stage.name)
        if info is not None:
            wall = float(info["wall_s"])
            row["wall_s"] = (row["wall_s"] or 0.0) + wall
            if stage.time_kind:
                kind = stage.time_kind
                row[kind] = (row[kind] or 0.0) + wall
    for row_name, row in rows.items():
        labels = by_name.get(f"pseudo_labels_{row_name}")
        if labels is not None and runner.is_done(labels.name):
            report = _read_json(os.path.join(labels.folder, "labels.txt.json"))
            row["NMI"] = (report or {}).get("NMI")
            row["purity"] = (report or {}).get("purity")
            row["session_pairs"] = (report or {}).get("session_pairs")
        if row_name == "dino":
            metrics = _read_json(
                os.path.join(by_name["dino"].folder, "eval.json")
            )
        else:
            evaluation = by_name.get(f"eval_{row_name}")
            metrics = None
            if evaluation is not None and runner.is_done(evaluation.name):
                metrics = _read_json(
                    os.path.join(evaluation.folder, "metrics.json")
                )
        if metrics:
            row["EER"] = metrics.get("EER")
            row["minDCF_0.01"] = metrics.get("minDCF_0.01")
            row["n_trials"] = metrics.get("n_trials")
            cosine = metrics.get("methods", {}).get("cosine", {})
            row["EER_cosine"] = (
                metrics.get("EER") if row_name == "dino" else cosine.get("EER")
            )
            row["scoring"] = (
                DINO_SCORING
                if row_name == "dino"
                else metrics.get("main_method")
            )
        training = by_name.get(row_name)
        if row_name != "dino" and training is not None:
            history = _read_json(
                os.path.join(training.folder, "epoch_stats.json")
            )
            if history:
                row["epochs"] = [
                    {key: epoch.get(key) for key in EPOCH_KEYS}
                    for epoch in history
                ]
    for row in rows.values():
        for key in ("train_s", "embed_s", "eval_s", "cluster_s", "wall_s"):
            if row[key] is not None:
                row[key] = round(row[key], 1)
    return list(rows.values())


def summary_caption(rows, trials):
    """What the summary's numbers are: trial list, scoring, units.

    Arguments
    ---------
    rows : list of dict
        From :func:`collect_summary`.
    trials : str
        The trial list the models were scored on.

    Returns
    -------
    str
        One paragraph.

    Example
    -------
    >>> print(summary_caption([{"stage": "dino", "n_trials": 40,
    ...                         "scoring": "cosine"}], "/c/trials.txt"))
    ... # doctest: +NORMALIZE_WHITESPACE
    EER and minDCF on /c/trials.txt (40 trials), scoring: dino cosine.
    EER in percent; minDCF normalised, P_target 0.01, C_miss = C_fa = 1;
    NMI and purity of the pseudo-labels clustered from each model's
    embeddings, against the true speakers; times in seconds of wall clock.
    """
    counts = sorted({row["n_trials"] for row in rows if row["n_trials"]})
    scoring = ", ".join(
        f"{row['stage']} {row['scoring']}" for row in rows if row["scoring"]
    )
    return (
        f"EER and minDCF on {trials}"
        + (f" ({'/'.join(map(str, counts))} trials)" if counts else "")
        + (f", scoring: {scoring}" if scoring else "")
        + ". EER in percent; minDCF normalised, P_target 0.01, C_miss = "
        "C_fa = 1; NMI and purity of the pseudo-labels clustered from each "
        "model's embeddings, against the true speakers; times in seconds of "
        "wall clock."
    )


def summary_markdown(rows, caption=""):
    """The summary as Markdown: one table of models, one of epochs.

    Arguments
    ---------
    rows : list of dict
    caption : str
        Written above the first table (see :func:`summary_caption`).

    Returns
    -------
    str

    Example
    -------
    >>> row = dict.fromkeys(SUMMARY_KEYS) | {"stage": "dino", "NMI": 0.5,
    ...     "EER": 12.0, "EER_cosine": 12.0, "train_s": 3.0, "wall_s": 3.0}
    >>> print(summary_markdown([row]))  # doctest: +NORMALIZE_WHITESPACE
    | stage | NMI | purity | EER (%) | EER cosine (%) | minDCF (P_target
    0.01) | train (s) | embed (s) | eval (s) | cluster (s) | total (s) |
    |---|---|---|---|---|---|---|---|---|---|---|
    | dino | 0.500 | - | 12.00 | 12.00 | - | 3.0 | - | - | - | 3.0 |
    """

    def cell(value, digits, percent=False):
        """A number with ``digits`` decimals, ``-`` when missing."""
        if value is None:
            return "-"
        return (
            f"{100 * value:.{digits}f} %" if percent else f"{value:.{digits}f}"
        )

    lines = [caption, ""] if caption else []
    lines += [
        "| stage | NMI | purity | EER (%) | EER cosine (%) | minDCF "
        "(P_target 0.01) | train (s) | embed (s) | eval (s) | cluster (s) "
        "| total (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['stage']} | {cell(row['NMI'], 3)} | "
            f"{cell(row['purity'], 3)} | {cell(row['EER'], 2)} | "
            f"{cell(row['EER_cosine'], 2)} | {cell(row['minDCF_0.01'], 4)} | "
            + " | ".join(
                cell(row[key], 1)
                for key in ("train_s", "embed_s", "eval_s", "cluster_s")
            )
            + f" | {cell(row['wall_s'], 1)} |"
        )
    pairs = [row for row in rows if row.get("session_pairs")]
    if pairs:
        lines += [
            "",
            "Pairs of utterances in one pseudo-class, by how they are "
            "related (pseudo-labels that follow the recording sessions "
            "rather than the speakers join far more same-session pairs than "
            "same-speaker pairs from other sessions):",
            "",
            "| stage | same session | same speaker, other session | "
            "other speakers |",
            "|---|---|---|---|",
        ]
        for row in pairs:
            shared = row["session_pairs"]
            lines.append(
                f"| {row['stage']} | {cell(shared['same_session'], 3)} | "
                f"{cell(shared['same_speaker_other_session'], 3)} | "
                f"{cell(shared['other_speaker'], 3)} |"
            )
    epochs = [(row["stage"], e) for row in rows for e in row["epochs"] or []]
    if epochs:
        lines += [
            "",
            "Loss gate and label correction per epoch (threshold: on "
            "log(CE); kept: fraction of samples in the loss; purity: "
            "fraction of samples whose pseudo-label is the majority label "
            "of their true speaker's class; corrected: samples given a "
            "corrected label; agreement: corrections equal to the majority "
            "pseudo-label of the sample's true speaker):",
            "",
            "| stage | epoch | threshold | kept | purity kept | purity "
            "rejected | corrected | LC agreement | gate fit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for stage, e in epochs:
            lines.append(
                f"| {stage} | {e['epoch']} | {cell(e['threshold'], 3)} | "
                f"{cell(e['kept_fraction'], 1, True)} | "
                f"{cell(e['kept_purity'], 3)} | "
                f"{cell(e['rejected_purity'], 3)} | {e['corrected']} | "
                f"{cell(e['lc_agreement'], 3)} | "
                f"{e['gate_fit'] or '-'} |"
            )
    return "\n".join(lines)


def summary_figure(rows, trials=None):
    """NMI and EER per model, side by side, as a matplotlib figure.

    Arguments
    ---------
    rows : list of dict
        From :func:`collect_summary`.
    trials : str, optional
        The trial list (named in the title with its count and scoring).

    Returns
    -------
    matplotlib.figure.Figure
        Close it with ``matplotlib.pyplot.close`` when done.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["stage"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for axis, key, title, label in (
        (
            axes[0],
            "NMI",
            "Pseudo-labels clustered from each model",
            "NMI against the true speakers",
        ),
        (axes[1], "EER", "Verification", "EER (%)"),
    ):
        points = [
            (i, row[key]) for i, row in enumerate(rows) if row[key] is not None
        ]
        if points:
            xs, ys = zip(*points)
            axis.plot(xs, ys, marker="o")
        axis.set_xticks(range(len(names)), names, rotation=30)
        axis.set_xlabel("model (pipeline stage)")
        axis.set_ylabel(label)
        axis.set_title(title, fontsize="medium")
        axis.grid(alpha=0.3)
    if trials:
        counts = sorted({row["n_trials"] for row in rows if row["n_trials"]})
        scorings = sorted({row["scoring"] for row in rows if row["scoring"]})
        figure.suptitle(
            f"EER on {os.path.basename(trials)}"
            + (f" ({'/'.join(map(str, counts))} trials)" if counts else "")
            + (f"; scoring: {', '.join(scorings)}" if scorings else ""),
            fontsize="medium",
        )
    figure.tight_layout()
    return figure


def plot_summary(rows, path, trials=None):
    """Write :func:`summary_figure` as a PNG, atomically.

    Arguments
    ---------
    rows : list of dict
    path : str
    trials : str, optional
    """
    import matplotlib.pyplot as plt

    figure = summary_figure(rows, trials)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_summary(rows, output_folder, trials=None):
    """Write ``summary.json``, ``summary.md`` and ``summary.png``.

    Floats in ``summary.json`` are rounded to 8 significant digits.

    Arguments
    ---------
    rows : list of dict
    output_folder : str
    trials : str, optional
        The trial list (named in the Markdown caption and the figure).

    Returns
    -------
    str
        The Markdown (caption and tables).
    """
    rows = [{key: row[key] for key in SUMMARY_KEYS} for row in rows]
    with atomic_open(os.path.join(output_folder, "summary.json")) as f:
        json.dump(round_floats(rows), f, indent=2)
    caption = summary_caption(rows, trials) if trials else ""
    table = summary_markdown(rows, caption)
    with atomic_open(os.path.join(output_folder, "summary.md")) as f:
        f.write(table + "\n")
    plot_summary(rows, os.path.join(output_folder, "summary.png"), trials)
    return table


def prepare_synthetic_corpus(hparams):
    """Generate the built-in corpus when an input points inside it.

    Arguments
    ---------
    hparams : dict
    """
    folder = hparams["synthetic_corpus_folder"]
    if not folder:
        return
    folder = os.path.abspath(folder)
    inputs = [
        hparams[key]
        for key in (
            "data_folder",
            "train_list",
            "trials",
            "noise_folder",
            "rir_folder",
        )
        if hparams[key]
    ]
    if not any(
        os.path.abspath(path).startswith(folder + os.sep) for path in inputs
    ):
        return
    from data_prep.synthetic import generate_corpus

    generate_corpus(folder, **hparams["synthetic_corpus_options"])


def mismatched_dev_trials(hparams):
    """An error line when the development trials and the corpus disagree.

    The demo's ``dev_trials`` lie in the built-in corpus; pointed at
    another corpus (``--data_folder`` outside it), the demo must be given
    that corpus's development trials too (or ``--dev_trials=null``).

    Arguments
    ---------
    hparams : dict

    Returns
    -------
    str or None

    Example
    -------
    >>> hparams = {"synthetic_corpus_folder": "/d/corpus",
    ...            "data_folder": "/vox/wav",
    ...            "dev_trials": "/d/corpus/dev_trials.txt"}
    >>> print(mismatched_dev_trials(hparams))  # doctest: +ELLIPSIS
    dev_trials=/d/corpus/dev_trials.txt is in the built-in corpus but ...
    >>> mismatched_dev_trials(hparams | {"dev_trials": None}) is None
    True
    """
    folder = hparams["synthetic_corpus_folder"]
    if not folder or not hparams["dev_trials"]:
        return None
    folder = os.path.abspath(folder) + os.sep
    inside = [
        os.path.abspath(hparams[key]).startswith(folder)
        for key in ("dev_trials", "data_folder")
    ]
    if inside == [True, False]:
        return (
            f"dev_trials={hparams['dev_trials']} is in the built-in corpus "
            f"but data_folder={hparams['data_folder']} is not: give "
            "--dev_trials=<development trials of that corpus> or "
            "--dev_trials=null"
        )
    return None


def load_hparams(argv):
    """Parse the command line; load the hparams with one-line errors.

    Arguments
    ---------
    argv : list of str

    Returns
    -------
    hparams_file : str
    run_options : list of str
        The SpeechBrain run options given on the command line (e.g.
        ``--device=cuda:0``), passed on to every stage.
    overrides : str
    hparams : dict
    """
    hparams_file, run_opts, overrides, hparams = load_stage_hparams(argv)
    run_options = []
    for key in sorted(run_opts["overridden_args"] - {"param_file"}):
        value = run_opts[key]
        if value is True:
            run_options.append(f"--{key}")
        elif value is not False:
            run_options.append(f"--{key}={value}")
    return hparams_file, run_options, overrides, hparams


def main(argv):
    """Run the pipeline from the command line (see the module docstring)."""
    hparams_file, run_options, overrides, hparams = load_hparams(argv)
    if hparams["model"].get("encoder") == "ecapa" and (
        hparams["external_embeddings"] or hparams["pretrained_wavlm"]
    ):
        sys.exit(
            f"{hparams_file}: model.encoder=ecapa fine-tunes the built-in "
            "stage 1's network: it needs neither external_embeddings nor "
            "pretrained_wavlm (use model.encoder=wavlm with them)"
        )
    mismatch = mismatched_dev_trials(hparams)
    if mismatch:
        sys.exit(f"{hparams_file}: {mismatch}")
    if hparams["noprogressbar"] and "--noprogressbar" not in run_options:
        run_options.append("--noprogressbar")
    out = hparams["output_folder"]
    stages = plan_stages(hparams, run_options)
    try:
        to_reset, to_run = select_stages(
            stages, hparams["stages"], hparams["rerun"]
        )
    except ValueError as error:
        sys.exit(f"{hparams_file}: {error}")
    lock = FolderLock(out)
    try:
        stale = lock.acquire()
    except FolderLockedError as error:
        sys.exit(str(error))
    try:
        sb.create_experiment_directory(
            experiment_directory=out,
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )
        if stale is not None:
            logger.info(
                "took over the lock left by a killed run (PID %d)", stale
            )
        run_locked(hparams, stages, to_reset, to_run)
    finally:
        lock.release()


def run_locked(hparams, stages, to_reset, to_run):
    """The pipeline's work, once its output folder is locked.

    Arguments
    ---------
    hparams : dict
    stages : list of Stage
        All stages in order.
    to_reset, to_run : list of Stage
        From :func:`select_stages`.
    """
    out = hparams["output_folder"]
    for path in remove_stale_temporaries(out, recursive=True):
        logger.info("removed a temporary file left by a killed run: %s", path)
    prepare_synthetic_corpus(hparams)
    runner = StageRunner(out)
    for stage in to_reset:
        logger.info("stage %s: reset (re-run requested)", stage.name)
        runner.reset(stage)
    try:
        for stage in to_run:
            runner.run(stage)
    except StageError as error:
        rows = collect_summary(stages, runner)
        write_summary(rows, out, hparams["trials"])
        sys.exit(str(error))
    rows = collect_summary(stages, runner)
    table = write_summary(rows, out, hparams["trials"])
    print(table)
    print(f"summary: {os.path.join(out, 'summary.json')}")
    if runner.is_done("export"):
        print(f"exported model: {os.path.join(out, 'export')}")


if __name__ == "__main__":
    main(sys.argv[1:])
