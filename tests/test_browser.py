"""pushd.js and the chat demo in a real headless Chromium, against real pushd
processes (one browser for the whole module; pages are tabs)."""

from __future__ import annotations

import pytest
from browser import js_until, launch, missing, proxy, pushd, until

from pushd.client import PushClient

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

SECRET = "browser-test-secret-at-least-32-bytes!"
CONFIG = """
history:
  - {channel: "news*", size: 100, ttl: 600}
"""

# A page-side recorder: one Pushd on a channel ("news" unless named; event
# "headline").  Each test has its own channel: a long-poll starts at the
# server's second, so another test's message of that second would show.
RECORD = r"""
const options = arguments[0], name = arguments[1] || "news";
window.rec = {states: [], transports: [], got: [], recovered: [], lost: [], subscribed: 0};
const push = window.push = new Pushd(location.origin, options);
push.on("state", (s) => rec.states.push(s));
push.on("transport", (t) => rec.transports.push(t));
const news = push.subscribe(name);
news.bind("headline", (data) => rec.got.push(data));
news.bind("pushd:subscription_succeeded", () => rec.subscribed++);
news.bind("pushd:recovered", (r) => rec.recovered.push(r.recovered));
push.on("messages_lost", (channel, notice) => rec.lost.push([channel, notice.type]));
"""


@pytest.fixture(scope="module")
def browser():
    driver = launch()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("browser")
    (directory / "pushd.yaml").write_text(CONFIG)
    return directory


@pytest.fixture(scope="module")
def server(logs):
    """pushd with the demo, and the upgrade-refusing proxy in front of it."""
    process, port = pushd(
        str(logs), "--demo", "--api-secret", SECRET, "--config", "pushd.yaml"
    )
    refusing, proxy_port = proxy(str(logs), port)
    yield {
        "url": "http://127.0.0.1:%d" % port,
        "proxied": "http://127.0.0.1:%d" % proxy_port,
        "push": PushClient("http://127.0.0.1:%d" % port, SECRET),
    }
    refusing.kill()
    process.kill()


@pytest.fixture
def tabs(browser):
    """Opens pages in new tabs; closes them after the test."""
    opened = []

    def open_tab(url):
        browser.switch_to.new_window("tab")
        browser.get(url)
        opened.append(browser.current_window_handle)
        return browser.current_window_handle

    yield open_tab
    for handle in opened:
        if handle in browser.window_handles:
            browser.switch_to.window(handle)
            browser.close()
    browser.switch_to.window(browser.window_handles[0])


def text(browser, element_id):
    return browser.execute_script(
        "return document.getElementById(arguments[0]).textContent", element_id
    )


def test_websocket_subscribe_and_receive(browser, server, tabs):
    """A page gets what the backend publishes, over WebSocket, in order."""
    tabs(server["url"] + "/demo/")
    browser.execute_script(RECORD, {})
    js_until(browser, "rec.subscribed === 1")
    for n in range(3):
        server["push"].publish("news", "headline", {"n": n})
    js_until(browser, "rec.got.length === 3")
    rec = browser.execute_script("return rec")
    assert rec["got"] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert rec["states"] == ["connecting", "connected"]
    assert rec["transports"] == ["websocket"]
    browser.execute_script("push.close()")
    js_until(browser, "push.state === 'disconnected'")


def test_offline_closes_at_once_and_online_recovers(browser, server, tabs):
    """The browser going offline closes the connection at once (no waiting
    for a timeout); coming back online reconnects and recovers what was
    published meanwhile."""
    tabs(server["url"] + "/demo/")
    browser.execute_script(RECORD, {}, "news-offline")
    js_until(browser, "rec.subscribed === 1")
    server["push"].publish("news-offline", "headline", {"n": 0})
    js_until(browser, "rec.got.length === 1")
    browser.execute_script("window.dispatchEvent(new Event('offline'))")
    assert browser.execute_script("return push.state") == "disconnected"
    until(lambda: server["push"].channel("news-offline")["subscribers"] == 0)
    for n in (1, 2):
        server["push"].publish("news-offline", "headline", {"n": n})
    assert browser.execute_script("return [push.state, rec.got.length]") == [
        "disconnected",
        1,
    ]
    browser.execute_script("window.dispatchEvent(new Event('online'))")
    js_until(browser, "rec.got.length === 3 && rec.recovered.length === 1")
    rec = browser.execute_script("return rec")
    assert rec["got"] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert rec["recovered"] == [True]
    assert rec["states"] == [
        "connecting",
        "connected",
        "disconnected",
        "connecting",
        "connected",
    ]
    browser.execute_script("push.close()")


def join(browser, tabs, base, name):
    handle = tabs(base + "/demo/?name=" + name)
    js_until(
        browser, "document.getElementById('status').textContent.startsWith('connected')"
    )
    return handle


def members(browser):
    return browser.execute_script(
        "return [...document.querySelectorAll('#members li')].map((li) => li.textContent)"
    )


def say(browser, text_):
    box = browser.find_element("id", "text")
    box.send_keys(text_)
    browser.find_element("css selector", "#say button").click()


def test_demo_presence_typing_history_and_private_messages(browser, server, tabs):
    """Two people in the demo see each other come and go, see each other
    type, chat, message privately; a third one joining gets the history."""
    ann = join(browser, tabs, server["url"], "Ann")
    bob = join(browser, tabs, server["url"], "Bob")
    js_until(browser, "document.querySelectorAll('#members li').length === 2")
    assert sorted(members(browser)) == ["Ann", "Bob (you)"]

    browser.switch_to.window(ann)
    js_until(
        browser, "document.getElementById('log').textContent.includes('Bob joined')"
    )
    assert sorted(members(browser)) == ["Ann (you)", "Bob"]

    browser.switch_to.window(bob)
    browser.find_element("id", "text").send_keys("hel")  # typing, not sent
    browser.switch_to.window(ann)
    js_until(
        browser,
        "document.getElementById('typing').textContent === 'Bob is typing\u2026'",
    )

    browser.switch_to.window(bob)
    browser.find_element("id", "text").clear()
    say(browser, "hello everyone")
    browser.switch_to.window(ann)
    js_until(
        browser, "document.getElementById('log').textContent.includes('hello everyone')"
    )
    # The message clears the indicator.
    assert text(browser, "typing") == ""

    # Ann writes to Bob only: Bob sees it, marked private.
    browser.find_element("css selector", "#members li:not(.me)").click()
    say(browser, "just for you")
    browser.switch_to.window(bob)
    js_until(browser, "document.querySelector('#log li.private') !== null")
    assert "just for you" in browser.execute_script(
        "return document.querySelector('#log li.private').textContent"
    )

    # Carol arrives later: the room's history, not the private message.
    join(browser, tabs, server["url"], "Carol")
    js_until(
        browser, "document.getElementById('log').textContent.includes('hello everyone')"
    )
    assert "just for you" not in text(browser, "log")

    browser.switch_to.window(bob)
    browser.close()
    browser.switch_to.window(ann)
    js_until(browser, "document.getElementById('log').textContent.includes('Bob left')")
    js_until(browser, "!document.getElementById('members').textContent.includes('Bob')")
    assert sorted(members(browser)) == ["Ann (you)", "Carol"]


def test_demo_screenshot_shows_a_conversation(browser, server, tabs, logs):
    """The demo renders as docs/demo.png shows (members, lines, typing)."""
    ann = join(browser, tabs, server["url"], "Ann")
    join(browser, tabs, server["url"], "Bob")
    say(browser, "hi Ann! this is pushd")
    browser.switch_to.window(ann)
    js_until(
        browser, "document.getElementById('log').textContent.includes('this is pushd')"
    )
    path = logs / "demo.png"
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 5000


def test_sse_when_websocket_upgrades_are_refused(browser, server, tabs):
    """Behind a proxy that refuses upgrades, pushd.js falls back to SSE:
    messages, presence (signed for the id the server issued, added by POST
    /sse/frames), history."""
    server["push"].publish("news", "headline", {"before": True})
    tabs(server["proxied"] + "/demo/")
    browser.execute_script(RECORD, {})
    js_until(browser, "rec.subscribed === 1")
    server["push"].publish("news", "headline", {"n": 1})
    js_until(browser, "rec.got.length === 1")
    rec = browser.execute_script("return rec")
    assert rec["got"] == [{"n": 1}]
    assert rec["transports"] == ["websocket", "sse"]
    assert rec["states"] == ["connecting", "disconnected", "connecting", "connected"]
    assert (
        browser.execute_script("return push.channel('news').trigger('x', 1)") is False
    )
    # A subscribe reopens the stream; messages published meanwhile arrive once.
    browser.execute_script("push.subscribe('news-more')")
    for n in range(2, 8):
        server["push"].publish("news", "headline", {"n": n})
    js_until(browser, "push.channel('news-more').subscribed && rec.got.length >= 7")
    assert browser.execute_script("return rec.got") == [{"n": n} for n in range(1, 8)]

    # The demo over SSE: Dan (direct, WebSocket) and Eve (through the proxy).
    dan = join(browser, tabs, server["url"], "Dan")
    say(browser, "dan was here")
    eve = join(browser, tabs, server["proxied"], "Eve")
    assert text(browser, "status") == "connected \u00b7 sse"
    js_until(
        browser, "document.getElementById('log').textContent.includes('dan was here')"
    )
    js_until(browser, "document.getElementById('members').textContent.includes('Dan')")
    browser.switch_to.window(dan)
    js_until(browser, "document.getElementById('members').textContent.includes('Eve')")
    say(browser, "hello Eve")
    browser.switch_to.window(eve)
    js_until(
        browser, "document.getElementById('log').textContent.includes('hello Eve')"
    )


def test_long_polling_when_eventsource_is_missing(browser, server, tabs):
    """No WebSocket through the proxy and no EventSource: long-polling
    through the relay, with event names and every message once, in order."""
    tabs(server["proxied"] + "/demo/")
    browser.execute_script("delete window.EventSource")
    browser.execute_script(RECORD, {}, "news-poll")
    js_until(browser, "rec.subscribed === 1")
    for n in range(4):
        server["push"].publish("news-poll", "headline", {"n": n})
    js_until(browser, "rec.got.length >= 4")
    rec = browser.execute_script("return rec")
    assert rec["got"] == [{"n": n} for n in range(4)]
    assert rec["transports"] == ["websocket", "longpoll"]
    assert rec["states"][-1] == "connected"
    assert browser.execute_script("return push.transport") == "longpoll"


def test_reconnect_after_restart_recovers_missed_messages(browser, logs, tabs):
    """pushd is killed (-9) and started again on the same port; messages
    published meanwhile (through another node sharing Redis) reach the page
    after it reconnects, each once, in order, and it is told they are all
    there (recovered).  When Redis restarts, the page is told it may have
    missed messages on a channel without history."""
    from pushd.testing import RedisServer, free_port

    redis = RedisServer()
    started = []

    def node(name, port=0):
        process, listening = pushd(
            str(logs),
            "--backend",
            "redis:port=%d" % redis.port,
            "--api-secret",
            SECRET,
            "--config",
            "pushd.yaml",
            "--demo",
            name=name,
            port=port,
        )
        started.append(process)
        return listening

    try:
        port = node("node-a", free_port())
        other = PushClient("http://127.0.0.1:%d" % node("node-b"), SECRET)
        tabs("http://127.0.0.1:%d/demo/" % port)
        browser.execute_script(RECORD, {})
        js_until(browser, "rec.subscribed === 1")
        other.publish("news", "headline", {"n": 0})
        js_until(browser, "rec.got.length === 1")

        started[0].kill()
        js_until(browser, "push.state !== 'connected'")
        for n in (1, 2):
            other.publish("news", "headline", {"n": n})
        node("node-a-again", port)
        js_until(browser, "rec.got.length >= 3 && rec.recovered.length >= 1", 30)
        other.publish("news", "headline", {"n": 3})
        js_until(browser, "rec.got.length >= 4")
        rec = browser.execute_script("return rec")
        assert rec["got"] == [{"n": n} for n in range(4)]
        assert rec["recovered"] == [True]
        assert rec["transports"] == ["websocket"]
        assert rec["states"][-1] == "connected"

        # Redis restarts: on a channel without history the node cannot know
        # what it missed, and the page is told (issue 10's loss notice).
        browser.execute_script(
            "push.subscribe('plain').bind('pushd:messages_lost',"
            " (n) => rec.lost.push(['bound', n.channel]))"
        )
        js_until(browser, "push.channel('plain').subscribed")
        redis.stop()
        redis.start()
        js_until(browser, "rec.lost.length === 2", 20)
        assert browser.execute_script("return rec.lost") == [
            ["bound", "plain"],
            ["plain", "messages_lost"],
        ]
        browser.execute_script("push.close()")
    finally:
        for process in started:
            process.kill()
        redis.close()
