"""Where cached metadata lives: in this process (cachetools, bounded in bytes and time) or in
Redis (shared by gunicorn workers and by several gateway machines). Values are bytes (JSON):
pixel data never comes here.

A cache must never make a request fail: a Redis that is down or slow (every call has a short
time-out) counts as a miss and is logged once per minute, not per request.

Concurrent misses for one key fetch once ("single flight"): in this process a waiter waits for
the first fetch; across processes a short-lived Redis lock (`SET NX PX`) lets one process fetch
while the others poll for the value it stores.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from cachetools import TTLCache

log = logging.getLogger("gateway.cache")

_POLL = 0.02  # seconds between looks at a value another process is fetching


class Namespace(Protocol):
    """One connector's part of the cache."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> None: ...

    def claim(self, key: str, seconds: float) -> bool:
        """Whether this process may fetch `key` (no other holds the claim)."""
        ...

    def release(self, key: str) -> None: ...

    def claimed(self, key: str) -> bool: ...

    def purge(self) -> int:
        """Removes every entry; returns how many there were (when known)."""
        ...


class MemoryNamespace:
    """Entries live `ttl` seconds; the least recently used go first once their bytes pass
    `max_bytes`. Claims are always granted: this process's waiters are handled by `Flights`."""

    def __init__(self, ttl: float, max_bytes: int) -> None:
        self._entries: TTLCache[str, bytes] = TTLCache(maxsize=max_bytes, ttl=ttl, getsizeof=len)
        self._lock = threading.Lock()
        self.max_bytes = max_bytes

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._entries.get(key)

    def set(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return  # larger than the whole cache: not kept
        with self._lock:
            self._entries[key] = value

    def claim(self, key: str, seconds: float) -> bool:
        return True

    def release(self, key: str) -> None:
        pass

    def claimed(self, key: str) -> bool:
        return False

    def purge(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
        return count


class RedisNamespace:
    """Keys `<prefix>:<connector>:<key>`, each with its time-to-live; Redis's own `maxmemory`
    policy bounds the size."""

    def __init__(self, client: Any, prefix: str, ttl: float) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl * 1000))
        self._quiet_until = 0.0

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def _failed(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now >= self._quiet_until:
            log.warning("cache: redis %s failed (%s); answering without the cache",
                        what, type(exc).__name__)  # fmt: skip
            self._quiet_until = now + 60

    def get(self, key: str) -> bytes | None:
        try:
            value = self._redis.get(self._key(key))
        except Exception as exc:  # noqa: BLE001 - any failure of the cache is a miss
            self._failed("get", exc)
            return None
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes) -> None:
        try:
            self._redis.set(self._key(key), value, px=self._ttl_ms)
        except Exception as exc:  # noqa: BLE001 - a value not kept is a later miss
            self._failed("set", exc)

    def claim(self, key: str, seconds: float) -> bool:
        try:
            ms = max(1, int(seconds * 1000))
            return bool(self._redis.set(self._key(key) + ":fill", b"1", nx=True, px=ms))
        except Exception as exc:  # noqa: BLE001 - without Redis, every process fetches
            self._failed("lock", exc)
            return True

    def release(self, key: str) -> None:
        try:
            self._redis.delete(self._key(key) + ":fill")
        except Exception as exc:  # noqa: BLE001 - the lock expires by itself
            self._failed("unlock", exc)

    def claimed(self, key: str) -> bool:
        try:
            return bool(self._redis.exists(self._key(key) + ":fill"))
        except Exception as exc:  # noqa: BLE001
            self._failed("lock check", exc)
            return False

    def purge(self) -> int:
        count = 0
        try:
            batch: list[bytes] = []
            for name in self._redis.scan_iter(match=self._key("*"), count=500):
                batch.append(name)
                if len(batch) >= 500:
                    count += int(self._redis.delete(*batch))
                    batch.clear()
            if batch:
                count += int(self._redis.delete(*batch))
        except Exception as exc:  # noqa: BLE001
            self._failed("purge", exc)
        return count


class Flights:
    """Single flight: `fetch` runs once for concurrent misses of one key, in this process and
    (with a shared namespace) across processes. `wait` bounds how long a waiter waits for
    another's fetch before it fetches itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    def get_or_fetch(
        self, space: Namespace, key: str, fetch: Callable[[], bytes | None], wait: float
    ) -> tuple[bytes | None, bool]:
        """(value, hit). `fetch` returns the bytes to keep, or None for an answer not to keep
        (its caller has it by other means)."""
        value = space.get(key)
        if value is not None:
            return value, True
        with self._lock:
            event = self._running.get(key)
            leader = event is None
            if leader:
                event = self._running[key] = threading.Event()
        assert event is not None
        if not leader:
            event.wait(wait)
            value = space.get(key)
            if value is not None:
                return value, True
            return fetch(), False  # the first fetch failed or was not kept
        try:
            return self._lead(space, key, fetch, wait)
        finally:
            with self._lock:
                del self._running[key]
            event.set()

    @staticmethod
    def _lead(
        space: Namespace, key: str, fetch: Callable[[], bytes | None], wait: float
    ) -> tuple[bytes | None, bool]:
        if not space.claim(key, wait):
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and space.claimed(key):
                time.sleep(_POLL)
                value = space.get(key)
                if value is not None:
                    return value, True
            value = space.get(key)
            if value is not None:
                return value, True
        try:
            value = fetch()
            if value is not None:
                space.set(key, value)
            return value, False
        finally:
            space.release(key)
