"""``ivrs demo --serve``: the demo, then the web console on its study, signed in to
with the user ID and password the demo prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import requests
from e2e import free_port, health

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_CREDENTIALS = re.compile(r"user ID (\d+), password (\S+): site coordinator")


def test_the_demo_serves_the_console_and_prints_how_to_sign_in(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "TWILIO_AUTH_TOKEN", "IVRS_ENV")}
    log = (tmp_path / "demo.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-c", "from ivrs.main import main; main()", "demo", "--serve",
         "--port", str(port), "--dir", str(tmp_path / "demo")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while health(url) != 200:
            assert process.poll() is None, (tmp_path / "demo.log").read_text()
            assert time.monotonic() < deadline, "the demo server did not come up"
            time.sleep(0.5)
        printed = (tmp_path / "demo.log").read_text()
        assert f"the web console: {url}/" in printed
        user_code, password = _CREDENTIALS.search(printed).groups()
        browser = requests.Session()
        form = browser.get(url + "/signin").text
        answer = browser.post(url + "/signin", data={
            "csrf_token": _TOKEN.search(form).group(1), "user_id": user_code,
            "password": password})
        assert answer.status_code == 200 and answer.url == url + "/"
        subjects = browser.get(url + "/subjects").text
        assert "1010001" in subjects  # screened by the demo's first call
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
