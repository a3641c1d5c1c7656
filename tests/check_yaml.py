"""SpeechBrain's script/hparams consistency rules, as a test helper.

Upstream runs ``tests/utils/check_yaml.py`` on every (script, hparams)
pair of its recipe CSVs; this module applies the same rules (written anew,
not copied) so that our recipe passes upstream's check:

* every top-level key of the hparams file is either referenced by a later
  ``!ref <key>`` or read by the script itself (the script file only, not
  the library it imports), as ``hparams["key"]``, ``hparams.key``,
  ``modules.key``, ``getattr(self.hparams, "key"`` or
  ``hparams.get("key"``; the run options ``sb.Brain`` reads are exempt;
* every ``self.modules.NAME`` the script uses is listed under ``modules:``.

Example
-------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "h.yaml").write_text("a: 1\\nb: !ref <a>\\nc: 2\\n")
>>> _ = (folder / "s.py").write_text('x = hparams["b"]\\n')
>>> unused_keys(folder / "h.yaml", folder / "s.py")
['c']
"""

import dataclasses
import re

from speechbrain.utils.run_opts import RunOptions

# How upstream's check finds a key in a line of the script.
_PREFIXES = ("hparams.", "modules.", 'attr(self.hparams, "', 'hparams.get("')
_REFERENCE = re.compile(r"<([^<>\[]*)[\[>]")
_MODULE_USE = re.compile(r"self\.modules\.([A-Za-z_][A-Za-z0-9_]*)")
_OPTIONAL_MODULE = re.compile(
    r'if hasattr\(self\.(?:modules|hparams), "([A-Za-z_][A-Za-z0-9_]*)"'
)
# Attributes of ModuleDict, not modules.
_MODULE_DICT_METHODS = {"parameters", "keys", "eval", "train"}
_PRETRAINER = "speechbrain.utils.parameter_transfer.Pretrainer"
# Keys sb.Brain reads from the hparams itself (its run options).
_RUN_OPTIONS = {field.name for field in dataclasses.fields(RunOptions)}


def declared_keys(hparams_file):
    """Top-level keys that no later ``!ref`` uses, in upstream's reading.

    A line that does not start with a space, a tab or ``#`` and holds a
    ``:`` declares the key before it (``!!`` and ``!apply`` lines, and a
    ``Pretrainer``, declare nothing); each ``<key>`` or ``<key[...]>`` of a
    ``!ref`` line marks an already declared key as used.

    Arguments
    ---------
    hparams_file : str or pathlib.Path
        A HyperPyYAML file.

    Returns
    -------
    list of str
    """
    keys = []
    with open(hparams_file, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip()
            if not line or line.startswith("#") or _PRETRAINER in line:
                continue
            if ":" in line and line[0] not in " \t":
                if "!!" not in line and "!apply" not in line:
                    keys.append(line[: line.index(":")])
            if "!ref" in line:
                for used in _REFERENCE.findall(line):
                    if used in keys:
                        keys.remove(used)
    return keys


def _used_in(key, line):
    if f'["{key}"]' in line:
        return True
    return any(prefix + key in line for prefix in _PREFIXES)


def unused_keys(hparams_file, script_file):
    """Keys of ``hparams_file`` that ``script_file`` never reads.

    Arguments
    ---------
    hparams_file : str or pathlib.Path
        The hparams.
    script_file : str or pathlib.Path
        The script that loads them.

    Returns
    -------
    list of str
        Sorted; empty when the pair passes.
    """
    keys = set(declared_keys(hparams_file)) - _RUN_OPTIONS
    with open(script_file, encoding="utf-8") as f:
        for line in f:
            keys = {key for key in keys if not _used_in(key, line)}
    return sorted(keys)


def undeclared_modules(hparams_file, script_file):
    """``self.modules.NAME`` of the script missing from ``modules:``.

    Names the script tests with ``if hasattr(self.modules, "NAME"`` (or
    ``self.hparams``) are optional and exempt.

    Arguments
    ---------
    hparams_file : str or pathlib.Path
        The hparams.
    script_file : str or pathlib.Path
        The script.

    Returns
    -------
    list of str
        Sorted; empty when the pair passes.
    """
    listed, in_block = set(), False
    with open(hparams_file, encoding="utf-8") as f:
        for line in f:
            if "modules:" in line:
                in_block = True
                continue
            if line[:1] not in (" ", "\t"):
                in_block = False
            if in_block:
                listed.add(line.strip().split(":")[0])
    with open(script_file, encoding="utf-8") as f:
        script = f.read()
    used = set(_MODULE_USE.findall(script)) - _MODULE_DICT_METHODS
    used -= set(_OPTIONAL_MODULE.findall(script))
    return sorted(used - listed)
