"""`allot serve`: one Raft member with its HTTP API, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from node.config import MemberConfig, parse_address
from node.http import build_app
from node.replicated import ReplicatedMember
from node.tokens import TokenStore

log = logging.getLogger("allot.server")


async def serve(config: MemberConfig) -> None:
    tokens = TokenStore(config.token_file)
    member = ReplicatedMember(config)
    await member.start()
    app = build_app(member, tokens, collectors=[member.metrics])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = parse_address(config.http_address, "HTTP address")
    await web.TCPSite(runner, host, port, shutdown_timeout=2.0).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
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
        log.info("member %s stopping", config.member_id)
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await member.stop()


def run(config: MemberConfig) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {config.member_id} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(config))
    return 0
