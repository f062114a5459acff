"""The web console: in a real headless browser (Debian's chromium, driven by selenium)
against ``assistant serve`` as a process of its own; and who may use it."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from assistant.errors import ConfigError
from assistant.protocol import Response
from assistant.transports.mqtt_client import Asker
from tests.servers import RedisServer, free_port
from tests.service import ROOT, Broker, ServiceProcess, service_config

pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options,
                              service=Service(shutil.which("chromedriver") or
                                              "/usr/bin/chromedriver"))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def call(url: str, method: str = "GET", body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_console_shows_the_service_and_an_edited_template_answers(
        browser: webdriver.Chrome, broker: Broker, redis_server: RedisServer,
        tmp_path: Path) -> None:
    intents = tmp_path / "intents"
    shutil.copytree(ROOT / "intents", intents)
    port = free_port()
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            intents=intents, console_port=port,
                            console_transcripts=("kitchen",))
    service = ServiceProcess(config).start()
    base = f"http://127.0.0.1:{port}"
    try:
        with Asker(broker.settings("ann"), user="ann", site="kitchen") as ann, \
                Asker(broker.settings("cal"), user="cal", site="hall") as cal:
            assert isinstance(ann.ask(text="turn on the kitchen light", timeout=20).reply,
                              Response)
            assert isinstance(cal.ask(text="what time is it", timeout=20).reply, Response)
        wait = WebDriverWait(browser, 20)
        browser.get(base + "/")
        # Health, and the requests: the kitchen's words shown (its owner allows it), not
        # the hall's.
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '.part.up[data-part="answering"]'))
        rows = wait.until(lambda b: [r.text for r in b.find_elements(By.CSS_SELECTOR,
                                                                      "#requests tr")])
        assert any("kitchen" in r and "turn on the kitchen light" in r for r in rows), rows
        assert any("hall" in r and "(not shown)" in r and "HassGetCurrentTime" in r
                   for r in rows), rows
        assert not any("what time is it" in r for r in rows)
        # The templates: an edit that does not load is shown at its line and not saved.
        Select(browser.find_element(By.ID, "files")).select_by_value("info.yaml")
        editor = browser.find_element(By.ID, "editor")
        wait.until(lambda b: "HassGetCurrentTime" in editor.get_property("value"))
        original = editor.get_property("value")
        broken = original.replace("It is {{ time.strftime('%-I:%M %p') }}.",
                                  "The time is {{ time.strftime('%-I:%M %p') }.")
        set_text(browser, editor, broken)
        browser.find_element(By.ID, "check").click()
        errors = wait.until(lambda b: [e.text for e in b.find_elements(By.CSS_SELECTOR,
                                                                        "#errors li")])
        line = original[:original.index("It is {{")].count("\n") + 1
        assert any(f"line {line}" in e for e in errors), errors
        browser.find_element(By.ID, "save").click()
        wait.until(lambda b: "not saved" in b.find_element(By.ID, "status").text)
        assert "The time is" not in (intents / "info.yaml").read_text()
        # A good edit: which cached answers it purges, saved, and the new answer.
        fixed = original.replace("It is {{ time.strftime('%-I:%M %p') }}.",
                                 "The time is {{ time.strftime('%-I:%M %p') }}.")
        set_text(browser, editor, fixed)
        browser.find_element(By.ID, "check").click()
        purges = wait.until(lambda b: b.find_element(By.ID, "purges").text)
        assert "HassGetCurrentTime" in purges and "HassTurnOn" not in purges
        browser.find_element(By.ID, "save").click()
        wait.until(lambda b: "saved and reloaded" in b.find_element(By.ID, "status").text)
        assert "The time is" in (intents / "info.yaml").read_text()
        browser.find_element(By.ID, "question").send_keys("what time is it")
        browser.find_element(By.ID, "ask").click()
        answer = wait.until(lambda b: b.find_element(By.ID, "answer").text)
        assert answer.startswith("The time is"), answer
        # The figures the page plots come from the service.
        status, figures = call(base + "/api/figures")
        assert status == 200 and figures["since_start"]["requests"] >= 2
    finally:
        service.stop()


def set_text(browser: webdriver.Chrome, element: Any, text: str) -> None:
    """Replace a textarea's text as typing would (the page reads its value)."""
    browser.execute_script("arguments[0].value = arguments[1];", element, text)


def test_changes_need_the_console_page_and_names_stay_in_the_folder(
        broker: Broker, redis_server: RedisServer, tmp_path: Path) -> None:
    intents = tmp_path / "intents"
    shutil.copytree(ROOT / "intents", intents)
    port = free_port()
    config = service_config(tmp_path, broker=broker, redis_url=redis_server.url,
                            intents=intents, console_port=port)
    service = ServiceProcess(config).start()
    base = f"http://127.0.0.1:{port}"
    try:
        text = (intents / "info.yaml").read_text()
        # A page of another site cannot send the header: no cross-site edit.
        status, _ = call(base + "/api/templates/info.yaml", "PUT", {"text": text})
        assert status == 403
        status, _ = call(base + "/api/ask", "POST", {"text": "what time is it"})
        assert status == 403
        for name in ("..%2Fsecret.yaml", "%2Fetc%2Fpasswd", "info.txt"):
            status, _ = call(base + f"/api/templates/{name}")
            assert status in (400, 404), name
        status, listed = call(base + "/api/templates")
        assert status == 200 and "info.yaml" in {f["file"] for f in listed}
        status, answered = call(base + "/api/ask", "POST", {"text": "what time is it"},
                                {"X-Console": "1"})
        assert status == 200 and answered["intent"] == "HassGetCurrentTime"
        # Asking never acts: a timer is not set from here.
        status, refused = call(base + "/api/ask", "POST", {"text": "set a timer for 5 minutes"},
                               {"X-Console": "1"})
        assert status == 200 and refused["text"] is None and "timers" in refused["refused"]
        # A name made to point here (DNS rebinding) is not this machine's.
        status, _ = call(base + "/api/templates", headers={"Host": f"evil.example:{port}"})
        assert status == 421
    finally:
        service.stop()


def test_off_loopback_the_console_needs_a_token(tmp_path: Path) -> None:
    from assistant.console.recent import RecentRequests
    from assistant.console.server import ConsoleServer
    from assistant.settings import ConsoleSettings

    def console(**settings: Any) -> ConsoleServer:
        return ConsoleServer(ConsoleSettings(port=free_port(), **settings), engine=None,
                             folder=tmp_path, language="en", registry=None,
                             figures=tmp_path / "figures.jsonl", health=lambda: {"ok": True},
                             recent=RecentRequests(5, shown=(), private=lambda u: False))

    with pytest.raises(ConfigError, match="token_file"):
        console(host="0.0.0.0").start()
    token = tmp_path / "console.token"
    token.write_text("s3cret-token\n")
    server = console(host="0.0.0.0", token_file=token).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert call(base + "/api/health")[0] == 401
        assert call(base + "/api/health", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(base + "/api/health",
                    headers={"Authorization": "Bearer s3cret-token"}) == (200, {"ok": True})
        with urllib.request.urlopen(base + "/?token=s3cret-token", timeout=5) as page:
            cookie = page.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert call(base + "/api/health", headers={"Cookie": cookie.split(";")[0]})[0] == 200
    finally:
        server.close()
