"""A real-browser test: JupyterLab on localhost, a notebook run in headless Chromium, a slider moved, the plot changed.

It opens `nbs/12_explore.ipynb` (a copy, so autosave never touches the source), runs all cells, moves the
temperature slider of the sampling explorer one page (1.00 -> 1.25) with the keyboard, waits for the explorer to
redraw and asserts the image changed. The screenshot goes to a temporary folder; with FLOWPP_UPDATE_FIGURES=1 it
replaces the committed `figures/12_browser_explorer.png`.

Needs Debian's `chromium` (`make test` installs it where it can) and the `playwright` package (dev extras); it is
driven with Playwright using that executable, never a browser download. Outside CI it is skipped when either is
missing; in CI (CI=true) a missing piece is a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "12_explore.ipynb"
# the committed figure is rewritten only when asked (FLOWPP_UPDATE_FIGURES=1): a test run leaves the tree clean
FIGURE = ROOT / "figures" / "12_browser_explorer.png"
JUPYTER = Path(sys.executable).parent / "jupyter"
CHROMIUM = Path(os.environ.get("FLOWPP_CHROMIUM", "/usr/bin/chromium"))
# the flags this closed-network machine needs (no background connections), headless, as root
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 120_000  # JupyterLab start, kernel start, running the notebook on a loaded 2-core machine

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None

missing = [what for what, ok in (("playwright", sync_playwright is not None), (str(CHROMIUM), CHROMIUM.exists())) if not ok]
if missing and os.environ.get("CI"):
    raise RuntimeError(f"the browser test needs {missing}; `make test` installs them (chromium via apt-get, as root)")
pytestmark = pytest.mark.skipif(bool(missing), reason=f"needs {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab on a free localhost port, over a copy of the notebook and what it reads; yields the base URL."
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    (root / "nbs").mkdir(parents=True)
    shutil.copy(ROOT / "nbs" / NOTEBOOK, root / "nbs" / NOTEBOOK)
    shutil.copytree(ROOT / "nbs" / "fixtures", root / "nbs" / "fixtures")
    shutil.copytree(ROOT / "results", root / "results")
    shutil.copy(ROOT / "settings.ini", root / "settings.ini")
    (root / "figures").mkdir()
    config, runtime, settings = tmp / "config", tmp / "runtime", tmp / "lab-settings"
    config.mkdir()
    (config / "jupyter_lab_config.py").write_text(
        "c.LabApp.news_url = None\nc.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'\n")
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no news pop-up over the page
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(runtime),
           "JUPYTER_DATA_DIR": str(tmp / "data"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "IPYTHONDIR": str(tmp / "ipython")}
    env.pop("MPLBACKEND", None)  # the kernel must use the inline backend
    port = _free_port()
    log_path = tmp / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(JUPYTER), "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
             f"--ServerApp.root_dir={root}"], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()}")
                try:
                    urllib.request.urlopen(f"{base}/api/status", timeout=2).read()
                    break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"jupyter lab did not answer in 90 s:\n{log_path.read_text()}")
                    time.sleep(0.2)
            yield base
        finally:
            if proc.poll() is None:
                proc.terminate()  # JupyterLab shuts its kernels down on SIGTERM
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            for pid in filter(str.isdigit, os.listdir("/proc")):  # backstop: kernels of this server only
                try:
                    if str(runtime).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture()
def page(tmp_path):
    "Headless Debian Chromium with a fresh profile; only localhost traffic is let through."
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000})
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else route.abort())
        pg = context.pages[0] if context.pages else context.new_page()
        pg.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield pg
        finally:
            context.close()


def test_temperature_slider_redraws_samples(lab, page, tmp_path):
    panel = ".jp-NotebookPanel"
    page.goto(f"{lab}/lab/tree/nbs/{NOTEBOOK}")
    toolbar = page.locator(f"{panel} .jp-NotebookPanel-toolbar")
    # the kernel is ready when the toolbar names it (the idle indicator shows before that) and it is idle
    expect(toolbar.locator(".jp-Toolbar-kernelName")).not_to_have_text("No Kernel", timeout=UI_TIMEOUT_MS)
    toolbar.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    explorer = page.locator(f"{panel} .widget-vbox").filter(has_text="temperature").first
    handle = explorer.locator(".widget-slider .noUi-handle")
    readout = explorer.locator(".widget-slider .widget-readout")
    image = explorer.locator(".widget-output img")
    image.wait_for(state="visible")
    expect(readout).to_have_text("1.00")
    before = image.get_attribute("src")
    assert before and before.startswith("data:image/png;base64,")

    handle.scroll_into_view_if_needed()
    handle.focus()
    page.keyboard.press("PageUp")  # one key press = one value change = one redraw (5 steps of 0.05)
    expect(readout).to_have_text("1.25")
    page.wait_for_function(
        "([img, old]) => { const el = document.querySelector(img);"
        " return el && el.complete && el.naturalWidth > 0 && el.getAttribute('src') !== old; }",
        arg=[f"{panel} .widget-vbox:has(.widget-readout) .widget-output img", before])
    after = image.get_attribute("src")
    assert after.startswith("data:image/png;base64,") and after != before, "the plot did not change"
    toolbar.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
    explorer.scroll_into_view_if_needed()
    shot = FIGURE if os.environ.get("FLOWPP_UPDATE_FIGURES") == "1" else tmp_path / FIGURE.name
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000, "the screenshot shows the explorer"
