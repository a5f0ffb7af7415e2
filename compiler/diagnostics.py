"""Located diagnostics: every problem in a policy file, as `FILE:LINE:COL: error: MESSAGE`.

Shared by the compiler and by the sidecar's settings loader, so a typo anywhere in hexarch.yaml is
reported the same way: file, 1-based line and column, the YAML path, and a hint when there is one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # YAML path, e.g. "policies[0].rules[1].max"
    message: str
    hint: str | None = None
    severity: str = "error"

    def format(self) -> str:
        where = f" (at {self.path})" if self.path else ""
        text = f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}{where}"
        if self.hint:
            text += f"; {self.hint}"
        return text


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A "did you mean 'x'?" hint for a misspelt word, or None when nothing is close."""
    choices = sorted(choices)
    same_letters = [choice for choice in choices if choice.lower() == word.lower()]
    if same_letters:  # 'utc' for 'UTC': closer than any spelling distance says
        return f"did you mean '{same_letters[0]}'?"
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def format_all(diagnostics: Iterable[Diagnostic]) -> str:
    ordered = sorted(diagnostics, key=lambda d: (d.file, d.line, d.col, d.message))
    return "\n".join(d.format() for d in ordered)
