"""Progress of long steps: a tqdm bar on a terminal, log lines with counts everywhere else.

A step that can take more than a few seconds (fitting maps, the alignment tests, curve fits,
scoring generations, a generation sweep) reports how far it is. On a terminal that is a tqdm bar;
where output is not a terminal (logs of a batch job, CI, a notebook's captured stderr) the bar is
off and a log line with the counts is written every `LOG_EVERY_S` seconds and at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LOG_EVERY_S = 20.0  # seconds between log lines when no bar is shown

_T = TypeVar("_T")


class Progress:
    """Counts done units of one step out of ``total``; use as a context manager or call `close`.

    Args:
        total: units the step will do.
        desc: what the step is, e.g. ``"fit_linear_maps smollm2-135m -> gemma3-270m"``.
        unit: name of one unit (``"fit"``, ``"batch"``, ``"generation"``).
    """

    def __init__(self, total: int, desc: str, unit: str = "step"):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done = 0
        # disable=None: no bar when stderr is not a terminal; then the log lines report instead
        self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, disable=None, dynamic_ncols=True)
        self._start = self._last_log = time.monotonic()

    @property
    def logs(self) -> bool:
        """Whether this step reports by log lines (no bar shown)."""
        return bool(self._bar.disable)

    def update(self, n: int = 1) -> None:
        """Marks ``n`` more units done."""
        self.done += n
        self._bar.update(n)
        now = time.monotonic()
        if self.logs and now - self._last_log >= LOG_EVERY_S and self.done < self.total:
            self._last_log = now
            logger.info("%s: %d/%d %ss done (%.0f s)", self.desc, self.done, self.total, self.unit,
                        now - self._start)

    def close(self) -> None:
        """Ends the bar (and logs the total time when reporting by log lines)."""
        if self._bar is None:
            return
        self._bar.close()
        if self.logs:
            logger.info("%s: %d/%d %ss done in %.1f s", self.desc, self.done, self.total, self.unit,
                        time.monotonic() - self._start)
        self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def progress(items: Iterable[_T], desc: str, unit: str = "step", total: int | None = None) -> Iterator[_T]:
    """Yields ``items`` and reports each one done (see `Progress`); ``total`` defaults to ``len(items)``."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    with Progress(len(items) if total is None else total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update()
