"""SpeechBrain's recipe checks: every hparams file is listed with its script,
and every top-level hparams key is used by the code or by another key."""

import csv
import dataclasses
import pathlib
import re

import pytest
import yaml
from speechbrain.utils.run_opts import RunOptions

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE_CSV = ROOT / "tests" / "recipes" / "WavLM_SSL_SV.csv"
LIBRARY_FOLDERS = ("speechbrain_ext", "data_prep")
# Keys that sb.Brain reads from the hparams itself (run options).
BRAIN_RUN_OPTIONS = {field.name for field in dataclasses.fields(RunOptions)}


def recipe_rows():
    with open(RECIPE_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def top_level_keys(hparams_file):
    """Top-level keys of a HyperPyYAML file, read without building it."""
    keys = []
    for line in hparams_file.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*:", line)
        if match:
            keys.append(match.group(1))
    return keys


def is_used(key, hparams_text, code):
    """Whether ``key`` is referenced by another key, read by the code, or
    a run option that ``sb.Brain`` reads from the hparams."""
    if key.startswith("__") or key in BRAIN_RUN_OPTIONS:
        return True
    if re.search(rf"<{re.escape(key)}[>\[.]", hparams_text):
        return True
    quoted = rf"""["']{re.escape(key)}["']"""
    attribute = rf"\.{re.escape(key)}\b"
    return bool(re.search(quoted, code) or re.search(attribute, code))


def code_of(script):
    sources = [ROOT / script]
    for folder in LIBRARY_FOLDERS:
        sources.extend(sorted((ROOT / folder).rglob("*.py")))
    return "\n".join(p.read_text(encoding="utf-8") for p in sources)


def test_every_hparams_file_is_listed():
    listed = {row["Hparam_file"] for row in recipe_rows()}
    present = {
        str(p.relative_to(ROOT)) for p in (ROOT / "hparams").glob("*.yaml")
    }
    assert present - listed == set(), "hparams files missing from the CSV"


@pytest.mark.parametrize(
    "row", recipe_rows(), ids=lambda r: r["Hparam_file"].split("/")[-1]
)
def test_listed_files_exist_and_every_key_is_used(row):
    for column in ("Script_file", "Hparam_file", "Data_prep_file"):
        assert (ROOT / row[column]).is_file(), row[column]
    hparams_file = ROOT / row["Hparam_file"]
    text = hparams_file.read_text(encoding="utf-8")
    code = code_of(row["Script_file"])
    unused = [
        k for k in top_level_keys(hparams_file) if not is_used(k, text, code)
    ]
    assert unused == [], f"{row['Hparam_file']}: keys never used: {unused}"


def test_hparams_are_valid_yaml_apart_from_tags():
    class TagsAsPlainValues(yaml.SafeLoader):
        """Reads ``!new:``/``!ref`` and friends as plain values."""

    TagsAsPlainValues.add_multi_constructor(
        "!", lambda loader, suffix, node: None
    )
    for path in (ROOT / "hparams").glob("*.yaml"):
        assert isinstance(
            yaml.load(path.read_text(encoding="utf-8"), TagsAsPlainValues), dict
        ), path


def test_unused_key_is_detected():
    code = 'value = hparams["used_key"]\n'
    text = "used_key: 1\nunused_key: 2\nderived: !ref <used_key>\n"
    assert is_used("used_key", text, code)
    assert not is_used("unused_key", text, code)
