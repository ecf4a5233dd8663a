"""The manifests `/weasis/launch` links to: each launch's request kept under a random 128-bit
id for a short lifetime, in a directory that the gunicorn workers of one machine share (the
worker that answers Weasis is rarely the one that answered the browser).

An id is 32 lowercase hex digits from `secrets`; anything else is unknown. An entry records
who stored it (the caller's principal, when inbound authentication names one) and is served
only to the same principal. Expired entries are unknown and are removed when seen, and by a
sweep at each store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import GatewayError

log = logging.getLogger("gateway.weasis")


class Unavailable(GatewayError):
    status = 503


_ID = re.compile(r"[0-9a-f]{32}")
_SUFFIX = ".json"


class ManifestStore:
    def __init__(self, directory: str | None, lifetime: float) -> None:
        self.lifetime = lifetime
        self.directory = Path(directory) if directory else _private_dir()
        self._ensure_directory()

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(
                f"{self.directory} must belong to this user and be private (mode 700)"
            )

    def put(self, request: dict[str, Any], principal: str | None = None) -> str:
        """Stores `request` and returns its new id. The folder is made again if something
        removed it (a temp-directory cleaner); a store that cannot write is a 503."""
        self._sweep()
        entry: dict[str, Any] = {
            "expires": time.time() + self.lifetime,
            "principal": principal,
            "request": request,
        }
        try:
            try:
                return self._write(entry)
            except FileNotFoundError:
                self._ensure_directory()
                return self._write(entry)
        except OSError as exc:
            log.warning("weasis manifest store: cannot write (%s)", type(exc).__name__)
            raise Unavailable("the manifest store cannot keep the launch now") from exc

    def _write(self, entry: dict[str, Any]) -> str:
        ident = secrets.token_hex(16)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(entry, out)
            # the expiry as modification time, set before the entry is visible: the sweep of a
            # concurrent launch reads it there (a rename keeps it)
            os.utime(tmp, (entry["expires"], entry["expires"]))
            os.replace(tmp, self.directory / f"{ident}{_SUFFIX}")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return ident

    def get(self, ident: str, principal: str | None = None) -> dict[str, Any] | None:
        """The entry, or None when `ident` is malformed, unknown, expired or another
        principal's (all alike to the caller: a 404)."""
        if not _ID.fullmatch(ident):
            return None
        path = self.directory / f"{ident}{_SUFFIX}"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if entry.get("expires", 0) <= time.time():
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        if entry.get("principal") is not None and entry["principal"] != principal:
            return None
        request: dict[str, Any] = entry["request"]
        return request

    def _sweep(self) -> None:
        """Removes expired entries, each by its own expiry (its modification time): gateways
        with other lifetimes may share the directory."""
        now = time.time()
        for path in self.directory.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(OSError, ValueError):
                if path.stat().st_mtime <= now:
                    path.unlink()


def _private_dir() -> Path:
    """A folder of this user's under the temp directory, shared by the workers of one app."""
    return Path(tempfile.gettempdir()) / f"dicomweb-gateway-weasis-{os.getuid()}"
