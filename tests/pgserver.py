"""A throw-away PostgreSQL server for the tests that share a database between processes (and for
``benchmarks.bench_queue``): a fresh cluster in a temp dir, listening only on a unix socket there,
started as the ``postgres`` user when we run as root (PostgreSQL refuses to run as root), removed after.

Test modules import the fixture: ``from pgserver import postgres_url  # noqa: F401``.
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


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yields the server's SQLAlchemy URL (``postgresql://postgres@/postgres?host=<socket dir>&port=N``)."""
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
        r = subprocess.run([*ctl, "-o", opts, "-l", str(log), "-w", "-t", "60", "start"], capture_output=True, text=True, timeout=120)  # fmt: skip
        if r.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else r.stderr
            raise PostgresUnavailable(f"PostgreSQL did not start: {tail}")
        yield f"postgresql://postgres@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server per test module; the module's tests skip, saying why, where
    PostgreSQL truly cannot start."""
    server = throwaway_postgres()
    try:
        url = server.__enter__()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)
