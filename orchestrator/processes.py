"""Which host this is, and whether a process that recorded its pid here is still alive."""

from __future__ import annotations

import os
import platform
import threading

HOST = platform.node()


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


def interrupt(signum=None, frame=None) -> None:
    """The SIGTERM handler (preemption, scancel, a supervisor's terminate): behave as Ctrl-C does, so
    the running trial's state is written and its run ends KILLED. The interrupt is also recorded,
    because a KeyboardInterrupt raised while the interpreter runs a finaliser (a weakref callback in
    the middle of garbage collection) is swallowed: ``raise_if_interrupted`` raises it again."""
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise the interrupt a finaliser swallowed (called at every epoch and before every trial)."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt
