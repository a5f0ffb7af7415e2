"""A conservative prompt size for admission, without a tokenizer.

No tokenizer that matches every model ships offline in a package (tiktoken downloads its encodings
at first use; Hugging Face tokenizers need each model's vocabulary), so the estimate is a bound:
an ASCII character counts a quarter of a token (English averages about four characters per token),
and every other character counts a **whole token**. CJK text, which tokenizes at about one token
per character or more (the chars/4 rule under-estimated it 3-4x, issue 11), is then counted at
least once per character; Cyrillic, Greek and other scripts are over-estimated rather than under.
The remaining gap (rare CJK characters that take 2-3 tokens) is settled from the upstream's usage
report; docs/hardening.md states it.
"""

from __future__ import annotations

NON_ASCII_WEIGHT = 4  # in quarter-tokens: one token per non-ASCII character


def weighted_chars(text: str) -> int:
    """`text`'s size in quarter-tokens (what `ceil(total / 4)` turns into an estimate)."""
    if text.isascii():
        return len(text)
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    return len(text) - non_ascii + NON_ASCII_WEIGHT * non_ascii
