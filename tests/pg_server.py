"""A throwaway PostgreSQL server for the PostgreSQL provider's tests and benchmark.

``PgServer`` runs ``initdb`` into a fresh directory under ``/tmp``, starts the server on a
loopback port (``pg_ctl ... -o "-p PORT -k DIR -c listen_addresses=127.0.0.1"``), creates the
password user ``duroxide`` (password ``duroxide``) and database ``duroxide``, and can stop and
start again (the outage test) or be torn down (data directory removed).

PostgreSQL refuses to run as root, so as root every server command runs as the unprivileged
user ``pgtest`` (created with ``useradd`` when missing) through ``runuser``; the same recipe
``.ci/run`` uses. Binaries: ``$DUROXIDE_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``,
else the directory of ``initdb`` on ``PATH``.

``shared_url()`` is what the tests use: ``$DUROXIDE_PG_URL`` when set (CI starts a server
first), else one private server per test process, started on first use and stopped at exit.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading

__all__ = ["PgServer", "find_bin_dir", "shared_url", "free_port"]

OS_USER = "pgtest"
DB_USER = "duroxide"
DB_PASSWORD = "duroxide"
DB_NAME = "duroxide"


def find_bin_dir() -> str:
    """Directory holding initdb/pg_ctl/postgres; RuntimeError with a hint when there is none."""
    env = os.environ.get("DUROXIDE_PG_BIN")
    if env:
        return env
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    for candidate in reversed(found):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(os.path.realpath(initdb))
    raise RuntimeError("PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql) "
                       "or set DUROXIDE_PG_BIN, or point DUROXIDE_PG_URL at a running server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_os_user() -> None:
    if subprocess.run(["id", OS_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", OS_USER], check=True, capture_output=True)


class PgServer:
    """One private PostgreSQL cluster: ``start()``, ``stop()``, ``destroy()``; ``url`` for clients."""

    def __init__(self, port: int | None = None, *, durable: bool = False, options: str = "") -> None:
        #: ``durable=False`` (tests) turns fsync and synchronous commit off; ``options``: more
        #: ``-c name=value`` server settings.
        self.durable = durable
        self.options = options
        self.bin = find_bin_dir()
        self.port = port or free_port()
        self.datadir = tempfile.mkdtemp(prefix="duroxide-pg-", dir="/tmp")
        self.sockdir = self.datadir
        self.log = os.path.join(self.datadir, "server.log")
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bin, args[0]), *args[1:]]
        if _as_root():
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp")
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                               f"{self.server_log()}")
        return result

    def server_log(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def _init(self) -> None:
        if _as_root():
            _ensure_os_user()
            shutil.chown(self.datadir, OS_USER, OS_USER)
        os.chmod(self.datadir, 0o700)
        pgdata = os.path.join(self.datadir, "data")
        self._run("initdb", "-D", pgdata, "-U", OS_USER, "--auth-local=trust", "--auth-host=scram-sha-256",
                  "-E", "UTF8", "--no-locale", "--no-sync")
        self.start()
        psql = ["psql", "-h", self.sockdir, "-p", str(self.port), "-U", OS_USER, "-d", "postgres", "-v",
                "ON_ERROR_STOP=1", "-q", "-c"]
        self._run(*psql, f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
        self._run(*psql, f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        self._initialised = True

    def start(self) -> "PgServer":
        if not os.path.exists(os.path.join(self.datadir, "data")):
            self._init()
            return self
        opts = f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if self.options:
            opts += " " + self.options
        self._run("pg_ctl", "-D", os.path.join(self.datadir, "data"), "-o", opts, "-l", self.log, "-w", "-t", "60",
                  "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", os.path.join(self.datadir, "data"), "-m", mode, "-w", "-t", "60", "stop",
                  check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)


_shared: PgServer | None = None
_shared_lock = threading.Lock()


def shared_url() -> str:
    """``$DUROXIDE_PG_URL``, else the URL of this process's private server (started once)."""
    global _shared
    url = os.environ.get("DUROXIDE_PG_URL")
    if url:
        return url
    with _shared_lock:
        if _shared is None:
            server = PgServer()
            atexit.register(server.destroy)
            server.start()
            _shared = server
        return _shared.url
