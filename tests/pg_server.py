"""A real, throw-away PostgreSQL server for tests: Debian's ``postgresql`` package, a temporary data
directory, a free port on 127.0.0.1.

initdb and the server refuse to run as root, and tests (and CI) run as root: the server then runs as
the system user ``lipserve-pg`` (created with ``useradd`` on first use) and the data directory is
owned by it. As any other user the server simply runs as that user.

    with PostgresServer() as pg:
        url = pg.create_database()      # a fresh database per test
        pg.restart()                    # e.g. to test that clients survive it
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

PG_USER = "lipserve-pg"
SUPERUSER = "postgres"
READY_TIMEOUT_S = 60.0
# Durability off: a test server's data is thrown away, and fsyncs dominate its run time.
TEST_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}


class PostgresNotInstalledError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has initdb and pg_ctl."""
    override = os.environ.get("LIPSERVE_PG_BINDIR")
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0))
    for bindir in reversed(candidates):
        if all((Path(bindir) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(bindir)
    raise PostgresNotInstalledError(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install Debian's "
        "`postgresql` package (apt-get install -y postgresql, as .ci/run does) or set LIPSERVE_PG_BINDIR")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd:
    """The user the server runs as: this one, or (as root) ``lipserve-pg``, created if missing."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(PG_USER)


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.user = _server_user()
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and the server user must enter it.
        self.root = Path(tempfile.mkdtemp(prefix="lipserve-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._initdb()

    # -- commands as the server user --------------------------------------------------------
    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kw = {}
        if os.geteuid() == 0:
            kw = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        proc = subprocess.run([str(self.bindir / tool), *args], cwd=self.root, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
                                   "HOME": str(self.root)}, **kw)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                               f"\n{self._log_tail()}")
        return proc

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        settings = {**TEST_SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.root}'"}
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# lipserve tests\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return "server log:\n" + self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no server log)"

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        # -W: do not let pg_ctl wait; readiness is checked below by connecting.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-W", "start")
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until a connection answers ``SELECT 1`` (the server accepts queries), or fail."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL on port {self.port} not ready after {timeout} s: {exc}\n"
                                       f"{self._log_tail()}") from exc
                # The postmaster writes its pid file at once; without it after a few seconds it died.
                if time.monotonic() - started > 5 and not (self.data / "postmaster.pid").exists():
                    raise RuntimeError(f"PostgreSQL exited during start-up\n{self._log_tail()}") from exc
                time.sleep(0.05)  # poll interval of the readiness check above

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects clients and shuts down cleanly; ``immediate`` is a crash."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
