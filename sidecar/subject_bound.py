"""A bound on distinct principals per minute, so a flood of made-up ids cannot fill Redis.

Each distinct principal id is a set of Redis keys (one per limit and window). With trusted headers,
the ids are whatever the app next door sends; a bug or an attacker there can send millions. This
process admits at most `max_subjects_per_window` distinct ids per 60-second window; a new id past the
bound is refused with 429 `too_many_subjects` (ids already seen in the window keep working) and
counted in `hexarch_subjects_refused_total`. The bound is per sidecar process (docs/hardening.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.errors import RequestError

WINDOW_SECONDS = 60.0


class TooManySubjects(RequestError):
    status = 429
    type = "rate_limit_exceeded"
    code = "too_many_subjects"


class SubjectWindow:
    def __init__(
        self, limit: int, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self._window = window_seconds
        self._clock = clock
        self._started = clock()
        self._seen: set[str] = set()

    def check(self, subject: str) -> None:
        """Raise TooManySubjects when `subject` is new and the window is full."""
        now = self._clock()
        if now - self._started >= self._window:
            self._started = now
            self._seen.clear()
        if subject in self._seen:
            return
        if len(self._seen) >= self.limit:
            raise TooManySubjects(
                f"more than {self.limit} distinct principals in {self._window:g} s; try again shortly"
            )
        self._seen.add(subject)
