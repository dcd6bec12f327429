"""Which host this is, and whether a process that recorded its pid here is still alive."""

from __future__ import annotations

import os
import platform

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
