"""What SpeechBrain upstream checks: docstrings everywhere, ruff clean."""

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ["speechbrain_ext", "data_prep", "recipes", "benchmarks"]


def python_sources():
    files = [ROOT / "train.py"] if (ROOT / "train.py").exists() else []
    for folder in SOURCE_FOLDERS:
        files.extend(sorted((ROOT / folder).rglob("*.py")))
    return files


def missing_docstrings(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    missing = [] if ast.get_docstring(tree) else ["<module>"]
    public_nodes = [
        node
        for node in ast.walk(tree)
        if isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        )
        and not node.name.startswith("_")
    ]
    for node in public_nodes:
        if not ast.get_docstring(node):
            missing.append(f"{node.name} (line {node.lineno})")
    return missing


@pytest.mark.parametrize(
    "path", python_sources(), ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_module_class_and_function_has_a_docstring(path):
    assert missing_docstrings(path) == []


def test_docstring_check_catches_a_missing_docstring(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text('"""Module."""\n\n\ndef public():\n    return 1\n')
    assert missing_docstrings(source) == ["public (line 4)"]


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent))
    assert ruff, "ruff missing: pip install -r requirements-test.txt"
    result = subprocess.run(
        [ruff, "check", "--quiet", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def imported_modules(path):
    """Top-level names of the modules a file imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_library_imports_no_recipe_code():
    """``speechbrain_ext`` is the library: data_prep and the scripts use it,
    never the other way round."""
    wrong = {
        str(path.relative_to(ROOT)): sorted(
            name
            for name in imported_modules(path)
            if name.split(".")[0] in ("data_prep", "recipes", "train")
        )
        for path in sorted((ROOT / "speechbrain_ext").rglob("*.py"))
    }
    assert {path: names for path, names in wrong.items() if names} == {}


def test_loggers_come_from_speechbrain():
    """SpeechBrain's ``get_logger`` (its level and DDP handling), as
    upstream asks; ``logging.getLogger()`` of the root logger is allowed."""
    direct = [
        str(path.relative_to(ROOT))
        for path in python_sources()
        if "logging.getLogger(__name__)" in path.read_text(encoding="utf-8")
    ]
    assert direct == []
