"""Progress output: bars on a terminal, one line per stage in a log (zoo.progress)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from zoo.progress import LineProgress, progress_bar


def test_line_progress_prints_one_line_per_stage_with_count_and_timing():
    out = io.StringIO()
    bar = LineProgress(total=300, desc="build digits-mlp", unit="run", file=out)
    for _ in range(3):
        bar.update(100)
    bar.set_postfix(loss="0.1234")
    bar.close()
    bar.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("build digits-mlp: 300/300 run in ") and lines[0].endswith("s (loss=0.1234)")


def test_line_progress_iterates_and_stays_silent_when_transient_or_disabled():
    out = io.StringIO()
    assert list(LineProgress(range(4), desc="epochs", leave=False, file=out)) == [0, 1, 2, 3]
    assert list(LineProgress(range(2), desc="x", disable=True, file=out)) == [0, 1]
    assert out.getvalue() == ""
    assert list(LineProgress(range(5), desc="verify", unit="pack", file=out)) == list(range(5))
    assert out.getvalue().startswith("verify: 5/5 pack in ")


def test_line_progress_reports_long_stages_periodically():
    out = io.StringIO()
    bar = LineProgress(total=10, desc="train", file=out, every=0.0)
    bar.update(4)
    bar.update(6)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train: 4/10 it after") and lines[-1].startswith("train: 10/10 it in")


@pytest.mark.parametrize("mode, cls", [("lines", LineProgress), ("none", LineProgress)])
def test_mode_forced_by_environment(monkeypatch, mode, cls):
    monkeypatch.setenv("WEIGHTZOO_PROGRESS", mode)
    bar = progress_bar(range(3), desc="x")
    assert isinstance(bar, cls) and bar.disable == (mode == "none")


def test_bar_mode_is_tqdm(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setenv("WEIGHTZOO_PROGRESS", "bar")
    bar = progress_bar(range(3), desc="x", disable=True)
    assert isinstance(bar, tqdm)


def test_quick_demo_into_a_log_has_no_redrawn_bars(tmp_path):
    """`weightzoo demo > log 2>&1`: stderr is not a terminal, so a log gets whole lines, no \\r noise."""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("WEIGHTZOO")}
    res = subprocess.run(
        [sys.executable, "-m", "zoo.cli", "build", "digits-mlp", "--n", "2", "--epochs", "1", "--root", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "\x1b[" not in res.stderr
    assert any(line.startswith("build digits-mlp: 2/2 run in ") for line in res.stderr.splitlines()), res.stderr
