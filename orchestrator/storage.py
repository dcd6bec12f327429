"""Where a study lives: Optuna storage URLs, and the storage-wide lock that serialises trial creation."""

from __future__ import annotations

import fcntl
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

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


def open_storage(url: str, on_stale: Callable | None = None):
    """An Optuna storage for ``url``: ``memory`` (one process), or any RDB URL with heartbeats, whose
    stale trials (a worker that stopped beating) are failed by Optuna and handed to ``on_stale``."""
    import optuna

    if is_memory(url):
        return optuna.storages.InMemoryStorage()
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise SweepError(f"--storage {url!r}: expected sqlite:///PATH, postgresql://..., mysql://... or memory")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=on_stale)
    except Exception as err:  # noqa: BLE001 -- unreachable server, bad credentials, bad path
        raise SweepError(f"--storage {redact(url)}: cannot open ({str(err).splitlines()[0][:300]})") from None


class AskLock:
    """A storage-wide mutex around "count trials, then create one", so concurrent workers on any
    number of hosts never create more than the target. PostgreSQL: an advisory lock; SQLite: an
    fcntl lock on a file beside the database; memory: a thread lock. ``release`` is idempotent."""

    _memory = threading.Lock()

    def __init__(self, url: str, study_name: str):
        self.url, self.key = url, zlib.crc32(study_name.encode()) & 0x7FFFFFFF
        self.held = False
        self._conn = self._fh = None
        self._engine = None

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
        else:
            self._memory.release()

    @contextmanager
    def held_until_released(self):
        self.acquire()
        try:
            yield self
        finally:
            self.release()
