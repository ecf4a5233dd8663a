"""gateway.weasis_store: launch requests kept under random ids, each until its own expiry."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from gateway.weasis_store import ManifestStore


def test_an_entry_is_read_back_by_its_id_then_expires(tmp_path: Path) -> None:
    store = ManifestStore(str(tmp_path / "m"), lifetime=0.3)
    ident = store.put({"study_uids": ["1.2.3"]})
    assert len(ident) == 32 and int(ident, 16) >= 0
    assert store.get(ident) == {"study_uids": ["1.2.3"]}
    time.sleep(0.35)
    assert store.get(ident) is None
    assert list((tmp_path / "m").glob("*.json")) == []  # removed when seen expired


def test_ids_are_distinct_and_malformed_ones_unknown(tmp_path: Path) -> None:
    store = ManifestStore(str(tmp_path), lifetime=60)
    ids = {store.put({"n": i}) for i in range(200)}
    assert len(ids) == 200
    for bad in ("../x", "A" * 32, "0" * 33, "", "g" * 32):
        assert store.get(bad) is None


def test_another_principal_cannot_read_an_entry(tmp_path: Path) -> None:
    store = ManifestStore(str(tmp_path), lifetime=60)
    ident = store.put({"n": 1}, principal="alice")
    assert store.get(ident, "alice") == {"n": 1}
    assert store.get(ident, "bob") is None and store.get(ident) is None


def test_the_sweep_keeps_entries_of_a_gateway_with_a_longer_lifetime(tmp_path: Path) -> None:
    long_lived = ManifestStore(str(tmp_path), lifetime=60)
    short_lived = ManifestStore(str(tmp_path), lifetime=0.1)
    kept = long_lived.put({"n": "long"})
    gone = short_lived.put({"n": "short"})
    time.sleep(0.2)
    short_lived.put({"n": "sweeps"})  # each put sweeps what has expired
    assert long_lived.get(kept) == {"n": "long"}
    assert not (tmp_path / f"{gone}.json").exists()


def test_the_directory_is_private(tmp_path: Path) -> None:
    ManifestStore(str(tmp_path / "m"), lifetime=60)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o700
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    with pytest.raises(PermissionError):
        ManifestStore(str(open_dir), lifetime=60)
