"""What each benchmark workload sends: Python request scripts and the equivalent wrk Lua.

Every workload runs against a fresh server. Messages live in account ``bench``; prefilled
messages are ``bench/<queue>/<q[0]><index:015d>`` (16-byte ids: ``q000000000000042`` in queue
``q``) with a 100-byte body. A *stream* is one
connection of the Python generator or one wrk thread; streams split id ranges between them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from burrow.client import encode_request

ACCOUNT = "bench"
#: The 100-byte message body (ASCII, so it is a JSON string on the way out).
BODY = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 3)[:100]
TAKE_PATH = f"/v1.0/{ACCOUNT}/q?limit=1&hide=60&detail=all"
GET_QUEUE_PATH = f"/v1.0/{ACCOUNT}/q?limit=1"
_ID = re.compile(rb'"id":\s*"([^"]+)"')


def prefill_id(queue: str, index: int) -> str:
    """The id of the ``index``-th prefilled message of ``queue``: its first letter, then 15 digits."""
    return f"{queue[0]}{index:015d}"


@dataclass(frozen=True)
class Workload:
    """A named request mix, what it needs stored first, and the statuses that count as success."""

    name: str
    description: str
    ok: tuple[int, ...]
    #: Fixed prefills: (queue, messages).
    fills: tuple[tuple[str, int], ...] = ()
    #: Messages of queue ``q`` consumed per request; the runner sizes that prefill from the expected rate.
    consumes: float = 0.0
    wants_body: bool = False
    params: dict[str, int] = field(default_factory=dict)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("root", "GET / (the version list; routing only)", (200,)),
        Workload("put", "PUT of a new 100-byte message, unique 16-byte ids, one queue", (201,)),
        Workload(
            "get_queue",
            "GET /v1.0/bench/q?limit=1 (first message, detail=all) of 1,000",
            (200,),
            (("q", 1000),),
        ),
        Workload("get_message", "GET of one message by id, cycling over 10,000", (200,), (("q", 10_000),)),
        Workload("take", "POST ?limit=1&hide=60&detail=all: take the next message", (200,), consumes=1.0),
        Workload("delete", "DELETE of one message by id (prefilled, in order)", (204,), consumes=1.0),
        Workload(
            "worker",
            "worker cycle: take (POST limit=1 hide=60 detail=all), then DELETE the id it got",
            (200, 204),
            consumes=0.5,
            wants_body=True,
        ),
        Workload(
            "mixed",
            "per 20 requests: 5 PUT, 5 take, 5 DELETE of taken ids, 3 GET message, 2 GET queue",
            (200, 201, 204),
            (("q", 10_000), ("r", 1000)),
            wants_body=True,
        ),
    )
}

#: The baseline: GET / against the echo server (which does not parse, so bodies are not allowed).
ECHO = Workload("echo", "echo baseline: GET / answered by a fixed 200 without parsing", (200,))


class Script(Protocol):
    """Generates one stream's requests and sees its responses (the Python generator's wrk Lua)."""

    wants_body: bool

    def request(self) -> bytes | None:
        """The next request, or None when this stream has nothing more to send."""

    def response(self, code: bytes, body: bytes) -> None:
        """A response to this stream (``code`` as on the wire: ``b"200"``), for scripts that
        set ``wants_body``."""


class _Base:
    wants_body = False

    def response(self, code: bytes, body: bytes) -> None:
        pass


def template(method: str, path: str, body: bytes = b"") -> tuple[bytes, bytes]:
    """A request encoded once and split at the end of ``path``: a script sends
    ``prefix + suffix + tail`` with a varying path suffix (an id) and no per-request encoding."""
    hole = "\x00"
    prefix, tail = encode_request(method, path + hole, body).split(hole.encode())
    return prefix, tail


class Static(_Base):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def request(self) -> bytes | None:
        return self.data


class Put(_Base):
    """Unique ids ``p<stream:03><counter:012>``."""

    def __init__(self, stream: int, queue: str = "q") -> None:
        self.prefix, self.tail = template("PUT", f"/v1.0/{ACCOUNT}/{queue}/p{stream % 1000:03d}", BODY)
        self.counter = 0

    def request(self) -> bytes | None:
        self.counter += 1
        return b"%s%012d%s" % (self.prefix, self.counter, self.tail)


class Fill(_Base):
    """PUT prefill ids ``stream, stream + streams, ...`` below ``n``, then stop."""

    def __init__(self, queue: str, n: int, stream: int, streams: int) -> None:
        self.prefix, self.tail = template("PUT", f"/v1.0/{ACCOUNT}/{queue}/{queue[0]}", BODY)
        self.indices = iter(range(stream, n, streams))

    def request(self) -> bytes | None:
        index = next(self.indices, None)
        if index is None:
            return None
        return b"%s%015d%s" % (self.prefix, index, self.tail)  # the id is prefill_id(queue, index)


class ById(_Base):
    """``method`` on prefilled ids in stream order; at ``n`` wraps around, or ends (``wrap=False``)."""

    def __init__(self, method: str, queue: str, n: int, stream: int, streams: int, wrap: bool) -> None:
        self.n, self.wrap = max(n, 1), wrap
        self.prefix, self.tail = template(method, f"/v1.0/{ACCOUNT}/{queue}/{queue[0]}")
        self.index, self.step = stream, streams

    def request(self) -> bytes | None:
        if self.wrap:
            index = self.index % self.n
        elif self.index >= self.n:
            return None
        else:
            index = self.index
        self.index += self.step
        return b"%s%015d%s" % (self.prefix, index, self.tail)  # the id is prefill_id(queue, index)


class Worker(_Base):
    """Take a message, then delete the id the take returned.

    Responses that carry ids of queue ``r`` (the mixed workload's reads) are not takes and are ignored.
    """

    wants_body = True

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.take = encode_request("POST", TAKE_PATH)
        self.delete, self.delete_tail = template("DELETE", f"/v1.0/{ACCOUNT}/q/")

    def request(self) -> bytes | None:
        if self.pending:
            return self.delete + self.pending.pop() + self.delete_tail
        return self.take

    def response(self, code: bytes, body: bytes) -> None:
        if code == b"200":
            found = _ID.search(body)
            if found and not found.group(1).startswith(b"r"):
                self.pending.append(found.group(1))


MIXED_SLOTS = ("put", "take", "del", "getm") * 3 + ("put", "take", "del", "getq") * 2


class Mixed(Worker):
    """The 20-slot mix; a DELETE slot with no taken id left becomes a GET of one message."""

    def __init__(self, stream: int, streams: int, nread: int) -> None:
        super().__init__()
        self.put = Put(stream)
        self.read = ById("GET", "r", nread, stream, streams, wrap=True)
        self.get_queue = encode_request("GET", f"/v1.0/{ACCOUNT}/r?limit=1")
        self.slot = stream % len(MIXED_SLOTS)

    def request(self) -> bytes | None:
        kind = MIXED_SLOTS[self.slot]
        self.slot = (self.slot + 1) % len(MIXED_SLOTS)
        if kind == "put":
            return self.put.request()
        if kind == "take":
            return self.take
        if kind == "del" and self.pending:
            return self.delete + self.pending.pop() + self.delete_tail
        if kind == "getq":
            return self.get_queue
        return self.read.request()


def make_script(name: str, params: dict[str, int], stream: int, streams: int) -> Script:
    """The Python script for one stream of workload ``name`` (``fill:QUEUE`` is a prefill of ``n``)."""
    n = params.get("n", 0)
    if name.startswith("fill:"):
        return Fill(name[5:], n, stream, streams)
    makers: dict[str, Callable[[], Script]] = {
        "echo": lambda: Static(encode_request("GET", "/")),
        "root": lambda: Static(encode_request("GET", "/")),
        "put": lambda: Put(stream),
        "get_queue": lambda: Static(encode_request("GET", GET_QUEUE_PATH)),
        "get_message": lambda: ById("GET", "q", n, stream, streams, wrap=True),
        "take": lambda: Static(encode_request("POST", TAKE_PATH)),
        "delete": lambda: ById("DELETE", "q", n, stream, streams, wrap=False),
        "worker": Worker,
        "mixed": lambda: Mixed(stream, streams, params.get("nread", 1)),
    }
    return makers[name]()


# ---------------------------------------------------------------------------------------------
# wrk Lua: the same request streams, one stream per wrk thread.

_LUA_PRELUDE = """-- generated by burrow.bench for workload {name}
local nthreads = 0
tid = 0
local streams = {streams}
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %.0f, "p99_us": %.0f, '
    .. '"max_us": %.0f}}\\n', summary.requests, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
local body = "{body}"
"""

_LUA_PUT = """local counter = 0
local function put()
  counter = counter + 1
  return wrk.format("PUT", string.format("/v1.0/bench/q/p%03d%012d", tid % 1000, counter), nil, body)
end
"""

_LUA_BY_ID = """local index = -1
local function by_id(method, queue, n, wrap)
  if index < 0 then index = tid end
  local i = index
  if wrap then i = i % n end
  index = index + streams
  return wrk.format(method, string.format("/v1.0/bench/%s/%s%015d", queue, queue:sub(1, 1), i))
end
"""

_LUA_TAKE = """local pending = {{}}
local function take()
  return wrk.format("POST", "{take}")
end
local function delete_taken()
  local n = #pending
  if n == 0 then return nil end
  local id = pending[n]
  pending[n] = nil
  return wrk.format("DELETE", "/v1.0/bench/q/" .. id)
end
function response(status, headers, resp_body)
  if status == 200 then
    local id = resp_body:match('"id":%s*"([^"]+)"')
    if id and id:sub(1, 1) ~= "r" then pending[#pending + 1] = id end
  end
end
"""

_LUA_BODIES: dict[str, str] = {
    "echo": 'wrk.method = "GET"\nwrk.path = "/"\n',
    "root": 'wrk.method = "GET"\nwrk.path = "/"\n',
    "get_queue": f'wrk.method = "GET"\nwrk.path = "{GET_QUEUE_PATH}"\n',
    "take": f'wrk.method = "POST"\nwrk.path = "{TAKE_PATH}"\n',
    "put": _LUA_PUT + "function request() return put() end\n",
    "get_message": _LUA_BY_ID + 'function request() return by_id("GET", "q", {n}, true) end\n',
    "delete": _LUA_BY_ID + 'function request() return by_id("DELETE", "q", {n}, false) end\n',
    "worker": _LUA_TAKE + "function request() return delete_taken() or take() end\n",
    "mixed": _LUA_PUT
    + _LUA_BY_ID
    + _LUA_TAKE
    + """local slots = {{{slots}}}
local slot = -1
function request()
  if slot < 0 then slot = tid % #slots end
  local kind = slots[slot + 1]
  slot = (slot + 1) % #slots
  if kind == "put" then return put() end
  if kind == "take" then return take() end
  if kind == "del" then
    local r = delete_taken()
    if r then return r end
  end
  if kind == "getq" then return wrk.format("GET", "/v1.0/bench/r?limit=1") end
  return by_id("GET", "r", {nread}, true)
end
""",
}


def lua_script(name: str, params: dict[str, int], streams: int) -> str:
    """The wrk script for workload ``name`` with ``streams`` wrk threads."""
    body = _LUA_BODIES[name].format(
        n=max(params.get("n", 1), 1),
        nread=max(params.get("nread", 1), 1),
        take=TAKE_PATH,
        slots=", ".join(f'"{s}"' for s in MIXED_SLOTS),
    )
    return _LUA_PRELUDE.format(name=name, streams=streams, body=BODY.decode()) + body
