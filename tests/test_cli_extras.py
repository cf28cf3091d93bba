"""CLI things a new user reaches first: --version, doctor, and the explorer's serving options."""

from __future__ import annotations

import json
import re

import pytest

from zoo import Zoo
from zoo.cli import main
from zoo.doctor import checks, version
from zoo.store.db import head_revision


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"weightzoo {version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version())


def test_doctor_reports_parts_and_schema_without_creating_a_zoo(tmp_path, capsys):
    root = tmp_path / "none"
    assert main(["doctor", "--root", str(root), "--json"]) == 0
    report = {c["part"]: c for c in json.loads(capsys.readouterr().out)}
    assert not root.exists()  # doctor only reads
    assert {"weightzoo", "torch", "sql over the catalog", "zoo", "extra [app]", "extra [ray]"} <= set(report)
    assert report["sql over the catalog"]["ok"] is True  # a real query ran on a throw-away zoo
    assert "no zoo at" in report["zoo"]["detail"]


def test_doctor_reads_schema_version_of_an_existing_zoo(tmp_path, capsys):
    Zoo.open(tmp_path).close()
    by_part = {c.part: c for c in checks(tmp_path)}
    assert by_part["zoo"].ok and f"schema {head_revision()} (current)" in by_part["zoo"].detail
    assert main(["doctor", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ok\s+zoo\s+.*current", out, re.M)


def test_doctor_says_what_is_missing_and_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "streamlit" else real(m, *a))
    app = {c.part: c for c in checks("/nonexistent-zoo")}["extra [app]"]
    assert not app.ok and "missing streamlit" in app.detail and "pip install 'weightzoo[app]'" in app.detail


def test_app_options_reach_streamlit(tmp_path, capsys):
    assert main(["app", "--root", str(tmp_path), "--port", "9123", "--host", "0.0.0.0", "--no-browser", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("weightzoo explorer on http://localhost:9123")
    cmd = out[1].split()
    assert cmd[cmd.index("--server.port") + 1] == "9123"
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[-2:] == ["--root", str(tmp_path.resolve())]


def test_app_default_is_local_with_ssh_hint(tmp_path, capsys):
    assert main(["app", "--root", str(tmp_path), "--dry-run"]) == 0
    first, cmd = capsys.readouterr().out.splitlines()[:2]
    assert "http://localhost:8501" in first and "ssh -L 8501:localhost:8501" in first
    assert "--server.address localhost" in cmd and "--server.headless false" in cmd


def test_app_bad_port_is_a_clear_error(tmp_path, capsys):
    assert main(["app", "--root", str(tmp_path), "--port", "70000", "--dry-run"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
