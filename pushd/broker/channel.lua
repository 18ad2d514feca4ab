-- pushd's one script: every operation on a channel's keys (see pushd/broker/redis.py).
--
-- KEYS: per channel, its hash ({epoch e, last seq s, run_id r}) then its stream
-- (entry id "<seq>-0", fields t = time in ms, m = "<event>\n<kind><data>"); for
-- idempotency keys, the channel's key hash (key -> "<epoch>\n<seq>\n<time>") then
-- its key zset (key scored by time), which expire with the history ttl.
-- ARGV: op, run_id, a fresh epoch (used only if one is needed), the pub/sub
-- prefix, history size, history ttl (ms), how long a hash outlives its last
-- publish (ms), then the op's own arguments.
--
-- Seq and time come from here, so no two pushd hosts need agreeing clocks, and
-- a message is stored, trimmed and announced in one step: nothing is announced
-- without being stored, or stored without being announced.
local op, run, fresh, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local size, ttl, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- The channel's epoch and last seq. A hash written under another run_id comes
-- from another Redis server (restarted without persistence, or failed over):
-- what it says may have lost messages that cursors point past, so the channel
-- starts a new epoch. A missing hash is created only when `create`.
local function state(hk, sk, create)
  local h = redis.call('HMGET', hk, 'e', 's', 'r')
  if h[1] and h[3] == run then
    return h[1], tonumber(h[2])
  end
  if not h[1] and not create then
    return false, 0
  end
  redis.call('DEL', sk)
  redis.call('HSET', hk, 'e', fresh, 's', 0, 'r', run)
  redis.call('PEXPIRE', hk, keep)
  return fresh, 0
end

-- Drop the messages older than the ttl, oldest first. The oldest alone is
-- read first: on a busy channel it is almost always still fresh, and reading
-- a batch on every publish cost more than the rest of the publish together.
local function expire(sk)
  local cutoff = now - ttl
  local head = redis.call('XRANGE', sk, '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) >= cutoff then
    return
  end
  while true do
    head = redis.call('XRANGE', sk, '-', '+', 'COUNT', 64)
    if #head == 0 then
      return
    end
    for i, entry in ipairs(head) do
      if tonumber(entry[2][2]) >= cutoff then
        if i > 1 then
          redis.call('XTRIM', sk, 'MINID', entry[1])
        end
        return
      end
    end
    redis.call('XTRIM', sk, 'MINID', string.format('%d', seq_of(head[#head][1]) + 1))
    if #head < 64 then
      return
    end
  end
end

-- The first publish with idempotency key `key` on a channel, as epoch, seq and
-- time, if it is within the ttl (kept as long as its message would be, by
-- expire's rule) and in the channel's current epoch (a record
-- from before the channel lost its data, or was taken over, is no answer).
-- Expired keys are dropped first, oldest first, a bounded number at a time.
local function recall(kh, kz, key, epoch)
  local cutoff = now - ttl
  local old = redis.call('ZRANGEBYSCORE', kz, '-inf', string.format('(%d', cutoff), 'LIMIT', 0, 128)
  if #old > 0 then
    redis.call('ZREM', kz, unpack(old))
    redis.call('HDEL', kh, unpack(old))
  end
  local rec = redis.call('HGET', kh, key)
  if not rec then
    return false
  end
  local e, s, t = string.match(rec, '^([^\n]*)\n(%d+)\n(%d+)$')
  if e ~= epoch or tonumber(t) < cutoff then
    return false
  end
  return s, t
end

if op == 'pub' then
  -- per item: channel, event, kind, data, idempotency key ('' for none; a keyed
  -- item's key hash and zset follow all the channels' keys in KEYS, in item
  -- order); returns epoch, seq, time, replayed ('1': the key was used, nothing
  -- was stored, this is the first publish's message) per item
  local out = {}
  local tm = string.format('%d', now)
  local n = (#ARGV - 7) / 5
  local k = 2 * n
  for i = 1, n do
    local hk, sk = KEYS[2 * i - 1], KEYS[2 * i]
    local channel, event, kind, data = ARGV[3 + 5 * i], ARGV[4 + 5 * i], ARGV[5 + 5 * i], ARGV[6 + 5 * i]
    local key = ARGV[7 + 5 * i]
    local epoch, last = state(hk, sk, true)
    local s, t = false, tm
    local kh, kz
    if key ~= '' then
      kh, kz = KEYS[k + 1], KEYS[k + 2]
      k = k + 2
      s, t = recall(kh, kz, key, epoch)
    end
    if s then
      out[#out + 1] = epoch
      out[#out + 1] = s
      out[#out + 1] = t
      out[#out + 1] = '1'
    else
      s = string.format('%d', last + 1)
      local m = event .. '\n' .. kind .. data
      redis.call('XADD', sk, 'MAXLEN', size, s .. '-0', 't', tm, 'm', m)
      redis.call('HSET', hk, 's', s)
      expire(sk)
      redis.call('PEXPIRE', sk, ttl)
      redis.call('PEXPIRE', hk, keep)
      if kh then
        redis.call('HSET', kh, key, epoch .. '\n' .. s .. '\n' .. tm)
        redis.call('ZADD', kz, tm, key)
        redis.call('PEXPIRE', kh, ttl)
        redis.call('PEXPIRE', kz, ttl)
      end
      redis.call('PUBLISH', prefix .. channel, epoch .. '\n' .. s .. '\n' .. tm .. '\n' .. m)
      out[#out + 1] = epoch
      out[#out + 1] = s
      out[#out + 1] = tm
      out[#out + 1] = ''
    end
  end
  return out
end

if op == 'read' then
  -- channel, want (an epoch or ''), after (a seq or '': the newest), limit, touch ('1':
  -- a node follows the channel, keep its hash); returns epoch ('' if none),
  -- last seq, first seq kept (0 if none), history length, entries
  local hk, sk = KEYS[1], KEYS[2]
  local want, after, limit, touch = ARGV[9], ARGV[10], tonumber(ARGV[11]), ARGV[12]
  local epoch, last = state(hk, sk, false)
  if not epoch then
    return {'', 0, 0, 0, {}}
  end
  expire(sk)
  if touch == '1' then
    redis.call('PEXPIRE', hk, keep)
  end
  local first = 0
  local head = redis.call('XRANGE', sk, '-', '+', 'COUNT', 1)
  if #head > 0 then
    first = seq_of(head[1][1])
  end
  local entries = {}
  if limit > 0 then
    if after == '' then
      local newest = redis.call('XREVRANGE', sk, '+', '-', 'COUNT', limit)
      for i = #newest, 1, -1 do
        entries[#entries + 1] = newest[i]
      end
    elseif epoch == want then
      entries = redis.call('XRANGE', sk, string.format('%d', tonumber(after) + 1), '+', 'COUNT', limit)
    else
      entries = redis.call('XRANGE', sk, '-', '+', 'COUNT', limit)
    end
  end
  return {epoch, last, first, redis.call('XLEN', sk), entries}
end

if op == 'del' then
  -- channel; returns how many keys went (hash, stream) and the epoch deleted;
  -- announces "!<epoch>"; drops the channel's idempotency keys too
  local hk, sk = KEYS[1], KEYS[2]
  local h = redis.call('HGET', hk, 'e')
  local had = redis.call('DEL', hk, sk)
  redis.call('DEL', KEYS[3], KEYS[4])  -- its idempotency keys
  local epoch = h or ''
  if had > 0 then
    redis.call('PUBLISH', prefix .. ARGV[8], '!' .. epoch)
  end
  return {had, epoch}
end

return redis.error_reply('pushd: unknown op ' .. tostring(op))
