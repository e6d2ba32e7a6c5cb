"""`allot serve`: one Raft member with its HTTP API, until SIGTERM or SIGINT.

A member stopped by a signal exits with 128 + the signal's number (143 for SIGTERM), as a shell
reports it, so a supervisor (`allot up`) can tell it from a member that stopped by itself. One
started by `allot up` also stops when `allot up` is gone (`PARENT_ENV`): killed with SIGKILL,
or its terminal closed, it cannot stop its members, which run in their own sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

from node.clock import wall_clock_offset_ns
from node.config import (
    PARENT_ENV,
    ConfigError,
    MemberConfig,
    check_cluster_identity,
    parse_address,
    warn_if_secret_exposed,
)
from node.http import ApiError, build_app, error_response
from node.replicated import ReplicatedMember
from node.store import StoreError
from node.tokens import TokenFileError, TokenStore

log = logging.getLogger("allot.server")

parent_check_s = 0.5
# A connection idle this long between requests, or that has not sent a whole request's headers
# this long after it opened or after its last answer, is closed. aiohttp's own default is an
# hour, so a client that opened connections and sent nothing, or headers a byte at a time,
# could hold them that long.
connection_idle_timeout_s = 60.0
_parser_error_chars_max = 200


class _JsonErrorRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering the requests its HTTP parser refuses (before any
    route or middleware of ours runs: a request or header line over 8 KiB, an unknown method,
    both Content-Length and Transfer-Encoding) in the API's error shape from the one error table,
    `{"error": {"code": "invalid", ...}}`, instead of aiohttp's text/plain."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        answered = super().handle_error(request, status, exc, message)  # logs (see the filter) and checks
        if not 400 <= status < 500:
            return answered
        said = (message or (str(exc) if exc is not None else "")).strip().splitlines()
        first = said[0][:_parser_error_chars_max] if said else "refused by the HTTP parser"
        response = error_response(ApiError("invalid", f"malformed HTTP request: {first}"))
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _ApiRunner(web.AppRunner):
    """An AppRunner whose connections answer parser refusals as JSON. aiohttp offers no option
    for it, so this reaches into `_make_server` and `Server.__call__` (aiohttp 3.9-3.14);
    tests/test_http_server.py fails if a later aiohttp stops calling them."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the same object, making our connection handlers
        return server


def http_runner(app: web.Application, idle_timeout_s: float = connection_idle_timeout_s) -> web.AppRunner:
    """The aiohttp runner a member serves its API with."""
    return _ApiRunner(app, access_log=None, handle_signals=False, keepalive_timeout=idle_timeout_s)


class MalformedRequestLogFilter(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (a request or header line over 8 KiB,
    an unknown method, an unsupported Content-Encoding) at ERROR with a traceback, although the
    client has its 400 and nothing reached the API: any client could fill member.log with them.
    Such a record becomes one DEBUG line, dropped unless debug logging is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if not isinstance(refused, HttpProcessingError):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        said = str(refused.message).splitlines()[0][:_parser_error_chars_max] if refused.message else ""
        record.msg, record.args = "refused a malformed HTTP request (400): %s %s", (type(refused).__name__, said)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent_pid:
        await asyncio.sleep(parent_check_s)
    log.warning("allot up (pid %d) is gone; stopping this member", parent_pid)
    stop.set()


async def serve(config: MemberConfig) -> int | None:
    """Serve until stopped; returns the number of the signal that stopped it (None: orphaned)."""
    try:
        wall_clock_offset_ns()  # a bad ALLOT_WALL_CLOCK_OFFSET_SECONDS is a ConfigError now, not at the first write
        tokens = TokenStore(config.token_file)
        member = ReplicatedMember(config)
    except (TokenFileError, StoreError) as exc:  # a bad token file, a data dir another member holds
        raise ConfigError(str(exc)) from None
    await member.start()
    app = build_app(member, tokens, collectors=[member.metrics])
    runner = http_runner(app)
    await runner.setup()
    host, port = parse_address(config.http_address, "HTTP address")
    await web.TCPSite(runner, host, port, shutdown_timeout=2.0).start()
    stop = asyncio.Event()
    stopped_by: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        stopped_by.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # SIGUSR1: stop proposing, before a stop for an upgrade (README, Upgrading; allot up's Ctrl-C).
    loop.add_signal_handler(signal.SIGUSR1, member.quiesce)
    loop.add_signal_handler(signal.SIGUSR2, member.resume)  # the upgrade called off
    watchdog: asyncio.Task[None] | None = None
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        watchdog = asyncio.create_task(_stop_when_orphaned(int(parent), stop))
    log.info(
        "member %s serving HTTP on %s, Raft on %s, data in %s",
        config.member_id,
        config.http_address,
        config.raft_address,
        config.data_dir,
    )
    print(f"allot member {config.member_id}: http://{config.http_address} raft {config.raft_address}", flush=True)
    try:
        await stop.wait()
    finally:
        reason = f"on {signal.Signals(stopped_by[0]).name}" if stopped_by else "without its parent"
        log.info("member %s stopping %s", config.member_id, reason if stop.is_set() else "on an error")
        if watchdog is not None:
            watchdog.cancel()
        if stop.is_set():  # a clean stop: another member leads before this one goes
            with contextlib.suppress(Exception):
                await member.hand_over_leadership()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await member.stop()
    return stopped_by[0] if stopped_by else None


def run(config: MemberConfig) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {config.member_id} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestLogFilter())
    check_cluster_identity(config)
    warn_if_secret_exposed(config)
    stopped_by = asyncio.run(serve(config))
    return 128 + stopped_by if stopped_by is not None else 0
