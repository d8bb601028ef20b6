"""A local estimate of a request's input tokens (SPEC §12): the answer of the token-counting
routes (`/v1/messages/count_tokens`, `/v1/responses/input_tokens`) when the upstream does not
speak their format. Never an inference call, and marked as an estimate in the answer's headers.

The estimate is deliberately simple and documented (docs/coding-agents.md): every string of the
prompt-bearing fields (`system`, `instructions`, `messages`, `input`, `tools`, `tool_choice`) is
counted at 4 characters a token, rounded up (framing values: `type`, `role`, `cache_control` are
not prompt text), plus 4 tokens per message or input item for the
role and framing, plus a flat 1,600 tokens per image (what a ~1 MP image costs at Anthropic and
OpenAI). Coding agents use the figure to decide when to compact a conversation, so it errs on
the high side rather than the low one.
"""

from __future__ import annotations

import math
from typing import Any

PROMPT_FIELDS = ("system", "instructions", "messages", "input", "tools", "tool_choice")
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_IMAGE = 1600
_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
# Keys whose values are framing, not prompt text (covered by the per-message tokens).
_FRAMING_KEYS = frozenset({"type", "role", "cache_control"})
ESTIMATE_HEADER = ("X-Router-Token-Count", "estimate")


def _walk(value: Any, acc: list[int]) -> None:
    """acc = [characters, images]. Without recursion: a client's JSON may be nested 1,024
    levels deep, deeper than Python's stack."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            acc[0] += len(value)
        elif isinstance(value, dict):
            kind = value.get("type")
            if isinstance(kind, str) and kind in _IMAGE_TYPES:
                acc[1] += 1
                continue  # its base64 data is not text
            stack.extend(v for k, v in value.items() if k not in _FRAMING_KEYS)
        elif isinstance(value, list):
            stack.extend(value)


def input_tokens(body: dict[str, Any]) -> int:
    acc = [0, 0]
    items = 0
    for field in PROMPT_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        if field in ("messages", "input") and isinstance(value, list):
            items += len(value)
        _walk(value, acc)
    chars, images = acc
    return (
        math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * items + TOKENS_PER_IMAGE * images
    )
