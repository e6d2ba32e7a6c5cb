"""The member's HTTP server settings: connections that send nothing, or headers a byte at a time,
are closed; requests aiohttp's parser refuses do not fill member.log with tracebacks."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from node.server import MalformedRequestLogFilter, connection_idle_timeout_s, http_runner

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
