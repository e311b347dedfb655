"""Where a study lives: an SQLAlchemy URL opened as Optuna's RDB storage, with every failure one line.

The default is an SQLite file in the results root (``sqlite:///<root>/studies.db``); any other SQLAlchemy
URL passes through unchanged, so a PostgreSQL server shared by many machines is one ``--storage`` flag
(the driver is the ``postgres`` extra). Messages never show a password: URLs are printed the way
SQLAlchemy renders them with ``hide_password``, and a driver message that repeats the password is scrubbed.

Workers that die are handled by Optuna's heartbeat: a worker records a heartbeat for its running trial
every ``heartbeat`` seconds; a trial without one for twice that long is marked failed by the next worker
that starts a trial, and :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (``RetryFailedTrialCallback``
before Optuna 4.9) enqueues it again with the same parameters, so it resumes in the same run directory.

A database that goes away — a restart, a failover, a maintenance window, a connection the server ended,
an SQLite file locked past its busy timeout — does not stop a command: every storage call goes through
one retry (:class:`~ticketsearch.studies._patient.PatientStorage`) that waits up to ``db_wait`` seconds
(``--db-wait``, 300 by default) for it, connections are checked before use (``pool_pre_ping``), and
training carries on meanwhile. Past the bound the command stops with one line
(:class:`DatabaseLost`), and its trial is retried by the next worker like a dead worker's. A worker whose
heartbeat lapsed during the outage is not declared dead for it (see :class:`Heartbeat`).
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError, TicketsearchError

if TYPE_CHECKING:
    from ._patient import PatientStorage

__all__ = [
    "DEFAULT_DB",
    "DB_WAIT",
    "DatabaseLost",
    "Heartbeat",
    "default_url",
    "safe_url",
    "check_url",
    "check_db_wait",
    "open_storage",
    "retry_callback",
    "quiet",
]

DEFAULT_DB = "studies.db"
DB_WAIT = 300.0  # seconds a storage call waits for a database that went away (--db-wait)
_EXAMPLES = "e.g. sqlite:///runs/studies.db or postgresql://user:password@host:5432/db"


def default_url(root: str | Path) -> str:
    """``sqlite:///<root>/studies.db`` with an absolute path, so every process names the same file."""
    return f"sqlite:///{(Path(root).expanduser().resolve() / DEFAULT_DB).as_posix()}"


def safe_url(url: str) -> str:
    """``url`` fit to print: whatever sits between ``user:`` and the host is ``***``.

    Done on the text, not on SQLAlchemy's parse: a password with an unescaped ``@`` parses as part of
    the host, and would be printed."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if at < 0 or ":" not in rest[:at]:
        return text
    user = rest[:at].split(":", 1)[0]
    return f"{scheme}://{user}:***@{rest[at + 1 :]}"


def _secrets(url: str) -> list[str]:
    """The password as typed and as SQLAlchemy parsed it (they differ when it holds an unescaped ``@``,
    and then the driver may quote a piece of it as the host), longest first."""
    text = str(url)
    _, sep, rest = text.partition("://")
    found: set[str] = set()
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if sep and at >= 0 and ":" in rest[:at]:
        raw = rest[:at].split(":", 1)[1]
        found.update([raw, *raw.split("@")])
    try:
        from sqlalchemy.engine import make_url

        found.add(str(make_url(text).password or ""))
    except Exception:
        pass
    return sorted((s for s in found if len(s) >= 2), key=len, reverse=True)


def _scrub(message: str, url: str) -> str:
    """A driver's message on one line, without the password if the driver repeated it."""
    text = " ".join(str(message).strip().split())
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def check_url(url: str) -> Any:
    """Parse ``url`` and find its SQLAlchemy dialect and driver; a malformed URL, an unknown database or
    a missing driver is a one-line :class:`ConfigError`. Returns the parsed ``sqlalchemy.engine.URL``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = safe_url(url)
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"malformed storage URL '{shown}': expected dialect://... ({_EXAMPLES})")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"malformed storage URL '{shown}': {_scrub(str(exc), url)} ({_EXAMPLES})") from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(
            f"storage URL '{shown}' names an unknown database '{parsed.drivername}' "
            "(choose from: sqlite, postgresql, mysql, or another SQLAlchemy dialect)"
        ) from None
    try:
        _import_dbapi(dialect)
    except ImportError as exc:
        if parsed.drivername == "postgresql":  # no driver named: whichever of psycopg 3 / psycopg2 is here
            for driver in ("psycopg", "psycopg2"):
                alt = parsed.set(drivername=f"postgresql+{driver}")
                try:
                    _import_dbapi(alt.get_dialect())
                    return alt
                except ImportError:
                    continue
        extra = (
            " (pip install 'ticketsearch[postgres]' and use postgresql:// or postgresql+psycopg://)"
            if parsed.get_backend_name() == "postgresql"
            else ""
        )
        raise ConfigError(
            f"storage URL '{shown}' needs the database driver '{getattr(exc, 'name', None) or parsed.drivername}', "
            f"which is not installed{extra}"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().parent
        if not folder.is_dir():
            raise ConfigError(f"storage URL '{shown}': the folder '{folder}' does not exist; create it first")
    return parsed


def _import_dbapi(dialect: Any) -> None:
    if hasattr(dialect, "import_dbapi"):  # SQLAlchemy 2
        dialect.import_dbapi()
    else:
        dialect.dbapi()


def quiet() -> None:
    """Optuna's per-trial log lines and its experimental-feature warnings off: the study prints its own
    progress bar and one line per failed trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its failed-trial warnings carry tracebacks
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def retry_callback() -> Any:
    """The callback that re-enqueues a failed (stale) trial with the same parameters, up to 3 times."""
    from optuna import storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return cls(max_retry=3)


class DatabaseLost(TicketsearchError):
    """The database stayed unreachable for longer than ``--db-wait`` seconds (or a call failed with the
    wait off). The message is one line naming the URL (no password) and says to rerun the command: what
    the database holds is intact, and the trial this process held is retried by the next worker."""


def check_db_wait(value: object, flag: str = "--db-wait") -> float:
    """``value`` as seconds to wait for a lost database: a finite number ≥ 0 (0: do not wait)."""
    import math

    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(
            f"{flag} must be a number of seconds ≥ 0 (0: do not wait for a lost database), got {value!r}"
        )
    return seconds


def _say(message: str) -> None:
    """A line on stderr that does not break a progress bar."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(message, file=sys.stderr, flush=True)


class Heartbeat:
    """A trial's heartbeat while its worker runs it: a beat at once (``now``) and every ``interval``
    seconds, until the ``with`` block ends.

    It never dies and never blocks the work beside it: a beat that cannot reach the database is tried
    again every second (one try each, no waiting inside), so the first beat after an outage lands within
    a second of the database's return, and any other failure is said once and tried again. Optuna's own
    heartbeat thread would stop at the first error; studies and bench queues both use this one."""

    def __init__(self, storage: PatientStorage, trial_id: int, interval: float, *, now: bool = True) -> None:
        self.storage, self.trial_id, self.interval, self.now = storage, trial_id, float(interval), now
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        delay, told = (0.0 if self.now else self.interval), False
        while not self.stop.wait(delay):
            try:
                ok = self.storage.beat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - not a lost connection: say it once, keep beating
                ok = False
                if not told:
                    _say(
                        f"warning: heartbeat of trial id {self.trial_id} failed: {type(exc).__name__}: {exc}"
                    )
                    told = True
            delay = self.interval if ok else min(1.0, self.interval)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _engine_kwargs(parsed: Any, db_wait: float) -> dict[str, Any]:
    """Bounded waits, so an unreachable server or a busy SQLite file is an error, never a hang; every
    pooled connection is checked before use, so one the server closed (a restart) never reaches Optuna.
    SQLite's busy timeout is 60 s, or ``db_wait`` when that is shorter (a URL's own ``?timeout=`` wins)."""
    backend = parsed.get_backend_name()
    query = dict(parsed.query)
    out: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite" and "timeout" not in query:
        out["connect_args"] = {"timeout": min(60.0, db_wait) if db_wait > 0 else 60.0}
    if backend in ("postgresql", "mysql", "mariadb") and "connect_timeout" not in query:
        out["connect_args"] = {"connect_timeout": 10}
    return out


def open_storage(
    url: str, *, heartbeat: int | None = 60, db_wait: float = DB_WAIT, wait_first: bool = False
) -> PatientStorage:
    """Optuna's RDB storage on ``url`` (tables created on first use) with the heartbeat settings, behind
    the one retry that waits ``db_wait`` seconds for a lost database. Every failure to reach or use the
    database is one line naming the URL (no password).

    The first connection is not waited for (a server that is not there when a command starts is a typo
    more often than an outage): ``cannot reach storage`` at once, unless ``wait_first`` (a worker process
    joining a queue its command has already reached), the server answered and then went away (it is
    shutting down, restarting or ended the session), or the database is an SQLite file another process
    holds locked."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

    from ._patient import PatientStorage, lost_reason, server_went_away

    quiet()
    parsed = check_url(url)
    shown = safe_url(url)
    db_wait = check_db_wait(db_wait, "db_wait")
    kwargs: dict[str, Any] = {"engine_kwargs": _engine_kwargs(parsed, db_wait)}
    if heartbeat is not None:
        params = inspect.signature(optuna.storages.RDBStorage).parameters
        cb = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback"
        )
        kwargs.update(
            heartbeat_interval=int(heartbeat), grace_period=2 * int(heartbeat), **{cb: retry_callback()}
        )
    patient = PatientStorage(url, db_wait=db_wait, grace=2 * int(heartbeat or 0))
    local = parsed.get_backend_name() == "sqlite"  # a lock is the only failure waited for there

    def build() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rdb = optuna.storages.RDBStorage(parsed.render_as_string(hide_password=False), **kwargs)
            rdb.get_all_studies()  # a real query: credentials, database and permissions all checked
        return rdb

    for attempt in range(6):
        try:
            if wait_first or local:
                patient.attach(patient.call(build))
                return patient
            try:
                rdb = build()
            except Exception as exc:
                if not (lost_reason(exc) and server_went_away(exc)):
                    raise
                rdb = patient.call(build)  # it answered, then went away: an outage, not a typo
            patient.attach(rdb)
            return patient
        except (IntegrityError, ProgrammingError) as exc:
            # workers starting together on a fresh database race to create Optuna's tables; the loser
            # finds them made on the next try
            if attempt < 5:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ConfigError(
                f"cannot use storage '{shown}': {_scrub(str(exc.orig or exc).splitlines()[0], url)}"
            ) from None
        except SQLAlchemyError as exc:
            reason = _scrub(str(getattr(exc, "orig", None) or exc).splitlines()[0], url)
            raise ConfigError(f"cannot reach storage '{shown}': {reason}") from None
        except optuna.exceptions.StorageInternalError as exc:  # Optuna's wrapping of SQLAlchemy's errors
            reason = lost_reason(exc)
            what = "reach" if reason is not None else "use"
            raise ConfigError(f"cannot {what} storage '{shown}': {_scrub(str(reason or exc), url)}") from None
        except (ImportError, RuntimeError, ValueError) as exc:  # driver, schema version, bad argument
            raise ConfigError(f"cannot use storage '{shown}': {_scrub(str(exc), url)}") from None
    raise AssertionError("unreachable")  # pragma: no cover
