"""The dashboard in a real headless browser: Debian's chromium driven by Playwright, against a real
server (in-process, on its own thread) filled through the API.

Each page (overview, account, queue, message paging, send form, SQS attributes, sign-in) is
screenshotted into a temporary directory, and also into ``$BURROW_SCREENSHOTS`` when that is
set, and checked for what it must show. Sending, deleting, releasing and purging are done by
clicking, and checked through the API. Attacker-controlled names and bodies must stay text, and
at 1366x768 nothing essential may overflow.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; Playwright's own browsers are never
downloaded) and the ``playwright`` package: skipped without them, failed under
``BURROW_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
import orjson
import pytest

from burrow.client import SyncConnection
from burrow.config import Settings
from burrow.testing.server import RunningServer, running_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, ViewportSize

CHROMIUM = "/usr/bin/chromium"
LAPTOP: ViewportSize = {"width": 1366, "height": 768}
DESKTOP: ViewportSize = {"width": 1920, "height": 1080}
#: A queue name and bodies that would run script if the page ever parsed them as HTML.
HOSTILE_QUEUE = '<img src=x onerror="window.__xss=1">'
HOSTILE_BODY = "<img src=x onerror=window.__xss=2><script>window.__xss=3</script>"
ACME, ACME_READ = "acme-token-0123456789", "acme-read-0123456789"


def expect_count(locator: Locator, count: int) -> None:
    """Wait until ``locator`` matches ``count`` elements: the page re-renders after each action
    (and on its timer), so a count read at once may see the page before that."""
    from playwright.sync_api import expect

    expect(locator).to_have_count(count)


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e .[dev])"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("BURROW_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and BURROW_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


class ThreadedServer:
    """``running_server`` on its own event loop in a daemon thread (the browser and boto3 block)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: RunningServer | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with running_server(self.settings) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> str:
        self._thread.start()
        assert self._ready.wait(30), "the server did not start"
        assert self.server is not None
        return self.server.url

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ThreadedServer(Settings(backend="memory://")) as base:
        yield base


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Page, str], Path]:
    """Screenshot a page (full length) into a temp dir, and into $BURROW_SCREENSHOTS when set."""
    directory = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("BURROW_SCREENSHOTS")

    def take(page: Page, name: str) -> Path:
        target = directory / f"{name}.png"
        page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 5000  # a rendered page, not an empty image
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(target, Path(extra) / target.name)
        return target

    return take


class Api:
    """The v1.0 API over a real socket, to fill the server and check what the page did."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __call__(self, method: str, *names: str, query: str = "", body: bytes = b"") -> Any:
        target = "/v1.0/" + "/".join(quote(n, safe="") for n in names) + (f"?{query}" if query else "")
        with SyncConnection(self.base, timeout=30) as conn:
            return conn.request(method, target, body, self.headers)

    def put(self, account: str, queue: str, message: str, body: bytes, query: str = "") -> None:
        assert self("PUT", account, queue, message, query=query, body=body).status == 201

    def message(self, account: str, queue: str, message: str) -> Any:
        reply = self("GET", account, queue, message)
        return orjson.loads(reply.body) if reply.status == 200 else None


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) at laptop size, failing the test on any script error,
    console error or CSP violation."""
    context = browser.new_context(viewport=LAPTOP)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: ConsoleMessage) -> None:
        # The refusals tests provoke (a bad ttl: 400; a wrong token: 401) are logged by chromium
        # as failed loads; the page shows them itself.
        expected = any(f"status of {status} " in message.text for status in (400, 401))
        if message.type == "error" and not expected:
            problems.append(f"console: {message.text}")

    tab.on("console", console)
    yield tab
    context.close()
    assert problems == []


def drawn(page: Page, canvas: str, color: tuple[int, int, int]) -> int:
    """Pixels of about ``color`` on the canvas: a series line was really drawn."""
    count: int = page.evaluate(
        """([selector, [r, g, b]]) => {
            const c = document.querySelector(selector);
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i + 3] > 200 && Math.abs(data[i] - r) < 30 && Math.abs(data[i + 1] - g) < 30
                    && Math.abs(data[i + 2] - b) < 30) n++;
            }
            return n;
        }""",
        [canvas, list(color)],
    )
    return count


VISIBLE_BLUE = (0x2F, 0x7E, 0xD8)


def wait_for_line(page: Page, canvas: str = "#chart-depth") -> None:
    """Two samples at least (the page samples every 1.5 s), so the line has length."""
    page.wait_for_function(
        "s => { const c = document.querySelector(s); return c && c.width > 0; }", arg=canvas, timeout=10_000
    )
    page.wait_for_timeout(1700)
    assert drawn(page, canvas, VISIBLE_BLUE) > 30


# -- the pages ----------------------------------------------------------------------------------


def test_overview_shows_accounts_counts_rates_and_a_live_chart(
    url: str, page: Page, shots: Callable[[Page, str], Path]
) -> None:
    api = Api(url)
    for i in range(4):
        api.put("overview-a", "jobs", f"m{i}", b"x")
    api.put("overview-a", "later", "m", b"x", "hide=300")
    api.put("overview-b", "q", "m", b"x")
    page.goto(f"{url}/ui")
    row = page.locator("#accounts tr", has=page.get_by_role("link", name="overview-a", exact=True))
    assert row.locator("td").all_inner_texts()[:5] == ["overview-a", "2", "4", "0", "1"]
    page.get_by_role("link", name="overview-b", exact=True).wait_for()
    assert page.locator("#who").inner_text() == "auth off"
    wait_for_line(page)
    # Auth off: the server-wide message rates are shown, as rates.
    assert page.locator("#rate-sent").inner_text().endswith("/s")
    assert page.locator("#chart-rates").is_visible()
    shots(page, "overview")
    page.get_by_role("link", name="overview-a", exact=True).click()
    page.wait_for_url("**/ui#/a/overview-a")


def test_account_lists_its_queues_with_kinds_and_counts(
    url: str, page: Page, shots: Callable[[Page, str], Path]
) -> None:
    api = Api(url)
    for i in range(3):
        api.put("acct", "emails", f"m{i}", b"x")
    api.put("acct", "jobs", "m", b"x")
    sqs = boto3.client(
        "sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id="acct", aws_secret_access_key="x"
    )
    sqs.create_queue(QueueName="orders")
    page.goto(f"{url}/ui#/a/acct")
    page.get_by_role("link", name="orders", exact=True).wait_for()
    rows = page.locator("#queues tbody tr")
    assert [r.locator("td").all_inner_texts()[:3] for r in rows.all()] == [
        ["emails", "v1.0", "3"],
        ["jobs", "v1.0", "1"],
        ["orders", "SQS", "0"],
    ]
    assert page.locator("#total-visible").inner_text() == "4"
    assert page.locator("#crumbs").inner_text().split() == ["Overview", "/", "acct"]
    wait_for_line(page)
    shots(page, "account")
    page.get_by_role("link", name="jobs", exact=True).click()
    page.locator("td.id", has_text="m").wait_for()


def test_queue_browses_messages_page_by_page(
    url: str, page: Page, shots: Callable[[Page, str], Path]
) -> None:
    api = Api(url)
    for i in range(45):
        api.put("browse", "paged", f"msg-{i:03d}", f"body {i}".encode(), "hide=120" if i == 3 else "")
    page.goto(f"{url}/ui#/q/browse/paged")

    def ids() -> list[str]:
        page.locator("td.id").first.wait_for()
        return page.locator("td.id").all_inner_texts()

    assert ids() == [f"msg-{i:03d}" for i in range(20)]
    hidden = page.locator("tr.message", has_text="msg-003").locator("td").all_inner_texts()
    assert hidden[2].endswith("s") and hidden[5] == "body 3"  # hide shown as time left
    assert page.locator("#count-visible").inner_text() == "44"
    assert page.locator("#count-delayed").inner_text() == "1"
    wait_for_line(page)
    shots(page, "queue")
    page.get_by_role("button", name="Next").click()
    page.locator("td.id", has_text="msg-020").wait_for()
    assert ids() == [f"msg-{i:03d}" for i in range(20, 40)]
    shots(page, "queue-page-2")
    page.get_by_role("button", name="Next").click()
    page.locator("td.id", has_text="msg-040").wait_for()
    assert ids() == [f"msg-{i:03d}" for i in range(40, 45)]
    assert page.get_by_role("button", name="Next").is_disabled()
    page.get_by_role("button", name="Previous").click()
    page.locator("td.id", has_text="msg-020").wait_for()
    page.get_by_role("button", name="First").click()
    page.locator("td.id", has_text="msg-000").wait_for()
    assert ids()[0] == "msg-000"


def test_send_release_delete_and_purge_through_the_page(
    url: str, page: Page, shots: Callable[[Page, str], Path]
) -> None:
    api = Api(url)
    api.put("ops", "work", "keep", b"k")
    api.put("ops", "work", "taken", b"t", "hide=300")
    page.goto(f"{url}/ui#/q/ops/work")
    page.locator("td.id", has_text="taken").wait_for()

    send = page.locator("#send-form")
    send.get_by_label("Body").fill("hello from the page")
    send.get_by_label("Message id").fill("sent-1")
    send.get_by_label("TTL (s)").fill("900")
    send.get_by_role("button", name="Send message").click()
    page.locator("#status", has_text="Sent message sent-1.").wait_for()
    page.locator("td.id", has_text="sent-1").wait_for()
    sent = api.message("ops", "work", "sent-1")
    assert sent["body"] == "hello from the page" and 890 <= sent["ttl"] <= 900
    shots(page, "send")

    # An id left empty gets a random one.
    send.get_by_label("Body").fill("anonymous")
    send.get_by_role("button", name="Send message").click()
    page.locator("#status", has_text="Sent message").wait_for()
    expect_count(page.locator("tr.message"), 4)

    # A refused write shows the server's reason.
    send.get_by_label("TTL (s)").fill("99999999999")
    send.get_by_role("button", name="Send message").click()
    page.locator("#status.error-text", has_text="400 bad_request").wait_for()
    send.get_by_label("TTL (s)").fill("")

    taken = page.locator("tr.message", has_text="taken")
    assert api.message("ops", "work", "taken")["hide"] > 0
    taken.get_by_role("button", name="Release").click()
    page.locator("#status", has_text="Released message taken.").wait_for()
    assert api.message("ops", "work", "taken")["hide"] == 0
    expect_count(taken.get_by_role("button", name="Release"), 0)

    page.locator("tr.message", has_text="keep").get_by_role("button", name="Delete").click()
    page.locator("#status", has_text="Deleted message keep.").wait_for()
    assert api.message("ops", "work", "keep") is None
    expect_count(page.locator("td.id", has_text="keep"), 0)

    api.put("ops", "work", "hidden", b"h", "hide=300")
    page.get_by_role("button", name="Purge queue…").click()
    page.get_by_role("button", name="Yes, purge").click()
    page.locator("#status", has_text="Queue purged.").wait_for()
    assert api("GET", "ops", "work", query="match_hidden=true").status == 404  # hidden ones too
    page.locator("p.empty", has_text="No messages in this queue").wait_for()
    shots(page, "purged")


def test_sqs_queue_shows_its_attributes(url: str, page: Page, shots: Callable[[Page, str], Path]) -> None:
    sqs = boto3.client(
        "sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id="shop", aws_secret_access_key="x"
    )
    queue = sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "45", "DelaySeconds": "0"})
    sqs.send_message(QueueUrl=queue["QueueUrl"], MessageBody="order 1")
    sqs.receive_message(QueueUrl=queue["QueueUrl"])
    page.goto(f"{url}/ui#/q/shop/orders")
    panel = page.locator("#sqs-attributes")
    panel.get_by_text("VisibilityTimeout", exact=True).wait_for()
    terms = panel.locator("dt").all_inner_texts()
    values = dict(zip(terms, panel.locator("dd").all_inner_texts(), strict=True))
    assert values["VisibilityTimeout"] == "45"
    assert values["QueueArn"] == "arn:aws:sqs:us-east-1:shop:orders"
    assert values["ApproximateNumberOfMessagesNotVisible"] == "1"
    assert page.locator("#kind").inner_text() == "SQS queue"
    row = page.locator("tr.message").locator("td").all_inner_texts()
    assert row[3] == "1" and row[5] == "order 1"  # received once; in flight
    assert page.locator("#count-in-flight").inner_text() == "1"
    shots(page, "sqs-attributes")


def test_hostile_names_and_bodies_stay_text(url: str, page: Page, shots: Callable[[Page, str], Path]) -> None:
    api = Api(url)
    api.put("evil", HOSTILE_QUEUE, HOSTILE_BODY, HOSTILE_BODY.encode())
    for view in ("", "#/a/evil", f"#/q/evil/{quote(HOSTILE_QUEUE, safe='')}"):
        page.goto(f"{url}/ui{view}")
        page.wait_for_timeout(300)
        if view.startswith("#/q/"):
            page.locator("td.id").first.wait_for()
            assert page.locator("h1 .name").inner_text() == HOSTILE_QUEUE
            assert page.locator("td.id").inner_text() == HOSTILE_BODY
            assert page.locator("td.body").inner_text() == HOSTILE_BODY
            shots(page, "hostile-queue")
        elif view:
            assert page.get_by_role("link", name=HOSTILE_QUEUE, exact=True).is_visible()
        # Only the page's own image; nothing injected ran.
        assert page.locator("img").count() == 1 and page.locator("main script").count() == 0
        assert page.evaluate("window.__xss") is None


def test_nothing_essential_overflows_a_laptop_screen(
    url: str, page: Page, shots: Callable[[Page, str], Path]
) -> None:
    api = Api(url)
    long_id, long_name = "i" * 256, "q" * 200
    api.put("l" * 120, long_name, long_id, b"y" * 5000)
    api.put("l" * 120, long_name, "short", " ".join(["word"] * 200).encode())
    sqs = boto3.client(
        "sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id="wide", aws_secret_access_key="x"
    )
    policy = '{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:wide:' + "d" * 70 + '","maxReceiveCount":"5"}'
    sqs.create_queue(QueueName="d" * 70)
    sqs.create_queue(QueueName="wide", Attributes={"RedrivePolicy": policy})
    views = {
        "overview": "",
        "account": f"#/a/{'l' * 120}",
        "queue": f"#/q/{'l' * 120}/{long_name}",
        "sqs": "#/q/wide/wide",
    }
    for size_name, size in (("laptop", LAPTOP), ("desktop", DESKTOP)):
        page.set_viewport_size(size)
        for name, fragment in views.items():
            page.goto(f"{url}/ui{fragment}")
            page.locator("table, p.empty").first.wait_for()
            page.wait_for_timeout(200)
            width = size["width"]
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (size_name, name)
            for selector in ("header.top", ".cards", "canvas.chart", "table", "#send-form", "button", "dl"):
                for box in (element.bounding_box() for element in page.locator(selector).all()):
                    if box is not None:  # None: not displayed (read-only, not an SQS queue, ...)
                        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (
                            size_name,
                            name,
                            selector,
                        )
            # The essentials are on the first screen at laptop size.
            if size is LAPTOP:
                assert page.locator(".cards").bounding_box()["y"] < size["height"]  # type: ignore[index]
                assert page.locator("canvas.chart").first.bounding_box()["y"] < size["height"]  # type: ignore[index]
            shots(page, f"{name}-{size_name}")


def test_sign_in_with_a_token_when_auth_is_on(
    browser: Browser, tmp_path: Path, shots: Callable[[Page, str], Path]
) -> None:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(f'[accounts.acme]\ntokens = ["{ACME}"]\nread_tokens = ["{ACME_READ}"]\n')
    with ThreadedServer(Settings(backend="memory://", credentials=str(credentials))) as base:
        Api(base, ACME).put("acme", "jobs", "m1", b"secret")
        context = browser.new_context(viewport=LAPTOP)
        page = context.new_page()
        page.goto(f"{base}/ui")
        page.locator("#sign-in").wait_for()
        shots(page, "sign-in")
        assert page.locator("#accounts tbody tr").count() == 0
        page.get_by_label("Token").fill("wrong-token-0123456789")
        page.get_by_role("button", name="Sign in").click()
        page.locator("#sign-in-message", has_text="401").wait_for()

        page.get_by_label("Token").fill(ACME)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="acme", exact=True).wait_for()
        assert page.locator("#sign-in").is_hidden()
        assert page.locator("#who").inner_text() == "signed in: account acme"
        assert page.locator("#chart-rates").is_hidden()  # server-wide rates are the admin's
        page.goto(f"{base}/ui#/q/acme/jobs")
        page.locator("td.id", has_text="m1").wait_for()
        expect_count(page.get_by_role("button", name="Delete"), 1)
        shots(page, "signed-in-queue")

        page.get_by_role("button", name="Sign out").click()
        page.locator("#sign-in").wait_for()
        page.get_by_label("Token").fill(ACME_READ)
        page.get_by_role("button", name="Sign in").click()
        page.locator("td.id", has_text="m1").wait_for()
        assert page.locator("#who").inner_text() == "signed in: account acme (read-only)"
        assert page.locator("#send-form").is_hidden()
        expect_count(page.get_by_role("button", name="Delete"), 0)
        assert page.get_by_role("button", name="Purge queue…").is_hidden()
        context.close()
