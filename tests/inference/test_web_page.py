"""The try-it page of `mmlora serve --ui`, driven in headless Chromium (Debian's package, as the
report.html test uses): a real image is chosen in the file input, a question typed and asked;
the page shows the same answer the API gives, and the screenshot shows the uploaded image.

Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (file descriptors 3
and 4, NUL-separated JSON messages): no browser-automation package is needed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time

import pytest
from PIL import Image

from mmlora.config.paths import assets_dir
from mmlora.data.synthetic import COLORS
from mmlora.inference.web_page import page_html
from tests.evaluation.test_report import chromium, color_pixels  # noqa: F401 - chromium is a fixture

IMAGE = assets_dir() / "demo" / "images" / "blue_circle_gray_112x112.png"


class DevTools:
    """A headless Chromium with the DevTools protocol on a pipe; `call` sends one command to
    the page's session and returns its result."""

    def __init__(self, executable: str, profile):
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "--window-size=900,1000", "about:blank"]
        # The browser reads commands on fd 3 and writes replies on fd 4: bash puts the pipes there (dash takes one-digit fds only).
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', executable, *flags],
            pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.session = b"", 0, None
        target = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._replies, 1 << 20)
                assert chunk, "Chromium closed the DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 120):
        deadline = time.monotonic() + timeout_s
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)
        return value

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


def test_a_question_asked_on_the_page_gets_the_api_answer(api_server, chromium, tmp_path):  # noqa: F811
    openai = pytest.importorskip("openai")
    prompt = "What color is the shape?"
    client = openai.OpenAI(base_url=f"{api_server.url}/v1", api_key="unused", max_retries=0)
    data_url = "data:image/png;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
    expected = client.chat.completions.create(model=api_server.name, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": prompt}]}], max_tokens=12)
    expected = expected.choices[0].message.content
    assert expected

    browser = DevTools(chromium, tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=api_server.url + "/")
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('ask')")
        assert browser.evaluate("document.title") == f"mmlora: {api_server.name}"
        empty = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        file_input = browser.call("DOM.querySelector", nodeId=root, selector="#image")["nodeId"]
        browser.call("DOM.setFileInputFiles", files=[str(IMAGE)], nodeId=file_input)
        browser.wait_for("!document.getElementById('preview').hidden && document.getElementById('preview').complete")
        browser.evaluate(f"document.getElementById('prompt').value = {json.dumps(prompt)}")
        browser.evaluate("document.getElementById('max-tokens').value = '12'")
        browser.evaluate("document.getElementById('ask').click()")
        state = browser.wait_for("['done', 'error'].includes(document.getElementById('answer').className)"
                                 " && document.getElementById('answer').className")
        shown = browser.evaluate("document.getElementById('answer').textContent")
        assert (state, shown) == ("done", expected)
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()
    screenshot = Image.open(io.BytesIO(png)).convert("RGB")
    (tmp_path / "page.png").write_bytes(png)
    assert color_pixels(screenshot, COLORS["blue"]) > 1500  # the uploaded blue circle, previewed
    assert color_pixels(Image.open(io.BytesIO(empty)).convert("RGB"), COLORS["blue"]) < 50  # not the page's own


def test_the_page_names_the_model_safely():
    page = page_html('x</script><script>alert(1)</script>')
    assert "</script><script>alert(1)" not in page
    assert page.count("<script>") == 1 and "&lt;/script&gt;" in page
