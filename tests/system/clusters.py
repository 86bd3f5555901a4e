"""A PostgreSQL cluster of a test's own: initdb in a temporary directory, on a free port of
127.0.0.1, that the test may stop, start, fill up or fence with passwords. The shared server is
never touched.

The binaries are the ``pgserver`` wheel's (the ``embedded`` extra) or, without it, those of the
installed PostgreSQL (``pg_config --bindir``). PostgreSQL refuses to run as root: under root the
cluster runs as pgserver's unprivileged ``pgserver`` user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import anyio
import psycopg
from bench.common import free_port
from psycopg.conninfo import make_conninfo

from taskd.queue import migrations

SUPERUSER = "postgres"
APP_ROLE = "taskd"
APP_PASSWORD = "taskd-test-password"
APP_DATABASE = "app"


def _bindir() -> Path:
    try:
        from pgserver._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)
    except ImportError:
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                              check=True, timeout=30)
        return Path(done.stdout.strip())


def _run_as() -> str | None:
    """The user that PostgreSQL runs as: None (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    from pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return "pgserver"


class OwnedCluster:
    """A cluster on 127.0.0.1:<port> whose superuser connects without a password over the
    cluster's Unix socket (:attr:`admin_url`); TCP connections (:meth:`url`) need a password
    when ``password_auth``. ``settings`` go to postgresql.conf (e.g. max_connections)."""

    def __init__(self, *, password_auth: bool = False, **settings: Any) -> None:
        self.bindir = _bindir()
        self.user = _run_as()
        self.dir = Path(tempfile.mkdtemp(prefix="taskd-cluster-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        if self.user is not None:
            import pwd

            entry = pwd.getpwnam(self.user)
            os.chmod(self.dir, 0o755)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._pg("initdb", "-D", str(self.data), "-U", SUPERUSER, "--encoding=utf8",
                 "--no-sync", "--auth-local=trust",
                 f"--auth-host={'scram-sha-256' if password_auth else 'trust'}")
        conf = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'", "fsync": "off",
            "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "'16MB'", "max_wal_senders": "0", "wal_level": "minimal",
            **{k: str(v) for k, v in settings.items()},
        }
        with (self.data / "postgresql.conf").open("a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        self.admin_url = make_conninfo(host=str(self.dir), port=str(self.port),
                                       user=SUPERUSER, dbname="postgres")
        self.start()

    def _pg(self, program: str, *args: str, timeout: float = 120) -> None:
        subprocess.run([str(self.bindir / program), *args], check=True, capture_output=True,
                       timeout=timeout, user=self.user, cwd=self.dir)

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` is a crash: no checkpoint, recovery at the start."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, dbname: str = APP_DATABASE, user: str = APP_ROLE,
            password: str | None = APP_PASSWORD) -> str:
        """A TCP connection string to ``dbname`` as ``user``."""
        params = {"host": "127.0.0.1", "port": str(self.port), "user": user, "dbname": dbname}
        if password is not None:
            params["password"] = password
        return make_conninfo(**params)

    def create_app_database(self) -> str:
        """An unprivileged role ``taskd`` owning a migrated database ``app``; its URL.

        Unprivileged on purpose: when connection slots run short, PostgreSQL keeps the last
        ones for superusers and refuses such a role with SQLSTATE 53300."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}'")
            conn.execute(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE}")
        url = self.url()

        async def migrate() -> None:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await migrations.migrate(conn)

        anyio.run(migrate)
        return url

    def close(self) -> None:
        if self.running():
            self.stop("fast")
        shutil.rmtree(self.dir, ignore_errors=True)


def hold_connections(url: str, count: int) -> list[psycopg.Connection[Any]]:
    """Open ``count`` idle connections (to take the server's slots); the caller closes them."""
    held: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(count):
            held.append(psycopg.connect(url, autocommit=True))
    except BaseException:
        for conn in held:
            conn.close()
        raise
    return held
