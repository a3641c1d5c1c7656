"""The install: what runs is what the lock pins, and a broken one says so."""

import ast
import importlib.metadata
import os
import pathlib
import subprocess
import sys

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_LOCK = ROOT / "requirements-test.lock"
RUNTIME_LOCK = ROOT / "requirements.lock"


def locked_pins(path):
    """``{name: version}`` of the lock's lines that apply to this machine."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {line} is not exact"
        pins[requirement.name] = specifier.version
    return pins


def drift(pins):
    """The pinned packages whose installed version differs (or is absent)."""
    differences = []
    for name, pinned in sorted(pins.items()):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            differences.append(f"{name}: pinned {pinned}, not installed")
            continue
        # A local label (torch 2.11.0+cu130) is the same release.
        if Version(installed).public != Version(pinned).public:
            differences.append(
                f"{name}: pinned {pinned}, installed {installed}"
            )
    return differences


def test_installed_packages_are_the_locked_ones():
    pins = locked_pins(TEST_LOCK)
    assert {"torch", "torchaudio", "speechbrain"} <= set(pins)
    assert drift(pins) == []


def test_drift_is_noticed():
    pins = locked_pins(TEST_LOCK)
    pins["torchaudio"] = "2.11.1"
    pins["no-such-distribution-xyz"] = "1.0"
    assert drift(pins) == [
        "no-such-distribution-xyz: pinned 1.0, not installed",
        f"torchaudio: pinned 2.11.1, installed "
        f"{importlib.metadata.version('torchaudio')}",
    ]


def test_the_test_lock_pins_the_runtime_lock_unchanged():
    runtime = locked_pins(RUNTIME_LOCK)
    test = locked_pins(TEST_LOCK)
    assert {name: test.get(name) for name in runtime} == runtime


def test_torch_and_torchaudio_are_one_release_line():
    pins = locked_pins(RUNTIME_LOCK)
    torch_release = Version(pins["torch"]).release[:2]
    assert Version(pins["torchaudio"]).release[:2] == torch_release


def test_a_marker_for_another_platform_is_skipped(tmp_path):
    lock = tmp_path / "lock.txt"
    other = "win32" if sys.platform != "win32" else "linux"
    lock.write_text(
        "# comment\n"
        f"colorama==0.4.6 ; sys_platform == '{other}'\n"
        "    # via tqdm\n"
        "tqdm==4.67.1\n"
    )
    assert Marker(f"sys_platform == '{other}'").evaluate() is False
    assert locked_pins(lock) == {"tqdm": "4.67.1"}


BROKEN_TORCHAUDIO = (
    "raise OSError('Could not load this library: libtorchaudio.so: "
    "undefined symbol: torch_exception_get_what_without_backtrace')\n"
)


@pytest.mark.parametrize(
    "script",
    ["train.py", "recipes/pseudo_label.py", "recipes/pipeline.py"],
)
def test_a_broken_torchaudio_gives_one_line(script, tmp_path):
    shadow = tmp_path / "torchaudio"
    shadow.mkdir()
    (shadow / "__init__.py").write_text(BROKEN_TORCHAUDIO)
    environment = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "hparams/any.yaml"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    torch_version = importlib.metadata.version("torch")
    assert lines[0].startswith("cannot load torchaudio (Could not load")
    assert f"torch {torch_version}" in lines[0]
    assert "pip install -r requirements.lock" in lines[0]


def entry_points():
    scripts = [ROOT / "train.py", *sorted((ROOT / "recipes").glob("*.py"))]
    for path in sorted((ROOT / "data_prep").glob("*.py")):
        if "__main__" in path.read_text(encoding="utf-8"):
            scripts.append(path)
    return scripts


@pytest.mark.parametrize(
    "path", entry_points(), ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_entry_point_imports_the_preflight_first(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = [
        node
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    assert isinstance(imports[0], ast.Import)
    assert imports[0].names[0].name == "speechbrain_ext.preflight"


def sys_path_uses(source):
    """Line numbers where ``source`` touches ``sys.path`` (AST, not text)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ]


def test_sys_path_check_sees_an_insert():
    assert sys_path_uses("import sys\nsys.path.insert(0, 'x')\n") == [2]
    assert sys_path_uses("s = 'sys.path.insert'\n") == []


def test_no_sys_path_manipulation_in_the_tree():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(ROOT.rglob("*.py"))
        if ".venv" not in path.parts
        for line in sys_path_uses(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
