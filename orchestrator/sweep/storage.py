"""Where a study lives: Optuna storage URLs, and the storage-wide lock that serialises trial creation.

Storages: ``sqlite:///PATH`` (one machine), ``postgresql://...`` / ``mysql://...`` (many machines), and
``journal:///PATH``: Optuna's JournalStorage, an append-only file on a filesystem every host mounts (a
cluster's shared home or scratch), for clusters without a database server. Optuna's RDB storages
detect dead workers by heartbeat; the journal has none, so cvstudy's workers beat through a trial
attribute (``TrialAttr.HEARTBEAT``) and a stale beat is found the same way (``trials.fail_lost_trials``).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileOpenLock, JournalStorage

from .. import sqlite_files
from ..boundaries import redact
from ..errors import StoreError, SweepError
from ..tracking.schema import TrialAttr
from ..tracking.uris import sqlite_path, sqlite_url
from .journal import JournalFile
from .pruning import is_companion

LOCK_GRACE_SECONDS = 30  # a journal ask lock not refreshed for this long belongs to a dead worker
# A worker's connections to a database server: one kept open between calls, two more while its heartbeat
# thread and its main thread call at once (and the ask lock's own, held while a trial is created). SQLAlchemy's
# default (5 kept, 10 more) let 32 workers exhaust PostgreSQL's default 100 connections (bench/scale.py).
SERVER_POOL = {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 2}
CONNECTIONS_PER_WORKER = 1 + 2 + 1  # the pool at its fullest, and the ask lock's
HEARTBEAT_SECONDS = 10  # a RUNNING trial whose heartbeat is older than GRACE_SECONDS is stale
GRACE_SECONDS = 60
CREATE_ATTEMPTS = 5  # opening a fresh database that other workers are creating tables in at the same time


def default_storage(tracking_uri: str) -> str:
    """``optuna.db`` beside mlflow.db when MLflow uses a local SQLite file, else in the working directory."""
    database = sqlite_path(tracking_uri)
    return sqlite_url((database.parent if database is not None else Path.cwd().resolve()) / "optuna.db")


def is_memory(url: str) -> bool:
    return url in ("memory", ":memory:")


def journal_path(url: str) -> Path | None:
    """The file of a ``journal:///PATH`` storage URL (absolute), or None for other URLs."""
    if not url.startswith("journal:"):
        return None
    rest = url[len("journal:") :]
    rest = rest[2:] if rest.startswith("//") else rest
    return Path(rest).expanduser().resolve()


def open_storage(url: str, on_stale: Callable | None = None):
    """An Optuna storage for ``url``: ``memory`` (one process), or any RDB URL with heartbeats, whose
    stale trials (a worker that stopped beating) are failed by Optuna and handed to ``on_stale``."""
    if is_memory(url):
        return optuna.storages.InMemoryStorage()
    path = journal_path(url)
    if path is not None:
        if not path.parent.is_dir():
            raise SweepError(f"--storage {url}: directory {path.parent} does not exist")
        return JournalStorage(JournalFile(str(path)))  # cut-off records set aside, damaged ones refused
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise SweepError(
            f"--storage {redact(url)!r}: expected sqlite:///PATH, postgresql://..., mysql://..., journal:///PATH "
            "or memory"
        )
    database = sqlite_path(url)
    if database is not None:
        sqlite_files.used(database)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else SERVER_POOL
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=on_stale,
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers started together on a fresh database race to create Optuna's tables (PostgreSQL:
            # "duplicate key ... pg_type_typname_nsp_index", "relation ... already exists"): the loser
            # opens what the winner created, after a pause.
            time.sleep(0.5 * (attempt + 1))
        except Exception as err:  # noqa: BLE001 -- unreachable server, bad credentials, bad path
            raise StoreError(f"--storage {redact(url)}: cannot open ({str(err).splitlines()[0][:300]})") from None
    raise StoreError(f"--storage {redact(url)}: cannot create Optuna's tables ({CREATE_ATTEMPTS} attempts)")


def postgresql_connections(url: str) -> tuple[int, int] | None:
    """(the server's ``max_connections``, connections open now) of a ``postgresql://`` storage; None for
    another storage, or a server that will not say."""
    if not url.startswith("postgresql"):
        return None
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            limit = int(conn.execute(sqlalchemy.text("SHOW max_connections")).scalar_one())
            open_now = int(conn.execute(sqlalchemy.text("SELECT count(*) FROM pg_stat_activity")).scalar_one())
    except Exception:  # noqa: BLE001 -- a warning's input: without it, no warning
        return None
    finally:
        engine.dispose()
    return limit, open_now


def find_study(storage, name: str) -> optuna.Study | None:
    """The study ``name`` in ``storage``, or None when it holds none of that name."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def study_names(storage) -> list[str]:
    """The users' studies in ``storage`` (not the pruning companions of multi-objective ones)."""
    return [s.study_name for s in optuna.get_all_study_summaries(storage) if not is_companion(s.study_name)]


class AskLock:
    """A storage-wide mutex around "count trials, then create one", so concurrent workers on any
    number of hosts never create more than the target. PostgreSQL: an advisory lock; SQLite: an
    fcntl lock on a file beside the database; journal: Optuna's NFS-safe lock file (``O_EXCL``) beside
    the journal, kept fresh while held so that only a dead holder's lock is broken (after 30 s);
    memory: a thread lock."""

    _memory = threading.Lock()

    def __init__(self, url: str, study_name: str):
        self.url, self.key = url, zlib.crc32(study_name.encode()) & 0x7FFFFFFF
        self.held = False
        self._engine: sqlalchemy.Engine | None = None  # PostgreSQL
        self._conn: sqlalchemy.Connection | None = None
        self._fh: IO[str] | None = None  # SQLite
        self._journal_lock: JournalFileOpenLock | None = None  # journal
        self._keepalive: _Touch | None = None

    def acquire(self) -> AskLock:
        if self.url.startswith("postgresql"):
            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            conn = self._conn = self._engine.connect()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        elif sqlite_path(self.url) is not None:
            self._fh = open(f"{sqlite_path(self.url)}.lock", "a+")
            fcntl.flock(self._fh, fcntl.LOCK_EX)
        elif journal_path(self.url) is not None:
            target = f"{journal_path(self.url)}.ask"
            lock = self._journal_lock = JournalFileOpenLock(target, grace_period=LOCK_GRACE_SECONDS)
            lock.acquire()
            self._keepalive = _Touch(f"{target}.lock", every=LOCK_GRACE_SECONDS / 6)
        else:
            self._memory.acquire()
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._conn is not None:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._conn.close()
            self._conn = None
        elif self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        elif self._journal_lock is not None:
            if self._keepalive is not None:
                self._keepalive.stop()
            self._journal_lock.release()
            self._journal_lock, self._keepalive = None, None
        else:
            self._memory.release()

    @contextmanager
    def hold(self):
        self.acquire()
        try:
            yield self
        finally:
            self.release()


class _Touch:
    """Refresh a file's modification time every ``every`` seconds until stopped (in a daemon thread)."""

    def __init__(self, path: str, every: float):
        self.path, self.every, self.stopped = path, every, threading.Event()
        threading.Thread(target=self._run, name="cvstudy-lock-keepalive", daemon=True).start()

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                os.utime(self.path)
            except OSError:
                return  # released meanwhile

    def stop(self) -> None:
        self.stopped.set()


class Heartbeat:
    """A running trial's heartbeat, written from a daemon thread while the trial trains (every
    ``HEARTBEAT_SECONDS``, or the RDB storage's own interval), so another worker can tell a dead one's
    trial from a slow one. On RDB storages it is Optuna's own (``RDBStorage.record_heartbeat``, read by
    ``optuna.storages.fail_stale_trials``; Optuna beats only inside ``study.optimize``, and workers ask
    and tell); on a journal, which has none, the trial's ``heartbeat`` user attribute (seconds since the
    epoch, read by ``trials.fail_lost_trials``). In memory (one process) nobody else could read it. A
    context manager: the beat stops when it exits."""

    def __init__(self, storage, study: optuna.Study, trial: optuna.Trial):
        self.beat: Callable[[], None] | None = None
        self.every = float(HEARTBEAT_SECONDS)
        if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
            self.every = float(storage.get_heartbeat_interval() or HEARTBEAT_SECONDS)
            study_id = storage.get_study_id_from_name(study.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            self.beat = lambda: storage.record_heartbeat(trial_id)
        elif isinstance(storage, JournalStorage):
            self.beat = lambda: trial.set_user_attr(TrialAttr.HEARTBEAT, time.time())
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cvstudy-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.beat is not None:
            self.beat()  # the first at once: a trial is never RUNNING without one
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.beat()  # type: ignore[misc]
            except Exception:  # noqa: BLE001 -- finished meanwhile, or the storage is briefly unreachable  # nosec B110
                pass
