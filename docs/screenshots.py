#!/usr/bin/env python
"""The README's screenshots of the web console, taken from ``ivrs demo --serve``.

    python docs/screenshots.py [--out docs/img]

Runs the demo in a temporary directory, serves the console on it, signs in as
the demo's users in headless Chromium (Debian's, as the browser tests use) and
saves the dashboard, a subject, the shipments and the softphone as PNG files.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyotp
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
_CREDENTIALS = re.compile(r"user ID (\d+), password (\S+): ([a-z ]+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_demo(directory: Path, port: int) -> tuple[subprocess.Popen, dict[str, str]]:
    log = directory / "demo.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    process = subprocess.Popen(
        [sys.executable, "-c", "from ivrs.main import main; main()", "demo", "--serve",
         "--port", str(port), "--dir", str(directory / "demo")],
        stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(log.read_text()) from None
            time.sleep(0.5)
    passwords = {user: password for user, password, _ in _CREDENTIALS.findall(log.read_text())}
    return process, passwords


def sign_in(page, url: str, user: str, password: str) -> None:
    page.goto(url + "/signin")
    page.locator("#user_id").fill(user)
    page.locator("#password").fill(password)
    page.locator("form.stacked button[type=submit]").click()
    if "/signin/enrol" in page.url:
        secret = page.locator("code.secret").inner_text().strip()
        page.locator("#code").fill(pyotp.TOTP(secret).now())
        page.locator("form.stacked button[type=submit]").click()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as directory:
        process, passwords = start_demo(Path(directory), port)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                shots = [("5001", [("/", "dashboard"), ("/subjects/1010001", "subject"),
                                   ("/softphone", "softphone")]),
                         ("7001", [("/shipments", "shipments")])]
                for user, pages in shots:
                    context = browser.new_context(locale="en-US",
                                                  viewport={"width": 1280, "height": 900})
                    page = context.new_page()
                    sign_in(page, url, user, passwords[user])
                    # The demo users read their own language; the README shows English.
                    page.locator("#language-switch").select_option("en")
                    page.locator("header form.inline button").first.click()
                    for path, name in pages:
                        page.goto(url + path)
                        if name == "softphone":  # a call under way: the user ID typed
                            page.wait_for_load_state("load")  # the keypad's script too
                            page.get_by_role("button", name="Call", exact=True).click()
                            page.get_by_text("Enter your user ID").wait_for()
                            page.get_by_label("Keys to send").fill("5001#")
                            page.get_by_role("button", name="Send", exact=True).click()
                            page.get_by_text("PIN").last.wait_for()
                        page.screenshot(path=str(out / f"{name}.png"), full_page=False)
                        print(f"{out / (name + '.png')}")
                    context.close()
                browser.close()
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


if __name__ == "__main__":
    main()
