"""The widgets in a real JupyterLab, driven by headless Chromium (Debian's package, through Playwright).

The test writes a notebook that opens the three widgets on a small run, starts JupyterLab on a free
loopback port, runs the notebook from the menu, and then uses the widgets as a person would: next
channel, a class and a second class, a click on the image, Start and Stop of a tiny training. It
asserts what the page shows after each step, and saves screenshots under ``screenshots/`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine and `make test` could not install it (apt-get install -y chromium needs "
           "root and Debian's package archive)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(run_dir: str, train_cfg: dict) -> dict:
    cells = [
        "import infodisent\nfrom infodisent.widgets import ChannelBrowser, DecisionExplorer, TrainingPanel\n"
        f"run = infodisent.open_run({run_dir!r})",
        "browser = ChannelBrowser(run)\nbrowser",
        "explorer = DecisionExplorer(run, 1)\nexplorer",
        "import json\nfrom infodisent.records.run import RunConfig\n"
        f"panel = TrainingPanel(RunConfig.from_recorded(json.loads({json.dumps(train_cfg)!r})))\npanel",
    ]
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
                  for c in cells],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


@pytest.fixture(scope="module")
def lab(tiny_run, tmp_path_factory):
    """JupyterLab serving a notebook of the three widgets on the tiny run."""
    from dataclasses import replace

    tmp = tmp_path_factory.mktemp("lab")
    cfg = tiny_run[2]
    train_cfg = replace(cfg, out=str(tmp / "panel_run"), fit=replace(cfg.fit, epochs=3000), sparse=None).recorded()
    # INFODISENT_BROWSER_RUN=runs/demo opens the explorers on another run (to look at real screenshots)
    run_dir = os.environ.get("INFODISENT_BROWSER_RUN") or cfg.out
    (tmp / "widgets.ipynb").write_text(json.dumps(_notebook(str(Path(run_dir).resolve()), train_cfg)))
    port = _free_port()
    settings = tmp / "settings"
    for name, value in (("notebook-extension/tracker", {"windowingMode": "none"}),  # render every cell
                        ("apputils-extension/notification", {"fetchNews": "false"})):
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
         "--IdentityProvider.token=", "--ServerApp.password=", "--allow-root", f"--ServerApp.root_dir={tmp}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/lab", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError(f"JupyterLab did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, tmp, Path(run_dir).name
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def _output_of(page, cell: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(cell).locator(".jp-OutputArea")


def test_the_widgets_render_and_respond_in_jupyterlab(lab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    url, tmp, name = lab
    SHOTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)
        page.goto(f"{url}/lab/tree/widgets.ipynb")
        page.wait_for_selector(".jp-Notebook")
        dialog = page.locator(".jp-Dialog button", has_text="Select")
        try:  # JupyterLab may still ask which kernel, though the notebook names one
            dialog.click(timeout=10_000)
        except PlaywrightTimeout:
            pass
        page.locator(".jp-mod-left .lm-TabBar-tab.lm-mod-current").click()  # fold the file browser: full width
        page.keyboard.press("Escape")
        page.click("text=Run", timeout=30_000)  # the menu
        page.click("text=Run All Cells")

        try:
            cb, de, tp = _output_of(page, 1), _output_of(page, 2), _output_of(page, 3)
            expect(cb.locator("text=Channel browser")).to_be_visible()
            expect(de.locator("text=Decision explorer")).to_be_visible()
            expect(tp.locator("text=Train an InfoDisent head")).to_be_visible()
            expect(de.locator(".js-plotly-plot").first).to_be_visible()
            page.wait_for_timeout(1500)
            assert page.locator("text=Error displaying widget").count() == 0

            # ChannelBrowser: the next channel
            header = cb.locator(".idw-title", has_text=re.compile(r"^channel \d+$")).first
            first = header.inner_text()
            cb.locator(".jp-OutputArea-output").first.screenshot(path=str(SHOTS / f"channel_browser_{name}.png"))
            cb.locator("button", has_text="next").click()
            expect(header).not_to_have_text(first)
            assert cb.locator("img").count() >= 8  # prototype patches

            # DecisionExplorer: another class, a second class, a click on the image
            de.scroll_into_view_if_needed()
            title = de.locator(".js-plotly-plot .gtitle").first
            before = title.text_content()
            def dropdown(label):  # ipywidgets: <div class="widget-dropdown"><label>LABEL</label><select>
                return de.locator(f"xpath=//div[contains(@class, 'widget-dropdown')][label[contains(., '{label}')]]//select")

            explain = dropdown("explain")
            options = explain.locator("option").evaluate_all("os => os.map(o => o.value)")  # "3: cat+cup"
            assert len(options) >= 2, options
            chosen = next(o for o in options if o.split(": ", 1)[1] not in before)
            explain.select_option(value=chosen)
            expect(title).not_to_have_text(before)
            assert chosen.split(": ", 1)[1] in title.text_content()

            why_not = dropdown("why")
            versus = de.locator(".js-plotly-plot .gtitle").last
            versus_before = versus.text_content()
            other = next(o for o in options if o != chosen and o.split(": ", 1)[1] not in versus_before)
            why_not.select_option(value=other)
            expect(versus).to_contain_text(other.split(": ", 1)[1])

            picture = de.locator("img").first
            src = picture.get_attribute("src")
            picture.click(position={"x": 60, "y": 250})
            expect(de.locator("text=channels peak here")).to_be_visible()
            assert picture.get_attribute("src") != src  # the clicked cell is drawn
            de.locator(".jp-OutputArea-output").first.screenshot(path=str(SHOTS / f"decision_explorer_{name}.png"))

            # TrainingPanel: Start, then Stop after a few epochs
            tp.scroll_into_view_if_needed()
            tp.locator("button", has_text="Start").click()
            expect(tp.locator("text=/train: \\d+ of 3000 epochs/")).to_be_visible()
            tp.locator("button", has_text="Stop").click()
            expect(tp.locator("text=stopped on request")).to_be_visible()
            expect(tp.locator(".js-plotly-plot").first).to_be_visible()  # the curves (the frontier's figure waits)
            tp.locator(".jp-OutputArea-output").first.screenshot(path=str(SHOTS / f"training_panel_{name}.png"))
            assert (tmp / "panel_run" / "checkpoint.pt").is_file()

            page.screenshot(path=str(SHOTS / f"notebook_{name}.png"), full_page=True)
            stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            tracebacks = [t for t in stderr.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert not tracebacks, tracebacks
            assert page.locator("text=Error displaying widget").count() == 0
        except BaseException:
            page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
            print("PAGE TEXT:", page.locator(".jp-Notebook").inner_text()[-3000:])
            raise
        browser.close()
    assert not errors, errors
