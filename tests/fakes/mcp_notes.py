"""A stdio MCP server with one tool, `save_note(text)`, which writes `text` to the file named on
its command line: what a coding agent's MCP server does, for tests/e2e/test_coding_agents.py.

    python tests/fakes/mcp_notes.py OUT_FILE

JSON-RPC 2.0, one message per line (the MCP stdio transport); answers `initialize`,
`tools/list` and `tools/call`, and an empty result to any other request.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TOOL = {
    "name": "save_note",
    "description": "Save a note: the text is stored as it is.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The note."}},
        "required": ["text"],
    },
}


def answer(out: Path, msg: dict[str, Any]) -> dict[str, Any] | None:
    method, params = msg.get("method"), msg.get("params") or {}
    if method == "initialize":
        version = params.get("protocolVersion", "2025-06-18")
        info = {"name": "notes", "version": "1.0"}
        result = {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": info}
    elif method == "tools/list":
        result = {"tools": [TOOL]}
    elif method == "tools/call" and params.get("name") == TOOL["name"]:
        out.write_text(str((params.get("arguments") or {}).get("text", "")))
        result = {"content": [{"type": "text", "text": f"saved to {out.name}"}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "no such tool"}], "isError": True}
    else:
        result = {}
    if "id" not in msg:  # a notification
        return None
    return {"jsonrpc": "2.0", "id": msg["id"], "result": result}


def main() -> None:
    out = Path(sys.argv[1])
    for line in sys.stdin:
        if line.strip():
            reply = answer(out, json.loads(line))
            if reply is not None:
                sys.stdout.write(json.dumps(reply) + "\n")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
