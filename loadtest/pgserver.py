"""A throw-away PostgreSQL server: Debian's binaries, a temporary directory, a loopback port.

`PostgresServer` runs `initdb` into a temporary directory and `postgres` on a free loopback port
(fsync on, as in production), and removes everything when asked. As root, the programs run as
the unprivileged `postgres` system user through `setpriv` (initdb refuses to run as root).
The tests and `cbdc-bridge bench postgres` use it; a production bridge points at a real server.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

BIN_GLOBS = ("/usr/lib/postgresql/*/bin",)
START_TIMEOUT = 60.0
_databases = itertools.count(1)


def binaries() -> Path | None:
    """The newest Debian PostgreSQL bin directory with initdb, if any."""
    found = sorted(
        (Path(d) for pattern in BIN_GLOBS for d in glob.glob(pattern)),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for directory in reversed(found):
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "bridge"
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._run_as = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            os.chown(self.root, self._run_as.pw_uid, self._run_as.pw_gid)

    def _command(self, program: str, *args: str) -> list[str]:
        """The command line, run as the unprivileged user when we are root: `setpriv` execs
        the program in place (no Python runs between fork and exec in this threaded process)."""
        command = [str(self.bin_dir / program), *args]
        if self._run_as is None:
            return command
        return [
            "setpriv",
            f"--reuid={self._run_as.pw_uid}",
            f"--regid={self._run_as.pw_gid}",
            "--clear-groups",
            *command,
        ]

    def initdb(self) -> None:
        subprocess.run(
            self._command(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    def start(self) -> None:
        """Start the server (again) on its port and wait until it accepts connections."""
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (kept open by the server)
        self._process = subprocess.Popen(
            self._command(
                "postgres",
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
                "-c",
                "fsync=on",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "PostgreSQL did not start:\n" + (self.root / "server.log").read_text()
                    ) from None
                time.sleep(0.1)

    def stop(self, *, mode: signal.Signals = signal.SIGINT) -> None:
        """Stop the server (SIGINT: fast shutdown, disconnecting every client)."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(mode)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0".encode())
        return self.url(name)

    def remove(self) -> None:
        self.stop(mode=signal.SIGQUIT)  # immediate shutdown: no final checkpoint to wait for
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(bin_dir: Path) -> PostgresServer:
    """initdb and start a server; removed again if starting fails."""
    server = PostgresServer(bin_dir)
    try:
        server.initdb()
        server.start()
    except BaseException:
        server.remove()
        raise
    return server
