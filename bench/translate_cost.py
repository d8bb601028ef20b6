"""CPU per request of the format translations, next to what an untranslated request costs the
relay for the same body (parse it, write it back), measured in the same run.

    .venv/bin/python bench/translate_cost.py [--n 2000]

For each real client request of the conformance table (Codex's Responses request, Claude Code's
Messages requests) it times, in microseconds per request (the fastest of 5 rounds of --n, so a
busy machine weighs little): the native relay's own body work (`orjson.loads` + `orjson.dumps`),
and each translation's `request()` plus, for a plain answer, `answer()` of a typical upstream
reply. The difference is what translation adds to a request on the hot path. Bounded loops only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.translate import Translator  # noqa: E402
from service.translate.responses import ResponsesTranslator  # noqa: E402

CASES = ROOT / "tests" / "conformance"
CHAT_ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Done.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "shell", "arguments": '{"cmd":["ls"]}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230},
    }
)
MESSAGES_ANSWER = orjson.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "text", "text": "Done."},
            {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"cmd": ["ls"]}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 1200, "output_tokens": 30},
    }
)
HEADERS = [("Content-Type", "application/json")]


def best_us(fn: Callable[[], Any], n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    n = p.parse_args().n
    rows: list[tuple[str, float, float]] = []

    def measure(name: str, body: dict[str, Any], translate: Callable[[], Any]) -> None:
        raw = orjson.dumps(body)
        native = best_us(lambda: orjson.dumps(orjson.loads(raw)), n)
        translated = best_us(lambda: translate_from(raw, translate), n)
        rows.append((name, native, translated))

    def translate_from(raw: bytes, translate: Callable[[dict[str, Any]], Any]) -> Any:
        return translate(orjson.loads(raw))

    codex = json.loads((CASES / "responses_to_openai" / "request_codex.json").read_text())["in"]
    for fmt, answer in (("openai", CHAT_ANSWER), ("anthropic", MESSAGES_ANSWER)):

        def responses(payload: dict[str, Any], fmt: str = fmt, answer: bytes = answer) -> Any:
            tr = ResponsesTranslator(fmt, payload, 1700000000)
            orjson.dumps(tr.request())
            return tr.answer(200, HEADERS, answer)

        measure(f"Codex request, Responses -> {fmt}", codex, responses)  # type: ignore[arg-type]
    for case in ("request_claude_code_budget", "request_claude_code_adaptive"):
        body = json.loads((CASES / "anthropic_to_openai" / f"{case}.json").read_text())["in"]

        def messages(payload: dict[str, Any]) -> Any:
            tr = Translator("anthropic_to_openai", payload, 1700000000)
            orjson.dumps(tr.request())
            return tr.answer(200, HEADERS, CHAT_ANSWER)

        label = case.removeprefix("request_claude_code_")
        measure(f"Claude Code ({label}), Messages -> openai", body, messages)  # type: ignore[arg-type]

    print(f"{'request':52} {'native us':>10} {'translated us':>14} {'added us':>9}")
    for name, native, translated in rows:
        print(f"{name:52} {native:10.1f} {translated:14.1f} {translated - native:9.1f}")


if __name__ == "__main__":
    main()
