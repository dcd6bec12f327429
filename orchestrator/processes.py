"""Which host (and SLURM task) this is, whether a process that recorded its pid here is still alive, and
interrupts."""

from __future__ import annotations

import os
import platform
import signal
import threading

HOST = platform.node()


def task_identity() -> str | None:
    """``JOB_TASK`` of the SLURM array task this process runs in, if any (provenance on trials and runs)."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return f"{job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _another_here(host: str | None, pid) -> bool:
    return bool(host == HOST and pid and int(pid) != os.getpid())


def running_here(host: str | None, pid) -> bool:
    """Whether ``pid``, recorded with ``host``, is another process of this host that still runs. A
    process on another host cannot be checked from here (heartbeats cover those)."""
    return _another_here(host, pid) and pid_alive(int(pid))


def lost_here(host: str | None, pid) -> bool:
    """Whether ``pid``, recorded with ``host``, was another process of this host that is gone."""
    return _another_here(host, pid) and not pid_alive(int(pid))


# ----------------------------------------------------------------------------- interrupts
_INTERRUPTED = threading.Event()
# A KeyboardInterrupt raised inside a database call leaves its transaction open (MLflow's and SQLAlchemy's
# sessions roll back on Exception, which KeyboardInterrupt is not), holding the store's lock: the run's own
# ending then waits on it for the busy timeout (MLflow's SQLite: 20 s), and so does every other worker.
# Database code only: a call to a tracking *server* (MLflow's REST store) holds no transaction here, and
# while the server does not answer it can wait for minutes, so an interrupt there is raised at once.
_STORE_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "mlflow.store.db")
RECHECK_SECONDS = 0.05  # how soon after a database call returns its deferred interrupt is raised
_previous_alarm: list = []  # the SIGALRM handler to restore once a deferred interrupt is raised


def _in_store_call(frame) -> bool:
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith(_STORE_MODULES) or (module.startswith("mlflow.store") and "sqlalchemy" in module):
            return True
        frame = frame.f_back
    return False


def stop_waiting_on_servers() -> None:
    """From now on, each call to a tracking server is tried once, for at most 5 s: what runs after an
    interrupt (or after a server stopped answering) ends runs and re-queues trials as best it can, and
    must not wait minutes on a server that is gone (the next start ends what is left). MLflow reads these
    variables at each request."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"


def interrupt(signum=None, frame=None) -> None:
    """The SIGTERM handler (preemption, scancel, a supervisor's terminate): behave as Ctrl-C does, so
    the running trial's state is written and its run ends KILLED. The interrupt is also recorded,
    because a KeyboardInterrupt raised while the interpreter runs a finaliser (a weakref callback in
    the middle of garbage collection) is swallowed: ``raise_if_interrupted`` raises it again. Landing
    inside a database call, it is raised as soon as that call returns (checked every 50 ms), never
    mid-transaction."""
    _INTERRUPTED.set()
    stop_waiting_on_servers()
    if frame is not None and _in_store_call(frame):
        if not _previous_alarm:
            _previous_alarm.append(signal.signal(signal.SIGALRM, interrupt))
        signal.setitimer(signal.ITIMER_REAL, RECHECK_SECONDS)
        return
    _disarm()
    raise KeyboardInterrupt


def _disarm() -> None:
    """Cancel a deferred interrupt that is about to be raised by another route. Left armed, it would
    land a second time in the clean-up that follows (ending the run KILLED), or, once Python restores
    the default handlers at exit, kill the process with SIGALRM instead of exit 130."""
    if _previous_alarm and threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, _previous_alarm.pop())


def raise_if_interrupted() -> None:
    """Raise the interrupt a finaliser swallowed (called at every epoch and before every trial)."""
    if _INTERRUPTED.is_set():
        _disarm()
        raise KeyboardInterrupt


def resident_mib() -> float | None:
    """This process's resident memory now, MiB (Linux's /proc/self/statm; None elsewhere): what a
    long-lived worker holds between trials, unlike ``ru_maxrss``, its peak."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
