"""What a running `hexarch up` tells other commands: `<work-dir>/stack.json` with its addresses.

`hexarch usage` and `hexarch status` read it by default, so on a developer machine they find the
stack's Redis, OPA and sidecar without flags. Written once the stack is ready, removed when it stops;
a file whose process is gone (a killed `hexarch up`) is ignored.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

DEFAULT_WORK_DIR = Path(".hexarch/run")
STATE_FILE = "stack.json"


def write(work_dir: Path, **fields: Any) -> Path:
    path = work_dir / STATE_FILE
    work_dir.mkdir(parents=True, exist_ok=True)
    doc = {"pid": os.getpid(), "started_at": time.time(), **fields}
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    tmp.replace(path)
    return path


def remove(work_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (work_dir / STATE_FILE).unlink()


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(work_dir: Path | None = None) -> dict[str, Any] | None:
    """The running stack's state, or None (no file, unreadable, or its process is gone)."""
    path = (work_dir or DEFAULT_WORK_DIR) / STATE_FILE
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or not _alive(doc.get("pid")):
        return None
    return doc
