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
