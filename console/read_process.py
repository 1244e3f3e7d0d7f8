"""A child process that runs the console's periodic database reads, off the GUI's interpreter.

At 10,000 units a Fleet refresh decodes and indexes a 10,000-row snapshot, and a Service-flow
refresh sums a day of per-minute histograms. In a thread of the console that work holds the
interpreter lock for stretches of tens of milliseconds and competes with the GUI thread for the
2 cores, and the GUI thread's event loop stalled for 130–650 ms at a time
(``benchmarks/gui_stall.py``). In a child process — its own interpreter, its own database
connection, :data:`READ_NICE` steps nicer than the console — only the pickled result crosses
back, and unpickling a snapshot takes milliseconds.

::

    reads = ReadProcess("sqlite:////path/speakerops.db")
    load = reads.call(load_fleet, CHILD_SESSIONS, FixedClock(utc_now()), None)

``fn`` and its arguments are pickled (``fn`` by reference: a module-level function of a
Qt-free module, e.g. :mod:`console.page_reads`); :data:`CHILD_SESSIONS` stands for the child's
session factory. One call runs at a time. No Qt here: the child imports only this module, the
core and what ``fn`` needs.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Niceness added to the read process (SpeakerOps' choice: below the console's GUI, above the
#: console's collector child, ``console.app.COLLECTOR_NICE`` = 5, whose cycles must not starve
#: the operator's refreshes either).
READ_NICE = 2
#: Seconds the child may take to start (imports, database connection) before a call fails.
START_TIMEOUT_S = 60.0
#: Modules the child imports before it reports ready, so that the first call does not pay them.
PRELOAD = ("console.page_reads",)

_FACTORY: Any = None  # the child's session factory (set by _child_main)


class ReadProcessError(RuntimeError):
    """The read process could not start, or ended during a call (it is started again for the
    next call). The message says which and what to do."""


class RemoteError(RuntimeError):
    """An exception from the read process that could not be sent back as itself (its type and
    message are kept in the text)."""


class _ChildSessions:
    """Stands for the read process's session factory in a call's arguments (picklable)."""

    def __call__(self) -> Any:
        if _FACTORY is None:
            raise ReadProcessError("CHILD_SESSIONS is only usable inside a read process "
                                   "(pass the console's session factory when running in-process)")
        return _FACTORY()

    def begin(self) -> Any:
        return self().begin()

    def __reduce__(self) -> str:
        return "CHILD_SESSIONS"

    def __repr__(self) -> str:
        return "CHILD_SESSIONS"


#: The read process's session factory, as an argument of :meth:`ReadProcess.call`.
CHILD_SESSIONS = _ChildSessions()


@dataclass(frozen=True)
class FixedClock:
    """A clock that always says ``now`` (picklable): the console's time when the read started."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def _child_main(conn: Connection, db_url: str, nice: int, preload: tuple[str, ...]) -> None:
    """The read process: build the session factory, import ``preload``, then run calls until the
    pipe closes (the console ended, however it ended) or ``None`` arrives."""
    global _FACTORY
    import importlib

    if nice:
        try:
            os.nice(nice)
        except OSError:  # pragma: no cover - lowering priority does not need privileges
            pass
    try:
        from speakerops.db import make_engine, make_session_factory

        _FACTORY = make_session_factory(make_engine(db_url))
        for name in preload:
            importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001 - reported to the console, then the child ends
        _send(conn, ("error", exc))
        return
    gc.collect()
    gc.freeze()  # imports are permanent: full collections then only look at the calls' objects
    _send(conn, ("ready", os.getpid()))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            msg = pickle.loads(data)
            if msg is None:
                return
            fn, args, kwargs = msg
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - sent back to the caller (incl. a read that
            _send(conn, ("error", exc))  # cannot be unpickled here, e.g. its module is missing)
        else:
            _send(conn, ("ok", result))
        msg = fn = args = kwargs = result = data = None


def _send(conn: Connection, reply: tuple[str, Any]) -> None:
    """Send ``("ok", result)`` or ``("error", exception)``. An exception is round-tripped here
    (a class whose ``__init__`` takes other arguments pickles but does not unpickle); a result
    is not — a snapshot would be unpickled twice — the console checks it as it reads it."""
    try:
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        if reply[0] == "error":
            pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - the reply itself cannot travel
        kind, payload = reply
        if kind == "error":
            payload = RemoteError(f"{type(payload).__qualname__}: {payload}")
        else:
            payload = RemoteError(f"the read's result could not be sent back: {exc}")
        data = pickle.dumps(("error", payload))
    try:
        conn.send_bytes(data)
    except (BrokenPipeError, OSError):
        pass


class ReadProcess:
    """One child process that runs read functions, one call at a time (thread-safe: callers
    wait for each other).

    Parameters
    ----------
    db_url
        The database; the child opens its own engine on it (an in-memory SQLite database is not
        shared across processes — run such reads in-process instead).
    nice
        Niceness added to the child (default :data:`READ_NICE`).
    name
        For logs and messages.
    preload
        Modules the child imports before it is ready (default :data:`PRELOAD`).

    Notes
    -----
    The child (``python -m console.read_process``, a new interpreter: no fork of a process that
    runs Qt, and no second import of the parent's ``__main__``) starts on the first :meth:`start`
    or :meth:`call`; it talks over a socket pair. If it dies, the call in flight raises
    :class:`ReadProcessError` and the next call starts a new child. It ends with
    :meth:`close`, or by itself when the console's end closes the pipe.
    """

    def __init__(self, db_url: str, *, nice: int = READ_NICE, name: str = "reads",
                 preload: tuple[str, ...] = PRELOAD) -> None:
        self.db_url = db_url
        self.nice = nice
        self.name = name
        self.preload = preload
        self.calls = 0  #: calls answered (tests, benchmarks)
        self.starts = 0  #: children started
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._ready = False  # the current child reported ready
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        p = self._process
        return p.pid if p is not None and p.poll() is None else None

    def start(self) -> None:
        """Start the child now, without waiting for it to be ready (the first call waits)."""
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._closed:
            raise ReadProcessError(f"the {self.name} read process is closed")
        if self._process is not None and self._process.poll() is None:
            return
        self._reap()
        # a plain child interpreter (not multiprocessing's spawn, which imports the parent's
        # __main__ again: a script without a __main__ guard would build a second console there);
        # the database URL goes in its environment, not on its command line (process list)
        parent, child = socket.socketpair()
        src = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, SPEAKEROPS_READ_DB_URL=self.db_url,
                   PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
        try:
            proc = subprocess.Popen([sys.executable, "-m", "console.read_process", str(child.fileno()),
                                     str(self.nice), ",".join(self.preload)],
                                    pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            raise ReadProcessError(f"the {self.name} read process could not start: {exc}") from exc
        finally:
            child.close()
        self._process, self._conn = proc, Connection(parent.detach())
        self._ready = False
        self.starts += 1

    def _wait_ready(self) -> None:
        if self._ready:
            return
        kind, payload = self._receive(START_TIMEOUT_S, what="start")
        if kind != "ready":
            self._reap()
            raise ReadProcessError(f"the {self.name} read process could not start: "
                                   f"{type(payload).__name__}: {payload}") from payload
        self._ready = True
        logger.info("%s read process ready (pid %s)", self.name, payload)

    def _receive(self, timeout_s: float | None, what: str) -> tuple[str, Any]:
        conn, proc = self._conn, self._process
        assert conn is not None and proc is not None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                if conn.poll(0.1):
                    data = conn.recv_bytes()
                    try:
                        return pickle.loads(data)
                    except Exception as exc:  # noqa: BLE001 - the pipe stays in step: one reply read
                        return "error", RemoteError(f"the reply to {what} could not be read here: "
                                                    f"{type(exc).__name__}: {exc}")
                if proc.poll() is None and (deadline is None or time.monotonic() < deadline):
                    continue
                timed_out = proc.poll() is None
            except (EOFError, OSError):  # the child closed its end: it ended
                timed_out = False
            self._reap()
            if timed_out:
                raise ReadProcessError(f"the {self.name} read process did not answer ({what}) within "
                                       f"{timeout_s:g} s; it was stopped and starts again on the next read")
            raise ReadProcessError(f"the {self.name} read process ended (exit status {proc.returncode}) "
                                   f"during {what}; it starts again on the next read")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the child and return its result.

        Raises
        ------
        Exception
            What ``fn`` raised (as itself when it can be pickled, else :class:`RemoteError`).
        ReadProcessError
            The child could not start or ended during the call.
        pickle.PicklingError, TypeError, AttributeError
            ``fn`` or an argument cannot be pickled (a lambda, a session factory: pass
            :data:`CHILD_SESSIONS`).
        """
        with self._lock:
            self._ensure_started()
            self._wait_ready()
            data = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            assert self._conn is not None
            try:
                self._conn.send_bytes(data)
            except (BrokenPipeError, OSError) as exc:
                self._reap()
                raise ReadProcessError(f"the {self.name} read process ended before the read was "
                                       "sent; it starts again on the next read") from exc
            kind, payload = self._receive(None, what=getattr(fn, "__qualname__", "a read"))
            self.calls += 1
        if kind == "error":
            raise payload
        return payload

    def _reap(self) -> None:
        proc, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGTERM ends it (no handler)
                proc.kill()
                proc.wait(2.0)

    def close(self) -> None:
        """Stop the child (a read in flight is abandoned: its caller gets ReadProcessError);
        idempotent."""
        self._closed = True
        proc, conn = self._process, self._conn
        if proc is None:
            return
        if conn is not None:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        if self._lock.acquire(timeout=0.5):
            try:
                try:
                    proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass
                self._reap()
            finally:
                self._lock.release()
        else:  # a call is waiting for its answer: stop the child, the call then fails
            proc.terminate()


def main(argv: list[str] | None = None) -> None:
    """``python -m console.read_process FD NICE PRELOAD``: the child's entry (see
    :class:`ReadProcess`); the database URL comes from ``SPEAKEROPS_READ_DB_URL``."""
    args = sys.argv[1:] if argv is None else argv
    fd, nice, preload = int(args[0]), int(args[1]), tuple(m for m in args[2].split(",") if m)
    _child_main(Connection(fd), os.environ["SPEAKEROPS_READ_DB_URL"], nice, preload)


if __name__ == "__main__":
    # run as a module of the package, not as __main__: CHILD_SESSIONS and the factory it reads
    # must be console.read_process's, which is what the calls' pickles name
    from console import read_process

    read_process.main()
