"""JSON in and out of the gateway's hot paths (DICOM JSON of searches and metadata, upstream
answers, the cache) through orjson, several times faster than the standard library at both
ends; the standard library takes over for what orjson refuses to write (integers beyond 64
bits), so no answer fails for the codec's sake."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII characters as themselves)."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Raises ValueError (orjson.JSONDecodeError) on invalid JSON, as json.loads does."""
    return orjson.loads(data)
