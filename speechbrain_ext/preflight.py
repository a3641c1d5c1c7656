"""Entry-point set-up: the compiled dependencies load, library logs are quiet.

A torchaudio wheel built against another torch fails deep inside
``import speechbrain`` with a linker error (``undefined symbol: ...``) that
does not say what to do. Every script imports this module first::

    import speechbrain_ext.preflight  # noqa: F401

and, when one of :data:`COMPILED_DEPENDENCIES` cannot be imported, exits
with one line naming the module, the installed torch/torchaudio versions
and the fix (install from the lock). Only entry points (``train.py``,
``recipes/``, ``data_prep/``) import it: the library's own modules never do,
so a program importing ``speechbrain_ext`` keeps Python's own errors.
Once the dependencies load, it quiets the libraries whose records are noise
in a recipe's logs (see :mod:`speechbrain_ext.utils.stage_logging`).

Example
-------
>>> broken_dependency(["json"]) is None
True
>>> print(broken_dependency(["no_such_module_xyz"]))  # doctest: +ELLIPSIS
cannot load no_such_module_xyz (No module named 'no_such_module_xyz'); ...
"""

import importlib
import importlib.metadata
import sys

#: Modules with compiled code, in the order the recipe's imports load them.
COMPILED_DEPENDENCIES = ("torch", "torchaudio", "soundfile", "speechbrain")

#: What fixes a broken install (see the README, "Dependencies and the lock").
FIX = (
    "reinstall the pinned versions: pip install -r requirements.lock "
    "(requirements-test.lock for the tests)"
)


def installed_version(distribution):
    """The installed version of ``distribution``, or ``"not installed"``.

    Arguments
    ---------
    distribution : str
        A distribution name, e.g. ``"torch"``.

    Returns
    -------
    str

    Example
    -------
    >>> installed_version("no-such-distribution-xyz")
    'not installed'
    """
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def broken_dependency(modules=COMPILED_DEPENDENCIES):
    """Import ``modules`` in order; describe the first that fails.

    Arguments
    ---------
    modules : sequence of str
        Module names to import.

    Returns
    -------
    str or None
        One line naming the module, the error, the installed torch and
        torchaudio versions and the fix; ``None`` when all import.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except (ImportError, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error) else ""
            return (
                f"cannot load {module} ({reason}); installed: "
                f"torch {installed_version('torch')}, "
                f"torchaudio {installed_version('torchaudio')}; {FIX}"
            )
    return None


_message = broken_dependency()
if _message is not None:
    sys.exit(_message)

from speechbrain_ext.utils import stage_logging  # noqa: E402

stage_logging.quiet_library_logs()
