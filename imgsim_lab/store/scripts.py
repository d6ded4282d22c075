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

# KEYS: ids, shas, eids_1..eids_M, the n claim keys, then per item: img, emb keys (ne).
# ARGV: M, n, then per item: id, fresh, ne, per embedding: model index (1..M)
#   [, vector when not fresh] [, then the record (JSON) when not fresh].
# A fresh item (id reserved by this call) had its record and vectors MSET at that id
# earlier in the same MULTI (native MSET: they cross at wire speed, and no Lua call per
# image writes them); one that is not fresh carries them here (SET NX: fill what is missing).
# Per item returns 1 for a fresh item that holds its claim (created, also when this call
# is a replay), else {id, state, written flags...}: state 0 = the record existed / filled,
# -1 = lost the claim to another id (returned as the id; our record and vectors removed),
# -2 = the claim changed under us (go round again).
# Few redis.call()s per image (their overhead dominates): claims are read with one MGET and
# written with one MSET, the id sets with one ZADD/SADD per batch.
COMMIT = """
local unpack = table.unpack or unpack
local M, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local claims = redis.call('MGET', unpack(KEYS, 3 + M, 2 + M + n))
local setc, zids, sshas, zemb, out = {}, {}, {}, {}, {}
for m = 1, M do zemb[m] = {} end
local p, k = 3, 3 + M + n
for i = 1, n do
  local id, fresh, ne = tonumber(ARGV[p]), ARGV[p + 1] == '1', tonumber(ARGV[p + 2])
  local img, e0, a0 = KEYS[k], k + 1, p + 3
  k = k + 1 + ne
  local rec = a0 + 2 * ne
  p = fresh and (a0 + ne) or (rec + 1)
  local sha = KEYS[2 + M + i]
  local c = claims[i] and tonumber(claims[i])
  if (not c) and fresh then
    setc[#setc + 1] = sha
    setc[#setc + 1] = id
    c = id
  end
  if c == id then
    zids[#zids + 1] = id
    zids[#zids + 1] = id
    sshas[#sshas + 1] = string.sub(sha, -64)
    if fresh then
      for j = 0, ne - 1 do
        local z = zemb[tonumber(ARGV[a0 + j])]
        z[#z + 1] = id
        z[#z + 1] = id
      end
      out[i] = 1
    else
      redis.call('SET', img, ARGV[rec], 'NX')
      local res = {id, 0}
      for j = 0, ne - 1 do
        res[j + 3] = redis.call('SET', KEYS[e0 + j], ARGV[a0 + 2 * j + 1], 'NX') and 1 or 0
        local z = zemb[tonumber(ARGV[a0 + 2 * j])]
        z[#z + 1] = id
        z[#z + 1] = id
      end
      out[i] = res
    end
  elseif fresh then
    redis.call('DEL', unpack(KEYS, e0 - 1, e0 + ne - 1))
    out[i] = {c, -1}
  else
    out[i] = {id, -2}
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
# ne vectors, the record (JSON). Creates each record if absent (the caller holds or has
# read its claim) and each embedding if absent. Per item returns {created, written...}.
RECORD = """
local n = tonumber(ARGV[1])
local p, k = 2, 1
local out = {}
for i = 1, n do
  local ne = tonumber(ARGV[p + 1])
  local res = {0}
  for j = 1, ne do
    res[j + 1] = redis.call('SET', KEYS[k + j], ARGV[p + 1 + j], 'NX') and 1 or 0
  end
  res[1] = redis.call('SET', KEYS[k], ARGV[p + 2 + ne], 'NX') and 1 or 0
  p = p + 3 + ne
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
