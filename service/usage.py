"""What an upstream's `usage` object counts, in any of the three formats (one reading for the
token metrics, the token limits and the trace attributes, so that they never disagree).

Input tokens: Chat Completions' `prompt_tokens` and the Responses API's `input_tokens` already
include their cached tokens; Anthropic's `input_tokens` leaves out `cache_read_input_tokens` and
`cache_creation_input_tokens`, which are added (the keys exist only in Anthropic's usage). An
upstream that sends both names counts the same tokens twice: OpenAI's name wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def count(value: Any) -> int | None:
    """A token count: a non-negative integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def token_counts(usage: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(input tokens, output tokens) of one usage object; None where it reports none."""
    inp = count(usage.get("prompt_tokens"))
    if inp is None:
        inp = count(usage.get("input_tokens"))
        if inp is not None:
            inp += (count(usage.get("cache_creation_input_tokens")) or 0) + (
                count(usage.get("cache_read_input_tokens")) or 0
            )
    out = count(usage.get("completion_tokens"))
    if out is None:
        out = count(usage.get("output_tokens"))
    return inp, out
