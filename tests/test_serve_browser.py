"""`hin serve` end to end in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium with the system chromedriver: nothing is downloaded). The server runs as
a subprocess on a free loopback port. At desktop width: the empty page shows nothing of a
result, a phone photo stored sideways is shown and captioned upright, a word of the best
caption gives its map, new settings re-caption the picture, and the keyboard reaches the
chooser and the thumbnails. At phone width (390 px): no sideways scroll and the captions
above the picture. Screenshots of both are saved in the test's temporary directory. `make
test` installs the browser when it is missing and it runs as root; otherwise this test is
skipped, saying why."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from extract_models import TAUGHT_CAPTION, write_picture_annotations, write_picture_checkpoint
from serving import running_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PICTURES = {"21.png": (48, 64), "22.png": (40, 40)}
PHONE = {"width": 390, "height": 844}

pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path):
    checkpoint, _, _ = write_picture_checkpoint(
        tmp_path, PICTURES, config={"data": {"annotations": str(tmp_path / "pictures")}})
    write_picture_annotations(tmp_path / "pictures", list(PICTURES))
    with running_server(checkpoint, cwd=tmp_path) as (url, _):
        yield url, tmp_path


def _sideways_photo(path):
    """A JPEG stored 96x64 (red on the left) whose EXIF orientation 6 makes it 64x96 upright."""
    pixels = np.full((64, 96, 3), 40, np.uint8)
    pixels[:, :32] = (220, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif)
    path.write_bytes(buffer.getvalue())
    return path


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


def test_the_page_at_desktop_and_phone_width_with_mouse_and_keyboard(server, tmp_path):
    webdriver, options, service = _chromium()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    url, root = server
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=service)
    find = driver.find_element
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        wait.until(lambda d: "sha256" in find(By.ID, "model").text)
        assert "trained on" in find(By.ID, "knows").text and "9 words" in find(By.ID, "knows").text
        # The empty page: no picture box, no "Captions" heading, no map menus.
        for hidden in ("result", "view", "map-controls", "unfamiliar", "words-block"):
            assert not find(By.ID, hidden).is_displayed(), hidden
        assert driver.execute_script(
            "return performance.getEntriesByType('resource').every(e => !e.name.endsWith('favicon.ico'))")

        demos = driver.find_elements(By.CSS_SELECTOR, "#demos button.demo")
        assert [d.get_attribute("title") for d in demos] == ["21.png", "22.png"]

        # Keyboard: Enter and Space on the drop zone open the chooser (its click is caught
        # here, so no dialog opens), focus shows, Tab reaches the thumbnails.
        driver.execute_script("window.chooser = 0; document.getElementById('file')"
                              ".addEventListener('click', e => { window.chooser++; e.preventDefault(); })")
        keys = ActionChains(driver)
        keys.send_keys(Keys.TAB).perform()                      # the first stop: the API link
        keys.send_keys(Keys.TAB).perform()
        assert driver.switch_to.active_element.get_attribute("id") == "drop"
        keys.send_keys(Keys.ENTER).perform()
        keys.send_keys(Keys.SPACE).perform()
        assert driver.execute_script("return window.chooser") == 2
        assert driver.execute_script(
            "return getComputedStyle(document.getElementById('drop')).outlineStyle") == "solid"
        keys.send_keys(Keys.TAB).perform()                      # the file input: focus shows
        assert driver.switch_to.active_element.get_attribute("id") == "file"
        assert driver.execute_script(
            "return getComputedStyle(document.getElementById('drop')).outlineStyle") == "solid"
        focused = []
        for _ in range(3):
            keys.send_keys(Keys.TAB).perform()
            focused.append(driver.switch_to.active_element.get_attribute("title"))
        assert focused[:2] == ["21.png", "22.png"]

        # A phone photo stored sideways: shown and captioned upright.
        find(By.ID, "file").send_keys(str(_sideways_photo(root / "sideways.jpg")))
        first = wait.until(shown.visibility_of_element_located((By.CSS_SELECTOR, "li.caption")))
        assert first.text.startswith(TAUGHT_CAPTION) and "log-prob" in first.text
        assert len(driver.find_elements(By.CSS_SELECTOR, "li.caption")) == 3   # 3 of beam 5
        assert "picture 64x96 JPEG" in find(By.ID, "settings").text
        view = find(By.ID, "view")
        assert int(view.get_attribute("height")) > int(view.get_attribute("width"))
        assert find(By.ID, "map-note").text.startswith("4x4 grid")
        assert find(By.ID, "colour-bar").is_displayed()

        words = driver.find_elements(By.CSS_SELECTOR, "button.word")
        assert [w.text for w in words] == TAUGHT_CAPTION.split()
        words[2].click()
        picture = wait.until(shown.visibility_of_element_located((By.ID, "word-map")))
        assert picture.get_attribute("src").startswith("data:image/png;base64,")
        assert driver.find_element(By.ID, "word-caption").text.startswith('"dog": decoder grid')

        # New settings re-caption the picture on show; maps off hides the map menus.
        driver.execute_script("const c = document.getElementById('count'); c.value = 1;"
                              "c.dispatchEvent(new Event('change'))")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.caption")) == 1)
        find(By.ID, "explain").click()
        wait.until(lambda d: not d.find_element(By.ID, "map-controls").is_displayed())
        assert not find(By.ID, "words-block").is_displayed()
        find(By.ID, "explain").click()
        wait.until(lambda d: d.find_element(By.ID, "map-controls").is_displayed())
        assert find(By.ID, "status").text == ""
        desktop = tmp_path / "serve_desktop.png"
        assert driver.save_screenshot(str(desktop)) and desktop.stat().st_size > 10_000

        # Phone width: nothing wider than the screen, the captions above the picture.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {**PHONE, "deviceScaleFactor": 1, "mobile": True})
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#demos button.demo"))
        find(By.ID, "file").send_keys(str(root / "pictures" / "21.png"))
        first = wait.until(shown.visibility_of_element_located((By.CSS_SELECTOR, "li.caption")))
        wait.until(lambda d: d.find_element(By.ID, "map-note").text)
        assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE["width"]
        view = find(By.ID, "view")
        assert first.rect["y"] < view.rect["y"]
        assert first.rect["y"] + first.rect["height"] <= PHONE["height"]
        phone = tmp_path / "serve_phone.png"
        assert driver.save_screenshot(str(phone)) and phone.stat().st_size > 5_000
    finally:
        driver.quit()
