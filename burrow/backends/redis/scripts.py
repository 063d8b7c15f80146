"""The Lua code: a Redis Functions library with one function per storage operation.

Each operation is one ``FCALL``, atomic in Redis. The library is loaded once per server
(``FUNCTION LOAD``; again by whichever call meets a server without it), so a call runs
only its own body; its name carries a digest of the source, so processes of different
versions sharing a store each call their own. Redis runs a library's top level without
globals, so library locals that need them are bound by the first call (``begin``).

Key layout
==========

``P`` is the URL's ``prefix`` (default ``burrow``); ``t`` is the account's hash tag, the
first 8 hex digits of SHA-1 of its name; ``a`` the account name, ``n`` its length in
bytes, ``q`` the queue name. Every key of an account, its queues' included, carries the
tag ``{t}``, so it lives in one Cluster slot and an operation on one queue, or on two
queues of one account (a move), is one call. The global keys carry ``{P}``.

Per account (``P{t}K:a``, one key per kind ``K``):

* ``S`` hash: ``inc`` (incarnation: +1 each time the account gets its first queue),
  ``qn``/``mn`` (position counters of queues and metadata), ``pinc``/``pdue`` (what the
  global index was last told), ``ver`` (Cluster: the number of that publication).
* ``Q`` zset: queue -> position, the queues holding messages (first insertion order).
* ``D`` zset: queue -> a lower bound of its earliest message expiry or dedup deadline.
* ``W`` zset, score a whole second ``s``: ``"s|q"`` (queue q has a hide deadline in
  second s) and ``"s"`` (the account has one; told to the global index once).
* ``M`` hash: queue -> metadata; ``O`` zset: queue -> position (metadata creation order).

Per queue (``P{t}kn:aq``, one key per kind ``k``):

* ``d`` hash: message id -> record (below).
* ``r`` and ``n`` zsets: id -> seq (queue order). Every message is in exactly one: ``r``
  holds the *ready* ones (``hidden_until <= mu``), ``n`` the others, so a take reads
  ``r`` from its start and never walks past messages in flight; a listing that sees
  hidden messages merges the two.
* ``h`` / ``c`` zsets: id -> hidden_until, every message with a hide deadline, never
  claimed / claimed (``receives > 0``); kept after it lapses, for counts and wake-ups.
* ``x`` zset: id -> expires, every message that expires.
* ``s`` hash: ``n`` (seq counter), ``mu`` (readiness watermark), ``nl`` (no hide in
  ``h``/``c`` lapses before it), ``ws`` (the last wake-up second noted in ``W``), ``dl``
  (the bound ``D`` has for this queue), ``f`` (FIFO indexes built).
* FIFO indexes, once the queue had a FIFO claim or send (lex zsets, score 0): ``g`` holds
  ``G seq8 id`` of its ready messages, ``z`` holds ``G id`` of the others (``G`` = the
  group's length as 2 bytes, then its name; ``seq8`` big-endian); ``k`` zset: open
  group -> seq of its first ready message; ``b`` zset: blocked group -> until when.
* FIFO send state, kept with the metadata: ``f`` hash (``#`` -> sequence counter,
  ``=key`` -> dedup record ``<dd`` (sequence, until) + message id); ``e`` zset: dedup
  key -> until.

Global (``P{P}K``): ``A`` zset account -> position (live accounts, in order), ``I``
hash account -> the incarnation listed, ``N`` hash (position counter), ``D`` zset
account -> lower bound of its earliest deadline, ``W`` zset ``"s|a"`` -> s (accounts
with hide deadlines in second s), ``V`` hash account -> last publication applied
(Cluster only).

Records: a tag byte (bit 1: ``expires`` stored, 2: ``hidden_until`` stored, 4: extras
stored), ``seq`` (``<d``), the stored deadlines (``<d`` each; 0 is left out), the extras
(``<ddI4I2I4``: first_received, sequence, receives, group length, meta length, then group
and meta), then the body. Times are doubles, so they come back exactly as the service
passed them. A visible plain message with a ``ttl`` costs 17 bytes beside its body.

Readiness. ``mu`` only rises. An operation that lists visible messages first *migrates*:
if ``now`` has passed ``nl``, the members of ``h``/``c`` with a deadline in ``(mu, now]``
move from ``n`` to ``r`` and ``mu`` becomes ``now``. So each lapsed hide is moved once,
and an operation between lapses costs one hash read. Every record read is still checked
against ``now`` (processes' clocks may differ a little).

Global index. On a single server each function updates the global keys itself, so the
account list and the cleaner's index change atomically with the data. On Cluster they
are in another slot: a function returns *deltas* (account, publication number,
incarnation, earliest deadline; or a new wake-up second) and the backend applies them
with a second call on the global slot; a delta older than the last applied one is
ignored, so concurrent processes converge. A process that dies between the two leaves
the account's entry stale until its next change (see the package docstring).
"""

from __future__ import annotations

import hashlib

#: Shared by every script: records, contexts, indexes, publication.
LIBRARY = r"""
-- Redis runs a library's top level with no globals at hand (not even string or math):
-- these are bound when the first function runs, and kept.
local RC, spack, sunpack, sfmt, ssub, sbyte, sfind, floor, INF
-- Per call: the global key prefix ('' on a Cluster, where deltas are returned instead),
-- and the deltas to return.
local G, DELTAS = '', {}

local function begin(args)
  if RC == nil then
    RC = redis.call
    spack, sunpack = struct.pack, struct.unpack
    sfmt, ssub, sbyte, sfind = string.format, string.sub, string.byte, string.find
    floor, INF = math.floor, math.huge
  end
  G, DELTAS = args[1], {}
end

local function num(x) return sfmt('%.17g', x) end
local function after(x) return '(' .. num(x) end
local function whole(x) return sfmt('%.0f', x) end

-- Records: a tag byte (1: expires stored, 2: hidden_until stored, 4: the per-message
-- extras stored), seq, then the stored ones of expires, hidden_until, then the extras
-- (first_received, sequence, receives, group length, meta length, group, meta), then the
-- body. A deadline of 0 is left out: a plain visible message's record is 17 bytes + body.
local function dec(rec)
  local t = sbyte(rec, 1)
  local seq, pos = sunpack('<d', rec, 2)
  local exp, hid = 0, 0
  if t % 2 == 1 then exp, pos = sunpack('<d', rec, pos) end
  if t % 4 >= 2 then hid, pos = sunpack('<d', rec, pos) end
  if t < 4 then
    return {seq = seq, exp = exp, hid = hid, first = 0, sqn = 0, recv = 0, grp = '', meta = '',
            body = ssub(rec, pos)}
  end
  local first, sqn, recv, gl, ml
  first, sqn, recv, gl, ml, pos = sunpack('<ddI4I2I4', rec, pos)
  return {seq = seq, exp = exp, hid = hid, first = first, sqn = sqn, recv = recv,
          grp = ssub(rec, pos, pos + gl - 1), meta = ssub(rec, pos + gl, pos + gl + ml - 1),
          body = ssub(rec, pos + gl + ml)}
end

local function enc(m)
  local plain = m.recv == 0 and m.first == 0 and m.sqn == 0 and m.grp == '' and m.meta == ''
  local t = (m.exp ~= 0 and 1 or 0) + (m.hid ~= 0 and 2 or 0) + (plain and 0 or 4)
  local out = spack('<Bd', t, m.seq)
  if m.exp ~= 0 then out = out .. spack('<d', m.exp) end
  if m.hid ~= 0 then out = out .. spack('<d', m.hid) end
  if plain then return out .. m.body end
  return out .. spack('<ddI4I2I4', m.first, m.sqn, m.recv, #m.grp, #m.meta) .. m.grp .. m.meta .. m.body
end

local function copy(m)
  return {seq = m.seq, exp = m.exp, hid = m.hid, first = m.first, sqn = m.sqn, recv = m.recv,
          grp = m.grp, meta = m.meta, body = m.body}
end

local function expired(m, now) return m.exp > 0 and m.exp <= now end

-- Key names are built on first use: account keys are ap .. K .. ':' .. name, queue keys
-- ap .. k .. n .. ':' .. name .. queue (see the layout above); other fields are plain.
local AKEYS = {__index = function(t, k) local v = t.ap .. k .. ':' .. t.name; rawset(t, k, v); return v end}
local QKEYS = {__index = function(t, k) local v = t.pre .. k .. t.base; rawset(t, k, v); return v end}

local function account(ap, name)
  return setmetatable({ap = ap, name = name, ab = #name .. ':' .. name, dirty = false, pdue = false}, AKEYS)
end

local function queue(A, name)
  return setmetatable({A = A, name = name, pre = A.ap, base = A.ab .. name, mu = false, fifo = false,
                       nl = INF, ws = false, dl = INF, groups = {}, check = false}, QKEYS)
end

-- The queue's state hash: mu (readiness watermark), f (FIFO indexes built), nl (no hide
-- lapses before this: a lower bound of the deadlines in h and c above mu), ws (the last
-- wake-up second noted), dl (a bound the account's D has for this queue).
local function load(q)
  if q.mu == false then
    local st = RC('HMGET', q.s, 'mu', 'f', 'nl', 'ws', 'dl')
    q.mu = tonumber(st[1]) or 0
    q.fifo = st[2] == '1'
    q.nl = tonumber(st[3]) or INF
    q.ws = st[4]
    q.dl = tonumber(st[5]) or INF
  end
end

-- global index ------------------------------------------------------------------------
local function gapply(acc, ver, inc, due)
  if ver then
    if ver <= (tonumber(RC('HGET', G .. 'V', acc)) or 0) then return end
    RC('HSET', G .. 'V', acc, ver)
  end
  if inc > 0 then
    if tonumber(RC('HGET', G .. 'I', acc)) ~= inc then
      RC('HSET', G .. 'I', acc, inc)
      RC('ZADD', G .. 'A', RC('HINCRBY', G .. 'N', 'a', 1), acc)
    end
  else
    RC('HDEL', G .. 'I', acc)
    RC('ZREM', G .. 'A', acc)
  end
  if due == INF then RC('ZREM', G .. 'D', acc) else RC('ZADD', G .. 'D', due, acc) end
end

local function gwake(acc, sec)
  RC('ZADD', G .. 'W', sec, sec .. '|' .. acc)
end

-- Tell the global index the account's liveness and earliest deadline, if they changed.
local function publish(A)
  if not A.dirty then return end
  A.dirty = false
  local live = RC('EXISTS', A.Q) == 1
  local st = RC('HMGET', A.S, 'inc', 'pinc', 'pdue')
  local inc = live and (tonumber(st[1]) or 0) or 0
  local top = RC('ZRANGE', A.D, 0, 0, 'WITHSCORES')[2]
  local due = top and tonumber(top) or INF
  local changed = inc ~= (tonumber(st[2]) or 0) or due ~= (tonumber(st[3]) or INF)
  if G ~= '' then
    if changed then gapply(A.name, nil, inc, due) end
    if not live and due == INF and RC('EXISTS', A.O, A.W) == 0 then
      RC('DEL', A.S)  -- nothing left of the account: no state either
      return
    end
  elseif changed then
    DELTAS[#DELTAS + 1] = {'a', A.name, RC('HINCRBY', A.S, 'ver', 1), inc, due == INF and '' or num(due)}
  end
  if changed then
    RC('HSET', A.S, 'pinc', inc)
    if due == INF then RC('HDEL', A.S, 'pdue') else RC('HSET', A.S, 'pdue', num(due)) end
    A.pdue = due
  end
end

-- A message of the queue got a hide deadline at t: note its second for wake-up reports.
local function wake(q, t)
  if t < q.nl then
    q.nl = t
    RC('HSET', q.s, 'nl', num(t))
  end
  local A = q.A
  local sec = floor(t)
  local s = whole(sec)
  if s == q.ws then return end  -- noted already (most hides of a busy queue share seconds)
  q.ws = s
  RC('HSET', q.s, 'ws', s)
  if RC('ZADD', A.W, 'NX', sec, s .. '|' .. q.name) == 1 and RC('ZADD', A.W, 'NX', sec, s) == 1 then
    if G ~= '' then gwake(A.name, s) else DELTAS[#DELTAS + 1] = {'w', A.name, s} end
  end
end

-- A message of the queue (or a dedup record) expires at t.
local function due(q, t)
  load(q)
  if t >= q.dl then return end  -- D has an earlier bound for this queue already
  q.dl = t
  RC('HSET', q.s, 'dl', num(t))
  local A = q.A
  RC('ZADD', A.D, 'LT', t, q.name)
  if A.pdue == false then A.pdue = tonumber(RC('HGET', A.S, 'pdue')) or INF end
  if t < A.pdue then A.dirty = true end
end

-- queues ------------------------------------------------------------------------------
-- The seq of a message appended to the queue, creating the queue (and account) if needed.
local function append_seq(q)
  load(q)
  local seq = RC('HINCRBY', q.s, 'n', 1)
  if seq == 1 then
    local A = q.A
    if RC('EXISTS', A.Q) == 0 then RC('HINCRBY', A.S, 'inc', 1) end
    RC('ZADD', A.Q, RC('HINCRBY', A.S, 'qn', 1), q.name)
    A.dirty = true
  end
  return seq
end

local function queue_due(q)
  local a = RC('ZRANGE', q.x, 0, 0, 'WITHSCORES')[2]
  local b = RC('ZRANGE', q.e, 0, 0, 'WITHSCORES')[2]
  local t = math.min(tonumber(a) or INF, tonumber(b) or INF)
  if t == INF then RC('ZREM', q.A.D, q.name) else RC('ZADD', q.A.D, t, q.name) end
  q.A.dirty = true
  if RC('EXISTS', q.s) == 1 then
    q.dl = t
    if t == INF then RC('HDEL', q.s, 'dl') else RC('HSET', q.s, 'dl', num(t)) end
  end
end

local function drop_queue(q)
  RC('UNLINK', q.d, q.r, q.n, q.h, q.c, q.x, q.s, q.g, q.k, q.b, q.z)
  RC('ZREM', q.A.Q, q.name)
  queue_due(q)
  q.mu, q.fifo, q.groups = false, false, {}
end

-- FIFO groups ---------------------------------------------------------------------------
local function gpre(grp) return spack('>I2', #grp) .. grp end
local function gready(m, id) return gpre(m.grp) .. spack('>I8', m.seq) .. id end

-- Recompute one group's state: blocked (in b, until its last blocking hide ends) or open
-- (in k, scored by its first ready message), from its messages that are not ready.
local function regroup(q, grp, now)
  local P = gpre(grp)
  local hi = '(' .. P .. '\255'
  local until_ = 0
  for _, member in ipairs(RC('ZRANGEBYLEX', q.z, '[' .. P, hi)) do
    local rec = RC('HGET', q.d, ssub(member, #P + 1))
    if rec then
      local m = dec(rec)
      if m.hid > now and not expired(m, now) then
        local t = (m.exp > 0 and m.exp < m.hid) and m.exp or m.hid
        if t > until_ then until_ = t end
      end
    end
  end
  if until_ > 0 then
    RC('ZREM', q.k, grp)
    RC('ZADD', q.b, until_, grp)
  else
    RC('ZREM', q.b, grp)
    local head = RC('ZRANGEBYLEX', q.g, '[' .. P, hi, 'LIMIT', 0, 1)[1]
    if head then RC('ZADD', q.k, (sunpack('>I8', head, #P + 1)), grp) else RC('ZREM', q.k, grp) end
  end
end

-- messages ------------------------------------------------------------------------------
local function hkey(q, m) if m.recv > 0 then return q.c end return q.h end

-- Store a message's change (old -> new; either may be nil) in every index; returns the
-- new record. stored: the new record, already written (by HSETNX).
local function place(q, id, old, new, stored)
  load(q)
  local mu, rec = q.mu, stored
  if new then
    if not rec then
      rec = enc(new)
      RC('HSET', q.d, id, rec)
    end
  else
    RC('HDEL', q.d, id)
    q.check = true
  end
  local oe, ne = old and old.exp or 0, new and new.exp or 0
  if ne ~= oe then
    if ne > 0 then RC('ZADD', q.x, ne, id); due(q, ne) else RC('ZREM', q.x, id) end
  end
  local oh, nh = old and old.hid or 0, new and new.hid or 0
  local okey = (oh > 0) and hkey(q, old) or nil
  local nkey = (nh > 0) and hkey(q, new) or nil
  if okey and okey ~= nkey then RC('ZREM', okey, id) end
  if nkey and (nkey ~= okey or nh ~= oh) then RC('ZADD', nkey, nh, id); wake(q, nh) end
  local ordy = old ~= nil and oh <= mu
  local nrdy = new ~= nil and nh <= mu
  if not old then
    RC('ZADD', nrdy and q.r or q.n, new.seq, id)
  elseif not new then
    RC('ZREM', ordy and q.r or q.n, id)
  elseif ordy ~= nrdy then
    RC('ZREM', ordy and q.r or q.n, id)
    RC('ZADD', nrdy and q.r or q.n, new.seq, id)
  end
  if q.fifo then
    local oent = old and (ordy and gready(old, id) or gpre(old.grp) .. id)
    local nent = new and (nrdy and gready(new, id) or gpre(new.grp) .. id)
    if oent ~= nent or ordy ~= nrdy then
      if oent then RC('ZREM', ordy and q.g or q.z, oent) end
      if nent then RC('ZADD', nrdy and q.g or q.z, 0, nent) end
    end
    if old then q.groups[old.grp] = true end
    if new then q.groups[new.grp] = true end
  end
  return rec
end

-- Build the FIFO indexes of a queue that has none yet (once; its first FIFO operation).
local function ensure_fifo(q)
  load(q)
  if q.fifo then return end
  q.fifo = true
  RC('HSET', q.s, 'f', 1)
  for _, key in ipairs({q.r, q.n}) do
    for _, id in ipairs(RC('ZRANGE', key, 0, -1)) do
      local m = dec(RC('HGET', q.d, id))
      if key == q.r then RC('ZADD', q.g, 0, gready(m, id)) else RC('ZADD', q.z, 0, gpre(m.grp) .. id) end
      q.groups[m.grp] = true
    end
  end
end

-- Move the hides that lapsed in (mu, now] into the ready set.
local function migrate(q, now)
  load(q)
  if now <= q.mu or now < q.nl then return end
  local lo, moved = after(q.mu), false
  for _, key in ipairs({q.h, q.c}) do
    for _, id in ipairs(RC('ZRANGEBYSCORE', key, lo, now)) do
      local m = dec(RC('HGET', q.d, id))
      RC('ZADD', q.r, m.seq, id)
      RC('ZREM', q.n, id)
      if q.fifo then
        RC('ZREM', q.z, gpre(m.grp) .. id)
        RC('ZADD', q.g, 0, gready(m, id))
        q.groups[m.grp] = true
      end
      moved = true
    end
  end
  -- The next lapse: the earliest deadline after now.
  local nl = INF
  for _, key in ipairs({q.h, q.c}) do
    local t = tonumber(RC('ZRANGEBYSCORE', key, after(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2])
    if t and t < nl then nl = t end
  end
  q.nl = nl
  if moved then
    q.mu = now
    RC('HSET', q.s, 'mu', num(now), 'nl', num(nl))
  else
    RC('HSET', q.s, 'nl', num(nl))
  end
end

-- Regroup the groups touched, and drop the queue if it was left empty.
local function settle(q, now)
  if q.fifo then
    for grp in pairs(q.groups) do regroup(q, grp, now) end
  end
  q.groups = {}
  if q.check then
    q.check = false
    if RC('EXISTS', q.r, q.n) == 0 then drop_queue(q) end
  end
end

-- Where a listing of a zset of names starts: after the marker's score, or from the start.
local function zstart(zkey, marker)
  if marker then
    local s = RC('ZSCORE', zkey, marker)
    if s then return '(' .. s end
  end
  return '-inf'
end

-- Where a listing of messages starts: after the marker's seq, or from the start (no or unknown marker).
local function start_after(q, marker)
  if marker then
    local rec = RC('HGET', q.d, marker)
    if rec then return after((sunpack('<d', rec, 2))) end
  end
  return '-inf'
end

-- The next page of ids in queue order from start: of r (the ready messages), or of r and
-- n merged (all of them). Returns the ids and whether there may be more.
local function page_of(q, start, page, all)
  local a = RC('ZRANGEBYSCORE', q.r, start, '+inf', 'WITHSCORES', 'LIMIT', 0, page)
  if not all then
    local ids = {}
    for i = 1, #a, 2 do ids[#ids + 1] = a[i] end
    return ids, #ids == page
  end
  local b = RC('ZRANGEBYSCORE', q.n, start, '+inf', 'WITHSCORES', 'LIMIT', 0, page)
  local ids, i, j = {}, 1, 1
  while #ids < page and (i <= #a or j <= #b) do
    if j > #b or (i <= #a and tonumber(a[i + 1]) < tonumber(b[j + 1])) then
      ids[#ids + 1] = a[i]; i = i + 2
    else
      ids[#ids + 1] = b[j]; j = j + 2
    end
  end
  return ids, #ids == page
end

-- Messages in order after the marker, at most limit (nil: all): visible ones only unless
-- hidden. Returns {{id, m, rec}, ...}.
local function select(q, marker, limit, hidden, now)
  if limit and limit < 1 then return {} end
  if not hidden then migrate(q, now) end
  local start = start_after(q, marker)
  local out, n = {}, 0
  local page = limit or 512
  while true do
    local ids, more = page_of(q, start, page, hidden)
    local m
    for i = 1, #ids do
      local id = ids[i]
      local rec = RC('HGET', q.d, id)
      m = dec(rec)
      if not expired(m, now) and (hidden or m.hid <= now) then
        n = n + 1
        out[n] = {id, m, rec}
        if limit and n >= limit then return out end
      end
    end
    if not more then return out end
    start = after(m.seq)
    page = page < 256 and page * 2 or page  -- skipped some: read further ahead
  end
end

local function by_seq(a, b) return a[2].seq < b[2].seq end

-- The first limit visible messages of open groups, in queue order (a merge over the
-- groups by their first message; see the contract's claim).
local function fifo_select(q, limit, now)
  for _, grp in ipairs(RC('ZRANGEBYSCORE', q.b, '-inf', now)) do q.groups[grp] = true end
  for grp in pairs(q.groups) do regroup(q, grp, now) end
  q.groups = {}
  local found, bound = {}, INF
  local page = limit + 8
  local off = 0
  local done = false
  while not done do
    local heads = RC('ZRANGE', q.k, off, off + page - 1, 'WITHSCORES')
    for i = 1, #heads, 2 do
      if tonumber(heads[i + 1]) > bound then done = true; break end
      local P = gpre(heads[i])
      local lo, hi = '[' .. P, '(' .. P .. '\255'
      local n, goff, stop = 0, 0, false
      while not stop do
        local ents = RC('ZRANGEBYLEX', q.g, lo, hi, 'LIMIT', goff, page)
        for j = 1, #ents do
          local e = ents[j]
          if sunpack('>I8', e, #P + 1) > bound then stop = true; break end
          local id = ssub(e, #P + 9)
          local rec = RC('HGET', q.d, id)
          local m = dec(rec)
          if not expired(m, now) then
            if m.hid > now then stop = true; break end  -- hidden on this clock: blocked from here
            n = n + 1
            found[#found + 1] = {id, m, rec}
            if n >= limit then stop = true; break end
          end
        end
        if #ents < page then stop = true end
        goff = goff + page
      end
      if #found >= limit then
        table.sort(found, by_seq)
        for t = #found, limit + 1, -1 do found[t] = nil end
        bound = found[limit][2].seq
      end
    end
    if #heads < 2 * page then done = true end
    off = off + page
  end
  table.sort(found, by_seq)
  return found
end

-- A moved message as the contract stores it at the destination.
local function moved(m, exp, has_meta, meta, has_recv, recv)
  local n = copy(m)
  n.exp, n.hid = exp, 0
  n.recv = has_recv == '1' and tonumber(recv) or 0
  if n.recv == 0 then n.first = 0 end
  if has_meta == '1' then n.meta = meta end
  return n
end

local function update(m, has_exp, exp, has_hid, hid, has_meta, meta)
  local n = copy(m)
  if has_exp == '1' then n.exp = tonumber(exp) end
  if has_hid == '1' then n.hid = tonumber(hid) end
  if has_meta == '1' then n.meta = meta end
  return n
end

local function records(sel)
  local out = {}
  for _, it in ipairs(sel) do out[#out + 1] = it[1]; out[#out + 1] = it[3] end
  return out
end
"""

#: Prelude of the scripts on one account: ARGV = G, account prefix, account, queue, ...
_ACCOUNT = r"""
local A = account(ARGV[2], ARGV[3])
local q = queue(A, ARGV[4])
"""

#: Operation name -> body; each runs after LIBRARY (and _ACCOUNT unless it is global).
BODIES: dict[str, str] = {
    # ARGV[5..]: id, body, expires, hidden_until, now, meta -> 1 created / 0 replaced
    "put": r"""
local id, now = ARGV[5], tonumber(ARGV[9])
local new = {exp = tonumber(ARGV[7]), hid = tonumber(ARGV[8]), first = 0, sqn = 0, recv = 0,
             grp = '', meta = ARGV[10], body = ARGV[6]}
-- Most puts create: write first, look only if the id was taken (a seq spent on a replace
-- costs nothing: seqs only need to grow).
new.seq = append_seq(q)
local rec = enc(new)
local created = 1
if RC('HSETNX', q.d, id, rec) == 1 then
  place(q, id, nil, new, rec)
else
  local old = dec(RC('HGET', q.d, id))
  if expired(old, now) then  -- counts as absent: a new message, last in order
    place(q, id, old, nil)
    place(q, id, nil, new)
  else  -- replaced: a new message in the old position
    new.seq = old.seq
    place(q, id, old, new)
    created = 0
  end
end
settle(q, now)
publish(A)
return {created, DELTAS}
""",
    # ARGV[5..]: has marker, marker, limit ('' = all), match hidden, now, mode (get,
    # delete, update), then for update: has expires, expires, has hide, hide, has meta, meta
    "list": r"""
local marker = ARGV[5] == '1' and ARGV[6] or nil
local limit = ARGV[7] ~= '' and tonumber(ARGV[7]) or nil
local hidden, now, mode = ARGV[8] == '1', tonumber(ARGV[9]), ARGV[10]
if RC('EXISTS', q.r, q.n) == 0 then return {{}, DELTAS} end
local sel = select(q, marker, limit, hidden, now)
if mode == 'delete' then
  for _, it in ipairs(sel) do place(q, it[1], it[2], nil) end
elseif mode == 'update' then
  for _, it in ipairs(sel) do
    it[3] = place(q, it[1], it[2], update(it[2], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16]))
  end
end
settle(q, now)
publish(A)
return {records(sel), DELTAS}
""",
    # ARGV[5..]: id, now, has expect, expect hidden_until, has expires, expires, has hide,
    # hide, has meta, meta -> the record as updated, or false
    "update": r"""
local id, now = ARGV[5], tonumber(ARGV[6])
local rec = RC('HGET', q.d, id)
if not rec then return {false, DELTAS} end
local m = dec(rec)
if expired(m, now) or (ARGV[7] == '1' and m.hid ~= tonumber(ARGV[8])) then return {false, DELTAS} end
local out = place(q, id, m, update(m, ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]))
settle(q, now)
publish(A)
return {out, DELTAS}
""",
    # ARGV[5..]: id, now, has expect hidden, expect hidden, has expect receives, expect
    # receives -> the record as it was (false: absent, refused, or expired yet deleted)
    "delete": r"""
local id, now = ARGV[5], tonumber(ARGV[6])
local rec = RC('HGET', q.d, id)
if not rec then return {false, DELTAS} end
local m = dec(rec)
if (ARGV[7] == '1' and m.hid ~= tonumber(ARGV[8])) or (ARGV[9] == '1' and m.recv ~= tonumber(ARGV[10])) then
  return {false, DELTAS}
end
place(q, id, m, nil)
settle(q, now)
publish(A)
if expired(m, now) then return {false, DELTAS} end
return {rec, DELTAS}
""",
    # ARGV[5..]: limit, hidden_until, now, fifo -> records as updated
    "claim": r"""
local limit, until_, now, fifo = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1'
if limit <= 0 or RC('EXISTS', q.r, q.n) == 0 then return {{}, DELTAS} end
local sel
if fifo then
  ensure_fifo(q)
  migrate(q, now)
  sel = fifo_select(q, limit, now)
else
  sel = select(q, nil, limit, false, now)
end
for _, it in ipairs(sel) do
  local m = it[2]
  local n = copy(m)
  n.hid, n.recv = until_, m.recv + 1
  if m.recv == 0 then n.first = now end
  it[3] = place(q, it[1], m, n)
end
settle(q, now)
publish(A)
return {records(sel), DELTAS}
""",
    # ARGV[5..]: id, body, expires, hidden_until, now, meta, group, has dedup, dedup,
    # dedup_until -> {id, sequence, created}
    "send": r"""
local id, now = ARGV[5], tonumber(ARGV[9])
local key, until_ = ARGV[13], tonumber(ARGV[14])
if ARGV[12] == '1' then
  local r = RC('HGET', q.f, '=' .. key)
  if r then
    local seq, u, pos = sunpack('<dd', r)
    if u > now then return {{ssub(r, pos), seq, 0}, DELTAS} end
  end
end
local n = RC('HINCRBY', q.f, '#', 1)
if ARGV[12] == '1' and until_ > now then
  RC('HSET', q.f, '=' .. key, spack('<dd', n, until_) .. id)
  RC('ZADD', q.e, until_, key)
  due(q, until_)
end
ensure_fifo(q)
local rec = RC('HGET', q.d, id)
if rec then place(q, id, dec(rec), nil) end
local new = {exp = tonumber(ARGV[7]), hid = tonumber(ARGV[8]), first = 0, sqn = n, recv = 0,
             grp = ARGV[11], meta = ARGV[10], body = ARGV[6]}
new.seq = append_seq(q)
place(q, id, nil, new)
settle(q, now)
publish(A)
return {{id, n, 1}, DELTAS}
""",
    # ARGV[5..]: id, to account prefix, to account, to queue, expires, now, has meta, meta,
    # has receives, receives, has expect, expect receives -> the record at the destination
    "move": r"""
local id, now = ARGV[5], tonumber(ARGV[10])
local rec = RC('HGET', q.d, id)
if not rec then return {false, DELTAS} end
local m = dec(rec)
if expired(m, now) or (ARGV[15] == '1' and m.recv ~= tonumber(ARGV[16])) then return {false, DELTAS} end
local A2 = A
if ARGV[6] ~= ARGV[2] or ARGV[7] ~= ARGV[3] then A2 = account(ARGV[6], ARGV[7]) end
local q2 = q
if A2 ~= A or ARGV[8] ~= ARGV[4] then q2 = queue(A2, ARGV[8]) end
place(q, id, m, nil)
local old = RC('HGET', q2.d, id)
if old then place(q2, id, dec(old), nil) end
local new = moved(m, tonumber(ARGV[9]), ARGV[11], ARGV[12], ARGV[13], ARGV[14])
new.seq = append_seq(q2)
local out = place(q2, id, nil, new)
settle(q, now)
settle(q2, now)
publish(A)
publish(A2)
return {out, DELTAS}
""",
    # The destination half of a move across Cluster slots. ARGV[5..]: id, source record,
    # expires, now, has meta, meta, has receives, receives -> the record stored
    "move_in": r"""
local id, now = ARGV[5], tonumber(ARGV[8])
local old = RC('HGET', q.d, id)
if old then place(q, id, dec(old), nil) end
local new = moved(dec(ARGV[6]), tonumber(ARGV[7]), ARGV[9], ARGV[10], ARGV[11], ARGV[12])
new.seq = append_seq(q)
local out = place(q, id, nil, new)
settle(q, now)
publish(A)
return {out, DELTAS}
""",
    # Delete a message only if its record is still exactly ARGV[6]. ARGV[5..]: id, record,
    # now -> 1 deleted / 0 not
    "delete_if": r"""
local id, now = ARGV[5], tonumber(ARGV[7])
if RC('HGET', q.d, id) ~= ARGV[6] then return {0, DELTAS} end
place(q, id, dec(ARGV[6]), nil)
settle(q, now)
publish(A)
return {1, DELTAS}
""",
    # ARGV[5]: now -> {visible, in flight, delayed}
    "count": r"""
local now = tonumber(ARGV[5])
local total = RC('ZCARD', q.r) + RC('ZCARD', q.n)
if total == 0 then return {{0, 0, 0}, DELTAS} end
local never = RC('ZCOUNT', q.h, after(now), '+inf')
local claimed = RC('ZCOUNT', q.c, after(now), '+inf')
local gone = RC('ZRANGEBYSCORE', q.x, '-inf', now)
for _, id in ipairs(gone) do
  local m = dec(RC('HGET', q.d, id))
  if m.hid > now then
    if m.recv > 0 then claimed = claimed - 1 else never = never - 1 end
  end
end
return {{total - #gone - never - claimed, claimed, never}, DELTAS}
""",
    # ARGV[5..]: has marker, marker, limit ('' = all), delete -> queue names
    "queues": r"""
local start = zstart(A.Q, ARGV[5] == '1' and ARGV[6] or nil)
local names
if ARGV[7] == '' then
  names = RC('ZRANGEBYSCORE', A.Q, start, '+inf')
else
  names = RC('ZRANGEBYSCORE', A.Q, start, '+inf', 'LIMIT', 0, tonumber(ARGV[7]))
end
if ARGV[8] == '1' then
  for _, name in ipairs(names) do drop_queue(queue(A, name)) end
  publish(A)
end
return {names, DELTAS}
""",
    # ARGV[5..]: swap, has expect, expect, has meta, meta -> 1 written / 0 not
    "meta": r"""
if ARGV[5] == '1' then
  local cur = RC('HGET', A.M, ARGV[4])
  if ARGV[6] == '1' then
    if cur ~= ARGV[7] then return {0, DELTAS} end
  elseif cur then
    return {0, DELTAS}
  end
end
if ARGV[8] == '1' then
  if RC('HSET', A.M, ARGV[4], ARGV[9]) == 1 then RC('ZADD', A.O, RC('HINCRBY', A.S, 'mn', 1), ARGV[4]) end
else
  RC('HDEL', A.M, ARGV[4])
  RC('ZREM', A.O, ARGV[4])
  RC('UNLINK', q.f, q.e)
  queue_due(q)
end
publish(A)
return {1, DELTAS}
""",
    # -> {queue, meta, queue, meta, ...} in creation order
    "meta_list": r"""
local out = {}
for _, name in ipairs(RC('ZRANGE', A.O, 0, -1)) do
  local meta = RC('HGET', A.M, name)
  if meta then out[#out + 1] = name; out[#out + 1] = meta end
end
return {out, DELTAS}
""",
    # One account's share of a cleaner pass. ARGV[5..]: now, since, keep, budget ->
    # {the queues with a hide deadline in (since, now], 1 if the budget ran out (more is due),
    # the messages deleted because they expired}
    "clean": r"""
local now, since, keep, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local expired_ = 0
for _, name in ipairs(RC('ZRANGEBYSCORE', A.D, '-inf', now, 'LIMIT', 0, 256)) do
  local dq = queue(A, name)
  for _, id in ipairs(RC('ZRANGEBYSCORE', dq.x, '-inf', now, 'LIMIT', 0, budget)) do
    local rec = RC('HGET', dq.d, id)
    if rec then
      place(dq, id, dec(rec), nil)
      expired_ = expired_ + 1
    else
      RC('ZREM', dq.x, id)
    end
    budget = budget - 1
  end
  local spent = RC('ZRANGEBYSCORE', dq.e, '-inf', now, 'LIMIT', 0, 1000)
  for _, key in ipairs(spent) do
    RC('HDEL', dq.f, '=' .. key)
    RC('ZREM', dq.e, key)
  end
  settle(dq, now)
  queue_due(dq)
  if budget <= 0 then break end
end
local woken, seen = {}, {}
local lo = floor(since)
for _, entry in ipairs(RC('ZRANGEBYSCORE', A.W, lo, now)) do
  local bar = sfind(entry, '|', 1, true)
  if bar then
    local name = ssub(entry, bar + 1)
    if not seen[name] then
      seen[name] = true
      local wq = queue(A, name)
      if RC('ZCOUNT', wq.h, after(since), now) + RC('ZCOUNT', wq.c, after(since), now) > 0 then
        woken[#woken + 1] = name
      end
    end
  end
end
RC('ZREMRANGEBYSCORE', A.W, '-inf', '(' .. whole(lo - keep))
A.dirty = true
publish(A)
return {{woken, budget <= 0 and 1 or 0, expired_}, DELTAS}
""",
    # An account's usage, for its quotas. ARGV[5]: '1' to add up body bytes (a pass over
    # its records, in Redis) -> {queue names (with messages or metadata), messages, bytes}
    "usage": r"""
local names, seen, messages, size = {}, {}, 0, 0
for _, name in ipairs(RC('ZRANGE', A.Q, 0, -1)) do
  seen[name] = true
  names[#names + 1] = name
  local uq = queue(A, name)
  messages = messages + RC('HLEN', uq.d)
  if ARGV[5] == '1' then
    for _, rec in ipairs(RC('HVALS', uq.d)) do size = size + #dec(rec).body end
  end
end
for _, name in ipairs(RC('HKEYS', A.M)) do
  if not seen[name] then names[#names + 1] = name end
end
return {{names, messages, size}, DELTAS}
""",
    # -> the messages the account holds (expired ones not yet cleaned included)
    "size": r"""
local total = 0
for _, name in ipairs(RC('ZRANGE', A.Q, 0, -1)) do
  local sq = queue(A, name)
  total = total + RC('ZCARD', sq.r) + RC('ZCARD', sq.n)
end
return {total, DELTAS}
""",
}

#: Scripts on the global keys: ARGV[1] = G, then their own arguments.
GLOBAL_BODIES: dict[str, str] = {
    # ARGV[2..]: has marker, marker, limit ('' = all) -> account names
    "accounts": r"""
local start = zstart(G .. 'A', ARGV[2] == '1' and ARGV[3] or nil)
if ARGV[4] == '' then return RC('ZRANGEBYSCORE', G .. 'A', start, '+inf') end
return RC('ZRANGEBYSCORE', G .. 'A', start, '+inf', 'LIMIT', 0, tonumber(ARGV[4]))
""",
    # The global share of a cleaner pass. ARGV[2..]: now, since, keep, limit ->
    # {accounts with a deadline due, accounts with hide deadlines in the window's
    # seconds, accounts whose old wake-up seconds were dropped}
    "clean": r"""
local now, since, keep, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local due_ = RC('ZRANGEBYSCORE', G .. 'D', '-inf', now, 'LIMIT', 0, limit)
local lo = floor(since)
local woken = {}
for _, entry in ipairs(RC('ZRANGEBYSCORE', G .. 'W', lo, now)) do
  woken[#woken + 1] = ssub(entry, sfind(entry, '|', 1, true) + 1)
end
local old = {}
for _, entry in ipairs(RC('ZRANGEBYSCORE', G .. 'W', '-inf', '(' .. whole(lo - keep), 'LIMIT', 0, limit)) do
  old[#old + 1] = ssub(entry, sfind(entry, '|', 1, true) + 1)
  RC('ZREM', G .. 'W', entry)
end
return {due_, woken, old}
""",
    # Cluster: apply deltas. ARGV[2..]: 'a', account, publication, incarnation, due ('' =
    # none) | 'w', account, second
    "apply": r"""
local i = 2
while i <= #ARGV do
  if ARGV[i] == 'a' then
    gapply(ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]) or INF)
    i = i + 5
  else
    gwake(ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  end
end
return 1
""",
}


#: The functions Redis runs even over ``maxmemory`` (flag ``allow-oom``): all but those that
#: add messages (put, send, the destination half of a move across slots), so that at the
#: limit creates are refused while consumers still take, delete and expire (freeing memory),
#: readers read and queue metadata changes (SQS queues are created and deleted). A take or
#: claim grows its message by its hide deadline, a bounded cost.
ALLOW_OOM = frozenset(set(BODIES) - {"put", "send", "move_in"}) | {f"g_{name}" for name in GLOBAL_BODIES}


def library() -> tuple[str, str]:
    """(library name, source) of the Redis Functions library holding every operation.

    The name carries a digest of the source, so processes of different versions sharing a
    store each call their own functions; function ``op`` is ``<library>_<op>``.
    """
    functions = [(name, _ACCOUNT + body) for name, body in BODIES.items()]
    functions += [(f"g_{name}", body) for name, body in GLOBAL_BODIES.items()]
    digest = hashlib.sha1(repr((LIBRARY, functions, sorted(ALLOW_OOM))).encode()).hexdigest()[:12]
    name = f"burrow_{digest}"
    parts = [f"#!lua name={name}\n", LIBRARY]
    for op, body in functions:
        flags = "{'allow-oom'}" if op in ALLOW_OOM else "{}"
        parts.append(
            f"redis.register_function{{function_name = '{name}_{op}', flags = {flags},"
            f" callback = function(keys, ARGV)\nbegin(ARGV)\n{body}end}}\n"
        )
    return name, "".join(parts)
