"""Rich progress bars for long jobs: items done / total, rate and ETA — and the libraries' own output
kept out of them.

While a bar is live (`make_progress`), transformers' log records and Python warnings are printed
above the bars, each distinct message once (on a terminal through the bars' console; otherwise to
stderr as usual), instead of being written through the bar's line. Hugging Face's own tqdm bars
("Loading weights", downloads) are turned off for the process by `hf_bars_off`, which model
loading calls: r1rm's bars are the progress a user sees.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Rate(TextColumn):
    """items/s from rich's own speed estimate."""

    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def hf_bars_off() -> None:
    """Turn off transformers' and huggingface_hub's tqdm bars ("Loading weights", downloads) for this
    process: they would print into r1rm's rich bars. An explicit HF_HUB_DISABLE_PROGRESS_BARS=0 wins."""
    import os

    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "0":
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()


class _Once(logging.Handler):
    """A logging handler that hands each distinct formatted record to `show` once."""

    def __init__(self, show: Callable[[str], None]):
        super().__init__()
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.show(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


@contextlib.contextmanager
def library_output(console) -> Iterator[None]:
    """transformers' log records and Python warnings printed once each, above the live bars of
    `console` (on a terminal), or to stderr (otherwise: no live display to keep clear)."""
    seen: set[str] = set()

    def show(text: str) -> None:
        if text in seen:
            return
        seen.add(text)
        if console.is_terminal:
            console.print(text, markup=False, highlight=False, style="yellow", soft_wrap=True)
        else:
            sys.stderr.write(text + "\n")

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        show(f"{filename}:{lineno}: {category.__name__}: {message}")

    from transformers.utils import logging as hf_logging

    root = hf_logging.get_logger()  # the "transformers" logger, with its own stderr handler
    saved = list(root.handlers)
    handler = _Once(show)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for h in saved:
        root.removeHandler(h)
    root.addHandler(handler)
    old_showwarning = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        yield
    finally:
        warnings.showwarning = old_showwarning
        root.removeHandler(handler)
        for h in saved:
            root.addHandler(h)


class _Bars(Progress):
    """rich Progress that keeps the libraries' output out of its bars while live (`library_output`)."""

    _quiet: contextlib.ExitStack | None = None

    def __enter__(self) -> _Bars:
        super().__enter__()
        if not self.disable:
            self._quiet = contextlib.ExitStack()
            self._quiet.enter_context(library_output(self.console))
        return self

    def __exit__(self, *exc) -> None:
        if self._quiet is not None:
            self._quiet.close()
            self._quiet = None
        super().__exit__(*exc)


def make_progress(*, enabled: bool = True, unit: str = "items") -> Progress:
    """A progress bar with count, percentage, rate, elapsed time and ETA (disabled: no output)."""
    return _Bars(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
