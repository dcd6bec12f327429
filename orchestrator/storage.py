"""Where a study lives: Optuna storage URLs, and the storage-wide lock that serialises trial creation.

Storages: ``sqlite:///PATH`` (one machine), ``postgresql://...`` / ``mysql://...`` (many machines), and
``journal:///PATH``: Optuna's JournalStorage, an append-only file on a filesystem every host mounts (a
cluster's shared home or scratch), for clusters without a database server. Optuna's RDB storages
detect dead workers by heartbeat; the journal has none, so cvstudy's workers beat through a trial
attribute (``worker``) and a stale beat is found the same way (``trials.fail_lost_trials``).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

LOCK_GRACE_SECONDS = 30  # a journal ask lock not refreshed for this long belongs to a dead worker
HEARTBEAT_SECONDS = 10  # a RUNNING trial whose heartbeat is older than GRACE_SECONDS is stale
GRACE_SECONDS = 60


class SweepError(ValueError):
    """Bad sweep input (storage, devices, study): one line for the user, exit code 2."""


def default_storage(tracking_uri: str) -> str:
    """``optuna.db`` beside mlflow.db when MLflow uses a local SQLite file, else in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):].split('?')[0]).parent / 'optuna.db'}"
    return f"sqlite:///{Path('optuna.db').resolve()}"


def redact(url: str) -> str:
    """A storage URL without its password, fit for tags and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}"
    return url


def is_memory(url: str) -> bool:
    return url in ("memory", ":memory:")


def journal_path(url: str) -> Path | None:
    """The file of a ``journal:///PATH`` storage URL (absolute), or None for other URLs."""
    if not url.startswith("journal:"):
        return None
    rest = url[len("journal:"):]
    rest = rest[2:] if rest.startswith("//") else rest
    return Path(rest).expanduser().resolve()


def beats_by_attribute(url: str) -> bool:
    """Whether workers must beat through a trial attribute (storages without Optuna heartbeats)."""
    return journal_path(url) is not None


def open_storage(url: str, on_stale: Callable | None = None):
    """An Optuna storage for ``url``: ``memory`` (one process), or any RDB URL with heartbeats, whose
    stale trials (a worker that stopped beating) are failed by Optuna and handed to ``on_stale``."""
    import optuna

    if is_memory(url):
        return optuna.storages.InMemoryStorage()
    path = journal_path(url)
    if path is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        if not path.parent.is_dir():
            raise SweepError(f"--storage {url}: directory {path.parent} does not exist")
        return JournalStorage(JournalFileBackend(str(path)))
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise SweepError(f"--storage {url!r}: expected sqlite:///PATH, postgresql://..., mysql://..., "
                         "journal:///PATH or memory")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=on_stale)
    except Exception as err:  # noqa: BLE001 -- unreachable server, bad credentials, bad path
        raise SweepError(f"--storage {redact(url)}: cannot open ({str(err).splitlines()[0][:300]})") from None


class AskLock:
    """A storage-wide mutex around "count trials, then create one", so concurrent workers on any
    number of hosts never create more than the target. PostgreSQL: an advisory lock; SQLite: an
    fcntl lock on a file beside the database; journal: Optuna's NFS-safe lock file (``O_EXCL``) beside
    the journal, kept fresh while held so that only a dead holder's lock is broken (after 30 s);
    memory: a thread lock. ``release`` is idempotent."""

    _memory = threading.Lock()

    def __init__(self, url: str, study_name: str):
        self.url, self.key = url, zlib.crc32(study_name.encode()) & 0x7FFFFFFF
        self.held = False
        self._conn = self._fh = None
        self._engine = None
        self._journal_lock, self._keepalive = None, None

    def acquire(self) -> "AskLock":
        if self.url.startswith("postgresql"):
            import sqlalchemy

            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        elif self.url.startswith("sqlite:///"):
            path = Path(self.url[len("sqlite:///"):].split("?")[0] + ".lock")
            self._fh = open(path, "a+")
            fcntl.flock(self._fh, fcntl.LOCK_EX)
        elif journal_path(self.url) is not None:
            from optuna.storages.journal import JournalFileOpenLock

            target = f"{journal_path(self.url)}.ask"
            self._journal_lock = JournalFileOpenLock(target, grace_period=LOCK_GRACE_SECONDS)
            self._journal_lock.acquire()
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
            import sqlalchemy

            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._conn.close()
            self._conn = None
        elif self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        elif self._journal_lock is not None:
            self._keepalive.stop()
            self._journal_lock.release()
            self._journal_lock = self._keepalive = None
        else:
            self._memory.release()

    @contextmanager
    def held_until_released(self):
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
    """A running trial's heartbeat as its ``heartbeat`` user attribute (seconds since the epoch), written
    every ``HEARTBEAT_SECONDS`` from a daemon thread, for storages without Optuna's heartbeat."""

    def __init__(self, trial):
        self.trial, self.stopped = trial, threading.Event()
        trial.set_user_attr("heartbeat", time.time())
        self.thread = threading.Thread(target=self._run, name="cvstudy-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception:  # noqa: BLE001 -- finished meanwhile, or the storage is briefly unreachable
                pass

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
