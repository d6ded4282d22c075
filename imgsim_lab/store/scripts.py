"""Lua scripts of the Redis-protocol write protocol. Every key a script touches is in KEYS.

Kvrocks locks only the keys a script declares (and refuses undeclared ones under
``lua-strict-key-accessing yes``); Redis Cluster requires it. Key names are never built
inside a script. Vectors travel outside Lua where they can (MSET in the same MULTI).
"""

from __future__ import annotations

import hashlib

# KEYS: seq, inflight.  ARGV: n, member prefix, lease expiry (unix s).
# Reserves n ids and lists the reservation as in flight (member "<lo>:<prefix>", score lo),
# so last_id() (the committed watermark) stays below ids not yet listed. Returns lo.
RESERVE = """
local hi = redis.call('INCRBY', KEYS[1], ARGV[1])
local lo = hi - tonumber(ARGV[1]) + 1
redis.call('ZADD', KEYS[2], lo, lo .. ':' .. ARGV[2] .. ':' .. ARGV[3])
return lo
"""

# KEYS: ids, shas, eids_1..eids_M, then per item: sha, img, emb keys (ne of them).
# ARGV: M, n, nf, the nf record field names, added, then per item: id, fresh (1: its
#   vectors were MSET at id before this call; 0: they follow here), ne, per embedding:
#   model index (1..M) [, vector when not fresh], then its nf field values ("\0": absent).
# Per item returns {id, state, written flags...}: state 1 = ours (we hold the claim with the
# id we reserved: created, also when this call is a replay), 0 = the record existed / filled,
# -1 = lost the claim to another id (returned as the id; our vectors removed),
# -2 = the claim changed under us (go round again).
# Few redis.call()s per image (their overhead dominates): claims are read with one MGET and
# written with one MSET, the id sets with one ZADD/SADD per batch; one HSET per new record.
COMMIT = """
local unpack = table.unpack or unpack
local M, n, nf = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local names, added = {}, ARGV[4 + nf]
for j = 1, nf do names[j] = ARGV[3 + j] end
local p, k = 5 + nf, 3 + M
local items, shakeys = {}, {}
for i = 1, n do
  local it = {id = tonumber(ARGV[p]), fresh = ARGV[p + 1] == '1', sha = KEYS[k], img = KEYS[k + 1],
              embs = {}}
  local ne = tonumber(ARGV[p + 2])
  p = p + 3
  for j = 1, ne do
    local e = {key = KEYS[k + 1 + j], model = tonumber(ARGV[p])}
    p = p + 1
    if not it.fresh then e.vec = ARGV[p]; p = p + 1 end
    it.embs[j] = e
  end
  k = k + 2 + ne
  it.f0 = p
  p = p + nf
  items[i] = it
  shakeys[i] = it.sha
end
local claims = redis.call('MGET', unpack(shakeys))
local setc, zids, sshas, zemb, out = {}, {}, {}, {}, {}
for m = 1, M do zemb[m] = {} end
for i = 1, n do
  local it = items[i]
  local c = claims[i] and tonumber(claims[i])
  if (not c) and it.fresh then
    setc[#setc + 1] = it.sha
    setc[#setc + 1] = it.id
    c = it.id
  end
  if c == it.id then
    if it.fresh or redis.call('EXISTS', it.img) == 0 then
      local h = {'id', it.id, 'added', added}
      for j = 1, nf do
        local v = ARGV[it.f0 + j - 1]
        if v ~= '\0' then h[#h + 1] = names[j]; h[#h + 1] = v end
      end
      redis.call('HSET', it.img, unpack(h))
    end
    zids[#zids + 1] = it.id
    zids[#zids + 1] = it.id
    sshas[#sshas + 1] = string.sub(it.sha, -64)
    local res = {it.id, it.fresh and 1 or 0}
    for j = 1, #it.embs do
      local e, w = it.embs[j], 1
      if not it.fresh then w = redis.call('SET', e.key, e.vec, 'NX') and 1 or 0 end
      local z = zemb[e.model]
      z[#z + 1] = it.id
      z[#z + 1] = it.id
      res[#res + 1] = w
    end
    out[i] = res
  elseif it.fresh then
    for j = 1, #it.embs do redis.call('DEL', it.embs[j].key) end
    out[i] = {c, -1}
  else
    out[i] = {it.id, -2}
  end
end
if #setc > 0 then redis.call('MSET', unpack(setc)) end
if #zids > 0 then
  redis.call('ZADD', KEYS[1], unpack(zids))
  redis.call('SADD', KEYS[2], unpack(sshas))
end
for m = 1, M do
  if #zemb[m] > 0 then redis.call('ZADD', KEYS[2 + m], unpack(zemb[m])) end
end
return out
"""

# KEYS: per item: img, emb keys (one slot: one block).  ARGV: n, per item: id, ne,
# ne vectors, nf, field/value pairs. Creates each record if absent (the caller holds or
# has read its claim) and each embedding if absent. Per item returns {created, written...}.
RECORD = """
local unpack = table.unpack or unpack
local n = tonumber(ARGV[1])
local p, k = 2, 1
local out = {}
for i = 1, n do
  local id, ne = ARGV[p], tonumber(ARGV[p + 1])
  local img = KEYS[k]
  local res = {0}
  for j = 1, ne do
    res[j + 1] = redis.call('SET', KEYS[k + j], ARGV[p + 1 + j], 'NX') and 1 or 0
  end
  p = p + 2 + ne
  local nf = tonumber(ARGV[p])
  if redis.call('EXISTS', img) == 0 then
    redis.call('HSET', img, 'id', id, unpack(ARGV, p + 1, p + 2 * nf))
    res[1] = 1
  end
  p = p + 1 + 2 * nf
  k = k + 1 + ne
  out[i] = res
end
return out
"""

# KEYS: record keys and embedding keys of one block. Deletes them; returns how many
# of the first ARGV[1] keys (the records) existed.
DROP = """
local unpack = table.unpack or unpack
local removed = 0
for i = 1, tonumber(ARGV[1]) do removed = removed + redis.call('EXISTS', KEYS[i]) end
redis.call('DEL', unpack(KEYS))
return removed
"""

# KEYS[1]: a hash claim; ARGV[1]: an id. Deletes the claim only if it names that id.
UNCLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1]: model facts; ARGV: dim, version. Writes them once; returns what is stored.
REGISTER = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'dim', ARGV[1], 'version', ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""

SCRIPTS = {name: (src, hashlib.sha1(src.encode()).hexdigest()) for name, src in (
    ("reserve", RESERVE), ("commit", COMMIT), ("record", RECORD), ("drop", DROP),
    ("unclaim", UNCLAIM), ("register", REGISTER))}
