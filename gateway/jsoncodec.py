"""JSON in and out of the gateway's hot paths (DICOM JSON of searches and metadata, upstream
answers, the cache) through orjson, several times faster than the standard library at both
ends; the standard library takes over for what orjson refuses to write (integers beyond 64
bits), so no answer fails for the codec's sake."""

from __future__ import annotations

import contextlib
import gc
import json
import threading
from collections.abc import Iterator
from typing import Any

import orjson


class Encoded(list[Any]):
    """A JSON array together with its encoding (`dumps` of the same items), for an answer that
    goes out as it came from the metadata cache: `dumps` hands back those bytes instead of
    encoding the array again (a 1,000-instance series is ~13 MB of JSON, ~30 ms to encode).
    Made only where the bytes are at hand; whoever changes the items must pass on a plain list."""

    __slots__ = ("encoded",)

    def __init__(self, items: list[Any], encoded: bytes) -> None:
        super().__init__(items)
        self.encoded = encoded


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII characters as themselves)."""
    if type(value) is Encoded:
        return value.encoded
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: Documents at least this long are decoded with the cyclic garbage collector paused.
GC_PAUSE_BYTES = 256 * 1024


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Raises ValueError (orjson.JSONDecodeError) on invalid JSON, as json.loads does.

    A large document (the metadata of a 1,000-instance series is several MB) becomes hundreds
    of thousands of new dicts, lists and strings; each few hundred of them start a collection
    by the cyclic garbage collector, which then walks them again and again while they are all
    still alive (decoding took 2.5 times as long with it running). Decoded JSON holds no
    reference cycles, so the collector is paused for the decode (`paused_gc`)."""
    if len(data) < GC_PAUSE_BYTES:
        return orjson.loads(data)
    with paused_gc():
        return orjson.loads(data)


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off while any thread is inside such a block, then back to
    how it was (still off if something else had turned it off). Reference counting goes on
    freeing everything that is not in a cycle; cycles made meanwhile wait for the next
    collection after the last block ends."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()
