"""`kcnn serve`'s page in a real browser: Debian's Chromium, headless, driven by selenium through Debian's
chromedriver (nothing downloaded at run time; `make test` installs both packages where it runs as root).

The model is the pretrained EfficientNet-Lite0 with its 1,000 ImageNet classes, exported to ONNX, and the image
scikit-image's photo of a cat: a person chooses the file (the file input), or drops it on the page (a drop event
carrying the file, which is what the browser fires for a real drag from the desktop), and reads a cat on top of
the page's five classes, with the probabilities the REST API gives for the same bytes.
"""

import base64
import os

import numpy as np
import pytest
import requests
from PIL import Image

from test_serve import Server, serving_process

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CATS = ("tabby", "tiger cat", "Egyptian cat")  # ImageNet 281-285 holds the domestic cats
# As this machine's notes give them: without the background-networking flags Chromium keeps dialling Google's hosts,
# which a closed network refuses; as root it needs --no-sandbox.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1000,900")

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason="Debian's chromium and chromium-driver are not installed (make test installs them where it runs as root: "
           "apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def cat_photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def pretrained_server(tmp_path_factory):
    """EfficientNet-Lite0 (ImageNet) as an ONNX export folder, served by the serving process."""
    import kcnn
    from kcnn.deploy.export import export
    from kcnn.weights import imagenet_class_names

    folder = tmp_path_factory.mktemp("lite0")
    model = kcnn.build("efficientnet_lite0", weights="imagenet")
    model.save(folder / "model.keras")
    export(folder / "model.keras", "onnx", output=folder / "export", class_names=imagenet_class_names(),
           verbose=False)
    server = Server(serving_process(folder / "export", "--port", "0", "--model-name", "lite0"))
    yield server
    assert server.stop() == 0, server.output


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium's driver manager must not look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _api_answer(server, path):
    body = {"instances": [{"b64": base64.b64encode(path.read_bytes()).decode()}]}
    response = requests.post(f"{server.url}/v1/models/lite0:predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def _top5_on_the_page(driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status = WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error")
        and d.find_element(By.ID, "status"))
    error = driver.find_element(By.ID, "error")
    assert status.get_attribute("data-state") == "done", (status.text, error.text)
    rows = driver.find_elements(By.CSS_SELECTOR, "#top5 > li.prediction")
    return [(row.find_element(By.CLASS_NAME, "class-name").text,
             float(row.find_element(By.CLASS_NAME, "probability").get_attribute("data-value"))) for row in rows]


def _expected_top5(answer):
    probabilities = np.asarray(answer["probabilities"])
    order = np.argsort(-probabilities, kind="stable")[:5]
    return order, probabilities[order]


def test_choosing_a_photo_shows_the_cat_on_top(browser, pretrained_server, cat_photo):
    from selenium.webdriver.common.by import By

    browser.get(pretrained_server.url + "/")
    assert "lite0" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "file").send_keys(str(cat_photo))  # what choosing the file in the dialog does
    shown = _top5_on_the_page(browser)
    answer = _api_answer(pretrained_server, cat_photo)
    order, probabilities = _expected_top5(answer)
    assert len(shown) == 5 and shown[0][0] in CATS, shown
    assert shown[0][0] == answer["class_name"]
    from kcnn.weights import imagenet_class_names

    names = imagenet_class_names()
    assert [name for name, _ in shown] == [names[i] for i in order]
    np.testing.assert_allclose([p for _, p in shown], probabilities, rtol=1e-6)
    assert browser.find_element(By.ID, "preview").get_attribute("hidden") is None  # the photo is shown too


def test_dropping_a_photo_on_the_page_classifies_it(browser, pretrained_server, cat_photo, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(pretrained_server.url + "/")
    # A drag from the desktop reaches the page as a `drop` event whose dataTransfer holds the file; WebDriver
    # cannot drag from outside the browser, so the test fires that event with the photo's bytes.
    png = tmp_path / "cat.png"
    Image.open(cat_photo).save(png)
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "cat.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """, base64.b64encode(png.read_bytes()).decode())
    shown = _top5_on_the_page(browser)
    assert shown[0][0] in CATS and shown[0][0] == _api_answer(pretrained_server, png)["class_name"], shown
    assert "cat.png" in browser.find_element(By.ID, "status").text


def test_a_file_that_is_not_an_image_shows_the_servers_error(browser, pretrained_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(pretrained_server.url + "/")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(text))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "image" in error.text.lower(), error.text
    assert browser.find_elements(By.CSS_SELECTOR, "#top5 > li") == []
    # and the server goes on serving
    requests.get(f"{pretrained_server.url}/v1/models/lite0", timeout=10).raise_for_status()
