"""The member's HTTP server settings: connections that send nothing, or headers a byte at a time,
are closed; requests aiohttp's parser refuses do not fill member.log with tracebacks."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from node.http import Limits, build_app
from node.member import LocalMember
from node.server import MalformedRequestLogFilter, connection_idle_timeout_s, http_runner
from node.tokens import TokenStore
from tests.test_http import ACME, ADMIN, ROOT_POOL, TOKENS, auth, watch_url, write_tokens

close_deadline_s = 10.0


async def _closed_within(port: int, sent: bytes) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), close_deadline_s) == b""
    finally:
        writer.close()


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def test_a_connection_that_never_finishes_its_headers_is_closed() -> None:
    async def check() -> None:
        app = web.Application()
        app.router.add_get("/healthz", _healthz)
        runner = http_runner(app, idle_timeout_s=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            assert await _closed_within(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert await _closed_within(port, b"")
        finally:
            await runner.cleanup()

    asyncio.run(check())
    assert 10 <= connection_idle_timeout_s <= 300, "long enough for pooled clients, far below aiohttp's hour"


def _record(exc: BaseException, level: int = logging.ERROR) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("aiohttp.server", level, __file__, 1, "Error handling request from %s", ("x",), info)


@pytest.fixture
def server_logger_level() -> Iterator[logging.Logger]:
    logger = logging.getLogger("aiohttp.server")
    before = logger.level
    yield logger
    logger.setLevel(before)


def test_parser_refusals_are_one_debug_line_or_nothing(server_logger_level: logging.Logger) -> None:
    log_filter = MalformedRequestLogFilter()
    server_logger_level.setLevel(logging.INFO)
    assert not log_filter.filter(_record(LineTooLong("request line", "8190", "9000")))
    server_logger_level.setLevel(logging.DEBUG)
    record = _record(LineTooLong("request line", "8190", "9000"))
    assert log_filter.filter(record)
    assert (record.levelno, record.exc_info) == (logging.DEBUG, None)
    assert record.getMessage().startswith("refused a malformed HTTP request (400): LineTooLong")
    other = _record(RuntimeError("a handler bug"))
    assert log_filter.filter(other) and other.levelno == logging.ERROR and other.exc_info is not None


async def _answer_to(port: int, sent: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), close_deadline_s)  # the answer closes the connection
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_requests_the_http_parser_refuses_get_the_json_error_shape() -> None:
    async def check() -> None:
        app = web.Application()
        app.router.add_get("/healthz", _healthz)
        runner = http_runner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            for sent in (
                b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a request line over 8 KiB
                b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # not a method
                b"POST /healthz HTTP/1.1\r\nHost: x\r\n"  # both lengths
                b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ):
                status, headers, body = await _answer_to(port, sent)
                assert status == 400 and headers["content-type"].startswith("application/json"), (sent[:40], body)
                error = json.loads(body)["error"]
                assert error["code"] == "invalid" and error["message"].startswith("malformed HTTP request: "), error
                assert error["details"] == {}
            status, _, body = await _answer_to(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (status, body) == (200, b"ok"), "a good request is served as before"
        finally:
            await runner.cleanup()

    asyncio.run(check())


def test_a_closed_watch_frees_its_slot_before_its_next_heartbeat(tmp_path: Path) -> None:
    """A waiting watch looks for its client having gone. The member's server, unlike aiohttp's
    test server, does not cancel a handler whose client went away, and a quiet watch writes
    only a heartbeat every 10 s, so closed streams kept their project's slots that long, and a
    node agent that reconnects on each timeout locked its project out with 503s (QA,
    2026-12-07). Served here as a member serves (http_runner), with heartbeats a minute apart."""

    async def check() -> None:
        write_tokens(tmp_path / "tokens.json", TOKENS)
        limits = Limits(watch_heartbeat_s=60, watches_per_project_max=2, watch_gone_check_s=0.1)
        app = build_app(LocalMember(), TokenStore(tmp_path / "tokens.json", reload_interval_s=0), limits=limits)
        runner = http_runner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession(base) as session:
                async with session.post("/v1/ippools", json=ROOT_POOL, headers=auth(ADMIN)) as created:
                    assert created.status == 201
                for _ in range(2):
                    # Its own session: its connection is closed on the way out.
                    async with (
                        aiohttp.ClientSession(base) as watcher,
                        watcher.get(watch_url("ippools", 0), headers=auth(ACME)) as stream,
                    ):
                        assert json.loads(await stream.content.readline())["type"] == "ADDED"
                async with asyncio.timeout(close_deadline_s):  # well before the next heartbeat
                    while True:
                        async with session.get(watch_url("ippools", 1, timeoutSeconds="1"), headers=auth(ACME)) as w:
                            if w.status == 200:
                                break
                            assert w.status == 503
                        await asyncio.sleep(0.05)
        finally:
            await runner.cleanup()

    asyncio.run(check())
