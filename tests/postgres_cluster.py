"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, listening on
127.0.0.1 only at a free port, password authentication, stopped and removed after.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the
``postgres`` system user that Debian's package creates (through ``runuser``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "imageclf", "s3cret-pw"


def server_binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    port: int
    folder: Path

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _pg(binaries: Path, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run a server tool, as the ``postgres`` user when we are root."""
    argv = [str(binaries / tool), *args]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """Start a fresh server; stop it and delete its files when the block ends."""
    binaries = server_binaries()
    if binaries is None:
        raise FileNotFoundError("PostgreSQL's initdb was not found (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="imageclf-pg-"))
    try:
        data, pwfile = folder / "data", folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")  # KeyError: no such user
            for path in (folder, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        init = _pg(binaries, "initdb", "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                   "--auth=scram-sha-256", "-E", "UTF8", "--no-sync", timeout=120)  # fmt: skip
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr}")
        port = _start(binaries, folder, data)
        try:
            yield Cluster(port, folder)
        finally:
            _pg(binaries, "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(binaries: Path, folder: Path, data: Path) -> int:
    """Start on a free port (another process may take the one picked: try again)."""
    for _ in range(3):
        port = free_port()
        # Durability is not what these tests measure: no fsync keeps them fast.
        options = (f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
        log = str(folder / "server.log")
        started = _pg(binaries, "pg_ctl", "-D", str(data), "-l", log, "-o", options, "-w",
                      "-t", "60", "start", timeout=90)  # fmt: skip
        if started.returncode == 0:
            return port
    log = (folder / "server.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log}")
