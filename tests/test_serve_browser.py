"""`hin serve` end to end in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium with the system chromedriver: nothing is downloaded). The server runs as
a subprocess on a free loopback port; the test uploads a picture through the page, waits for
the captions, clicks a word of the best caption and checks that its map image appears; a
screenshot is saved in the test's temporary directory. `make test` installs the browser
when it is missing and it runs as root; otherwise this test is skipped, saying why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from extract_models import TAUGHT_CAPTION, write_picture_checkpoint

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PICTURES = {"21.png": (48, 64), "22.png": (40, 40)}

pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"hin serve exited with {server.returncode}: "
                                 f"{server.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"hin serve did not answer {url}/healthz within {seconds} s")


@pytest.fixture
def server(tmp_path):
    checkpoint, _, _ = write_picture_checkpoint(
        tmp_path, PICTURES, config={"data": {"annotations": str(tmp_path / "pictures")}})
    np.save(tmp_path / "pictures" / "coco_test_ids.npy", np.array([21, 22]))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "hin", "serve", "--checkpoint", str(checkpoint), "--port",
         str(port), "--device", "cpu", "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process)
        yield url, tmp_path
    finally:
        process.terminate()
        process.wait(30)


def _chromium():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium "
                    "chromium-driver; `make test` does that when run as root)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,1200"):
        options.add_argument(flag)
    return webdriver, options, Service(CHROMEDRIVER)


def test_upload_a_picture_read_its_caption_and_click_a_word_for_its_map(server, tmp_path):
    webdriver, options, service = _chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    url, root = server
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        wait.until(lambda d: "sha256" in d.find_element(By.ID, "model").text)
        demos = driver.find_elements(By.CSS_SELECTOR, "#demos img")
        assert [d.get_attribute("title") for d in demos] == ["21.png", "22.png"]
        driver.find_element(By.ID, "file").send_keys(str(root / "pictures" / "21.png"))
        first = wait.until(shown.visibility_of_element_located((By.CSS_SELECTOR, "li.caption")))
        captions = driver.find_elements(By.CSS_SELECTOR, "li.caption")
        assert len(captions) == 3                      # the page asks for 3 of beam 5
        assert first.text.startswith(TAUGHT_CAPTION) and "log-prob" in first.text
        words = driver.find_elements(By.CSS_SELECTOR, "button.word")
        assert [w.text for w in words] == TAUGHT_CAPTION.split()
        assert driver.find_element(By.ID, "map-note").text.startswith("4x4 grid")
        words[2].click()
        picture = wait.until(shown.visibility_of_element_located((By.ID, "word-map")))
        assert picture.get_attribute("src").startswith("data:image/png;base64,")
        assert driver.execute_script("return arguments[0].naturalWidth", picture) > 0
        assert driver.find_element(By.ID, "word-caption").text.startswith('"dog": decoder grid')
        assert driver.find_element(By.ID, "status").text == ""
        screenshot = tmp_path / "serve_page.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    finally:
        driver.quit()
