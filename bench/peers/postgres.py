"""PostgreSQL 15 as a benchmark peer: a single node on 127.0.0.1 and a row-locking allocator.

The server: `initdb` and `postgres` from /usr/lib/postgresql/15/bin (Debian package
`postgresql`), a fresh cluster in a temporary directory, run as the `postgres` user when the
harness runs as root (PostgreSQL refuses root). Durability as shipped: fsync on,
synchronous_commit on, full_page_writes on (each commit's WAL is flushed before it is
acknowledged). Only max_connections is raised (to 300) so every pool size fits; trust
authentication on loopback (the harness's own throwaway cluster).

The allocator (asyncpg, a pool of connections): the approach of the IPAM service Allot descends
from. A claim is one statement, `SELECT claim_address(pool, name)`, a PL/pgSQL function that
runs in that statement's transaction: it locks the pool row (`SELECT ... FOR UPDATE`), starts
at the pool's hint (the lowest address that may be free, kept in the pool row), walks the
allocations index past taken addresses to the first gap, inserts the allocation and moves the
hint. A release deletes the allocation under the same row lock and lowers the hint. The
allocations table has an exclusion constraint, `EXCLUDE USING gist (pool_id WITH =, cidr
inet_ops WITH &&)`, as a backstop against overlapping allocations. Doing the work server-side
keeps the row lock held for one round trip, not three: the strongest way to build it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.loadgen import AllocatorError, Pool
from bench.peers import Unavailable
from chaos.cluster import HOST, free_ports, reap_process, register_process, wait_until

bin_dir = Path("/usr/lib/postgresql/15/bin")
start_timeout_s = 60.0
stop_timeout_s = 15.0
max_connections = 300
connections_default = 32

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE TABLE pools (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    org text,
    project text,
    cidr cidr NOT NULL,
    last_address inet NOT NULL,
    hint inet NOT NULL
);
CREATE TABLE allocations (
    pool_id integer NOT NULL REFERENCES pools (id),
    name text NOT NULL,
    cidr inet NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, name),
    UNIQUE (pool_id, cidr),
    EXCLUDE USING gist (pool_id WITH =, cidr inet_ops WITH &&)
);
CREATE FUNCTION claim_address(p_pool integer, p_name text) RETURNS inet
LANGUAGE plpgsql AS $$
DECLARE
    candidate inet;
    last_one inet;
    taken inet;
BEGIN
    SELECT hint, last_address INTO candidate, last_one FROM pools WHERE id = p_pool FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no pool %', p_pool USING ERRCODE = 'no_data_found';
    END IF;
    FOR taken IN
        SELECT cidr FROM allocations WHERE pool_id = p_pool AND cidr >= candidate ORDER BY cidr
    LOOP
        EXIT WHEN taken <> candidate;
        candidate := candidate + 1;
    END LOOP;
    IF candidate > last_one THEN
        RAISE EXCEPTION 'pool % is exhausted', p_pool USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO allocations (pool_id, name, cidr) VALUES (p_pool, p_name, candidate);
    UPDATE pools SET hint = candidate + 1 WHERE id = p_pool;
    RETURN candidate;
END
$$;
CREATE FUNCTION release_address(p_pool integer, p_name text) RETURNS inet
LANGUAGE plpgsql AS $$
DECLARE
    freed inet;
BEGIN
    PERFORM 1 FROM pools WHERE id = p_pool FOR UPDATE;
    DELETE FROM allocations WHERE pool_id = p_pool AND name = p_name RETURNING cidr INTO freed;
    IF freed IS NOT NULL THEN
        UPDATE pools SET hint = least(hint, freed) WHERE id = p_pool;
    END IF;
    RETURN freed;
END
$$;
"""


def postgres_binaries() -> tuple[Path, Path]:
    initdb, server = bin_dir / "initdb", bin_dir / "postgres"
    if not (initdb.exists() and server.exists()):
        raise Unavailable(f"PostgreSQL 15 is not installed in {bin_dir} (Debian: apt-get install postgresql)")
    return initdb, server


def asyncpg_module() -> Any:
    try:
        import asyncpg  # noqa: PLC0415 - optional: only the PostgreSQL peer needs it
    except ImportError as exc:
        raise Unavailable("asyncpg is not installed (pip install 'allot[bench]')") from exc
    return asyncpg


class PostgresAllocator:
    label = "postgres"

    def __init__(self, port: int, connections: int, timeout_s: float) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.connections = connections
        self.retries: Counter[str] = Counter()
        self.pool_ids: dict[str, int] = {}
        self._pool: Any = None

    async def open(self) -> None:
        asyncpg = asyncpg_module()
        self._pool = await asyncpg.create_pool(
            host=HOST,
            port=self.port,
            user="postgres",
            database="postgres",
            min_size=self.connections,
            max_size=self.connections,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _call(self, query: str, *args: Any) -> Any:
        asyncpg = asyncpg_module()
        if self._pool is None:
            raise RuntimeError("open() the allocator first")
        try:
            return await self._pool.fetchval(query, *args, timeout=self.timeout_s)
        except asyncpg.PostgresError as exc:
            raise AllocatorError(type(exc).__name__, str(exc)) from exc
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            raise AllocatorError(type(exc).__name__, str(exc)) from exc

    async def create_pool(self, pool: Pool) -> None:
        org, project = pool.tenant or (None, None)
        last = pool.cidr.broadcast_address
        pool_id = await self._call(
            "INSERT INTO pools (name, org, project, cidr, last_address, hint) "
            "VALUES ($1, $2, $3, $4::cidr, $5::inet, $6::inet) RETURNING id",
            pool.name,
            org,
            project,
            str(pool.cidr),
            f"{last}/32",
            f"{pool.cidr.network_address}/32",
        )
        self.pool_ids[pool.name] = int(pool_id)

    async def claim(self, pool: Pool, name: str) -> str:
        address = await self._call("SELECT host(claim_address($1, $2))", self.pool_ids[pool.name], name)
        return f"{address}/32"

    async def release(self, pool: Pool, name: str, cidr: str) -> None:
        await self._call("SELECT release_address($1, $2)", self.pool_ids[pool.name], name)


class PostgresStore:
    """A fresh PostgreSQL cluster per start(), stopped (fast shutdown, then SIGKILL) by close()."""

    label = "postgres"

    def __init__(self, connections: int = connections_default) -> None:
        self.initdb, self.server = postgres_binaries()
        asyncpg_module()
        self.connections = connections
        self.base_dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.user: str | None = None

    def _run_as(self) -> dict[str, Any]:
        """Popen arguments that drop root for the `postgres` user (PostgreSQL refuses root)."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise Unavailable("running as root and there is no 'postgres' user to run PostgreSQL as") from exc
        self.user = entry.pw_name
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self) -> None:
        run_as = self._run_as()
        self.base_dir = Path(tempfile.mkdtemp(prefix="allot-bench-pg-"))
        data = self.base_dir / "data"
        data.mkdir()
        if run_as:
            for path in (self.base_dir, data):
                os.chown(path, run_as["user"], run_as["group"])
        try:
            subprocess.run(
                [str(self.initdb), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"],
                check=True,
                capture_output=True,
                timeout=start_timeout_s,
                **run_as,
            )
            self.port = free_ports(1)[0]
            log = open(self.base_dir / "postgres.log", "ab")  # noqa: SIM115 - closed right after Popen
            with log:
                self.process = subprocess.Popen(
                    [
                        str(self.server),
                        "-D",
                        str(data),
                        "-c",
                        f"port={self.port}",
                        "-c",
                        f"listen_addresses={HOST}",
                        "-c",
                        f"unix_socket_directories={self.base_dir}",
                        "-c",
                        f"max_connections={max_connections}",
                        "-c",
                        "fsync=on",
                        "-c",
                        "synchronous_commit=on",
                        "-c",
                        "full_page_writes=on",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    **run_as,
                )
            register_process(self.process)
            wait_until("PostgreSQL to accept connections", self._accepting, start_timeout_s, on_timeout=self.log_tail)
            subprocess.run(
                [str(bin_dir / "psql"), "-h", HOST, "-p", str(self.port), "-U", "postgres", "-q", "-v",
                 "ON_ERROR_STOP=1", "-c", SCHEMA],
                check=True,
                capture_output=True,
                timeout=start_timeout_s,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _accepting(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with code {self.process.returncode}\n{self.log_tail()}")
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", HOST, "-p", str(self.port), "-t", "1"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return ready.returncode == 0

    def log_tail(self) -> str:
        if self.base_dir is None:
            return ""
        with contextlib.suppress(OSError):
            return "\n".join((self.base_dir / "postgres.log").read_text(errors="replace").splitlines()[-20:])
        return ""

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)  # fast shutdown: backends end, no checkpoint wait
            deadline = time.monotonic() + stop_timeout_s
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # the postmaster's own group: its backends
        if process is not None:
            reap_process(process)
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def allocator(self, timeout_s: float = 10.0) -> PostgresAllocator:
        if self.process is None:
            raise RuntimeError("start() the store first")
        return PostgresAllocator(self.port, self.connections, timeout_s)

    def describe(self) -> str:
        version = "PostgreSQL 15"
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            version = subprocess.run(
                [str(self.server), "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        return (
            f"{version}, one node on 127.0.0.1, fsync on, synchronous_commit on, full_page_writes on, "
            f"max_connections {max_connections}, other settings default; asyncpg pool of {self.connections} "
            "connections; claim = one call of a PL/pgSQL function: lock the pool row (SELECT ... FOR UPDATE), "
            "walk from the pool's hint to the lowest free address, insert; exclusion constraint "
            "(pool_id WITH =, cidr inet_ops WITH &&) as a backstop"
        )
