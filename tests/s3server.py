"""A private S3-compatible server for tests and benchmarks: moto's server mode on a free loopback port.

``python -m moto.server -H 127.0.0.1 -p PORT`` is a real HTTP endpoint (s3fs and boto3 talk to it as to
any S3 service); it keeps its objects in memory and dies with the process. ``WEIGHTZOO_TEST_S3_URL`` (an
endpoint URL) points the tests at an existing server instead. When neither works, the tests that need
it are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """``start()``, then ``endpoint``, ``options`` (s3fs storage options) and ``new_bucket()``."""

    key = "testing"
    secret = "testing"

    def __init__(self) -> None:
        self.endpoint: str | None = None
        self.reason = ""
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> S3Server:
        env_url = os.environ.get("WEIGHTZOO_TEST_S3_URL")
        if env_url:
            self.endpoint = env_url
            return self
        missing = [m for m in ("moto", "s3fs", "flask") if importlib.util.find_spec(m) is None]
        if missing:
            self.reason = f"{', '.join(missing)} not installed (pip install -e '.[dev]')"
            return self
        port = _free_port()
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.reason = f"moto server exited with status {self._proc.returncode}"
                return self
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    self.endpoint = f"http://127.0.0.1:{port}"
                    return self
            except OSError:
                time.sleep(0.1)
        self.reason = f"moto server did not answer on port {port} within {timeout:.0f}s"
        self.stop()
        return self

    @property
    def options(self) -> dict[str, Any]:
        """s3fs storage options for this server (few retries: a test of a dead endpoint fails fast)."""
        assert self.endpoint is not None
        return {"key": self.key, "secret": self.secret, "client_kwargs": {"endpoint_url": self.endpoint},
                "config_kwargs": {"connect_timeout": 3, "retries": {"max_attempts": 1}},
                "skip_instance_cache": True}  # fmt: skip

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.options)

    def new_bucket(self) -> str:
        """A fresh, empty bucket; its name."""
        name = "wz-" + uuid.uuid4().hex[:12]
        self.filesystem().mkdir(name)
        return name

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None


def serve(server: Any, ready: str) -> Iterator[Any]:
    """The body of a test-server fixture: start ``server`` (an :class:`S3Server` or a
    ``tests.pgserver.PgServer``), skip with its reason unless its ``ready`` attribute is set, stop it after."""
    import pytest

    server.start()
    if getattr(server, ready) is None:
        server.stop()
        pytest.skip(server.reason)
    try:
        yield server
    finally:
        server.stop()
