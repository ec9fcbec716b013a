"""A throw-away PostgreSQL server for the multi-worker tests.

``initdb`` + ``pg_ctl start`` in a fresh temp dir on a free port (TCP on 127.0.0.1, trust
auth, fsync off), stopped and deleted afterwards. PostgreSQL refuses to run as root: as
root the server runs as the ``postgres`` system user (or an unprivileged ``ftbenchpg``
user created for the purpose) through ``runuser``/``su``. When no server binaries exist
or the server cannot start, :func:`start` raises :class:`Unavailable` with the reason, and
the tests skip with it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unavailable(RuntimeError):
    """No usable PostgreSQL server binaries, or the server did not start."""


def find_bindir() -> Path:
    """The folder holding ``initdb``/``pg_ctl``: PATH first, then /usr/lib/postgresql/*/bin."""
    for name in ("initdb",):
        found = shutil.which(name)
        if found and shutil.which("pg_ctl"):
            real = Path(os.path.realpath(found)).parent
            if (real / "pg_ctl").exists():
                return real
            return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """Command prefix that runs a program as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        try:
            user = pwd.getpwnam("ftbenchpg")
        except KeyError:
            useradd = shutil.which("useradd")
            if not useradd:
                raise Unavailable("running as root, no 'postgres' user and no useradd to create one") from None
            subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "ftbenchpg"],
                check=False,
                capture_output=True,
            )
            try:
                user = pwd.getpwnam("ftbenchpg")
            except KeyError:
                raise Unavailable("running as root and could not create an unprivileged user for PostgreSQL") from None
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--"], user
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"], user
    raise Unavailable("running as root and neither runuser nor setpriv is available to drop privileges")


@contextmanager
def start(timeout: float = 60.0) -> Iterator[str]:
    """Yield ``postgresql://ftbench@127.0.0.1:PORT/postgres`` of a fresh server; stop it after."""
    bindir = find_bindir()
    prefix, user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="ftbench-pg-"))
    data, log = root / "data", root / "server.log"
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    port = free_port()
    started = False
    try:
        init = subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "ftbench",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if init.returncode != 0:
            raise Unavailable(f"initdb failed: {(init.stderr or init.stdout).strip()[-800:]}")
        opts = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=50"
        )
        ctl = subprocess.run(
            [
                *prefix,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(log),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout + 10,
        )
        if ctl.returncode != 0:
            tail = log.read_text()[-800:] if log.exists() else ""
            raise Unavailable(f"pg_ctl start failed: {(ctl.stderr or ctl.stdout).strip()[-400:]} {tail}")
        started = True
        url = f"postgresql://ftbench@127.0.0.1:{port}/postgres"
        _wait_ready(url, timeout)
        yield url
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                env=env,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(url: str, timeout: float) -> None:
    try:
        import psycopg2
    except ImportError:
        raise Unavailable("psycopg2 is not installed (pip install 'fewshot-transfer[distributed]')") from None

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(url, connect_timeout=3).close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"server did not accept connections: {exc}") from exc
            time.sleep(0.2)
