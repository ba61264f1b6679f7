"""The playground page in headless Chromium against `adgen serve`: language switch, presets, streaming.

Needs Chromium and its chromedriver (Debian: `apt-get install chromium chromium-driver`); the test
is skipped without them. The browser never leaves loopback: networking features that call home
are switched off. A screenshot is saved under test-artifacts/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, wait_until
from tests.services.conftest_inference import ApiProcess, shared_inference_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def api(request, tiny_model: Path) -> ApiProcess:
    return shared_inference_api(request, tiny_model)


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("chromium and chromedriver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_is_served_without_external_resources(api):
    page = httpx.get(f"{api.url}/", timeout=10)
    script = httpx.get(f"{api.url}/static/app.js", timeout=10)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "生成" in page.text
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{api.url}/static/..%2Fmain.py", timeout=10).status_code == 404


def test_page_streams_an_ad_in_the_browser(api, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{api.url}/")
    generate_button = browser.find_element(By.ID, "generate-button")
    assert generate_button.text == "生成"

    browser.find_element(By.ID, "lang-toggle").click()
    assert generate_button.text == "Generate"
    assert browser.find_element(By.ID, "tags-heading").text == "Product tags"
    browser.refresh()
    assert browser.find_element(By.ID, "generate-button").text == "Generate"  # Kept in localStorage.
    browser.find_element(By.ID, "lang-toggle").click()
    assert browser.find_element(By.ID, "generate-button").text == "生成"

    for tag in ("类型#裙", "颜色#粉红色", "裙长#连衣裙"):
        browser.find_element(By.CSS_SELECTOR, f'.chip[data-tag="{tag}"]').click()
    assert (
        browser.find_element(By.ID, "tags-input").get_attribute("value") == "类型#裙*颜色#粉红色*裙长#连衣裙"
    )
    browser.find_element(By.CSS_SELECTOR, "details.options summary").click()
    max_tokens = browser.find_element(By.ID, "max-new-tokens")
    max_tokens.clear()
    max_tokens.send_keys("48")
    wait_until(
        lambda: browser.find_element(By.ID, "model-name").text == "tiny-glm",
        timeout=30,
        what="the model badge",
    )

    browser.find_element(By.ID, "generate-button").click()
    output = browser.find_element(By.ID, "output")
    wait_until(
        lambda: output.get_attribute("data-state") == "done", timeout=60, what="the ad to finish streaming"
    )

    text = output.text
    status = browser.find_element(By.ID, "status").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground.png"))
    assert text
    assert "\ufffd" not in text
    assert status.startswith("完成")
    assert browser.find_element(By.ID, "jobs-note").text in {
        "暂无任务。",
        "任务列表不可用（此服务器未提供 /v1/jobs）。",
    }

    browser.find_element(By.ID, "lang-toggle").click()
    browser.save_screenshot(str(ARTIFACTS / "playground-en.png"))
    assert browser.find_element(By.ID, "status").text.startswith("Done")
    assert browser.find_element(By.ID, "output").text == text
