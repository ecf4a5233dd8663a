"""Session-scoped pytest fixtures that run REAL backends, loaded with the sample set.

Registered in tests/conftest.py with ``pytest_plugins = ["tests.harness.fixtures"]``.
Each fixture works in its own temporary folder, stops its process by PID at teardown (even when
loading failed), and FAILS (never skips) when a program is missing: CI installs them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql

from .dcmqrscp import Dcmqrscp, start_dcmqrscp
from .orthanc import Orthanc, start_orthanc
from .procs import HarnessError
from .samples import sample_files

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_TIMEOUT = 10  # seconds, connection timeout
ORTHANC_USERS = ("alice", "secret")

Server = TypeVar("Server", Orthanc, Dcmqrscp)


@contextlib.contextmanager
def _running(start: Callable[[], Server], samples: list[Path]) -> Iterator[Server]:
    """Start a server, load `samples` into it, yield it, and always stop it."""
    try:
        server = start()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        try:
            if isinstance(server, Orthanc):
                server.upload(samples)
            else:
                server.load(samples)
        except HarnessError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def samples() -> list[Path]:
    """The sample files (see harness.samples.SAMPLE_NAMES)."""
    try:
        return sample_files()
    except (FileNotFoundError, ValueError) as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, samples: list[Path]) -> Iterator[Orthanc]:
    """Orthanc without authentication, loaded with the samples."""
    workdir = tmp_path_factory.mktemp("orthanc")
    with _running(lambda: start_orthanc(workdir), samples) as server:
        yield server


@pytest.fixture(scope="session")
def orthanc_auth(
    tmp_path_factory: pytest.TempPathFactory, samples: list[Path]
) -> Iterator[Orthanc]:
    """Orthanc with HTTP Basic auth (user "alice", password "secret"), loaded."""
    workdir = tmp_path_factory.mktemp("orthanc_auth")
    with _running(lambda: start_orthanc(workdir, auth=ORTHANC_USERS), samples) as server:
        yield server


@pytest.fixture(scope="session")
def orthanc_pg(tmp_path_factory: pytest.TempPathFactory, samples: list[Path]) -> Iterator[Orthanc]:
    """Orthanc whose index is a fresh PostgreSQL database on 127.0.0.1:5432 (dropped at
    teardown, after Orthanc stopped), loaded. Exposes `.pg_database` and `.pg_url`
    (an SQLAlchemy URL, "postgresql+psycopg://postgres@127.0.0.1:5432/<db>")."""
    database = f"gwtest_orthanc_{os.getpid()}"
    workdir = tmp_path_factory.mktemp("orthanc_pg")
    _create_database(database)
    try:
        with _running(lambda: start_orthanc(workdir, postgres=database), samples) as server:
            server.pg_database = database
            server.pg_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
            yield server
    finally:
        _drop_database(database)


@pytest.fixture(scope="session")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory, samples: list[Path]) -> Iterator[Dcmqrscp]:
    """dcmqrscp (AE title DCMQRSCP), loaded with the samples through storescu."""
    workdir = tmp_path_factory.mktemp("dcmqrscp")
    with _running(lambda: start_dcmqrscp(workdir), samples) as server:
        yield server


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=PG_TIMEOUT)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}", pytrace=False)


def _create_database(name: str) -> None:
    """Create `name` (dropping a leftover of a crashed run with the same PID first)."""
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
