"""Names that show (docs/api.md "Names"): no controls, bidi, zero-width or other invisible
characters, no unassigned code points or noncharacters; unit checks of the rule, then the
same through the real server and client, and the settings and SQS names that share it."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from burrow.client import Connection, Reply, path
from burrow.config import Settings
from burrow.core import validation
from burrow.core.errors import BadRequest
from burrow.testing.backends import SERVER_BACKENDS
from burrow.testing.server import running_server

#: One of every kind of forbidden character, with the word its 400 reason must contain.
FORBIDDEN = {
    "nul": ("\x00", "control character"),
    "del": ("\x7f", "control character"),
    "c1-nel": ("\x85", "control character"),
    "c1-csi": ("\x9b", "control character"),
    "alm": ("\u061c", "format character"),
    "lrm": ("\u200e", "format character"),
    "rlm": ("\u200f", "format character"),
    "lre": ("\u202a", "format character"),
    "rlo": ("\u202e", "format character"),
    "lri": ("\u2066", "format character"),
    "pdi": ("\u2069", "format character"),
    "zwsp": ("\u200b", "format character"),
    "zwnj": ("\u200c", "format character"),
    "zwj": ("\u200d", "format character"),
    "word-joiner": ("\u2060", "format character"),
    "invisible-plus": ("\u2064", "format character"),
    "bom": ("\ufeff", "format character"),
    "soft-hyphen": ("\u00ad", "format character"),
    "tag": ("\U000e0041", "format character"),
    "line-separator": ("\u2028", "line separator"),
    "paragraph-separator": ("\u2029", "paragraph separator"),
    "hangul-filler": ("\u3164", "invisible character"),
    "halfwidth-hangul-filler": ("\uffa0", "invisible character"),
    "cgj": ("\u034f", "invisible character"),
    "noncharacter": ("\ufdd0", "noncharacter"),
    "noncharacter-fffe": ("\ufffe", "noncharacter"),
    "noncharacter-plane-16": ("\U0010ffff", "noncharacter"),
    "unassigned": ("\U000e0fff", "unassigned"),
}

ALLOWED = (
    "jobs",
    "ünï cøde",
    "日本語のキュー",
    "a b",
    "a\u00a0b",  # spaces are allowed (Zs), even the look-alike ones
    "\ue000private",  # private use
    "\u2764\ufe0f",  # a variation selector after a symbol
    "e\u0301",  # a combining mark
    "עברית",  # right-to-left letters are fine; only the invisible controls are not
    "100%",
    "a/b",
)


# -- the rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(("char", "word"), list(FORBIDDEN.values()), ids=list(FORBIDDEN))
@pytest.mark.parametrize("where", ["alone", "start", "middle", "end"])
def test_forbidden_characters_are_rejected_with_a_reason(char: str, word: str, where: str) -> None:
    text = {"alone": char, "start": char + "jobs", "middle": "jo" + char + "bs", "end": "jobs" + char}[where]
    position = {"alone": 1, "start": 1, "middle": 3, "end": 5}[where]
    reason = validation.forbidden_character(text)
    assert reason is not None and word in reason
    assert f"U+{ord(char):04X}" in reason and f"(character {position})" in reason
    # As the HTTP layer hands it over: percent-encoded, or raw UTF-8 bytes read as Latin-1.
    for raw in (quote(text, safe=""), text.encode("utf-8").decode("latin-1")):
        with pytest.raises(BadRequest) as error:
            validation.name(raw, "queue")
        assert error.value.message == f"queue name must not contain {reason}"


@pytest.mark.parametrize("text", ALLOWED)
def test_visible_names_are_allowed(text: str) -> None:
    assert validation.forbidden_character(text) is None
    assert validation.name(quote(text, safe=""), "queue") == text
    assert validation.name(text.encode("utf-8").decode("latin-1"), "queue") == text


def test_every_noncharacter_and_c1_control_is_rejected() -> None:
    nonchars = [chr(c) for c in range(0xFDD0, 0xFDF0)]
    nonchars += [chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF)]
    c1 = [chr(c) for c in range(0x80, 0xA0)]
    for char in nonchars + c1:
        assert validation.forbidden_character("a" + char) is not None, hex(ord(char))


def test_the_printable_fast_path_matches_the_categories() -> None:
    """forbidden_character() skips the per-character look-up when ``str.isprintable()`` holds;
    that is sound only while isprintable() is False exactly for C* and Z* (except " ")."""
    unprintable = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}
    wrong = [
        hex(c)
        for c in range(sys.maxunicode + 1)
        if chr(c).isprintable() != (c == 0x20 or unicodedata.category(chr(c)) not in unprintable)
    ]
    assert wrong == []


def test_ascii_names_take_the_fast_path_unchanged() -> None:
    raw = "job-17.v2_x~"
    assert validation.name(raw, "message") is raw
    for bad in ("a\x01b", "a%01b", "a%7Fb", "%0A"):
        with pytest.raises(BadRequest, match="control character U\\+00"):
            validation.name(bad, "message")


def test_the_default_sqs_account_follows_the_rule() -> None:
    Settings(sqs_default_account="ünï").validate()
    with pytest.raises(ValueError, match="U\\+202E"):
        Settings(sqs_default_account="acme\u202e").validate()
    with pytest.raises(ValueError, match="256 bytes"):
        Settings(sqs_default_account="x" * 257).validate()


# -- through the server -------------------------------------------------------------------


@pytest.fixture(params=sorted(SERVER_BACKENDS))
async def conn(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Connection]:
    settings = Settings(backend=SERVER_BACKENDS[request.param].format(tmp=tmp_path))
    async with running_server(settings) as server, Connection(server.url) as c:
        yield c
        await c.request("DELETE", "/v1.0")


def reason_of(reply: Reply) -> str:
    assert reply.status == 400, reply
    data = orjson.loads(reply.body)
    assert data["error"] == "bad_request"
    return str(data["message"])


@pytest.mark.parametrize("kind", ["rlo", "zwsp", "c1-nel", "bom", "noncharacter", "hangul-filler"])
async def test_server_refuses_invisible_names_everywhere(conn: Connection, kind: str) -> None:
    char, word = FORBIDDEN[kind]
    bad = "jobs" + char
    await conn.call("PUT", path("acme", "jobs", "m1"), b"keep")
    for what, target in (
        ("account", path(bad, "jobs", "m")),
        ("queue", path("acme", bad, "m")),
        ("message", path("acme", "jobs", bad)),
    ):
        for method in ("PUT", "GET", "POST", "DELETE"):
            reason = reason_of(await conn.request(method, target, b"x" if method == "PUT" else b""))
            assert reason.startswith(f"{what} name must not contain") and word in reason
            assert f"U+{ord(char):04X}" in reason
    # Raw UTF-8 in the request line (not percent-encoded) is refused by the HTTP layer already.
    assert (await conn.request("PUT", "/v1.0/acme/jobs/" + bad, b"x")).status == 400
    for target in (path(bad), path("acme", bad)):  # list paths too
        assert f"U+{ord(char):04X}" in reason_of(await conn.request("GET", target))
    # Nothing was stored: the queue holds only the message put first.
    assert orjson.loads((await conn.call("GET", "/v1.0")).body) == ["acme"]
    assert orjson.loads((await conn.call("GET", path("acme"))).body) == ["jobs"]
    assert orjson.loads((await conn.call("GET", path("acme", "jobs") + "?detail=id")).body) == ["m1"]


async def test_server_keeps_visible_unicode_names(conn: Connection) -> None:
    for i, text in enumerate(ALLOWED):
        assert (await conn.call("PUT", path(text, text, text), str(i).encode())).status == 201
        reply = await conn.call("GET", path(text, text, text) + "?detail=body")
        assert reply.body == str(i).encode()
    listed = orjson.loads((await conn.call("GET", "/v1.0")).body)
    assert listed == list(ALLOWED)


async def test_sqs_queue_names_stay_ascii() -> None:
    """SQS queue names allow only A-Z a-z 0-9 _ - (and .fifo): no invisible character gets in."""
    async with running_server() as server, Connection(server.url) as c:
        for name in ("jobs\u202e", "jobs\u200b", "jobs\x85", "jöbs"):
            reply = await c.request(
                "POST",
                "/",
                orjson.dumps({"QueueName": name}),
                {"X-Amz-Target": "AmazonSQS.CreateQueue", "Content-Type": "application/x-amz-json-1.0"},
            )
            assert reply.status == 400, reply
            assert b"InvalidParameterValue" in reply.body
