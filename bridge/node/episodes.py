"""Failures logged once per episode: the first with its cause, then one line on recovery.

A failing disk fails every block commit and every attestation write until someone frees it;
logging each failure (with a traceback) buries the cause under thousands of identical lines,
and logging none leaves clients' UNAVAILABLE answers unexplained. An episode starts at the
first failure (one line, with the cause) and ends at the first success after it (one line,
with how many failed and for how long).
"""

from __future__ import annotations

import logging
import time


class FailureEpisode:
    """One kind of work (e.g. "ledger store writes") that can fail and recover."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.failures = 0
        self._since = 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, cause: BaseException, *, traceback: bool = False) -> None:
        """Record a failure; the first of an episode is logged at ERROR with its cause (and
        its traceback when asked: an unexpected error, not an expected I/O failure)."""
        self.failures += 1
        if self.failures > 1:
            return
        self._since = time.monotonic()
        self.log.error(
            f"{self.what} failing: {cause}",
            extra={"cause": str(cause), "error": type(cause).__name__},
            exc_info=cause if traceback else None,
        )

    def succeeded(self) -> None:
        """Record a success; ends an episode, if one is running, with one INFO line."""
        if not self.failures:
            return
        lasted = time.monotonic() - self._since
        self.log.info(
            f"{self.what} recovered after {self.failures} failures over {lasted:.1f} s",
            extra={"failures": self.failures, "lasted_s": round(lasted, 3)},
        )
        self.failures = 0
