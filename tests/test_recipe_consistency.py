"""SpeechBrain's recipe checks: every hparams file is listed with its script,
and every top-level hparams key is used by the code or by another key."""

import csv
import dataclasses
import pathlib
import re

import pytest
import yaml
from check_yaml import undeclared_modules, unused_keys
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


@pytest.mark.parametrize(
    "row", recipe_rows(), ids=lambda r: r["Hparam_file"].split("/")[-1]
)
def test_speechbrain_check_yaml_passes(row):
    """Upstream's ``tests/utils/check_yaml.py`` rules on each pair: keys
    read by the script itself, modules declared."""
    hparams_file, script = ROOT / row["Hparam_file"], ROOT / row["Script_file"]
    assert unused_keys(hparams_file, script) == []
    assert undeclared_modules(hparams_file, script) == []


def test_check_yaml_sees_through_no_alias(tmp_path):
    """An alias of ``self.hparams`` hides the keys from upstream's check,
    a ``modules.values()`` call names an undeclared module."""
    hparams_file = tmp_path / "h.yaml"
    hparams_file.write_text(
        "# comment: not a key\nlr: 0.1\nsize: 3\nlayer: !ref <size>\n"
        "modules:\n    model: !ref <layer>\n"
    )
    script = tmp_path / "s.py"
    script.write_text(
        "hp = self.hparams\nrate = hp.lr\n"
        "model = self.modules.model\nfor m in self.modules.values(): pass\n"
    )
    assert unused_keys(hparams_file, script) == ["lr", "modules"]
    assert undeclared_modules(hparams_file, script) == ["values"]
    script.write_text("rate = self.hparams.lr\nm = hparams['modules']\n")
    assert unused_keys(hparams_file, script) == ["modules"]
    script.write_text('rate = self.hparams.lr\nm = hparams["modules"]\n')
    assert unused_keys(hparams_file, script) == []


def yaml_problems(path, allowed_truthy):
    """The error-level rules of ``.yamllint.yaml`` (upstream's yamllint
    settings), checked without yamllint: booleans spelt as allowed, no
    trailing spaces or tabs, at most 2 blank lines in a row, one final
    newline, no duplicate keys."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    problems = []
    truthy = re.compile(
        r"(?::|^\s*-)\s+(true|false|yes|no|on|off|True|False|Yes|No|On|Off"
        r"|TRUE|FALSE|YES|NO|ON|OFF)\s*(#.*)?$"
    )
    blank_run = 0
    for number, line in enumerate(lines[:-1], 1):
        if line != line.rstrip():
            problems.append(f"{number}: trailing spaces")
        if "\t" in line:
            problems.append(f"{number}: tab")
        match = truthy.search(line)
        if match and match.group(1) not in allowed_truthy:
            problems.append(f"{number}: truthy {match.group(1)}")
        blank_run = blank_run + 1 if not line.strip() else 0
        if blank_run > 2:
            problems.append(f"{number}: more than 2 blank lines")
    if not text.endswith("\n") or text.endswith("\n\n"):
        problems.append("not exactly one newline at the end")

    class NoDuplicates(yaml.SafeLoader):
        """Reads tags as plain values and refuses duplicate keys."""

        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep) for k, _ in node.value]
            duplicated = {k for k in keys if keys.count(k) > 1}
            if duplicated:
                problems.append(f"duplicate keys {sorted(duplicated)}")
            return super().construct_mapping(node, deep)

    NoDuplicates.add_multi_constructor("!", lambda loader, suffix, node: None)
    yaml.load(text, NoDuplicates)
    return problems


def allowed_truthy():
    config = yaml.safe_load((ROOT / ".yamllint.yaml").read_text())
    return config["rules"]["truthy"]["allowed-values"]


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "hparams").glob("*.yaml")) + [ROOT / ".yamllint.yaml"],
    ids=lambda p: p.name,
)
def test_yaml_files_follow_speechbrains_yamllint_rules(path):
    assert yaml_problems(path, allowed_truthy()) == []


def test_yaml_rules_catch_upstreams_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: yes \nb: true\nc: True\n\n\n\na: 1\n")
    assert yaml_problems(path, allowed_truthy()) == [
        "1: trailing spaces",
        "1: truthy yes",
        "2: truthy true",
        "6: more than 2 blank lines",
        "duplicate keys ['a']",
    ]
