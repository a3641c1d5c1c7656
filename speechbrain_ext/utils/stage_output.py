"""A stage's output, copied to its log file and to the console.

The pipeline runs each stage as a subprocess and reads its output (progress
bars included) through a pipe. Progress bars redraw their line with
carriage returns (``\\r``); a log file keeps only the last state of each
line, without terminal colour codes, so ``logs/<stage>.log`` reads as
plain lines (each bar's final state stays: its total, time and rate).
The console gets the output as it comes when it is a terminal (the bars
move); otherwise (a file, a pipe) the same plain lines as the log plus,
at most every ``interval`` seconds, the current state of a running bar as
a line of its own (its count, rate and ETA), so that a long stage is never
silent.

Example
-------
>>> import io
>>> log, console = io.StringIO(), io.StringIO()
>>> output = StageOutput(log, console, live=False)
>>> output.feed("loading\\n\\r 50%|# | 1/2\\r100%|##| 2/2\\n")
>>> output.close()
>>> log.getvalue()
'loading\\n100%|##| 2/2\\n'
"""

import codecs
import os
import re
import time

#: Terminal escape sequences (colours, cursor moves) of progress bars.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: Seconds between two progress lines on a console that is not a terminal.
PROGRESS_LINE_S = 30.0


def final_state(line):
    """What a terminal shows of a line redrawn with ``\\r``.

    Each carriage return goes back to the start of the line and the text
    after it overwrites what was there (progress bars clear themselves by
    writing spaces).

    Arguments
    ---------
    line : str
        The text of one line, carriage returns included.

    Returns
    -------
    str
        The line as shown, without escape codes and trailing blanks.

    Example
    -------
    >>> final_state("\\r 10%|#|\\r\\x1b[32m100%|##|\\x1b[0m")
    '100%|##|'
    >>> final_state("\\r 50%|#|\\r        \\rloss 3.2")
    'loss 3.2'
    >>> final_state("\\r 50%|#|\\r        \\r")
    ''
    """
    shown = ""
    for part in ANSI_ESCAPE.sub("", line).split("\r"):
        shown = part + shown[len(part) :]
    return shown.rstrip()


class StageOutput:
    """Copy a stage's output to a log file and a console.

    Arguments
    ---------
    log : file
        The stage's log (text, opened for writing).
    console : file
        Where the user watches (text).
    live : bool
        The console is a terminal: pass the output through as it comes.
    interval : float
        Seconds between progress lines on a console that is not live.
    clock : callable
        Returns the time in seconds (for tests).

    Example
    -------
    >>> import io
    >>> now = [0.0]
    >>> log, console = io.StringIO(), io.StringIO()
    >>> output = StageOutput(log, console, live=False, interval=30,
    ...                      clock=lambda: now[0])
    >>> output.feed("\\r 10%|# | 1/10 [00:03<00:27]")
    >>> now[0] = 31.0
    >>> output.feed("\\r 20%|##| 2/10 [00:31<02:04]")
    >>> console.getvalue()
    ' 20%|##| 2/10 [00:31<02:04]\\n'
    >>> log.getvalue()
    ''
    """

    def __init__(
        self, log, console, live, interval=PROGRESS_LINE_S, clock=None
    ):
        self.log = log
        self.console = console
        self.live = live
        self.interval = interval
        self.clock = clock or time.monotonic
        self.line = ""
        self.last_progress = self.clock()

    def feed(self, text):
        """Take the next piece of output (any length, any split).

        Arguments
        ---------
        text : str
        """
        if self.live:
            self.console.write(text)
        *complete, self.line = (self.line + text).split("\n")
        for line in complete:
            state = final_state(line)
            self.log.write(state + "\n")
            if not self.live:
                self.console.write(state + "\n")
        if complete:
            self.last_progress = self.clock()
        elif (
            not self.live
            and "\r" in self.line
            and self.clock() - self.last_progress >= self.interval
        ):
            state = final_state(self.line)
            if state:
                self.console.write(state + "\n")
            self.last_progress = self.clock()
        self.log.flush()
        self.console.flush()

    def copy_from(self, fd):
        """Feed everything read from a file descriptor, until its end.

        Arguments
        ---------
        fd : int
            E.g. ``process.stdout.fileno()``; bytes are decoded as UTF-8
            (undecodable ones replaced).
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.feed(decoder.decode(chunk))
        self.feed(decoder.decode(b"", final=True))

    def close(self):
        """Finish the last line when the output did not end with one."""
        if self.line:
            state = final_state(self.line)
            if state:
                self.log.write(state + "\n")
            if self.live:
                self.console.write("\n")
            elif state:
                self.console.write(state + "\n")
            self.line = ""
        self.log.flush()
        self.console.flush()
