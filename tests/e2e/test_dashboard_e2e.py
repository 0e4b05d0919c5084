"""The dashboard (/ui) in a real headless browser: Debian's Chromium driven by Playwright (the system browser's path;
``playwright install`` is never used), against a real API server and worker. The page follows a job live from queued
to succeeded without a reload, draws its loss and accuracy charts, shows the report and downloads (checked by sha256
in the browser), flags a GPU job no worker can take, and asks for an API key when the server needs one. A screenshot
of the job page is taken and checked; ``STILLHOUSE_UPDATE_SCREENSHOT=1`` also writes it to docs/dashboard.png (the
README's picture)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_backend
from tests.e2e.conftest import ROOT, free_port, start, stop
from tests.e2e.test_jobs_e2e import spec, wait_for

pytestmark = pytest.mark.e2e

REQUIRE = os.environ.get("STILLHOUSE_REQUIRE_SERVICES") == "1"


def chromium_path() -> str | None:
    """Debian's Chromium (``chromium``, or ``chromium-headless-shell``), if installed."""
    for name in ("chromium", "chromium-headless-shell", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        exe = None
    if exe is None:
        msg = "needs Playwright (pip) and Debian's chromium (apt-get install chromium; .ci/run does)"
        if REQUIRE:
            pytest.fail(msg + " but STILLHOUSE_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(msg)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def ui_live(tmp_path_factory):
    """API + one CPU worker on the embedded backend (SQLite + filesystem broker)."""
    backend, teardown = make_backend("sqlite", tmp_path_factory.mktemp("ui"))
    from stillhouse.db import migrate
    from stillhouse.settings import Settings

    migrate(Settings(data_dir=backend.data_dir))
    lv = start(backend, tmp_path_factory.mktemp("ui-logs"))
    yield lv
    stop(lv)
    teardown()


def check_screenshot(path: Path) -> None:
    """A real picture of the page: big enough, many colours (text, bars, charts), the charts' blue line present."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    assert img.width >= 1200 and img.height >= 700, img.size
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, len(colours or [])
    blue = sum(n for n, (r, g, b) in colours if abs(r - 0x25) < 30 and abs(g - 0x63) < 30 and abs(b - 0xEB) < 30)
    assert blue > 500, blue  # the progress bar and the first chart series (#2563eb)


def test_the_dashboard_follows_a_job_live_and_shows_its_charts_report_and_downloads(ui_live, browser, digits_teacher, tmp_path):
    c = ui_live.client
    teacher = c.upload(digits_teacher, "teacher")
    gpu = c.create_job(spec(teacher.id, name="waits-for-a-gpu", **{"training.device": "cuda"}))
    # long enough (about a minute on 2 cores) that the page is surely open before the job ends, even on a quiet machine
    job = c.create_job(spec(teacher.id, name="digits-cnn-to-mlp", **{"training.epochs": 40, "training.log_every_steps": 2}))

    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{ui_live.url}/ui")
    page.wait_for_selector(f"tr[data-job='{job.id}']")
    assert page.locator(f"tr[data-job='{gpu.id}']").inner_text().count("no worker") == 1
    assert page.locator(f"tr[data-job='{job.id}'] a").inner_text() == job.id  # ids never truncated

    page.click(f"tr[data-job='{job.id}'] a")
    page.wait_for_selector("#job-id")
    assert page.locator("#status .badge").get_attribute("data-status") in ("queued", "running")  # opened before it ended
    page.wait_for_selector("#status .badge[data-status='succeeded']", timeout=240_000)  # live, no reload
    page.wait_for_selector("#report")
    page.wait_for_selector("#downloads")

    assert page.locator("#loss-chart path[data-series]").count() >= 2  # kd, ce, total ... by step
    assert page.locator("#accuracy-chart path[data-series='val top-1']").count() == 1
    assert "40 / 40" in page.locator("#status [data-field='epoch']").inner_text()
    report = httpx.get(f"{ui_live.url}/v1/jobs/{job.id}/report").json()  # the JSON the page reads
    assert f"{100 * report['student']['val_top1']:.1f}%" in page.locator("#report").inner_text()
    for a in c.artifacts(job.id):
        link = page.locator(f"#downloads a[download='{a.name}']")
        assert link.get_attribute("href") == a.url
        digest = page.evaluate("""async (url) => {
            const buf = await (await fetch(url)).arrayBuffer();
            const d = await crypto.subtle.digest('SHA-256', buf);
            return [...new Uint8Array(d)].map(b => b.toString(16).padStart(2, '0')).join('');
        }""", a.url)
        assert digest == a.sha256, a.name
    assert not errors, errors

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    check_screenshot(shot)
    if os.environ.get("STILLHOUSE_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
    page.close()
    c.cancel(gpu.id)


def test_the_dashboard_asks_for_a_key_and_uses_it(ui_live, browser, tmp_path):
    """A server that needs keys: the page says so, and with a key shows that tenant's jobs (none of the default's)."""
    env = {**os.environ, **ui_live.backend.env(), "STILLHOUSE_AUTH": "required"}
    env.pop("STILLHOUSE_DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "app", "tenants", "create", "ui-team"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = subprocess.run([sys.executable, "-m", "app", "keys", "create", "--tenant", "ui-team"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    port = free_port()
    log = (tmp_path / "api.log").open("w")
    api = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, env={**env, "STILLHOUSE_PORT": str(port)},
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        from client import Stillhouse

        Stillhouse(f"http://127.0.0.1:{port}", api_key=key).wait_ready(timeout_s=60)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/ui")
        wait_for(lambda: "API key" in page.locator("#conn").inner_text(), 30, "the key prompt")
        page.fill("#apikey", key)
        page.click("#keyform button")
        page.wait_for_selector("text=no jobs yet")
        assert page.evaluate("localStorage.getItem('stillhouse.apiKey')") == key
        page.close()
    finally:
        api.terminate()
        api.wait(timeout=20)
