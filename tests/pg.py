"""A real PostgreSQL for the tests: Debian's `postgresql` package, `initdb` and `pg_ctl`
into a temporary folder on a free port. PostgreSQL refuses to run as root, so when the
tests run as root the server runs as the `postgres` system user the package made
(`.ci/run` installs the package where it is missing)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def _binaries() -> Path | None:
    """The newest installed server's bin folder (Debian keeps it off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parts[4])
    except (IndexError, ValueError):
        return 0


BIN = _binaries()
needs_postgres = pytest.mark.skipif(
    BIN is None, reason="needs Debian's postgresql (apt-get install postgresql)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """One server: `start`, `stop`, `url(database)`, `sql(statement)` (as superuser)."""

    def __init__(self) -> None:
        assert BIN is not None
        self.folder = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C.UTF-8",
        )  # fmt: skip
        (self.data / "postgresql.auto.conf").write_text(
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.folder}'\nfsync = off\n"
            "synchronous_commit = off\nfull_page_writes = off\n"
        )
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.data / "postgresql.auto.conf", entry.pw_uid, entry.pw_gid)

    def _run(self, program: str, *args: str) -> None:
        assert BIN is not None
        command = [str(BIN / program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{program}: {result.stdout}\n{result.stderr}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "start")

    def require_password(self, user: str) -> None:
        """`user` must give its password over TCP (everyone else stays trusted)."""
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {user} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self._run("pg_ctl", "-D", str(self.data), "reload")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as connection:
            cursor = connection.execute(statement)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def made(self, table: str, database: str, timeout: float = 15) -> None:
        """Wait until the appliance has created `table` (its migration runs at connect)."""
        import conftest

        check = f"SELECT to_regclass('{table}') IS NOT NULL"
        conftest.wait_for(lambda: self.sql(check, database)[0][0], timeout, f"the {table} table")

    def database(self) -> str:
        """A new, empty database; its name."""
        name = f"fleet_{int(time.time() * 1000) % 10**9}_{os.getpid()}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def remove(self) -> None:
        with contextlib.suppress(AssertionError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
