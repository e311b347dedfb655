"""A throw-away PostgreSQL server for the tests that share a database between processes (and for
``benchmarks.bench_queue``): a fresh cluster in a temp dir, listening only on a unix socket there,
started as the ``postgres`` user when we run as root (PostgreSQL refuses to run as root), removed after.

Test modules import the fixture: ``from pgserver import postgres_url  # noqa: F401``; tests that take the
server away (restart, stop, end its sessions) use ``postgres_server``, a :class:`PgServer`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot start here; the message says why (the tests skip with it)."""


def pg_bin() -> Path | None:
    for d in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    ):
        if (Path(d) / "initdb").is_file():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PgServer:
    """A running throw-away server that a test can take away and bring back, as an operator or a managed
    service would: ``restart``/``stop`` with a ``pg_ctl`` shutdown mode, ``start``, and
    ``terminate_backends`` (``pg_terminate_backend`` on every client connection but its own)."""

    def __init__(self, ctl: list[str], opts: str, log: Path, url: str, sock: Path, port: int) -> None:
        self.ctl, self.opts, self.log, self.url, self.sock, self.port = ctl, opts, log, url, sock, port

    def _pg_ctl(self, *args: str) -> None:
        r = subprocess.run([*self.ctl, *args], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {(r.stderr or r.stdout).strip()}")

    def start(self) -> None:
        """Start it and return once it accepts connections."""
        self._pg_ctl("-o", self.opts, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``: fast ends every session; immediate is a crash (recovery at start)."""
        self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-o", self.opts, "-l", str(self.log), "-w", "-t", "60", "restart")

    def terminate_backends(self) -> int:
        """End every other client session (what an admin or a proxy's idle timeout does); how many."""
        import psycopg

        with psycopg.connect(host=str(self.sock), port=self.port, user="postgres", dbname="postgres") as c:
            rows = c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchall()
        return len(rows)


@contextlib.contextmanager
def controllable_postgres() -> Iterator[PgServer]:
    """A fresh cluster, started; yields its :class:`PgServer` (``.url`` is the SQLAlchemy URL,
    ``postgresql://postgres@/postgres?host=<socket dir>&port=N``)."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise PostgresUnavailable(
            "PostgreSQL is not installed here (no initdb in /usr/lib/postgresql/*/bin or on PATH)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable(
            "the PostgreSQL driver is missing: pip install 'ticketsearch[postgres]'"
        ) from None
    tmp = Path(tempfile.mkdtemp(prefix="ts-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(tmp)
            raise PostgresUnavailable(
                "running as root and there is no 'postgres' user to start PostgreSQL as"
            ) from None
        os.chown(tmp, pg.pw_uid, pg.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    sock, data, log = tmp / "sock", tmp / "data", tmp / "log"
    sock.mkdir()
    if prefix:
        shutil.chown(sock, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        r = subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if r.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        opts = f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off -c max_connections=50"
        url = f"postgresql://postgres@/postgres?host={sock}&port={port}"
        server = PgServer(ctl, opts, log, url, sock, port)
        try:
            server.start()
        except RuntimeError:
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else "no log"
            raise PostgresUnavailable(f"PostgreSQL did not start: {tail}") from None
        yield server
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yields the server's SQLAlchemy URL (``postgresql://postgres@/postgres?host=<socket dir>&port=N``)."""
    with controllable_postgres() as server:
        yield server.url


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server per test module; the module's tests skip, saying why, where
    PostgreSQL truly cannot start."""
    with _server_or_skip(throwaway_postgres()) as url:
        yield url


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PgServer]:
    """A throw-away server per test module that its tests may restart, stop and start (keep such tests
    apart from ``postgres_url``'s: a test that fails while the server is down leaves it down)."""
    with _server_or_skip(controllable_postgres()) as server:
        yield server


@contextlib.contextmanager
def _server_or_skip(cm: Any) -> Iterator[Any]:
    try:
        value = cm.__enter__()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield value
    finally:
        cm.__exit__(None, None, None)
