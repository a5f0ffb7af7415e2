"""Every Redis key name Hexarch uses, and nothing else builds one.

Layout (docs/counters.md): ``hexarch:{<subject>}:<limit-id>:<window>`` for counters and
``hexarch:{<subject>}:rsv:<reservation-id>`` for the reservation record of one admission. The subject
sits in a Redis Cluster hash tag, so every key a script touches for one subject lives in one slot.
"""

from __future__ import annotations

PREFIX = "hexarch"
RESERVATION_SEGMENT = "rsv"

# `{` and `}` would end or restart the hash tag, and an empty tag `{}` makes Redis Cluster hash the
# whole key (scattering one subject over many slots); `%` is escaped so the encoding stays reversible.
_ESCAPES = {"%": "%25", "{": "%7B", "}": "%7D"}
_EMPTY_SUBJECT = "%00"


def subject_tag(subject: str) -> str:
    """The hash-tag text for `subject`: never empty, never containing a brace."""
    if not subject:
        return _EMPTY_SUBJECT
    if not any(ch in subject for ch in _ESCAPES):
        return subject
    return "".join(_ESCAPES.get(ch, ch) for ch in subject)


def window_label(window_seconds: int) -> str:
    """The `<window>` part of a sliding-window key (requests and token rates), e.g. ``60s``."""
    return f"{window_seconds}s"


def counter_key(subject: str, limit_id: str, window: str) -> str:
    """A counter: sliding-window hash (`window` like ``60s``) or budget integer (``2026-11``)."""
    return f"{PREFIX}:{{{subject_tag(subject)}}}:{limit_id}:{window}"


def reservation_key(subject: str, reservation_id: str) -> str:
    """What one admission reserved on `subject`'s counters; read and deleted by settle/refund.

    Limit ids always contain ``/`` (``policy/rule/suffix``), so ``rsv`` never collides with one.
    """
    return f"{PREFIX}:{{{subject_tag(subject)}}}:{RESERVATION_SEGMENT}:{reservation_id}"


def subject_pattern(subject: str) -> str:
    """A SCAN pattern for every key of one subject (operator tooling, e.g. `hexarch usage`)."""
    tag = subject_tag(subject)
    glob_safe = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in tag)
    return f"{PREFIX}:{{{glob_safe}}}:*"


# The check/settle API (sidecar/api_v1.py) and usage statistics (sidecar/stats.py). All of them share
# one hash tag, so the statistics script can update a day and a month hash, mark a reservation as
# counted and drop its ticket atomically, also on Redis Cluster.
API_TAG = "~api"


def api_ticket_key(reservation_id: str) -> str:
    """What `POST /hexarch/v1/check` admitted, kept for `settle` (JSON; TTL: the settle deadline)."""
    return f"{PREFIX}:{{{API_TAG}}}:ticket:{reservation_id}"


def api_ticket_index() -> str:
    """Sorted set of open tickets by settle deadline (epoch ms): the expiry sweeper reads it."""
    return f"{PREFIX}:{{{API_TAG}}}:tickets"


def stats_key(period: str, label: str) -> str:
    """Hash of request, token and cost totals of one `period` (``day``/``month``) named `label`."""
    return f"{PREFIX}:{{{API_TAG}}}:stats:{period}:{label}"


def stats_marker_key(reservation_id: str) -> str:
    """Set once a reservation's usage is in the statistics: makes counting it idempotent."""
    return f"{PREFIX}:{{{API_TAG}}}:counted:{reservation_id}"
