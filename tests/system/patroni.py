"""A Patroni cluster of a test's own: one etcd node and two PostgreSQL 15 members in
synchronous mode, in a temporary directory, on free ports of 127.0.0.1.

Debian's ``patroni``, ``etcd-server`` and ``postgresql-15`` packages provide the programs
(``.ci/run`` installs them). Without them the tests that need the cluster skip, except under
``CI=true``, where they fail. Everything runs as the ``postgres`` user when the test runs as
root (PostgreSQL refuses root), with its sockets in the temporary directory: the shared server
on 5432 is never touched.

Settings that matter (checked against Patroni 3.0.2 and etcd 3.4):

- ``etcd3:`` speaks etcd's v3 API, which etcd 3.4 serves without ``--enable-v2``;
- ``ttl`` 10, ``loop_wait`` 2, ``retry_timeout`` 4 keep Patroni's rule
  ``loop_wait + 2 * retry_timeout <= ttl``;
- ``primary_start_timeout: 0``: a primary whose PostgreSQL died is failed over at once instead
  of being restarted in place;
- the postmaster detaches from Patroni, so :meth:`PatroniCluster.close` stops the PID in each
  ``postmaster.pid`` as well as Patroni's and etcd's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.system.clusters import free_port
from tests.system.daemons import wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "taskd-test"


def _missing() -> list[str]:
    missing = [name for name in ("patroni", "etcd") if shutil.which(name) is None]
    if not (PG_BIN / "postgres").exists():
        missing.append(str(PG_BIN / "postgres"))
    return missing


def require_programs() -> None:
    """Skip (fail under ``CI=true``) unless patroni, etcd and PostgreSQL 15 are installed."""
    missing = _missing()
    if not missing:
        return
    message = (f"missing {', '.join(missing)}: install Debian's patroni, etcd-server and "
               "postgresql-15 packages (.ci/run does)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of ``postgres`` when running as root; None otherwise."""
    if os.geteuid() != 0:
        return None
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Member:
    """One Patroni member: its PostgreSQL port, REST port, data directory and process."""

    name: str
    pg_port: int
    rest_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    postmasters: set[int] = field(default_factory=set)

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def url(self, dbname: str = "postgres") -> str:
        """A single-host URL to this member only."""
        return (f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{self.pg_port}"
                f"/{dbname}")

    def postmaster_pid(self) -> int | None:
        """The PID in ``postmaster.pid``, remembered for teardown; None without one."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        self.postmasters.add(pid)
        return pid

    def rest(self, path: str, body: dict[str, Any] | None = None,
             timeout: float = 5.0) -> tuple[int, Any]:
        """Patroni's REST API: (status, parsed JSON or text); status 0 when it does not answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.rest_port}{path}", data=data,
            method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def state(self) -> dict[str, Any]:
        status, body = self.rest("/patroni")
        return body if status and isinstance(body, dict) else {}


class PatroniCluster:
    """One etcd and two Patroni members (``pg0``, ``pg1``), started and healthy on return:
    a leader and a streaming synchronous replica. ``close()`` stops every process by PID."""

    def __init__(self, *, scope: str = "taskd", healthy_within: float = 60.0) -> None:
        require_programs()
        self.dir = Path(tempfile.mkdtemp(prefix="taskd-patroni-"))
        self.owner = _run_as()
        self._logs: list[Any] = []
        self.etcd: subprocess.Popen[bytes] | None = None
        self.scope = f"{scope}-{os.getpid()}"
        self.members = [
            Member(f"pg{i}", free_port(), free_port(), self.dir / f"pg{i}") for i in range(2)]
        try:
            self._chown(self.dir)
            os.chmod(self.dir, 0o755)
            self._start_etcd()
            for member in self.members:
                self._start_member(member)
            self.wait_healthy(healthy_within)
        except BaseException:
            self.close()
            raise

    # -- start -------------------------------------------------------------------------------

    def _chown(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.dir / log_name).open("ab")
        self._logs.append(log)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TASKD_"))}
        env["HOME"] = str(self.dir)
        if self.owner is None:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.dir, start_new_session=True)
        uid, gid = self.owner
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=self.dir, user=uid, group=gid, extra_groups=[],
                                start_new_session=True)

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_endpoint = f"127.0.0.1:{client}"
        data = self.dir / "etcd"
        data.mkdir()
        self._chown(data)
        os.chmod(data, 0o700)
        self.etcd = self._spawn([
            "etcd", "--name", "e0", "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"e0=http://127.0.0.1:{peer}",
            "--initial-cluster-state", "new", "--initial-cluster-token", self.scope,
        ], "etcd.log")

        def answers() -> bool:
            assert self.etcd is not None
            if self.etcd.poll() is not None:
                raise AssertionError(f"etcd exited {self.etcd.returncode}:\n"
                                     + self.log("etcd.log"))
            try:
                with urllib.request.urlopen(f"http://{self.etcd_endpoint}/health",
                                            timeout=2) as response:
                    return bool(json.loads(response.read()).get("health") == "true")
            except (urllib.error.URLError, OSError, ValueError):
                return False

        wait_for(answers, timeout=30, interval=0.1, message="etcd healthy")

    def _config(self, member: Member) -> str:
        hba = ["local all all trust", "host replication replicator 127.0.0.1/32 trust",
               "host all all 127.0.0.1/32 trust"]
        config = {
            "scope": self.scope,
            "name": member.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{member.rest_port}",
                        "connect_address": f"127.0.0.1:{member.rest_port}"},
            "etcd3": {"hosts": [self.etcd_endpoint]},
            "bootstrap": {
                "dcs": {
                    "ttl": 10, "loop_wait": 2, "retry_timeout": 4,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "synchronous_mode": True,
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_level": "replica", "hot_standby": "on",
                            "max_wal_senders": 10, "max_replication_slots": 10,
                            "wal_log_hints": "on", "max_connections": 200,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
                "pg_hba": hba,
            },
            "postgresql": {
                "listen": f"127.0.0.1:{member.pg_port}",
                "connect_address": f"127.0.0.1:{member.pg_port}",
                "data_dir": str(member.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(member.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                },
                "parameters": {
                    "unix_socket_directories": str(member.dir),
                    "shared_buffers": "64MB",
                    "fsync": "on",
                },
                "pg_hba": hba,
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }
        # JSON is YAML: no YAML library needed.
        return json.dumps(config, indent=1)

    def _start_member(self, member: Member) -> None:
        member.dir.mkdir()
        self._chown(member.dir)
        os.chmod(member.dir, 0o700)
        path = member.dir / "patroni.yml"
        path.write_text(self._config(member))
        self._chown(path)
        member.proc = self._spawn(["patroni", str(path)], f"{member.name}.log")

    # -- observe -----------------------------------------------------------------------------

    def log(self, name: str) -> str:
        path = self.dir / name
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}"
                         for name in ("etcd.log", *(f"{m.name}.log" for m in self.members)))

    def cluster(self) -> dict[str, Any]:
        """``GET /cluster`` from whichever member answers: the members and their roles."""
        for member in self.members:
            status, body = member.rest("/cluster")
            if status == 200 and isinstance(body, dict):
                return body
        return {}

    def leader(self) -> Member | None:
        """The member that is primary and takes writes now, or None."""
        for member in self.members:
            if member.state().get("role") in ("master", "primary") and \
                    member.state().get("state") == "running":
                return member
        return None

    def sync_replica(self) -> Member | None:
        """The member that Patroni lists as synchronous standby and that streams, or None."""
        for entry in self.cluster().get("members", []):
            if entry.get("role") == "sync_standby" and entry.get("state") in (
                    "running", "streaming"):
                return self.member(str(entry["name"]))
        return None

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def other(self, member: Member) -> Member:
        return next(m for m in self.members if m is not member)

    def _streaming_sync(self, leader: Member) -> bool:
        try:
            with psycopg.connect(leader.url(), connect_timeout=2, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_replication"
                                   " WHERE state = 'streaming' AND sync_state = 'sync'"
                                   ).fetchone()
        except psycopg.OperationalError:
            return False
        return row is not None and row[0] >= 1

    def wait_healthy(self, timeout: float = 60.0) -> Member:
        """Wait for a leader that takes writes and a streaming synchronous replica; return the
        leader."""
        def healthy() -> Member | None:
            for member in self.members:
                assert member.proc is not None
                if member.proc.poll() is not None:
                    raise AssertionError(f"patroni {member.name} exited:\n{self.logs()}")
            leader = self.leader()
            if leader is None or self.sync_replica() is None:
                return None
            return leader if self._streaming_sync(leader) else None

        try:
            leader = wait_for(healthy, timeout=timeout, interval=0.2,
                              message="a Patroni leader and a streaming sync replica")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        for member in self.members:
            member.postmaster_pid()
        return leader

    def multi_host_url(self, dbname: str) -> str:
        """``postgresql://u:p@h:p1,h:p2/db?target_session_attrs=read-write``."""
        hosts = ",".join(f"127.0.0.1:{m.pg_port}" for m in self.members)
        return (f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@{hosts}/{dbname}"
                "?target_session_attrs=read-write&connect_timeout=2")

    # -- faults ------------------------------------------------------------------------------

    def kill_postmaster(self, member: Member) -> int:
        """``kill -9`` the member's postmaster; return its PID."""
        pid = member.postmaster_pid()
        assert pid is not None, f"{member.name} has no postmaster.pid"
        os.kill(pid, signal.SIGKILL)
        return pid

    def switchover(self, leader: Member, candidate: Member) -> None:
        """Ask Patroni for a planned switchover from ``leader`` to ``candidate``."""
        status, body = leader.rest("/switchover", {"leader": leader.name,
                                                  "candidate": candidate.name}, timeout=30)
        assert status == 200, f"switchover refused: {status} {body}\n{self.logs()}"

    # -- stop --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop Patroni (which stops its PostgreSQL), then any postmaster left, then etcd;
        each by PID, SIGKILL after a bounded wait. Removes the directory."""
        for member in self.members:
            member.postmaster_pid()
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.proc is not None:
                try:
                    member.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    member.proc.kill()
                    member.proc.wait(timeout=10)
        for member in self.members:
            member.postmaster_pid()
            for pid in member.postmasters:
                self._stop_postmaster(pid)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(timeout=10)
        for log in self._logs:
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _stop_postmaster(pid: int) -> None:
        if not _pid_alive(pid):
            return
        children = _children(pid)
        try:
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown: the data is thrown away
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for victim in (pid, *children):
            if _pid_alive(victim):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
