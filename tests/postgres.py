"""PostgreSQL for the suite, as a pytest plugin: `pytest_plugins = ["postgres"]` in tests/conftest.py.

Fixtures:
* `postgres_url` (session): the URL of a PostgreSQL database that tests may use;
* `fresh_postgres_url` (function): a new empty database on that server, dropped after the test.

Where the server comes from, in order:
1. MEDISCALE_TEST_POSTGRES_URL, when set (.ci/run starts a server and sets it). The user needs
   CREATEDB for `fresh_postgres_url`.
2. PostgreSQL server binaries in /usr/lib/postgresql/<version>/bin (the newest version): a throwaway
   server for the session. It runs in a temp dir, listens on 127.0.0.1 only on a free port, uses
   trust auth and fsync=off, runs as a non-root user (postgres refuses root), and is removed afterwards.
3. Otherwise the tests that use these fixtures are skipped, or fail when CI is set: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prerequisites import missing

URL_ENV = "MEDISCALE_TEST_POSTGRES_URL"
SUPERUSER = "mediscale"
DATABASE = "mediscale_test"
BIN_GLOB = "/usr/lib/postgresql/*/bin"


def find_postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and pg_ctl, or None."""

    def version(folder: Path) -> tuple[int, ...]:
        name = folder.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit()) or (0,)

    found = [p for p in Path("/").glob(BIN_GLOB.lstrip("/")) if (p / "initdb").is_file()]
    found = [p for p in found if (p / "pg_ctl").is_file() and (p / "postgres").is_file()]
    return max(found, key=version) if found else None


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None for the current user, or an unprivileged account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], user: pwd.struct_passwd | None, cwd: Path) -> None:
    """Run a server command (as `user` when given); raise with its output when it fails."""
    as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(cwd)}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, **as_user)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def _libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as a libpq connection URI."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(_libpq_url(url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


@dataclass
class Server:
    """A throwaway server that a test may stop and start again (an outage), same data and port."""

    url: str
    bindir: Path
    data: Path
    home: Path
    options: str
    user: pwd.struct_passwd | None

    def stop(self) -> None:
        _run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            self.user,
            self.home,
        )

    def start(self) -> None:
        log = str(self.home / "server.log")
        pg_ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-t", "60"]
        _run([*pg_ctl, "-o", self.options, "start"], self.user, self.home)


@contextlib.contextmanager
def throwaway_server(bindir: Path) -> Iterator[Server]:
    """Start a PostgreSQL server in a temp dir; yield it (its `url` names database `mediscale_test`)."""
    user = _server_user()
    # Directly under /tmp: pytest's own temp dirs are private to root, so `postgres` could not enter them.
    home = Path(tempfile.mkdtemp(prefix="mediscale-pg-"))
    data = home / "data"
    started = False
    try:
        if user is not None:
            os.chown(home, user.pw_uid, user.pw_gid)
        _run(
            [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust"]
            + ["-E", "UTF8", "--no-locale", "--no-sync"],
            user,
            home,
        )
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={home} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            args = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-w", "-t", "60"]
            try:
                _run([*args, "-o", options, "start"], user, home)
                started = True
                break
            except RuntimeError:
                if attempt == 2:
                    log = home / "server.log"
                    raise RuntimeError(
                        "PostgreSQL did not start:\n" + (log.read_text() if log.exists() else "")
                    ) from None
                time.sleep(0.2)
        url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres"
        _admin(url, f'CREATE DATABASE "{DATABASE}"')
        yield Server(_with_database(url, DATABASE), bindir, data, home, options, user)
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user, home)
        shutil.rmtree(home, ignore_errors=True)


def server_binaries(why: str) -> Path:
    """The server binaries, else a skip (a failure under CI: CI must run these tests)."""
    bindir = find_postgres_bin()
    if bindir is None:
        missing(f"{why} (no {BIN_GLOB})")
    return bindir


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database URL (postgresql+psycopg://...) for the session; see the module docstring."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    with throwaway_server(
        server_binaries(f"PostgreSQL not available: set {URL_ENV} or install the server")
    ) as server:
        yield server.url


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[Server]:
    """A PostgreSQL server of this module's own, which its tests may stop and start (the shared
    one cannot be stopped under other tests). Needs the server binaries (CI installs them)."""
    with throwaway_server(server_binaries("the outage test needs a PostgreSQL server of its own")) as server:
        yield server


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session's server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin(postgres_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(postgres_url, name)
    finally:
        _admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
