"""A stage's output: plain log lines, progress on the console."""

import io

from speechbrain_ext.utils.stage_output import StageOutput, final_state


class Clock:
    """A settable clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_keeps_the_final_state_of_each_line_without_colours():
    log, console = io.StringIO(), io.StringIO()
    output = StageOutput(log, console, live=False)
    # What SpeechBrain's tqdm bar and its log handler (tqdm.write, which
    # clears the bar first) write, split at arbitrary places.
    stream = (
        "speechbrain.core - Going into epoch 1\n"
        "\r  0%|          | 0/4 [00:00<?, ?it/s]"
        "\r\x1b[32m 50%|#####     | 2/4 [00:02<00:02, 1.0it/s]\x1b[0m"
        "\r                                              \r"
        "epoch 1 - loss 3.2\n"
        "\r100%|##########| 4/4 [00:04<00:00, 1.0it/s]\n"
    )
    for start in range(0, len(stream), 7):
        output.feed(stream[start : start + 7])
    output.close()
    assert log.getvalue().splitlines() == [
        "speechbrain.core - Going into epoch 1",
        "epoch 1 - loss 3.2",
        "100%|##########| 4/4 [00:04<00:00, 1.0it/s]",
    ]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert console.getvalue() == log.getvalue()


def test_a_console_that_is_not_a_terminal_gets_a_progress_line_per_interval():
    clock = Clock()
    log, console = io.StringIO(), io.StringIO()
    output = StageOutput(log, console, live=False, interval=30, clock=clock)
    for step in range(1, 100):
        clock.now = step  # one step per second
        output.feed(f"\r{step}/100 [ETA {100 - step} s]")
    # Steps 30, 60 and 90: one line every 30 s, with the ETA of the bar.
    assert console.getvalue().splitlines() == [
        "30/100 [ETA 70 s]",
        "60/100 [ETA 40 s]",
        "90/100 [ETA 10 s]",
    ]
    assert log.getvalue() == ""
    output.feed("\r100/100 [ETA 0 s]\n")
    assert log.getvalue() == "100/100 [ETA 0 s]\n"


def test_a_terminal_gets_the_output_as_it_comes():
    log, console = io.StringIO(), io.StringIO()
    output = StageOutput(log, console, live=True)
    output.feed("a\n\r 1/2")
    output.feed("\r 2/2")
    output.close()
    assert console.getvalue() == "a\n\r 1/2\r 2/2\n"
    assert log.getvalue() == "a\n 2/2\n"


def test_final_state_of_cleared_and_blank_lines():
    assert final_state("") == ""
    assert final_state("\r   \r") == ""
    assert final_state("text\r    \r") == ""
    assert final_state("long text\rnew") == "newg text"  # as a terminal
