"""The team setup's tracking server: a PostgreSQL 15 cluster kept in a project folder and `mlflow server` on it.

MLflow's documented shape for several people and machines: a tracking server with a database backend and proxied
artifact storage (``--artifacts-destination``), so clients need only its URL. Both listen on 127.0.0.1 unless a host
is given for the MLflow server (PostgreSQL always stays on loopback: the MLflow server is its only client).

The folder holds ``pg/data`` (the cluster), ``pg/`` (its Unix socket), ``artifacts/``, ``credentials.json`` (the
database password, generated on first start, readable by its owner only) and the logs and pid file. PostgreSQL
refuses to run as root: a root caller runs its tools as the ``postgres`` user (``runuser``), which must be able to
enter the folder.
"""

from __future__ import annotations

import getpass
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from recsys_core.errors import RecsysError
from recsys_core.net import answers, wait_until_answers
from recsys_core.system_packages import SystemPackageError, apt_install, runs_as_root

log = logging.getLogger(__name__)

PG_TOOLS = ("initdb", "pg_ctl", "postgres", "psql")
INSTALL_HINT = "install PostgreSQL 15 (Debian/Ubuntu: `apt-get install -y postgresql`) or put its bin/ folder on PATH"
DATABASE, ROLE = "mlflow", "mlflow"


class TrackingServerError(RecsysError):
    """The tracking server or its database could not be started, reached or stopped."""


@dataclass(frozen=True)
class ServerSettings:
    folder: Path
    port: int = 5050  # the MLflow server (`make ui` keeps 5000 for the embedded store)
    pg_port: int = 5433  # beside a system PostgreSQL on 5432
    host: str = "127.0.0.1"
    workers: int = 2

    @property
    def client_host(self) -> str:
        """The address clients on this machine use (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def url(self) -> str:
        return f"http://{self.client_host}:{self.port}"


def pg_bin(tool: str) -> str:
    """A PostgreSQL program from PATH, else from Debian's versioned folder (the newest)."""
    found = shutil.which(tool)
    if found:
        return found
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(folder) / tool).exists():
            return str(Path(folder) / tool)
    raise TrackingServerError(f"PostgreSQL's `{tool}` was not found: {INSTALL_HINT}")


def ensure_postgres_installed() -> None:
    """Install Debian's postgresql package when the tools are missing and we may (root with apt-get)."""
    try:
        for tool in PG_TOOLS:
            pg_bin(tool)
        return
    except TrackingServerError:
        if not (runs_as_root() and shutil.which("apt-get")):
            raise
    try:
        apt_install("postgresql", INSTALL_HINT)
    except SystemPackageError as err:
        raise TrackingServerError(str(err)) from None
    for tool in PG_TOOLS:
        pg_bin(tool)


class Postgres:
    """The cluster in ``folder/pg``: initialised once, started and stopped with pg_ctl, as its own OS user."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.home = settings.folder / "pg"
        self.data = self.home / "data"
        self.owner = "postgres" if runs_as_root() else getpass.getuser()

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        full = [pg_bin(cmd[0]), *cmd[1:]]
        if runs_as_root():
            full = ["runuser", "-u", self.owner, "--", *full]
        done = subprocess.run(full, capture_output=True, text=True, cwd="/")
        if check and done.returncode:
            raise TrackingServerError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n"
                                      f"{(done.stderr or done.stdout)[-2000:]}")  # fmt: skip
        return done

    def _give_to_owner(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if runs_as_root():
            shutil.chown(self.home, self.owner)
            self.home.chmod(0o700)
            probe = subprocess.run(["runuser", "-u", self.owner, "--", "test", "-w", str(self.home)])
            if probe.returncode:
                raise TrackingServerError(
                    f"PostgreSQL refuses to run as root and runs as the `{self.owner}` user, which cannot reach "
                    f"{self.home}: choose a tracking folder that every user may enter (e.g. TRACKING_DIR=/srv/recsys-"
                    f"tracking) or give the folders above it o+x"
                )

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        self._give_to_owner()
        self._run("initdb", "-D", str(self.data), "-U", self.owner, "-E", "UTF8", "--auth-local=peer",
                  "--auth-host=scram-sha-256", "--no-instructions")  # fmt: skip

    def running(self) -> bool:
        return self.initialised() and self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def start(self) -> None:
        if self.running():
            return
        if _port_taken("127.0.0.1", self.settings.pg_port):
            raise TrackingServerError(f"port {self.settings.pg_port} on 127.0.0.1 is taken: choose another with "
                                      "--pg_port (make tracking-server PG_PORT=...)")  # fmt: skip
        options = f"-p {self.settings.pg_port} -k {self.home} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "postgres.log"), "-o", options, "-w", "-t", "60",
                  "start")  # fmt: skip

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def sql(self, statement: str) -> str:
        """One statement as the cluster's superuser over the Unix socket (peer authentication)."""
        done = self._run("psql", "-h", str(self.home), "-p", str(self.settings.pg_port), "-U", self.owner, "-d",
                         "postgres", "-v", "ON_ERROR_STOP=1", "-tAc", statement)  # fmt: skip
        return done.stdout.strip()

    def ensure_database(self, password: str) -> None:
        exists = self.sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'") == "1"
        # the credentials file is the truth: a password set again on every start follows it
        self.sql(f"{'ALTER' if exists else 'CREATE'} ROLE {ROLE} LOGIN PASSWORD '{password}'")
        if self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":
            self.sql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def credentials(folder: Path) -> dict:
    """The database password, generated on first use into a file only its owner can read."""
    path = folder / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    made = {"user": ROLE, "password": secrets.token_urlsafe(24), "database": DATABASE}
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", dir=folder)  # mode 0600 from the start
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(made, handle)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return made


def backend_uri(settings: ServerSettings) -> str:
    cred = credentials(settings.folder)
    return f"postgresql://{cred['user']}:{cred['password']}@127.0.0.1:{settings.pg_port}/{cred['database']}"


def _pid_file(settings: ServerSettings) -> Path:
    return settings.folder / "mlflow-server.pid"


def server_pid(settings: ServerSettings) -> int | None:
    """The MLflow server's pid when that process still runs."""
    path = _pid_file(settings)
    if not path.exists():
        return None
    import psutil

    pid = int(path.read_text().split()[0])
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return pid
    except psutil.NoSuchProcess:
        return None
    try:  # ended; reap it when it is our own child (the caller that started it), so it does not linger
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return None


def healthy(server: ServerSettings | str, timeout: float = 2.0) -> bool:
    """Whether the MLflow server (its settings or its URL) answers /health."""
    url = server if isinstance(server, str) else server.url
    return answers(f"{url.rstrip('/')}/health", timeout)


def start(settings: ServerSettings, wait_s: float = 120.0) -> str:
    """Start PostgreSQL and the MLflow server (each only if not running); the URL to use as MLFLOW_TRACKING_URI."""
    ensure_postgres_installed()
    settings.folder.mkdir(parents=True, exist_ok=True)
    pg = Postgres(settings)
    if not pg.initialised():
        log.info("creating the PostgreSQL cluster in %s", pg.data)
        pg.init()
    pg.start()
    pg.ensure_database(credentials(settings.folder)["password"])
    if server_pid(settings) and healthy(settings):
        return settings.url
    if _port_taken(settings.client_host, settings.port):
        raise TrackingServerError(f"port {settings.port} is taken: choose another with --port (make tracking-server "
                                  "TRACKING_PORT=...)")  # fmt: skip
    artifacts = settings.folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    logfile = settings.folder / "mlflow-server.log"
    # the password travels in the environment, not on the command line that `ps` shows
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_uri(settings)}
    # MLflow's job runner (huey consumers for GenAI judges and trace roll-ups, nothing this platform uses) starts
    # extra processes with the server; off unless asked for
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.pop("MLFLOW_TRACKING_URI", None)
    # the `seqrerank` app: MLflow's server app whose UI opens on the training runs (recsys_core/ui_app.py)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--app-name", "seqrerank",
           "--artifacts-destination", str(artifacts),
           "--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers)]  # fmt: skip
    with open(logfile, "ab") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=settings.folder)  # fmt: skip
    _pid_file(settings).write_text(f"{process.pid}\n")
    if not wait_until_answers(f"{settings.url}/health", process, wait_s):
        stop_server(settings)
        tail = logfile.read_text(errors="replace")[-3000:]
        raise TrackingServerError(f"the MLflow server did not come up at {settings.url} (log {logfile}):\n{tail}")
    return settings.url


def stop_server(settings: ServerSettings, wait_s: float = 30.0) -> None:
    pid = server_pid(settings)
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)  # the server and its workers: its own session
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while server_pid(settings) and time.monotonic() < deadline:
            time.sleep(0.2)
        if server_pid(settings):
            os.killpg(pid, signal.SIGKILL)
    _pid_file(settings).unlink(missing_ok=True)


def stop(settings: ServerSettings) -> None:
    """Stop the MLflow server, then PostgreSQL. Nothing is deleted: the next start finds every run."""
    stop_server(settings)
    Postgres(settings).stop()


def status(settings: ServerSettings) -> dict:
    pg = Postgres(settings)
    return {
        "folder": str(settings.folder),
        "postgres": "running" if pg.running() else ("stopped" if pg.initialised() else "not created"),
        "pg_port": settings.pg_port,
        "mlflow_server": "running" if server_pid(settings) and healthy(settings) else "stopped",
        "url": settings.url,
    }
