"""Units that answer with hostile bodies — huge, deeply nested, trickling — cannot exhaust the
collector's memory or stall its cycle; the well-behaved unit beside them is polled as usual.
A real aiohttp server on loopback plays the hostile units, the simulator the good one."""

from __future__ import annotations

import asyncio
import resource
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from sqlalchemy import select

from fleet.collector import Collector
from fleet.models import Unit
from fleet.settings import CollectorSettings
from fleet.simulator import Simulator

SETTINGS = CollectorSettings(interval_s=10, connect_timeout_s=0.5, read_timeout_s=0.8, retries=0,
                             max_body_bytes=1 << 20)


async def _huge(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()  # chunked, no Content-Length: the limit must hold while reading
    await resp.prepare(request)
    chunk = b"[" * (1 << 16)
    try:
        for _ in range(4096):  # 256 MiB if nobody stops reading
            await resp.write(chunk)
    except (ConnectionError, RuntimeError):
        pass
    return resp


async def _declared_huge(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Length": str(1 << 30), "Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        await resp.write(b"{")
        await asyncio.sleep(5)
    except (ConnectionError, RuntimeError):
        pass
    return resp


async def _nested(request: web.Request) -> web.Response:
    depth = 200_000
    return web.Response(body=b"[" * depth + b"]" * depth, content_type="application/json")


async def _trickle(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        for byte in b'{"serial": "' * 100:
            await resp.write(bytes([byte]))
            await asyncio.sleep(0.25)  # each byte inside the read timeout; the whole never ends
    except (ConnectionError, RuntimeError):
        pass
    return resp


@pytest.fixture
def hostile() -> Iterator[str]:
    app = web.Application()
    for name, handler in (("huge", _huge), ("declared", _declared_huge), ("nested", _nested),
                          ("trickle", _trickle)):
        app.router.add_get(f"/{name}/v1/health", handler)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_hostile_answers_are_refused_and_the_cycle_goes_on(runtime, hostile, tmp_path) -> None:
    with Simulator(12, seed=1, data_dir=tmp_path / "sim") as sim:
        good = next(u.serial for u in sim.units
                    if not (u.offline_period_s or u.flap_half_period_s) and u.reboot_period_s > 86400)
        now = runtime.clock()
        with runtime.session_factory.begin() as s:
            s.add(Unit(serial=good, agent_url=sim.agent_url(good), created_at=now, updated_at=now))
            for name in ("huge", "declared", "nested", "trickle"):
                s.add(Unit(serial=name, agent_url=f"{hostile}/{name}", created_at=now, updated_at=now))
        rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        collector = Collector(runtime.session_factory, runtime.clock, SETTINGS)

        async def cycle():
            try:
                return await asyncio.wait_for(collector.run_cycle(), timeout=30)  # never stalls
            finally:
                await collector.aclose()

        result = asyncio.run(cycle())
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib) / 1024
    assert (result.polled, result.ok, result.failed) == (5, 1, 4)
    with runtime.session_factory() as s:
        errors = dict(s.execute(select(Unit.serial, Unit.last_poll_error)).all())
    assert errors[good] is None
    assert "byte limit" in errors["huge"]
    assert "byte limit" in errors["declared"]
    assert "nested too deeply" in errors["nested"]
    assert "timeout" in errors["trickle"]
    assert grown_mib < 64, f"the collector's peak memory grew by {grown_mib:.0f} MiB"
