"""The try-it page (GET /) and /docs in a real headless Chromium, end to end.

Real gunicorn gateways on the session Triton (EfficientNet-Lite0 with ImageNet weights), Debian's
Chromium through Selenium (tests/fixtures/browser.py), nothing mocked. One gateway has the
history on and allows the CORS origin of a second local site; the other has neither. The
screenshots land in the browser artifacts folder (the terminal summary names it).
"""

from __future__ import annotations

import functools
import http.server
import importlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from gateway.history.store import HistoryStore
from tests.fixtures.browser import (
    PHONE,
    LaunchChromium,
    Screenshot,
    console_problems,
    read_console,
)
from tests.fixtures.gateway import GatewayProcess

pytestmark = pytest.mark.e2e
skdata: Any = importlib.import_module("skimage.data")  # untyped

WAIT_S = 30.0
START_TIMEOUT_S = 60.0
KEY_STORAGE = "visionai.apiKey"
IMAGENET_CATS = (281, 282, 283, 284, 285, 287)  # tabby, tiger, Persian, Siamese, Egyptian, lynx
HUGE_BYTES = 30 * 1024 * 1024
MESSAGE_401 = "The API key was refused. Check it (no spaces), enter it again above and retry."
MESSAGE_413 = (
    "This image is too large for the gateway (at most 10 MB and 40 megapixels)."
    " Resize or compress it, then try again."
)
README_MAX_BYTES = 300 * 1024

CORS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Another origin</title>
<script src="cors.js" defer></script></head>
<body><p id="result"></p></body></html>
"""
# Writes "ok <label>" (the gateway answered and the browser let the page read it) or
# "blocked <error>" (fetch rejected: the CORS check failed) into #result.
CORS_SCRIPT = """"use strict";
async function callGateway(gateway, key) {
  const out = document.getElementById("result");
  out.textContent = "calling";
  try {
    const image = await (await fetch("chelsea.jpg")).blob();
    const form = new FormData();
    form.append("image", image, "chelsea.jpg");
    const response = await fetch(gateway + "/analyze", {
      method: "POST", headers: { "X-API-Key": key }, body: form,
    });
    const answer = await response.json();
    out.textContent = response.ok ? "ok " + answer.label : "failed " + response.status;
  } catch (error) {
    out.textContent = "blocked " + error;
  }
}
"""


@dataclass(frozen=True)
class Images:
    """The files the tests upload."""

    chelsea: Path  # skimage's cat, as a JPEG
    huge: Path  # that JPEG padded to 30 MiB: over the gateway's 10 MiB body limit
    too_many_pixels: Path  # a small PNG of 8000 x 6000 pixels: over the 40 megapixel limit


@dataclass(frozen=True)
class Gateways:
    """The two gateways of the module."""

    full: GatewayProcess  # history on, CORS allows the second site's origin
    plain: GatewayProcess  # no history, no CORS origin


@dataclass(frozen=True)
class Site:
    """A second local origin (http.server) serving the CORS test page."""

    origin: str

    @property
    def page(self) -> str:
        """The test page's URL."""
        return f"{self.origin}/index.html"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """Chelsea as a JPEG, a 30 MiB JPEG and a 48-megapixel PNG, as files."""
    folder = tmp_path_factory.mktemp("browser_images")
    buffer = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    chelsea = folder / "chelsea.jpg"
    chelsea.write_bytes(jpeg)
    huge = folder / "huge.jpg"
    huge.write_bytes(jpeg + os.urandom(HUGE_BYTES - len(jpeg)))  # bytes after the EOI marker
    too_many_pixels = folder / "too-many-pixels.png"
    Image.new("L", (8000, 6000)).save(too_many_pixels, "PNG")
    return Images(chelsea, huge, too_many_pixels)


@pytest.fixture(scope="module")
def cat_labels(model_repository: Path) -> frozenset[str]:
    """EfficientNet-Lite0's ImageNet labels of cats."""
    path = model_repository / "efficientnet_lite0" / "1" / "labels.txt"
    labels = path.read_text().splitlines()
    return frozenset(labels[i] for i in IMAGENET_CATS)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Iterator[Site]:
    """http://127.0.0.1:<free port>: a page whose script calls a gateway cross-origin."""
    root = tmp_path_factory.mktemp("cors_site")
    (root / "index.html").write_text(CORS_PAGE)
    (root / "cors.js").write_text(CORS_SCRIPT)
    (root / "chelsea.jpg").write_bytes(images.chelsea.read_bytes())

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output clean."""

    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="cors-site", daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _gateway(
    tmp_path_factory: pytest.TempPathFactory,
    triton_grpc_url: str,
    model_repository: Path,
    **env: str,
) -> GatewayProcess:
    """A gateway described as tests/fixtures/gateway.py's start_gateway does (not started)."""
    workdir = tmp_path_factory.mktemp("browser_gateway")
    metrics = workdir / "metrics"
    metrics.mkdir()
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWAY_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    settings = {
        "GATEWAY_WORKERS": "2",
        "GATEWAY_TRITON_URL": triton_grpc_url,
        "GATEWAY_MODEL_REPOSITORY": str(model_repository),
        "GATEWAY_DEFAULT_MODEL": "efficientnet_lite0",
        "GATEWAY_API_KEYS": "browser-" + os.urandom(18).hex(),
        "GATEWAY_TRITON_TIMEOUT_S": "5",
        "GATEWAY_CACHE": "off",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return GatewayProcess(settings, base_env=base_env, log_path=workdir / "gunicorn.log")


@pytest.fixture(scope="module")
def gateways(
    triton_server: Any,
    model_repository: Path,
    site: Site,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateways]:
    """Both gateways, started side by side: one with history and CORS, one with neither."""
    history = f"sqlite:///{tmp_path_factory.mktemp('browser_history') / 'h.sqlite'}"
    store = HistoryStore(history, 10.0)
    store.upgrade()
    store.dispose()
    full = _gateway(
        tmp_path_factory,
        triton_server.grpc_url,
        model_repository,
        GATEWAY_HISTORY_URL=history,
        GATEWAY_HISTORY_SECRET="browser-history-secret-0123456789",
        GATEWAY_CORS_ORIGINS=site.origin,
    )
    plain = _gateway(tmp_path_factory, triton_server.grpc_url, model_repository)
    try:
        for gateway in (full, plain):
            gateway.start()
        for gateway in (full, plain):
            gateway.wait_ready(START_TIMEOUT_S)
        yield Gateways(full, plain)
    finally:
        stoppers = [threading.Thread(target=g.stop) for g in (full, plain)]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()


# -- driving the page ---------------------------------------------------------------------------


def wait_for(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    """Wait (at most WAIT_S) until ``check(driver)`` is truthy; its value."""
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        check, f"timed out after {WAIT_S} s waiting for {what}"
    )


def text_of(driver: WebDriver, element_id: str) -> str:
    """The text content of the element with that id."""
    text: str = driver.execute_script(
        "return document.getElementById(arguments[0]).textContent;", element_id
    )
    return text.strip()


def open_page(driver: WebDriver, gateway: GatewayProcess) -> None:
    """Load the try-it page in a fresh tab (no key yet); the console then holds its load only."""
    # A new tab has a sessionStorage of its own: no key that an earlier test left behind.
    old = driver.current_window_handle
    driver.switch_to.new_window("tab")
    new = driver.current_window_handle
    driver.switch_to.window(old)
    driver.close()
    driver.switch_to.window(new)
    read_console(driver)  # earlier pages' messages
    driver.get(f"{gateway.url}/")
    wait_for(driver, "the page's script", lambda d: text_of(d, "key-status"))


def enter_key(driver: WebDriver, key: str) -> None:
    """Type the API key and press the form's button."""
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait_for(driver, "the key to be taken", lambda d: text_of(d, "key-status").startswith("A key"))


def upload(driver: WebDriver, path: Path) -> None:
    """Choose ``path`` in the page's file input, as the file chooser would."""
    driver.find_element(By.ID, "file-input").send_keys(str(path))


def wait_for_status(driver: WebDriver, text: str) -> None:
    """Wait until the status region says ``text``."""
    wait_for(driver, f"the status {text!r}", lambda d: text_of(d, "status") == text)


def wait_for_predictions(driver: WebDriver) -> list[str]:
    """Wait for the five predictions and the `Answered by` line; their labels."""
    wait_for(
        driver,
        "the predictions",
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#predictions li")) == 5
            and text_of(d, "answered-by")
        ),
    )
    return [
        item.find_element(By.CSS_SELECTOR, ".label span").text
        for item in driver.find_elements(By.CSS_SELECTOR, "#predictions li")
    ]


def analyze_requests(driver: WebDriver) -> int:
    """How many requests to /analyze this page made (the Resource Timing entries)."""
    count: int = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => new URL(e.name).pathname === '/analyze').length;"
    )
    return count


def readme_image(driver: WebDriver, full_page: Path, target: Path) -> None:
    """The screenshot cut to the page's column, as a small PNG (the README's picture)."""
    rect: dict[str, float] = driver.execute_script(
        "const r = document.body.getBoundingClientRect();"
        "return {left: r.left, right: r.right, height: document.documentElement.scrollHeight};"
    )
    with Image.open(full_page) as shot:
        box = (max(0, int(rect["left"]) - 24), 0, min(shot.width, int(rect["right"]) + 24))
        cut = shot.convert("RGB").crop((*box, int(rect["height"])))
    # 256 colours: a third of the size, and the photo still looks like one.
    cut.quantize(256, method=Image.Quantize.MEDIANCUT).save(target, "PNG", optimize=True)


# -- the tests ----------------------------------------------------------------------------------


def test_chelsea_is_a_cat_in_the_browser(
    gateways: Gateways,
    chromium: WebDriver,  # after the gateways: quit first, closing its keep-alive connections
    images: Images,
    cat_labels: frozenset[str],
    screenshot: Screenshot,
) -> None:
    """Key, file input, top-5 with meters, `Answered by` the model: no console error or CSP."""
    open_page(chromium, gateways.full)
    enter_key(chromium, gateways.full.api_key)
    upload(chromium, images.chelsea)
    labels = wait_for_predictions(chromium)
    assert labels[0] in cat_labels, labels
    assert text_of(chromium, "status").startswith(f"It looks like: {labels[0]} (")
    answered = text_of(chromium, "answered-by")
    assert re.fullmatch(r"Answered by efficientnet_lite0 version 1 in \d+ ms\.", answered), answered
    meters = chromium.find_elements(By.CSS_SELECTOR, "#predictions meter")
    values = [float(m.get_attribute("value") or "nan") for m in meters]
    assert all(0 <= v <= 100 for v in values) and values == sorted(values, reverse=True), values
    assert (meters[0].get_attribute("aria-label") or "").startswith(f"{labels[0]}: ")
    preview = chromium.find_element(By.ID, "preview")
    assert preview.is_displayed() and "chelsea.jpg" in (preview.get_attribute("alt") or "")
    shot = screenshot(chromium, "chelsea-desktop")
    readme = shot.with_name("try-it-page.png")  # docs/images/try-it-page.png is a copy of it
    readme_image(chromium, shot, readme)
    assert readme.stat().st_size < README_MAX_BYTES
    assert console_problems(read_console(chromium)) == []


def test_a_wrong_key_shows_the_401_message(
    gateways: Gateways, chromium: WebDriver, images: Images, screenshot: Screenshot
) -> None:
    """The gateway's 401 becomes the page's message in the status region, shown as an error."""
    open_page(chromium, gateways.full)
    enter_key(chromium, "not-the-key")
    upload(chromium, images.chelsea)
    wait_for_status(chromium, MESSAGE_401)
    status = chromium.find_element(By.ID, "status")
    assert status.get_attribute("role") == "status"
    assert "error" in (status.get_attribute("class") or "")
    assert chromium.find_elements(By.CSS_SELECTOR, "#predictions li") == []
    screenshot(chromium, "wrong-key-401")
    # The only error is the refused request itself (Chromium logs every 4xx response).
    assert console_problems(read_console(chromium), allow=["status of 401"]) == []


def test_too_large_images_get_the_413_message(
    gateways: Gateways, chromium: WebDriver, images: Images, screenshot: Screenshot
) -> None:
    """30 MiB: refused before any upload; 48 megapixels in a small PNG: the gateway's 413."""
    open_page(chromium, gateways.full)
    enter_key(chromium, gateways.full.api_key)
    upload(chromium, images.huge)
    wait_for_status(chromium, MESSAGE_413)
    assert analyze_requests(chromium) == 0  # the page did not upload 30 MiB to learn this
    screenshot(chromium, "too-large-413")
    chromium.execute_script("document.getElementById('status').textContent = '';")
    upload(chromium, images.too_many_pixels)
    wait_for_status(chromium, MESSAGE_413)
    assert analyze_requests(chromium) == 1  # this one the gateway refused
    assert console_problems(read_console(chromium), allow=["status of 413"]) == []


def test_the_key_lives_in_session_storage_only(gateways: Gateways, chromium: WebDriver) -> None:
    """The key is in this tab's sessionStorage, not a cookie, URL, localStorage or the field."""
    open_page(chromium, gateways.full)
    key = gateways.full.api_key
    enter_key(chromium, key)
    stored = chromium.execute_script(
        "return [sessionStorage.getItem(arguments[0]), document.cookie,"
        " JSON.stringify(localStorage), location.href];",
        KEY_STORAGE,
    )
    assert stored[0] == key
    assert key not in stored[1] and key not in stored[2] and key not in stored[3]
    assert key not in chromium.current_url
    assert chromium.find_element(By.ID, "api-key").get_attribute("value") == ""
    chromium.refresh()
    wait_for(chromium, "the reloaded page", lambda d: text_of(d, "key-status"))
    assert text_of(chromium, "key-status") == "A key is set for this tab."
    assert (
        chromium.execute_script("return sessionStorage.getItem(arguments[0]);", KEY_STORAGE) == key
    )
    first = chromium.current_window_handle
    chromium.switch_to.new_window("tab")  # another tab of the same origin has no key
    try:
        chromium.get(f"{gateways.full.url}/")
        wait_for(chromium, "the page in a new tab", lambda d: text_of(d, "key-status"))
        assert text_of(chromium, "key-status").startswith("Enter the API key")
    finally:
        chromium.close()
        chromium.switch_to.window(first)


def test_recent_analyses_list_the_answer(
    gateways: Gateways, chromium: WebDriver, images: Images, cat_labels: frozenset[str]
) -> None:
    """History on: the answer appears under "Your recent analyses", after a reload too."""
    open_page(chromium, gateways.full)
    enter_key(chromium, gateways.full.api_key)
    upload(chromium, images.chelsea)
    label = wait_for_predictions(chromium)[0]

    def newest(driver: WebDriver) -> str:
        if not driver.find_element(By.ID, "recent-section").is_displayed():
            return ""
        items = driver.find_elements(By.CSS_SELECTOR, "#recent li")
        return items[0].text if items else ""

    text = wait_for(chromium, "the recent analyses", newest)
    assert label in cat_labels
    assert text.startswith(f"{label} (") and ", efficientnet_lite0 v1, " in text, text
    chromium.refresh()
    assert wait_for(chromium, "the recent analyses after a reload", newest) == text
    assert text_of(chromium, "recent-title") == "Your recent analyses"


def test_history_off_shows_no_recent_analyses(
    gateways: Gateways, chromium: WebDriver, images: Images
) -> None:
    """Without a history the page says so on <body> and never shows the section."""
    open_page(chromium, gateways.plain)
    assert chromium.find_element(By.TAG_NAME, "body").get_attribute("data-history") == "off"
    enter_key(chromium, gateways.plain.api_key)
    upload(chromium, images.chelsea)
    wait_for_predictions(chromium)
    assert not chromium.find_element(By.ID, "recent-section").is_displayed()


def test_phone_width_has_no_horizontal_scroll(
    launch_chromium: LaunchChromium, gateways: Gateways, images: Images, screenshot: Screenshot
) -> None:
    """At 390 px (a phone's viewport) nothing overflows sideways and the result is in view."""
    phone = launch_chromium(PHONE, mobile=True)
    open_page(phone, gateways.full)
    enter_key(phone, gateways.full.api_key)
    upload(phone, images.chelsea)
    wait_for_predictions(phone)
    widths = phone.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth];"
    )
    assert widths[1] == PHONE[0] and widths[0] <= widths[1], widths
    result = phone.find_element(By.ID, "result-section")
    phone.execute_script("arguments[0].scrollIntoView();", result)
    box = phone.execute_script("return arguments[0].getBoundingClientRect().toJSON();", result)
    assert result.is_displayed() and box["left"] >= 0 and box["right"] <= widths[1], box
    screenshot(phone, "chelsea-phone")
    assert console_problems(read_console(phone)) == []


def test_inputs_are_labelled_and_the_drop_zone_is_focusable(
    gateways: Gateways, chromium: WebDriver
) -> None:
    """Labelled inputs; Tab reaches the drop zone and shows the file inputs' focus; live status."""
    open_page(chromium, gateways.full)
    unlabelled = chromium.execute_script(
        "return [...document.querySelectorAll('input')]"
        ".filter((i) => ![...i.labels].some((l) => l.textContent.trim())).map((i) => i.id);"
    )
    assert unlabelled == []
    assert chromium.execute_script("return document.getElementById('api-key').labels.length;") == 1
    focused: list[str] = []
    outlines: dict[str, str] = {}
    chromium.execute_script("document.activeElement.blur();")
    for _ in range(12):  # bounded: the key field, its two buttons, the drop zone, the inputs
        ActionChains(chromium).send_keys(Keys.TAB).perform()
        focused.append(chromium.switch_to.active_element.get_attribute("id") or "")
        if focused[-1] in ("file-input", "camera-input"):
            # The input is visually hidden: its focus must show on its label (the button).
            outlines[focused[-1]] = chromium.execute_script(
                "return getComputedStyle(document.activeElement.labels[0]).outlineStyle;"
            )
        if focused[-1] == "camera-input":
            break
    # "": the key form's submit button, which has no id.
    assert focused == ["api-key", "", "forget-key", "drop-zone", "file-input", "camera-input"]
    assert outlines == {"file-input": "solid", "camera-input": "solid"}, outlines
    zone = chromium.find_element(By.ID, "drop-zone")
    assert zone.get_attribute("tabindex") == "0" and zone.get_attribute("role") == "button"
    # A button's content is presentational to assistive technology: no controls inside.
    assert zone.find_elements(By.CSS_SELECTOR, "input, label, button, a, [tabindex]") == []
    # Like a button, a click, Enter and Space open the file chooser (held back here).
    chromium.execute_script(
        "window.chooserOpened = 0; document.getElementById('file-input').addEventListener("
        "'click', (e) => { e.preventDefault(); window.chooserOpened += 1; });"
    )
    zone.click()
    zone.send_keys(Keys.ENTER)
    zone.send_keys(Keys.SPACE)
    assert chromium.execute_script("return window.chooserOpened;") == 3
    status = chromium.find_element(By.ID, "status")
    assert status.get_attribute("role") == "status"
    assert status.get_attribute("aria-live") == "polite"


def test_cors_in_a_real_browser(
    gateways: Gateways, chromium: WebDriver, site: Site, cat_labels: frozenset[str]
) -> None:
    """From a second origin, Chromium lets the page read an allowed gateway and blocks the other."""
    chromium.get(site.page)
    wait_for(
        chromium,
        "the test page's script",
        lambda d: d.execute_script("return !!window.callGateway"),
    )
    read_console(chromium)
    for gateway in (gateways.full, gateways.plain):
        chromium.execute_script(
            "document.getElementById('result').textContent = '';"
            "callGateway(arguments[0], arguments[1]);",
            gateway.url,
            gateway.api_key,
        )
        wait_for(
            chromium,
            "the cross-origin call",
            lambda d: text_of(d, "result").startswith(("ok ", "blocked ", "failed ")),
        )
        result = text_of(chromium, "result")
        if gateway is gateways.full:
            assert result.startswith("ok ") and result[3:] in cat_labels, result
            assert console_problems(read_console(chromium)) == []
        else:
            assert result == "blocked TypeError: Failed to fetch", result
            blocked = [e.message for e in read_console(chromium)]
            assert any("has been blocked by CORS policy" in m for m in blocked), blocked


def test_docs_render_without_csp_violations(
    gateways: Gateways, chromium: WebDriver, screenshot: Screenshot
) -> None:
    """/docs: Swagger UI shows "VisionAI gateway" and POST /analyze, under the strict CSP."""
    read_console(chromium)
    chromium.get(f"{gateways.full.url}/docs")
    title = wait_for(
        chromium,
        "Swagger UI's title",
        lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, ".info .title")), None),
    )
    assert "VisionAI gateway" in title.text
    operation = wait_for(
        chromium,
        "the /analyze operation",
        lambda d: next(
            iter(d.find_elements(By.CSS_SELECTOR, ".opblock-post [data-path='/analyze']")), None
        ),
    )
    assert operation.is_displayed()
    screenshot(chromium, "docs")
    assert console_problems(read_console(chromium)) == []
