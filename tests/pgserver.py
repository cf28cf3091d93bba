"""A private, throw-away PostgreSQL server for tests, started from Debian's binaries.

``.ci/run`` installs Debian's ``postgresql`` package; this module starts a fresh cluster in a temp
folder on a free loopback port (as the ``postgres`` user when running as root, since initdb refuses
root), and stops it at the end. ``WEIGHTZOO_TEST_PG_URL`` points the tests at an existing server
instead. When neither works, the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        self.url: str | None = None
        self.reason = ""
        self._dir: Path | None = None
        self._bin: Path | None = None
        self._as: list[str] = []

    def start(self) -> PgServer:
        env_url = os.environ.get("WEIGHTZOO_TEST_PG_URL")
        if env_url:
            self.url = env_url
            return self
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            self.reason = "PostgreSQL is not installed (apt-get install postgresql; .ci/run does this)"
            return self
        self._bin = Path(bins[-1]).parent
        self._dir = Path(tempfile.mkdtemp(prefix="weightzoo-pg-"))
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                self.reason = "running as root without runuser: cannot start PostgreSQL"
                return self
            shutil.chown(self._dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = self._dir / "data"
        port = _free_port()
        try:
            subprocess.run([*self._as, str(self._bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                            "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)  # fmt: skip
            opts = f"-p {port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
            subprocess.run([*self._as, str(self._bin / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-t", "60",
                            "-l", str(self._dir / "log.txt"), "start"], check=True, capture_output=True, timeout=120)  # fmt: skip
        except (subprocess.SubprocessError, OSError) as e:
            out = getattr(e, "stderr", b"") or b""
            self.reason = f"could not start PostgreSQL: {e} {out.decode(errors='replace')[-300:]}"
            return self
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return self

    def new_database(self) -> str:
        """A fresh, empty database on the server; its SQLAlchemy URL."""
        import psycopg

        assert self.url is not None
        name = "wz_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url.replace("postgresql://", "postgresql://", 1), autocommit=True) as c:
            c.execute(f'create database "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self._dir is not None and self._bin is not None and self.url and not os.environ.get("WEIGHTZOO_TEST_PG_URL"):
            subprocess.run([*self._as, str(self._bin / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
