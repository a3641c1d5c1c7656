"""Logging of the stage scripts: library noise out, warnings marked.

SpeechBrain's logging configuration sends every DEBUG record to the
experiment's ``log.txt``: matplotlib's font manager and PIL's PNG plugin
write dozens of DEBUG lines per figure there, and SpeechBrain's
``run_shell`` copies the output of ``pip freeze`` (a hundred lines, also
written to the experiment's ``env.log``). SpeechBrain's
``train_logger`` also warns, when imported, that torchvision is missing;
it needs torchvision only to save image samples of generative models,
which this recipe never does. :func:`quiet_library_logs` raises those
libraries' loggers to WARNING and drops that one notice; every entry point
calls it through ``speechbrain_ext.preflight``.

The stage scripts that do not set up SpeechBrain's experiment logging log
through :func:`setup_stage_logging`: plain messages, with warnings and
errors marked so that they stand out from the progress lines.

Example
-------
>>> import logging
>>> quiet_library_logs()
>>> logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.DEBUG)
False
>>> logging.getLogger("matplotlib").isEnabledFor(logging.WARNING)
True
"""

import logging

#: Loggers of libraries whose DEBUG / INFO records only add noise; their
#: child loggers (``matplotlib.font_manager``...) inherit the level.
NOISY_LOGGERS = ("matplotlib", "PIL")


class DropMessages(logging.Filter):
    """Drop the records whose message starts with ``prefix``.

    Arguments
    ---------
    prefix : str
        The start of the messages to drop.

    Example
    -------
    >>> record = logging.makeLogRecord({"msg": "torchvision is not there"})
    >>> DropMessages("torchvision").filter(record)
    False
    """

    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def filter(self, record):
        """Whether ``record`` is kept."""
        return not record.getMessage().startswith(self.prefix)


class DropBelow(logging.Filter):
    """Drop the records below ``level``.

    SpeechBrain's ``get_logger`` sets its loggers' level again on every
    call (from ``SB_LOG_LEVEL``), so a level of ours would not last; a
    filter does.

    Arguments
    ---------
    level : int
        The lowest level kept.

    Example
    -------
    >>> record = logging.makeLogRecord({"levelno": logging.DEBUG})
    >>> DropBelow(logging.WARNING).filter(record)
    False
    """

    def __init__(self, level):
        super().__init__()
        self.level = level

    def filter(self, record):
        """Whether ``record`` is kept."""
        return record.levelno >= self.level


#: SpeechBrain loggers and the filter each needs: ``run_shell``'s copy of
#: every command's output, and ``train_logger``'s torchvision notice.
SPEECHBRAIN_FILTERS = (
    ("speechbrain.utils.superpowers", DropBelow(logging.WARNING)),
    (
        "speechbrain.utils.train_logger",
        DropMessages("torchvision is not available"),
    ),
)


def quiet_library_logs():
    """Raise noisy libraries' loggers to WARNING; filter SpeechBrain's.

    Idempotent. SpeechBrain's later logging setup (``dictConfig`` with
    ``disable_existing_loggers: False``, configuring the root logger only)
    keeps these levels and filters.
    """
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, noise_filter in SPEECHBRAIN_FILTERS:
        target = logging.getLogger(name)
        if noise_filter not in target.filters:
            target.addFilter(noise_filter)


class MarkedFormatter(logging.Formatter):
    """A formatter that starts warnings and errors with their level.

    Example
    -------
    >>> formatter = MarkedFormatter("%(message)s")
    >>> formatter.format(logging.makeLogRecord(
    ...     {"msg": "only 10 embeddings", "levelno": logging.WARNING,
    ...      "levelname": "WARNING"}))
    'WARNING: only 10 embeddings'
    >>> formatter.format(logging.makeLogRecord(
    ...     {"msg": "loaded", "levelno": logging.INFO, "levelname": "INFO"}))
    'loaded'
    """

    def formatMessage(self, record):
        """The formatted message, marked from WARNING up."""
        text = super().formatMessage(record)
        if record.levelno >= logging.WARNING:
            marked = f"{record.levelname}: {record.message}"
            text = text.replace(record.message, marked, 1)
        return text


def setup_stage_logging(timestamps=False):
    """INFO and up to stderr, warnings marked (see :class:`MarkedFormatter`).

    Does nothing when the root logger already has handlers (as
    ``logging.basicConfig``).

    Arguments
    ---------
    timestamps : bool
        Start each line with the time (for long stages).
    """
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        MarkedFormatter(
            "%(asctime)s %(message)s" if timestamps else "%(message)s"
        )
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
