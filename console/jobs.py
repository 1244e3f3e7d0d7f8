"""The console's one job API: run a function off the GUI thread, get its result back on it.

::

    Job(fleet_snapshot_in_session, factory).on_success(model.set_snapshot).start(executors.db)

``fn`` runs on a worker thread of the chosen :class:`Executor` (one ``QThreadPool`` per
resource: ``db``, ``io``, ``inference``). Its result, its exception or its progress reports
reach the GUI thread through queued signals, so callbacks may touch widgets; ``fn`` must not.
A job without ``on_failure`` sends its exception to the executor's error reporter.
(After Anki's ``QueryOp`` / ``taskman.py``.)
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QCoreApplication, QObject, QRunnable, Qt, QThread, QThreadPool, Signal, Slot

logger = logging.getLogger(__name__)


def in_gui_thread() -> bool:
    """True when called on the thread of the running ``QCoreApplication``."""
    app = QCoreApplication.instance()
    return app is not None and QThread.currentThread() == app.thread()


class _Relay(QObject):
    """Lives in the GUI thread; worker threads emit its signals, its slots run the callbacks."""

    sig_succeeded = Signal(object)
    sig_failed = Signal(object)
    sig_progress = Signal(float, str)
    sig_cancelled = Signal()

    def __init__(self, job: Job) -> None:
        super().__init__()
        self._job = job
        queued = Qt.ConnectionType.QueuedConnection
        self.sig_succeeded.connect(self._on_self_succeeded, queued)
        self.sig_failed.connect(self._on_self_failed, queued)
        self.sig_progress.connect(self._on_self_progress, queued)
        self.sig_cancelled.connect(self._on_self_cancelled, queued)

    @Slot(object)
    def _on_self_succeeded(self, result: object) -> None:
        self._job._deliver("success", result)

    @Slot(object)
    def _on_self_failed(self, exc: object) -> None:
        self._job._deliver("failure", exc)

    @Slot(float, str)
    def _on_self_progress(self, fraction: float, message: str) -> None:
        self._job._deliver_progress(fraction, message)

    @Slot()
    def _on_self_cancelled(self) -> None:
        self._job._deliver("cancelled", None)


class _Runnable(QRunnable):
    def __init__(self, job: Job) -> None:
        super().__init__()
        self.setAutoDelete(False)  # the Job owns it; Qt must not delete a Python-owned object
        self._job = job

    def run(self) -> None:  # worker thread
        self._job._run()


class Job:
    """A function to run off the GUI thread, with callbacks run on the GUI thread.

    Parameters
    ----------
    fn
        The work. Plain Python: no widgets, no Qt. It may take keyword arguments ``report``
        (``report(fraction: float, message: str)``, 0–1) when :meth:`with_progress` is used,
        and ``cancelled`` (a zero-argument callable, True once :meth:`cancel` was called) if
        its signature names it.
    *args, **kwargs
        Passed to ``fn``.

    Notes
    -----
    Builder methods return the job itself. Exactly one of the success / failure / cancelled
    callbacks runs, then the ``on_done`` ones. A cancelled job's result is dropped.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._success: list[Callable[[Any], None]] = []
        self._failure: list[Callable[[BaseException], None]] = []
        self._progress: list[Callable[[float, str], None]] = []
        self._cancelled_cbs: list[Callable[[], None]] = []
        self._done_cbs: list[Callable[[], None]] = []
        self._cancel_event = threading.Event()
        self._executor: Executor | None = None
        self._owner: QObject | None = None
        self._relay: _Relay | None = None
        self._runnable: _Runnable | None = None
        self._done = False
        self.outcome: str | None = None  #: "success", "failure" or "cancelled" once done
        self.result: Any = None  #: fn's return value after success
        self.error: BaseException | None = None  #: fn's exception after failure

    @property
    def name(self) -> str:
        """The function's qualified name, for logs."""
        return getattr(self._fn, "__qualname__", repr(self._fn))

    # -- builder ------------------------------------------------------------------------
    def on_success(self, cb: Callable[[Any], None]) -> Job:
        """Call ``cb(result)`` on the GUI thread when ``fn`` returns."""
        self._success.append(cb)
        return self

    def on_failure(self, cb: Callable[[BaseException], None]) -> Job:
        """Call ``cb(exception)`` on the GUI thread when ``fn`` raises (instead of the reporter)."""
        self._failure.append(cb)
        return self

    def with_progress(self, cb: Callable[[float, str], None]) -> Job:
        """Pass ``fn`` a ``report(fraction, message)`` keyword; call ``cb`` with each report."""
        self._progress.append(cb)
        return self

    def on_cancelled(self, cb: Callable[[], None]) -> Job:
        """Call ``cb()`` on the GUI thread when the job ends cancelled."""
        self._cancelled_cbs.append(cb)
        return self

    def on_done(self, cb: Callable[[], None]) -> Job:
        """Call ``cb()`` on the GUI thread after the job ended, whatever the outcome."""
        self._done_cbs.append(cb)
        return self

    # -- control ------------------------------------------------------------------------
    def start(self, executor: Executor, owner: QObject | None = None) -> Job:
        """Queue the job on ``executor``; call from the GUI thread.

        Parameters
        ----------
        executor
            The resource's executor, e.g. ``executors.db``.
        owner
            A widget whose callbacks these are: if it is deleted before the job ends, the
            callbacks are skipped.

        Raises
        ------
        RuntimeError
            If called off the GUI thread, twice, or after the executor was shut down.
        """
        if not in_gui_thread():
            raise RuntimeError("Job.start() must be called on the GUI thread")
        if self._executor is not None:
            raise RuntimeError(f"job {self.name} was already started")
        if self._progress and not executor.in_process:
            raise RuntimeError(f"job {self.name} reports progress; the {executor.name} executor runs jobs in "
                               "another process, which cannot: start it on a thread executor")
        self._executor = executor
        self._owner = owner
        self._relay = _Relay(self)
        self._runnable = _Runnable(self)
        executor._submit(self)
        return self

    def cancel(self) -> None:
        """Ask the job to stop: ``fn`` sees ``cancelled()`` return True; its result is dropped."""
        self._cancel_event.set()

    @property
    def is_cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancel_event.is_set()

    @property
    def is_done(self) -> bool:
        """True once the callbacks of the outcome have run on the GUI thread."""
        return self._done

    # -- worker side --------------------------------------------------------------------
    def _call_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self._kwargs)
        if self._executor is not None and not self._executor.in_process:
            return kwargs  # a read process gets neither callback (see ProcessExecutor)
        if self._progress:
            kwargs["report"] = self._report
        try:
            params = inspect.signature(self._fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "cancelled" in params:
            kwargs["cancelled"] = self._cancel_event.is_set
        return kwargs

    def _report(self, fraction: float, message: str = "") -> None:
        relay = self._relay
        if relay is not None and not self._cancel_event.is_set():
            relay.sig_progress.emit(float(fraction), str(message))

    def _run(self) -> None:
        relay = self._relay
        assert relay is not None
        if self._cancel_event.is_set():
            relay.sig_cancelled.emit()
            return
        try:
            assert self._executor is not None
            result = self._executor._call(self._fn, self._args, self._call_kwargs())
        except Exception as exc:  # delivered to on_failure or the reporter
            logger.debug("job %s failed: %r", self.name, exc)
            relay.sig_failed.emit(exc)
        else:
            if self._cancel_event.is_set():
                relay.sig_cancelled.emit()
            else:
                relay.sig_succeeded.emit(result)

    # -- GUI side -----------------------------------------------------------------------
    def _owner_alive(self) -> bool:
        return self._owner is None or shiboken6.isValid(self._owner)

    def _deliver_progress(self, fraction: float, message: str) -> None:
        if self._done or self._cancel_event.is_set() or not self._owner_alive():
            return
        for cb in self._progress:
            cb(fraction, message)

    def _deliver(self, outcome: str, payload: Any) -> None:
        if self._done:
            return
        if outcome != "cancelled" and self._cancel_event.is_set():
            outcome = "cancelled"
        self._done = True
        self.outcome = outcome
        executor = self._executor
        try:
            if not self._owner_alive():
                logger.debug("job %s ended (%s) after its owner was deleted", self.name, outcome)
                return
            if outcome == "success":
                self.result = payload
                for cb in self._success:
                    cb(payload)
            elif outcome == "failure":
                self.error = payload
                if self._failure:
                    for cb in self._failure:
                        cb(payload)
                elif executor is not None and executor.reporter is not None:
                    executor.reporter.report(
                        payload, context=f"finish a background task ({self.name})")
                else:
                    logger.error("job %s failed", self.name, exc_info=payload)
            else:
                for cb in self._cancelled_cbs:
                    cb()
            for cb in self._done_cbs:
                cb()
        finally:
            if executor is not None:
                executor._finished(self)


class Executor:
    """A ``QThreadPool`` for one resource (database, I/O, inference).

    Parameters
    ----------
    name
        ``"db"``, ``"io"`` or ``"inference"``; shown in logs.
    max_threads
        Worker threads at most.
    reporter
        Receives failures of jobs without ``on_failure`` (an ``ErrorReporter``; may be None,
        then they are logged).
    """

    #: Jobs run in this process (False: in a read process, see :class:`ProcessExecutor`).
    in_process = True

    def __init__(self, name: str, max_threads: int, reporter: Any = None) -> None:
        self.name = name
        self.reporter = reporter
        self._pool = QThreadPool()
        self._pool.setMaxThreadCount(max_threads)
        self._pool.setObjectName(f"speakerops-{name}")
        self._jobs: set[Job] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs started whose callbacks have not run yet."""
        return len(self._jobs)

    def active_thread_count(self) -> int:
        """Threads of the pool running a job now."""
        return self._pool.activeThreadCount()

    def portable(self, session_factory: Any, clock: Callable[[], Any]) -> tuple[Any, Callable[[], Any]]:
        """The session factory and clock to pass a job's function on this executor: as given
        (a :class:`ProcessExecutor` swaps in the read process's own and the time now)."""
        return session_factory, clock

    def _call(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:  # worker thread
        return fn(*args, **kwargs)

    def _stop_running(self) -> None:
        """Shutdown's hook between cancelling the jobs and waiting for their threads (threads
        cannot be stopped: nothing here; a :class:`ProcessExecutor` stops its read process)."""

    def _submit(self, job: Job) -> None:
        if self._closed:
            raise RuntimeError(f"the {self.name} executor is shut down; no new jobs")
        self._jobs.add(job)
        assert job._runnable is not None
        self._pool.start(job._runnable)

    def _finished(self, job: Job) -> None:
        self._jobs.discard(job)
        if job._relay is not None:
            job._relay.deleteLater()

    def wait_for_done(self, timeout_s: float | None = None) -> bool:
        """Block until no job is running on a worker thread (callbacks may still be queued;
        process events, or use ``qtbot.waitUntil(lambda: job.is_done)``, to run them)."""
        ms = -1 if timeout_s is None else int(timeout_s * 1000)
        return self._pool.waitForDone(ms)

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Refuse new jobs, drop queued ones, cancel running ones and wait for their threads.

        Returns
        -------
        bool
            True if every worker thread ended within ``timeout_s``.
        """
        self._closed = True
        self._pool.clear()  # jobs not started yet never run
        for job in list(self._jobs):
            job.cancel()
        self._stop_running()
        ok = self._pool.waitForDone(int(timeout_s * 1000))
        if not ok:
            logger.warning("%s executor: workers still running after %.1f s", self.name, timeout_s)
        for job in list(self._jobs):  # callbacks will not be delivered to a closed console
            job._done = True
            job.outcome = job.outcome or "cancelled"
            self._finished(job)
        return ok


class ProcessExecutor(Executor):
    """An executor whose jobs run in a child process (:class:`console.read_process.ReadProcess`),
    one at a time: the console's periodic reads at 10,000 units, which on a thread of the console
    took the interpreter from the GUI thread (``benchmarks/gui_stall.py``).

    A job's function must be a module-level function of a Qt-free module (e.g.
    :mod:`console.page_reads`) and its arguments picklable; get the session factory and clock to
    pass from :meth:`portable`. Jobs get no ``report`` or ``cancelled`` keyword: a cancelled job's
    read still runs to its end in the child, and its result is dropped. A read process that dies
    fails the job in flight with ``ReadProcessError`` and is started again for the next one.

    Parameters
    ----------
    name
        For logs (e.g. ``"fleet-reads"``).
    process
        The read process (started here, in the background).
    reporter
        As for :class:`Executor`.
    """

    in_process = False

    def __init__(self, name: str, process: Any, reporter: Any = None) -> None:
        super().__init__(name, 1, reporter)
        self.process = process
        process.start()

    def portable(self, session_factory: Any, clock: Callable[[], Any]) -> tuple[Any, Callable[[], Any]]:
        from console.read_process import CHILD_SESSIONS, FixedClock

        return CHILD_SESSIONS, FixedClock(clock())

    def _call(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.process.call(fn, *args, **kwargs)

    def _stop_running(self) -> None:
        self.process.close()  # the read in flight fails at once instead of running to its end


class Executors:
    """The console's executors, one per resource.

    Parameters
    ----------
    reporter
        Error reporter for failures of jobs without ``on_failure``.
    db_threads, io_threads, inference_threads
        Pool sizes. ``db`` is small (SQLite has one writer; reads in WAL run beside it);
        ``io`` serves HTTP/SSH; ``inference`` runs one model at a time on 2 cores.
    """

    def __init__(self, reporter: Any = None, *, db_threads: int = 2, io_threads: int = 8,
                 inference_threads: int = 1, read_db_url: str | None = None) -> None:
        self.db = Executor("db", db_threads, reporter)
        self.io = Executor("io", io_threads, reporter)
        self.inference = Executor("inference", inference_threads, reporter)
        #: The Fleet page's and the Service-flow page's refreshes: each its own read process on
        #: ``read_db_url`` (a page's cache then stays in its process), else the ``db`` threads.
        self.fleet_reads: Executor = self.db
        self.flow_reads: Executor = self.db
        if read_db_url is not None:
            from console.read_process import ReadProcess

            self.fleet_reads = ProcessExecutor("fleet-reads", ReadProcess(read_db_url, name="fleet-reads"), reporter)
            self.flow_reads = ProcessExecutor("flow-reads", ReadProcess(read_db_url, name="flow-reads"), reporter)

    def all(self) -> tuple[Executor, ...]:
        """The executors, ``(db, io, inference)`` and the read processes' if any."""
        extra = tuple(ex for ex in (self.fleet_reads, self.flow_reads) if ex is not self.db)
        return (self.db, self.io, self.inference, *extra)

    def set_reporter(self, reporter: Any) -> None:
        """Send unhandled job failures of every executor to ``reporter``."""
        for ex in self.all():
            ex.reporter = reporter

    def active_thread_count(self) -> int:
        """Worker threads running a job now, over all executors."""
        return sum(ex.active_thread_count() for ex in self.all())

    def wait_for_done(self, timeout_s: float | None = None) -> bool:
        """Block until no executor runs a job (see :meth:`Executor.wait_for_done`)."""
        return all([ex.wait_for_done(timeout_s) for ex in self.all()])

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Shut every executor down (see :meth:`Executor.shutdown`)."""
        return all([ex.shutdown(timeout_s) for ex in self.all()])
