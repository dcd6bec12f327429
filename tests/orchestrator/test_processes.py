"""Process liveness, and interrupts that survive being raised where Python swallows exceptions."""

import gc
import os
import weakref

import pytest

from cvstudy.orchestrator import processes
from cvstudy.orchestrator.processes import HOST, interrupt, lost_here, raise_if_interrupted, running_here


@pytest.fixture
def clean_interrupt(monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # an interrupt sets them
        monkeypatch.setenv(name, "7")
        monkeypatch.delenv(name)  # the undo removes what the interrupt set
    yield
    processes._INTERRUPTED.clear()  # process-wide: never leak into the next test


def test_an_interrupt_swallowed_by_a_finaliser_is_raised_again(clean_interrupt):
    """SIGTERM can arrive while a weakref callback runs during garbage collection; Python then prints
    "Exception ignored" and the KeyboardInterrupt is lost. The next epoch or trial boundary raises it."""

    class Obj:
        pass

    obj = Obj()
    ref = weakref.ref(obj, lambda _: interrupt())  # the handler runs inside the finaliser, as a signal would
    del obj
    gc.collect()  # swallowed here
    assert ref() is None
    with pytest.raises(KeyboardInterrupt):
        raise_if_interrupted()


def test_only_a_recorded_interrupt_raises_and_it_stays_recorded(clean_interrupt):
    raise_if_interrupted()  # nothing recorded: nothing raised
    with pytest.raises(KeyboardInterrupt):
        interrupt()  # as the SIGTERM handler runs it
    for _ in range(2):  # every later epoch boundary and trial start raises it again
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()


def test_liveness_is_judged_only_on_this_host_and_never_for_this_process():
    assert not running_here(HOST, os.getpid()) and not lost_here(HOST, os.getpid())  # this process
    assert running_here(HOST, os.getppid())  # the test runner's parent is alive
    assert lost_here(HOST, 2**22 + 12345)  # beyond pid_max: no such process
    assert not running_here("another-host", os.getppid()) and not lost_here("another-host", 2**22 + 12345)
    assert not running_here(HOST, None) and not lost_here(HOST, 0)


STORE_CALL = """
import os, signal, time
def call(done):
    os.kill(os.getpid(), signal.SIGTERM)  # lands while this (a database call) runs
    time.sleep(0.3)
    done.append("returned")
"""


DEFERRED = {  # module of the call -> whether an interrupt waits for it to return
    "sqlalchemy.engine.fake": True,
    "mlflow.store.tracking.sqlalchemy_store": True,  # MLflow's database store, between its queries
    "mlflow.store.tracking.rest_store": False,  # a tracking server: no transaction here, and it may hang
    "orchestrator.elsewhere": False,
}


@pytest.mark.parametrize("module", list(DEFERRED))
def test_an_interrupt_inside_a_database_call_is_raised_when_the_call_returns(clean_interrupt, module):
    """Inside a database call the interrupt waits for the call to return (its transaction closed), then
    is raised within moments; anywhere else (a call to a tracking server included) it is raised at once,
    and from then on a tracking server is tried once, for at most 5 s."""
    import signal
    import time

    namespace = {"__name__": module}
    exec(STORE_CALL, namespace)  # noqa: S102 -- a function whose module name is a database library's
    previous = signal.signal(signal.SIGTERM, interrupt)
    done: list[str] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            namespace["call"](done)
            time.sleep(2)  # the deferred interrupt lands here, 50 ms after the call returned
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.setitimer(signal.ITIMER_REAL, 0)
    assert done == (["returned"] if DEFERRED[module] else [])
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"


def test_a_deferred_interrupt_raised_by_an_epoch_boundary_first_is_not_raised_again(clean_interrupt):
    """The interrupt deferred past a database call can be raised first by ``raise_if_interrupted`` (an
    epoch boundary right after the call). The deferred one must then be cancelled: armed, it lands again
    in the clean-up, or, after Python restores the default handlers at exit, kills the process with
    SIGALRM (exit -14 instead of 130; seen in CI)."""
    import signal
    import time

    namespace = {"__name__": "sqlalchemy.engine.fake"}
    exec(STORE_CALL.replace("time.sleep(0.3)", "pass"), namespace)  # noqa: S102 -- returns at once
    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_alarm = signal.getsignal(signal.SIGALRM)
    try:
        namespace["call"]([])  # deferred: nothing raised yet
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()  # within the 50 ms
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is previous_alarm
        time.sleep(3 * processes.RECHECK_SECONDS)  # nothing lands here
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        processes._previous_alarm.clear()
