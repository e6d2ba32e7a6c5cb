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
hint. A release deletes the allocation under the same row lock and lowers the hint. Blocks
longer than one address (/64s of an IPv6 /32) are stored as such (`2001:db8:0:1::/64`), the walk
stepping a block at a time. A pool with no free address left raises `pool ... is exhausted`
(SQLSTATE check_violation), which the allocator answers as `PoolExhausted`. `bulk_claim` (the
big-pool scenario's untimed fill) writes the blocks claim_address would pick with one COPY. The
allocations table has an exclusion constraint, `EXCLUDE USING gist (pool_id WITH =, cidr
inet_ops WITH &&)`, as a backstop against overlapping allocations. Doing the work server-side
keeps the row lock held for one round trip, not three: the strongest way to build it.

A call that meets no server (refused, or starting up after a crash), a lost connection, a
server shutting down or a timeout is retried, as the Allot and etcd allocators retry, until
`call_deadline_s`; the asyncpg pool opens a new connection in place of a broken one when it is
next acquired, and each acquire and each statement has a timeout. A claim retried after such an
error first looks its name up: the lost attempt may have committed before its answer was lost.

Crash-restart (the failover scenario; PostgreSQL has no replica here to fail over to):
`crash()` SIGKILLs the postmaster and every process it forked and `restart()` starts
the server again on the same data directory, where crash recovery replays the WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from bench.loadgen import AllocatorError, Pool, PoolExhausted
from bench.peers import Unavailable
from chaos.cluster import HOST, free_ports, reap_process, register_process, wait_until

bin_dir = Path("/usr/lib/postgresql/15/bin")
start_timeout_s = 60.0
stop_timeout_s = 15.0
crash_exit_timeout_s = 10.0  # every process of a SIGKILLed server gone
call_deadline_s = 30.0  # one claim or release, retries included (as the Allot and etcd allocators)
bulk_timeout_s = 600.0  # the big-pool fill's one COPY
retry_pause_max_s = 0.2
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
    claim_shift integer NOT NULL DEFAULT 0,
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
CREATE FUNCTION next_block(a inet, shift integer) RETURNS inet
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF shift = 0 THEN
        RETURN a + 1;
    END IF;
    IF shift <= 62 THEN
        RETURN a + (1::bigint << shift);
    END IF;
    FOR i IN 1 .. (1 << (shift - 62)) LOOP  -- inet + bigint: 2^64 (a /64) is four steps of 2^62
        a := a + (1::bigint << 62);
    END LOOP;
    RETURN a;
END
$$;
CREATE FUNCTION claim_address(p_pool integer, p_name text) RETURNS inet
LANGUAGE plpgsql AS $$
DECLARE
    candidate inet;
    last_one inet;
    shift integer;
    taken inet;
BEGIN
    SELECT hint, last_address, claim_shift INTO candidate, last_one, shift FROM pools WHERE id = p_pool FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no pool %', p_pool USING ERRCODE = 'no_data_found';
    END IF;
    FOR taken IN
        SELECT cidr FROM allocations WHERE pool_id = p_pool AND cidr >= candidate ORDER BY cidr
    LOOP
        EXIT WHEN taken <> candidate;
        candidate := CASE WHEN shift = 0 THEN candidate + 1 ELSE next_block(candidate, shift) END;
    END LOOP;
    IF candidate > last_one THEN
        RAISE EXCEPTION 'pool % is exhausted', p_pool USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO allocations (pool_id, name, cidr) VALUES (p_pool, p_name, candidate);
    UPDATE pools SET hint = CASE WHEN shift = 0 THEN candidate + 1 ELSE next_block(candidate, shift) END
        WHERE id = p_pool;
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


class Retry(Exception):
    """An attempt that a careful client tries again; `reason` is what the retry is counted as."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def retry_reason(asyncpg: Any, exc: BaseException) -> str | None:
    """Why `exc` is worth another attempt (its class name), or None when it is the answer."""
    transient = (
        OSError,  # refused (no server), reset
        TimeoutError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,  # 08xxx: the connection is gone
        asyncpg.CannotConnectNowError,  # 57P03: starting up (crash recovery)
        asyncpg.AdminShutdownError,  # 57P01
        asyncpg.CrashShutdownError,  # 57P02: another backend crashed
    )
    return type(exc).__name__ if isinstance(exc, transient) else None


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
        # After a crash the pool's own task that reopens connections up to min_size logs each
        # refused attempt with a traceback; the calls' retries here are counted instead.
        logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
        self._pool = await asyncpg.create_pool(
            host=HOST,
            port=self.port,
            user="postgres",
            database="postgres",
            min_size=self.connections,
            max_size=self.connections,
            timeout=self.timeout_s,  # each connection attempt
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=stop_timeout_s)
            except TimeoutError:
                pool.terminate()

    async def _once(self, how: Literal["fetchval", "fetch"], query: str, args: tuple[Any, ...]) -> Any:
        """One attempt: a connection from the pool (a new one if the old broke), one statement."""
        asyncpg = asyncpg_module()
        if self._pool is None:
            raise RuntimeError("open() the allocator first")
        try:
            connection = await self._pool.acquire(timeout=self.timeout_s)
        except Exception as exc:
            reason = retry_reason(asyncpg, exc)
            if reason is None:
                raise AllocatorError(type(exc).__name__, str(exc)) from exc
            raise Retry(f"connect {reason}") from exc
        try:
            return await getattr(connection, how)(query, *args, timeout=self.timeout_s)
        except Exception as exc:
            reason = retry_reason(asyncpg, exc)
            if reason is None and connection.is_closed():
                # asyncpg can report a connection that died mid-statement as an InternalClientError
                # ("cannot switch to state ..."): the connection is gone all the same.
                reason = f"{type(exc).__name__} on a closed connection"
            if reason is None:
                raise AllocatorError(type(exc).__name__, str(exc)) from exc
            raise Retry(reason) from exc
        finally:
            with contextlib.suppress(Exception):
                await self._pool.release(connection, timeout=self.timeout_s)

    async def _call(
        self, query: str, *args: Any, how: Literal["fetchval", "fetch"] = "fetchval", check: str | None = None
    ) -> Any:
        """`query`, retried on what a careful client retries until `call_deadline_s`. With `check`
        (same arguments), each retry first runs `check` and answers with what it finds (not NULL):
        the earlier attempt may have committed before its answer was lost."""
        asyncpg = asyncpg_module()
        deadline = time.monotonic() + call_deadline_s
        attempt = 0
        while True:
            try:
                if attempt and check is not None:
                    found = await self._once("fetchval", check, args)
                    if found is not None:
                        self.retries["in doubt, found committed"] += 1
                        return found
                return await self._once(how, query, args)
            except Retry as exc:
                reason = exc.reason
            except AllocatorError as exc:
                cause = exc.__cause__
                if not (attempt and check is not None and isinstance(cause, asyncpg.UniqueViolationError)):
                    raise
                reason = "in doubt, name taken"  # the lost attempt is committing: look again
            self.retries[reason] += 1
            attempt += 1
            if time.monotonic() > deadline:
                raise AllocatorError("deadline", f"{query}: last {reason} after {attempt} attempts")
            await asyncio.sleep(min(retry_pause_max_s, 0.01 * attempt))

    async def create_pool(self, pool: Pool) -> None:
        org, project = pool.tenant or (None, None)
        pool_id = await self._call(
            "INSERT INTO pools (name, org, project, cidr, claim_shift, last_address, hint) "
            "VALUES ($1, $2, $3, $4::cidr, $5, $6::inet, $7::inet) RETURNING id",
            pool.name,
            org,
            project,
            str(pool.cidr),
            pool.cidr.max_prefixlen - pool.claim_prefix,
            pool.cidr_of(pool.block(pool.size - 1)),
            pool.cidr_of(pool.first),
        )
        self.pool_ids[pool.name] = int(pool_id)

    async def claim(self, pool: Pool, name: str) -> str:
        try:
            address = await self._call(
                "SELECT host(claim_address($1, $2))",
                self.pool_ids[pool.name],
                name,
                check="SELECT host(cidr) FROM allocations WHERE pool_id = $1 AND name = $2",
            )
        except AllocatorError as exc:
            if isinstance(exc.__cause__, asyncpg_module().CheckViolationError):  # 'pool ... is exhausted'
                raise PoolExhausted(str(exc.__cause__)) from exc
            raise
        return f"{address}/{pool.claim_prefix}"

    async def bulk_claim(self, pool: Pool, names: Sequence[str]) -> None:
        """The big-pool fill: in one transaction under the pool row's lock, the lowest free blocks
        from the hint on (where claim_address would put them), written with one COPY, and the hint
        moved past them."""
        if self._pool is None:
            raise RuntimeError("open() the allocator first")
        pool_id = self.pool_ids[pool.name]
        async with self._pool.acquire(timeout=self.timeout_s) as connection, connection.transaction():
            hint = await connection.fetchval(
                "SELECT host(hint) FROM pools WHERE id = $1 FOR UPDATE", pool_id, timeout=self.timeout_s
            )
            rows = await connection.fetch(
                "SELECT host(cidr) FROM allocations WHERE pool_id = $1", pool_id, timeout=bulk_timeout_s
            )
            taken = {int(ipaddress.ip_address(row[0])) for row in rows}
            index = (int(ipaddress.ip_address(hint)) - pool.first) // pool.step
            # CSV text, not copy_records_to_table, which parses every cidr with Python's ipaddress
            # on the client. At 1,000,000 rows that was the smaller part (load 672 s before, 595 s
            # after): most of it is the server maintaining the exclusion constraint's index.
            rows_csv = io.StringIO()
            writer = csv.writer(rows_csv, lineterminator="\n")
            for name in names:
                while pool.block(index) in taken:
                    index += 1
                if index >= pool.size:
                    raise PoolExhausted(f"pool {pool.name} has no room for {len(names):,} claims")
                writer.writerow((pool_id, name, pool.cidr_of(pool.block(index))))
                index += 1
            await connection.copy_to_table(
                "allocations",
                source=io.BytesIO(rows_csv.getvalue().encode()),
                columns=["pool_id", "name", "cidr"],
                format="csv",
                timeout=bulk_timeout_s,
            )
            await connection.execute(
                "UPDATE pools SET hint = $2::inet WHERE id = $1",
                pool_id,
                pool.cidr_of(pool.block(index)),
                timeout=self.timeout_s,
            )

    async def release(self, pool: Pool, name: str, cidr: str) -> None:
        await self._call("SELECT release_address($1, $2)", self.pool_ids[pool.name], name)

    async def holdings(self, pool: Pool) -> list[tuple[str, str]]:
        """Every allocation the server holds in `pool`: (name, "a.b.c.d/32"), read after the load."""
        rows = await self._call(
            "SELECT name, host(cidr) FROM allocations WHERE pool_id = $1", self.pool_ids[pool.name], how="fetch"
        )
        return [(str(row[0]), f"{row[1]}/{pool.claim_prefix}") for row in rows]


redo_pattern = re.compile(r"redo done at \S+ system usage: .*?elapsed: ([0-9.]+) s")


def redo_seconds(log: str) -> float | None:
    """The WAL replay time of the last crash recovery in a PostgreSQL log excerpt (PostgreSQL 15
    logs `redo done at 0/1A2B3C4 system usage: CPU: ..., elapsed: 0.12 s`); None when absent
    (no recovery, or `redo is not required`)."""
    found = redo_pattern.findall(log)
    return float(found[-1]) if found else None


def server_processes(data: Path) -> list[int]:
    """The live processes of the server on data directory `data`: the postmaster and every backend
    and helper process it forked, found by their working directory (PostgreSQL changes into its
    data directory; each backend makes itself a process group of its own, so a signal to the
    postmaster's group does not reach them). Zombies, gone but for their exit status, do not count."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        target = data.resolve()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                if Path(os.readlink(entry / "cwd")) != target:
                    continue
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
    return found


class PostgresStore:
    """A fresh PostgreSQL cluster per start(), stopped (fast shutdown, then SIGKILL) by close()."""

    label = "postgres"

    def __init__(self, connections: int = connections_default) -> None:
        self.initdb, self.server = postgres_binaries()
        asyncpg_module()
        self.connections = connections
        self.base_dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.crashed: subprocess.Popen[bytes] | None = None  # SIGKILLed by crash(), not yet reaped
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
            self._launch()
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

    def _launch(self, timeout_s: float = start_timeout_s) -> None:
        """Start the server on the data directory (fresh, or as a SIGKILLed server left it) and
        wait until it accepts connections (after crash recovery, when there was a crash)."""
        if self.base_dir is None:
            raise RuntimeError("start() the store first")
        run_as = self._run_as()
        log = open(self.base_dir / "postgres.log", "ab")  # noqa: SIM115 - closed right after Popen
        with log:
            self.process = subprocess.Popen(
                [
                    str(self.server),
                    "-D",
                    str(self.base_dir / "data"),
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
                start_new_session=True,  # not in our group (each backend then makes a group of its own)
                **run_as,
            )
        register_process(self.process)
        wait_until("PostgreSQL to accept connections", self._accepting, timeout_s, on_timeout=self.log_tail)

    # -- crash-restart (the failover scenario) --

    def crash(self) -> None:
        """SIGKILL the postmaster and every backend and helper at once, as a crash would,
        and return: the caller times from here, and restart() reaps them. The data directory stays
        as they left it."""
        process, self.process = self.process, None
        if process is None:
            raise RuntimeError("start() the store first")
        self.crashed = process
        self._kill_everything(process)

    def _kill_everything(self, postmaster: subprocess.Popen[bytes]) -> None:
        """SIGKILL the postmaster (first: it forks nothing more), then every process it had forked."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(postmaster.pid, signal.SIGKILL)  # the postmaster's own group
        if self.base_dir is not None:
            for pid in server_processes(self.base_dir / "data"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _reap_crashed(self) -> None:
        """Reap the SIGKILLed postmaster and wait until none of its backends runs (they share its
        memory, and a new postmaster refuses to start while an old backend holds it)."""
        crashed, self.crashed = self.crashed, None
        if crashed is None:
            return
        reap_process(crashed)
        data = self.base_dir / "data" if self.base_dir is not None else None
        wait_until(
            "the SIGKILLed PostgreSQL backends to exit",
            lambda: data is None or not server_processes(data),
            crash_exit_timeout_s,
        )

    def restart(self, timeout_s: float) -> float | None:
        """After crash(): start the server again on the same data directory (crash recovery replays
        the WAL) and wait until it accepts connections; returns the replay time it logged, if any."""
        if self.base_dir is None:
            raise RuntimeError("start() the store first")
        self._reap_crashed()
        log = self.base_dir / "postgres.log"
        before = log.stat().st_size if log.exists() else 0
        self._launch(timeout_s)
        with contextlib.suppress(OSError), log.open("rb") as handle:
            handle.seek(before)
            return redo_seconds(handle.read().decode(errors="replace"))
        return None

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
        with contextlib.suppress(AssertionError):  # backends that outlive the deadline: rmtree anyway
            self._reap_crashed()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)  # fast shutdown: backends end, no checkpoint wait
            deadline = time.monotonic() + stop_timeout_s
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is None:
                self._kill_everything(process)
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
