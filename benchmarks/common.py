"""Pieces shared by the benchmark scripts: the machine line and a timer.

Example
-------
>>> "torch threads" in machine()
True
>>> timed(sum, [1, 2])[0]
3
"""

import os
import platform
import time

import torch


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one).

    Returns
    -------
    str

    Example
    -------
    >>> bool(cpu_model())
    True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine():
    """One line: CPU model, usable cores, torch threads and version, GPU.

    Returns
    -------
    str

    Example
    -------
    >>> "GPU: " in machine()
    True
    """
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count()
    gpu = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else "not available in this session"
    )
    return (
        f"{cpu_model()}, {cores} cores ({torch.get_num_threads()} torch "
        f"threads), torch {torch.__version__}, GPU: {gpu}"
    )


def timed(function, *args, **kwargs):
    """``(result, seconds)`` of one call.

    Arguments
    ---------
    function : callable
        What to time.
    *args, **kwargs
        Its arguments.

    Returns
    -------
    result : object
    seconds : float

    Example
    -------
    >>> result, seconds = timed(max, 1, 5)
    >>> result, seconds >= 0
    (5, True)
    """
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start
