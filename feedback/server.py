"""The feedback endpoint the companion app posts to (``speakerops serve-feedback``), on aiohttp.

``POST /v1/feedback`` with one JSON object or a list of them (the interchange fields of
``docs/feedback.md``; ``source`` is ``app``). Answers (JSON):

* **200** ``{"accepted": n, "duplicates": d, "rejected": [], "ids": [...]}`` — all stored or known;
* **200** with ``rejected`` listing ``{"index", "field", "message"}`` — some items bad, the rest stored;
* **400** — nothing stored: the body is not JSON, or every item was rejected (``rejected`` says why);
* **413** — the body exceeds :data:`MAX_BODY_BYTES` (or a list holds more than :data:`MAX_ITEMS`);
* **429** with ``Retry-After`` (seconds) — a household sent more than its rate allows; nothing of
  that request is stored;
* ``GET /v1/health`` → 200 ``{"status": "ok"}``.

Rate limit: a sliding window per household of :data:`RATE_LIMIT` submissions per
:data:`RATE_WINDOW_S` seconds, counted on the server's clock over accepted items.
Database writes run on one worker thread (SQLAlchemy is synchronous).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from feedback.ingest import ImportReport, ingest_records, load_units
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: Largest request body, bytes (a day of one household's feedback fits many times over).
MAX_BODY_BYTES = 256 * 1024
#: Most items in one request.
MAX_ITEMS = 500
#: Submissions per household per window (a person rates a few answers an hour at most).
RATE_LIMIT = 30
RATE_WINDOW_S = 3600.0


class RateLimiter:
    """Sliding-window limit per key on a clock (thread-safe).

    ``check(key, n)`` returns 0 when ``n`` more events fit, else the seconds until they would.
    ``add(key, n)`` records them.
    """

    def __init__(self, limit: int = RATE_LIMIT, window_s: float = RATE_WINDOW_S, clock: Clock = utc_now) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._events: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, key: str, now: float) -> deque[float]:
        q = self._events[key]
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def check(self, key: str, n: int = 1) -> float:
        now = self.clock().timestamp()
        with self._lock:
            q = self._trim(key, now)
            if len(q) + n <= self.limit:
                return 0.0
            if n > self.limit:
                return self.window_s
            # the (len + n - limit)-th oldest event must expire first
            return max(1.0, q[len(q) + n - self.limit - 1] + self.window_s - now)

    def add(self, key: str, n: int = 1) -> None:
        now = self.clock().timestamp()
        with self._lock:
            self._trim(key, now).extend([now] * n)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


class FeedbackApp:
    """The aiohttp application; ``app`` is the :class:`aiohttp.web.Application`."""

    def __init__(self, session_factory: sessionmaker[Session], clock: Clock = utc_now, *,
                 rate_limit: int = RATE_LIMIT, rate_window_s: float = RATE_WINDOW_S,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.limiter = RateLimiter(rate_limit, rate_window_s, clock)
        self.max_body_bytes = max_body_bytes
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback-db")
        self.app = web.Application(client_max_size=max_body_bytes + 1)
        self.app.router.add_post("/v1/feedback", self.post_feedback)
        self.app.router.add_get("/v1/health", self.health)
        self.app.on_cleanup.append(self._cleanup)

    async def _cleanup(self, _app: web.Application) -> None:
        self._db.shutdown(wait=True)

    async def health(self, _request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    def _store(self, items: list[dict[str, Any]]) -> ImportReport:
        with self.session_factory.begin() as session:
            return ingest_records(session, items, self.clock, source="app", origin="POST /v1/feedback",
                                  rate_limit_per_hour=None, units=load_units(session), keep_ids=True,
                                  actor="app", first_line=0)

    async def post_feedback(self, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return _json(413, {"error": f"body of {length:,} bytes exceeds {self.max_body_bytes:,}; "
                                        f"send at most {MAX_ITEMS} items per request"})
        try:
            raw = await request.content.read(self.max_body_bytes + 1)
        except Exception as exc:  # noqa: BLE001 - a client that hangs up mid-body
            return _json(400, {"error": f"could not read the body: {exc}"})
        if len(raw) > self.max_body_bytes:
            return _json(413, {"error": f"body exceeds {self.max_body_bytes:,} bytes; send at most "
                                        f"{MAX_ITEMS} items per request"})
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _json(400, {"error": f"the body is not UTF-8 JSON ({exc}); send an object or a list of objects"})
        items = body if isinstance(body, list) else [body]
        if not items:
            return _json(400, {"error": "empty list: send at least one feedback object"})
        if len(items) > MAX_ITEMS:
            return _json(413, {"error": f"{len(items)} items in one request; send at most {MAX_ITEMS}"})
        per_household: dict[str, int] = defaultdict(int)
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("household_id"), str):
                per_household[item["household_id"].strip()] += 1
        wait = max((self.limiter.check(h, n) for h, n in per_household.items()), default=0.0)
        if wait > 0:
            retry = str(math.ceil(wait))
            return _json(429, {"error": f"too many submissions from this household (at most {self.limiter.limit} "
                                        f"per {self.limiter.window_s / 60:.0f} min); retry after {retry} s"},
                         headers={"Retry-After": retry})
        loop = asyncio.get_running_loop()
        try:
            report = await loop.run_in_executor(self._db, self._store, items)
        except Exception:  # noqa: BLE001 - the database is down or refused: the app retries
            logger.exception("storing feedback failed")
            return _json(503, {"error": "the feedback database is unavailable; retry later"},
                         headers={"Retry-After": "30"})
        bad_lines = {e.line for e in report.errors}
        for i, item in enumerate(items):
            if i not in bad_lines and isinstance(item, dict) and isinstance(item.get("household_id"), str):
                self.limiter.add(item["household_id"].strip())
        answer = {"accepted": report.imported, "duplicates": report.duplicates,
                  "rejected": [{"index": e.line, "field": e.field, "message": e.message} for e in report.errors],
                  "warnings": [{"index": w.line, "field": w.field, "message": w.message} for w in report.warnings],
                  "ids": report.imported_ids}
        status = 400 if report.rejected == len(items) else 200
        return _json(status, answer)


class FeedbackServer:
    """Runs :class:`FeedbackApp` on its own event loop thread (tests, embedding); ``serve_forever``
    for the CLI.

    Examples
    --------
    >>> server = FeedbackServer(session_factory, port=0).start()   # doctest: +SKIP
    >>> server.url                                                  # doctest: +SKIP
    'http://127.0.0.1:40123'
    >>> server.stop()                                               # doctest: +SKIP
    """

    def __init__(self, session_factory: sessionmaker[Session], clock: Clock = utc_now, *, host: str = "127.0.0.1",
                 port: int = 0, **app_kwargs: Any) -> None:
        self.feedback_app = FeedbackApp(session_factory, clock, **app_kwargs)
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.feedback_app.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server  # noqa: SLF001 - the only way to learn the port chosen for port 0
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        logger.info("feedback endpoint on %s", self.url)

    def start(self) -> FeedbackServer:
        """Start serving on a background thread; returns once the socket listens."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="feedback-server", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def serve_forever(self) -> None:
        """Serve on the calling thread until SIGINT/SIGTERM (the CLI)."""
        web.run_app(self.feedback_app.app, host=self.host, port=self.port, access_log=None,
                    print=lambda *_: None)
