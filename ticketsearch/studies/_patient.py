"""The one retry around every storage call: a database that restarts or drops a connection is waited for.

:class:`PatientStorage` wraps the Optuna storage that :func:`~ticketsearch.studies.storage.open_storage`
builds and is what every study and bench queue talks to. Each of its methods is Optuna's own, run by
:meth:`PatientStorage.call`: a lost connection (the server restarted, shut down, or ended our session;
SQLite's file locked past its busy timeout) is retried with a growing pause for up to ``db_wait`` seconds,
then the command stops with :class:`~ticketsearch.studies.storage.DatabaseLost` — one line, and every later
call fails at once, so a process on its way out never waits twice. Anything else (a bad value, a missing
study, a conflict) is not a lost connection and passes through untouched.

Heartbeats use the same call without waiting (:meth:`PatientStorage.beat`): a missed beat is retried by
the heartbeat thread itself, which never blocks the training beside it. Because heartbeats lapse while the
database is away, :meth:`PatientStorage.stale_trial_ids` declares no worker dead until the database has
been back for a grace period — as this process saw it, or, on PostgreSQL, since the server (re)started.

Optuna and SQLAlchemy are imported here at module level: this module is imported by ``open_storage`` only.
"""

from __future__ import annotations

import abc
import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy
from optuna.storages import BaseStorage
from sqlalchemy import exc as sa_exc

from .storage import DatabaseLost, _say, _scrub, safe_url

__all__ = ["PatientStorage", "lost_reason", "server_went_away"]

_FIRST_PAUSE, _MAX_PAUSE = 0.1, 1.0  # seconds between tries: 0.1, 0.15, 0.225, ... up to 1 s (±20%)


def lost_reason(exc: BaseException) -> str | None:
    """The driver's one-line reason when ``exc`` (or what caused it: Optuna wraps SQLAlchemy's errors in
    ``StorageInternalError``) is a lost or refused connection or a locked SQLite file; None otherwise."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa_exc.DBAPIError):
            orig = e.orig
            text = str(orig if orig is not None else e).strip().splitlines()
            reason = text[0] if text else type(e).__name__
            if isinstance(orig, sqlite3.Error):  # SQLite's OperationalError also means a missing table
                if isinstance(orig, sqlite3.OperationalError) and ("locked" in reason or "busy" in reason):
                    return reason
                return None
            if e.connection_invalidated or isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
                return reason
            return None
        if isinstance(e, sa_exc.TimeoutError):  # no pooled connection came back in time
            return str(e).strip().splitlines()[0]
        e = e.__cause__ or e.__context__
    return None


_WENT_AWAY = (
    "server closed the connection unexpectedly",
    "terminating connection",
    "the database system is",  # starting up, shutting down, in recovery mode
)


def server_went_away(exc: BaseException) -> bool:
    """True when the server was there and went away (SQLSTATE class 57, operator intervention: shut
    down, crashed, starting; or a session it closed), as opposed to one that was never reached (refused,
    unknown host, bad credentials), which at a command's start is a typo more often than an outage."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        orig = getattr(e, "orig", None)
        for x in (e, orig):
            if x is None:
                continue
            if str(getattr(x, "sqlstate", None) or "").startswith("57"):
                return True
            if any(w in str(x) for w in _WENT_AWAY):
                return True
        e = e.__cause__ or e.__context__
    return False


class PatientStorage(BaseStorage):
    """An Optuna storage that waits for its database (see the module's docstring).

    ``url``: as given (never printed); ``db_wait``: seconds a call waits for a lost database (0: not at
    all, the same one line at once); ``grace``: seconds after the database is back before a silent worker
    may be declared dead. :meth:`attach` gives it the RDBStorage to work on (its engine, heartbeat settings
    and stale-trial query), used through Optuna's cache as ``optuna.create_study`` would. Attributes it
    does not define (``engine``, ``url``) are the RDB storage's."""

    def __init__(self, url: str, *, db_wait: float, grace: float) -> None:
        self._inner: Any = None
        self._rdb: Any = None
        self._url = url
        self.shown = safe_url(url)
        self.db_wait, self.grace = float(db_wait), float(grace)
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic: the first failure of the current outage
        self._back_at: float | None = None  # monotonic: when the last outage ended
        self._outages = 0
        self._tls = threading.local()  # per thread: inside no_wait()
        self._lost: DatabaseLost | None = None  # set once this process gave up: later calls fail at once

    # -- the one retry ------------------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried while the database is away, for up to ``db_wait`` seconds from
        this call's start (one try inside :meth:`no_wait`); then :class:`DatabaseLost`."""
        if self._lost is not None:
            raise DatabaseLost(str(self._lost))
        patient = getattr(self._tls, "patient", True)
        limit = self.db_wait if patient else 0.0
        start, pause = time.monotonic(), _FIRST_PAUSE
        while True:
            tried = time.monotonic()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                reason = lost_reason(exc)
                if reason is None:
                    raise
                reason = _scrub(reason, self._url)
                down = self._went_down(reason, tried)
                now = time.monotonic()
                if now - start >= limit:
                    error = DatabaseLost(
                        f"lost the database at {self.shown} for {now - down:.0f} s ({reason}); rerun the "
                        "same command to resume"
                    )
                    if patient:  # this process gives up: later calls fail at once, no second wait
                        self._lost = error
                    raise error from None
                time.sleep(min(pause * random.uniform(0.8, 1.2), max(0.0, start + limit - now)))
                pause = min(_MAX_PAUSE, pause * 1.5)
                continue
            if self._down_since is not None:
                self._came_back()
            return result

    @contextlib.contextmanager
    def no_wait(self) -> Iterator[None]:
        """Calls of this thread inside the block try once: a lost database raises :class:`DatabaseLost`
        at once (without making this process give up). For what is best-effort — a heartbeat, a progress
        bar, the last words of a process on its way out."""
        before = getattr(self._tls, "patient", True)
        self._tls.patient = False
        try:
            yield
        finally:
            self._tls.patient = before

    def _went_down(self, reason: str, since: float) -> float:
        """Note an outage that began no later than ``since`` (the failed try's start); said once."""
        with self._lock:
            if self._down_since is None:
                self._down_since = since
                self._outages += 1
                if self.db_wait > 0:  # with the wait off, the error line alone says it
                    _say(
                        f"warning: lost the database at {self.shown} ({reason}); waiting up to "
                        f"{self.db_wait:g} s for it (--db-wait)"
                    )
            return self._down_since

    def _came_back(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            now = time.monotonic()
            if self.db_wait > 0:
                _say(f"the database at {self.shown} is back after {now - self._down_since:.1f} s")
            self._down_since, self._back_at = None, now

    def attach(self, rdb: Any) -> None:
        """Work on ``rdb`` (an ``optuna.storages.RDBStorage``) from now on."""
        from optuna.storages import get_storage

        self._rdb, self._inner = rdb, get_storage(rdb)

    def give_up(self, error: DatabaseLost) -> None:
        """Another process of this command lost the database: this one stops waiting for it too."""
        self._lost = error

    @property
    def outages(self) -> int:
        """How many times this process lost the database (each counted once, however many calls it hit)."""
        return self._outages

    # -- heartbeats -----------------------------------------------------------------------------------------
    def beat(self, trial_id: int) -> bool:
        """Record a heartbeat for ``trial_id`` with one try; False when the database is away (the caller
        tries again soon). Never waits, so a heartbeat thread stops as soon as its trial ends."""
        if self._lost is not None:
            return False
        with self.no_wait():
            try:
                self.call(self._inner.record_heartbeat, trial_id)
            except DatabaseLost:
                return False
        return True

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Ids of RUNNING trials without a heartbeat for the grace period — none while the database has
        been back for less than that (its outage stopped every worker's heartbeat, not its work)."""
        if self._rdb.get_heartbeat_interval() is None:  # opened without heartbeats (a report)
            return []
        stale = self.call(self._rdb._get_stale_trial_ids, study_id)
        if not stale:
            return []
        if self._back_at is not None and time.monotonic() - self._back_at < self.grace:
            return []
        if self._rdb.engine.url.get_backend_name() == "postgresql":
            up = self.call(self._server_uptime)
            if up is not None and up < self.grace:
                return []
        return list(stale)

    def _server_uptime(self) -> float | None:
        with self._rdb.engine.connect() as conn:
            value = conn.execute(
                sqlalchemy.text("SELECT EXTRACT(EPOCH FROM (now() - pg_postmaster_start_time()))")
            ).scalar()
        return None if value is None else float(value)

    # -- everything else is the inner storage's -------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_rdb", "_tls", "_lost"):
            raise AttributeError(name)
        return getattr(self._rdb, name)


def _forward(name: str) -> Callable[..., Any]:
    def method(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        return self.call(getattr(self._inner, name), *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"Optuna's ``{name}``, through :meth:`PatientStorage.call`."
    return method


# every public method of Optuna's storage interface goes through the one retry; the abstract ones must be
# defined for the class to be instantiable, the others are forwarded so the inner storage's faster
# versions (its cache) are used
for _name in sorted(
    n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(BaseStorage, n))
):
    setattr(PatientStorage, _name, _forward(_name))
PatientStorage.record_heartbeat = _forward("record_heartbeat")  # type: ignore[attr-defined]
abc.update_abstractmethods(PatientStorage)
