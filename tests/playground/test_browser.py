"""The playground in a real headless browser (Debian's Chromium driven by Selenium; nothing is downloaded):
the page loads, an instruction and a message give three answers, the heatmap renders, bad input shows
its message. ``HYPERLORA_SCREENSHOTS=DIR`` saves a screenshot of each state there.

Skipped where Chromium or its driver is missing (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("gradio")
pytest.importorskip("selenium")
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and DRIVER), reason="needs Chromium and chromedriver: apt-get install chromium "
    "chromium-driver")]

from bpe_fixture import bpe_model, bpe_tokenizer  # noqa: E402
from hyperlora import HyperLoRA, HyperLoRAConfig  # noqa: E402
from hyperlora.encoder import EncoderConfig  # noqa: E402
from hyperlora.playground import PlaygroundSession  # noqa: E402
from hyperlora.playground.app import build_app  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    hyper = HyperLoRA(bpe_model(tok, init=0.5), tok,
                      HyperLoRAConfig(encoder=EncoderConfig(d_ctx=32, d_model=32, max_length=24)))
    with torch.no_grad():
        for p in hyper.hypernet.generator.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    app = build_app(PlaygroundSession(hyper, "tiny test model", tmp_path_factory.mktemp("play")))
    port = _free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.get(f"http://127.0.0.1:{port}/")
    try:
        yield driver
    finally:
        driver.quit()
        app.close()


def _box(driver, elem_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea")


def _wait(driver, condition, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: condition(d))


def _shot(driver, name: str) -> None:
    folder = os.environ.get("HYPERLORA_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def _type(driver, elem_id: str, text: str) -> None:
    box = _box(driver, elem_id)
    box.clear()
    box.send_keys(text)


def test_the_page_answers_shows_the_heatmap_and_reports_bad_input(page):
    from selenium.webdriver.common.by import By

    _wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    assert "hyperlora playground" in page.title
    _shot(page, "playground-loaded")

    _type(page, "instructions", "Answer in capital letters.\nEnd with the phrase 'Goodbye.'")
    _type(page, "message", "Suggest a name for a cat.")
    page.find_element(By.CSS_SELECTOR, "#generate").click()
    # Three answers: the student's two (one per instruction, numbered), the teachers' two and the base's.
    _wait(page, lambda d: all(_box(d, e).get_attribute("value") for e in ("student", "teacher", "base")))
    _wait(page, lambda d: "[2]" in _box(d, "student").get_attribute("value"))
    assert "[2]" in _box(page, "teacher").get_attribute("value")
    _shot(page, "playground-answers")

    page.find_element(By.CSS_SELECTOR, "#show").click()
    heatmap = _wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmap img"))[0]
    _wait(page, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap))
    assert page.find_elements(By.CSS_SELECTOR, "#similarity img")  # two instructions: their similarity too
    _shot(page, "playground-heatmap")

    _type(page, "instructions", "   ")
    page.find_element(By.CSS_SELECTOR, "#generate").click()
    status = _wait(page, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#status")
                                    if "Type an instruction first" in e.text])[0]
    assert "Traceback" not in page.page_source and "Type an instruction first" in status.text
    _shot(page, "playground-bad-input")
