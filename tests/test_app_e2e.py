"""End to end: the real Streamlit server on a small zoo, every page opened in Debian's Chromium via
Playwright; no exception box, the expected text, a screenshot of each page in test-artifacts/app/.

Skipped (with the reason) when Chromium, Playwright or Streamlit is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT

CHROMIUM = os.environ.get("WEIGHTZOO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = REPO_ROOT / "test-artifacts" / "app"

_missing = [
    what
    for what, ok in (
        (f"Chromium ({CHROMIUM}; apt-get install chromium)", Path(CHROMIUM).exists() or shutil.which("chromium")),
        ("Playwright (pip install playwright)", importlib.util.find_spec("playwright") is not None),
        ("Streamlit (pip install 'weightzoo[app]')", importlib.util.find_spec("streamlit") is not None),
        ("plotly (pip install 'weightzoo[app]')", importlib.util.find_spec("plotly") is not None),
    )
    if not ok
]
pytestmark = pytest.mark.skipif(bool(_missing), reason="end-to-end app test needs " + ", ".join(_missing))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def e2e_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from zoo import Zoo
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    root = tmp_path_factory.mktemp("e2e") / "zoo"
    with Zoo.open(root) as z:
        build(z, Recipe.from_dict({
            "name": "e2e-mlp", "arch": {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10},
            "epochs": 3, "checkpoint_epochs": [1, 3], "search": {"mode": "grid", "seeds": 3, "params": {"lr": [3e-3]}},
        }), progress=False)  # fmt: skip
        parent = z.population("e2e-mlp").final().records()[0]
        g = torch.Generator().manual_seed(0)
        child = z.add({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in parent.state_dict().items()},
                      arch=parent.arch_config, population="e2e-children", name="e2e-child", parents=[parent.id],
                      op="perturb", params={"sigma": 0.01}, tags=["handmade"])  # fmt: skip
        return {"root": root, "parent": parent.id, "child": child.id}


@pytest.fixture(scope="module")
def server(e2e_zoo: dict) -> Iterator[str]:
    port = _free_port()
    log = (e2e_zoo["root"].parent / "streamlit.log").open("w")
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app" / "Home.py"), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--", "--root", str(e2e_zoo["root"])]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "WEIGHTZOO_HOME"}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("the Streamlit server did not start:\n" + Path(log.name).read_text()[-3000:])
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from playwright.sync_api import sync_playwright

    user_dir = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(user_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 2000},
        )  # fmt: skip
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def _wait_idle(page, timeout: float = 30.0) -> None:
    """Until the script has finished running (no 'Running...' status) and the page stopped changing."""
    deadline = time.monotonic() + timeout
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    quiet = 0
    while time.monotonic() < deadline:
        # all_inner_texts does not wait: the widget may vanish between a count() and a read (a race that
        # made inner_text time out on a loaded machine)
        running = any("Running" in t for t in page.locator('[data-testid="stStatusWidget"]').all_inner_texts())
        skeleton = page.locator('[data-testid="stSkeleton"]').count() > 0
        quiet = quiet + 1 if not (running or skeleton) else 0
        if quiet >= 4:
            return
        time.sleep(0.25)


#: (page path, query, texts that must appear)
PAGES = [
    ("", "", ["weightzoo explorer", "Populations", "e2e-mlp", "e2e-children", "Metric distributions", "Recent activity"]),
    ("Models", "", ["Models", "of 7 models", "Download CSV", "Download Parquet"]),
    ("Model_detail", "?model={child}", ["Model detail", "e2e-child", "perturb", "Layers", "effective_rank"]),
    ("Population_map", "", ["Population map", "colour by", "models of"]),
    ("Align_and_merge", "", ["Align and merge", "Linear path and alignment", "Merge"]),
    ("Generate", "", ["Generate", "No stored generator in this zoo yet"]),
    ("Diffs", "?model={child}", ["Diffs", "child − parent", "What the fine-tune did", "No weight-diff interpreter"]),
]


@pytest.mark.parametrize("path,query,texts", PAGES, ids=[p[0] or "Home" for p in PAGES])
def test_page_renders(server: str, browser_page, e2e_zoo: dict, path: str, query: str, texts: list[str]) -> None:
    page = browser_page
    page.goto(f"{server}/{path}{query.format(**e2e_zoo)}", wait_until="domcontentloaded")
    page.wait_for_selector(f"text={texts[0]}", timeout=30_000)
    for t in texts[1:]:
        page.get_by_text(t, exact=False).first.wait_for(state="attached", timeout=20_000)  # table cells are hidden
    _wait_idle(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{path or 'Home'}.png"), full_page=True)
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()
    body = page.locator("body").text_content() or ""
    for t in texts:
        assert t in body, f"{t!r} not on page {path or 'Home'}"
    assert "Traceback" not in body


def test_open_model_navigates_to_its_detail_page(server: str, browser_page, e2e_zoo: dict) -> None:
    page = browser_page
    page.goto(f"{server}/Population_map", wait_until="domcontentloaded")
    page.get_by_role("button", name="Open model").wait_for(timeout=30_000)
    _wait_idle(page)
    page.get_by_role("button", name="Open model").click()
    page.wait_for_url("**/Model_detail?model=*", timeout=30_000)
    page.get_by_text("effective_rank").first.wait_for(state="attached", timeout=30_000)
    _wait_idle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "model=" in page.url
