"""The console and the progress display shared by the CLI, training and evaluation.

A bar is drawn only on a terminal; output that is not one (a file, a pipe, CI) gets whole lines
only: the epoch lines, and phase messages logged as lines instead of a bar's status field.
"""

from __future__ import annotations


def console(stderr: bool = False):
    """A rich console on stdout (tables, the bar, epoch lines) or on stderr (log lines and phase
    messages, which leave stdout to the results a script reads); no highlighting of numbers."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def progress_bar(enabled: bool, label: str, unit: str):
    """The rich progress bar of training and evaluation: label, bar, done/total unit, times, status.

    Disabled (draws nothing; `console.print` still prints whole lines) unless `enabled` and the
    console is a terminal.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    out = console()
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=out,
        disable=not (enabled and out.is_terminal),
        transient=False,
    )


def bar_shown(bar) -> bool:
    """Whether `bar` draws (a terminal); otherwise say what a long phase is doing in a line."""
    return not bar.disable
