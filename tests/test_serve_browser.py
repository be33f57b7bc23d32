"""The web page in headless Chromium (Debian's /usr/bin/chromium via Selenium) against a real server:
generate an image (progress and row-by-row previews seen, result in the gallery), chat about an
uploaded image, and fit a phone-sized screen. Screenshots go to the test's tmp folder, or to
$EMU3_SCREENSHOT_DIR when set. Skipped when Chromium, chromedriver or Selenium is missing."""

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from emu3.serve.launch import server_process  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver")


@pytest.fixture(scope="module")
def server(emu3_fixture):
    with server_process(["--model", str(emu3_fixture / "Emu3-tiny"), "--device", "cpu",
                         "--preview-interval", "0"]) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_window_size(1100, 1000)
    yield driver
    driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("EMU3_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 0
    return path


def test_generate_shows_progress_previews_and_the_result(server, browser, tmp_path):
    browser.get(server)
    assert browser.title == "emu3"
    browser.find_element(By.ID, "prompt").send_keys("a red circle above a blue square")
    browser.find_element(By.ID, "seed").send_keys("7")
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 90).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                     in ("done", "error"))
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-state") == "done", browser.find_element(By.ID, "status").text
    assert int(body.get_attribute("data-progress-events")) > 1 and int(body.get_attribute("data-previews")) >= 1
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "1"
    assert browser.find_element(By.ID, "status").text.startswith("Done")
    figures = browser.find_elements(By.CSS_SELECTOR, "#gallery figure")
    assert len(figures) == 1 and "seed 7" in figures[0].text and "64x64" in figures[0].text
    loaded = browser.execute_script("const i = document.querySelector('#gallery img'); "
                                    "return i.complete && i.naturalWidth;")
    assert loaded == 64
    screenshot(browser, tmp_path, "generate.png")


def test_chat_with_an_uploaded_image(server, browser, tmp_path, emu3_fixture):
    browser.get(server)
    browser.find_element(By.ID, "tab-chat").click()
    assert browser.find_element(By.ID, "panel-chat").is_displayed()
    browser.find_element(By.ID, "chat-images").send_keys(str(emu3_fixture / "input.png"))
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#attachments img"))
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("16")
    browser.find_element(By.ID, "chat-text").send_keys("What is in this picture?")
    browser.find_element(By.ID, "chat-send").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "chat-send").is_enabled()
                                     and d.find_elements(By.CSS_SELECTOR, ".bubble.assistant span")
                                     and d.find_element(By.CSS_SELECTOR, ".bubble.assistant span").text)
    assert not browser.find_elements(By.CSS_SELECTOR, ".bubble.error")
    assert browser.find_elements(By.CSS_SELECTOR, ".bubble.user img")
    screenshot(browser, tmp_path, "chat.png")


def test_new_chat_during_a_reply_drops_that_turn(server, browser):
    """The reply that finished after New chat was pushed into the new conversation's history, so the
    next question was sent with a turn the page no longer showed."""
    browser.get(server)
    browser.find_element(By.ID, "tab-chat").click()
    browser.execute_script("window.sent = []; const f = window.fetch; window.fetch = (url, opts) => {"
                           " if (opts && opts.body) window.sent.push(JSON.parse(opts.body)); return f(url, opts); };")
    browser.find_element(By.ID, "chat-text").send_keys("first question")
    # Send, then New chat before the reply can arrive (the submit handler is awaiting its fetch).
    browser.execute_script("document.getElementById('chat-send').click(); document.getElementById('chat-reset').click();")
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "chat-send").is_enabled())
    assert not browser.find_elements(By.CSS_SELECTOR, ".bubble")
    browser.find_element(By.ID, "chat-text").send_keys("second question")
    browser.find_element(By.ID, "chat-send").click()
    WebDriverWait(browser, 60).until(lambda d: len(d.execute_script("return window.sent")) == 2
                                     and d.find_element(By.ID, "chat-send").is_enabled())
    second = browser.execute_script("return window.sent")[1]["messages"]
    assert [m["content"][0]["text"] for m in second] == ["second question"]


def test_the_images_menu_offers_no_more_than_a_request_may_ask(browser, emu3_fixture):
    """The menu offered 1-4 whatever --max-batch-images said, and 3 or 4 were then refused."""
    with server_process(["--model", str(emu3_fixture / "Emu3-tiny"), "--device", "cpu",
                         "--max-batch-images", "2"]) as url:
        browser.get(url)
        WebDriverWait(browser, 10).until(
            lambda d: d.execute_script("return document.getElementById('count').options.length") == 2)


def test_fits_a_phone_screen(server, browser, tmp_path):
    browser.set_window_size(390, 844)
    try:
        browser.get(server)
        time.sleep(0.3)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        assert browser.find_element(By.ID, "generate").is_displayed()
        screenshot(browser, tmp_path, "phone.png")
    finally:
        browser.set_window_size(1100, 1000)
