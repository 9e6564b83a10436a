"""A throwaway PostgreSQL server for the tests: Debian's binaries, one server per test session.

pytest-postgresql would do the same but cannot run as root, which CI does: PostgreSQL refuses to
run `initdb`/`postgres` as root, so as root the server runs as the unprivileged `postgres` user
(created by Debian's package) through `runuser`. The cluster lives in a fresh directory under
the system temp dir (pytest's own temp dirs are private to root), with `fsync=off`: the tests
need PostgreSQL's semantics, not its durability.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

MISSING_HELP = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found on PATH or under "
    "/usr/lib/postgresql/*/bin; install Debian's `postgresql` package (`make test` does)"
)
SUPERUSER = "decaf"


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_server_bin() -> Path:
    """The directory holding `initdb` and `pg_ctl`: PATH first, else the newest Debian cluster."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if not versions:
        raise PostgresUnavailableError(MISSING_HELP)
    return Path(versions[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """`initdb` + `pg_ctl start` on a free loopback port; `database()` makes a fresh database."""

    def __init__(self) -> None:
        self.bin = find_server_bin()
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="decaf-pg-"))
        self.data = self.base / "cluster"
        self.log = self.base / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # the server refuses root: run it as the `postgres` user
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailableError(
                    "PostgreSQL refuses to run as root and there is no `postgres` user to run it "
                    "as; install Debian's `postgresql` package (it creates one) or run the tests "
                    "as an unprivileged user"
                ) from None
            os.chown(self.base, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        command = [*self._as_user, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}"
            )

    def start(self) -> PostgresServer:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def database(self, prefix: str = "decaf") -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
