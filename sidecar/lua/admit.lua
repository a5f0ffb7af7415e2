-- Hexarch admission for one hash-tag group (one subject): check every block limit and, only when
-- all pass, consume every limit and record the reservation. Semantics: docs/counters.md.
--
-- KEYS[1]      reservation record (hash: limit key -> "w:<reserved>:<bucket>:<n>" | "c:<reserved>")
-- KEYS[2..]    one counter key per limit, in the caller's order (no duplicates)
-- ARGV[1]      mode: "a" admit, "p" peek (read only, consumes nothing)
-- ARGV[2]      now, integer milliseconds (the caller's clock)
-- ARGV[3]      reservation record TTL, milliseconds
-- ARGV[3 + i]  limit i as "kind:limit:cost:block:p1:p2" (one string: fewer arguments to pack)
--   kind "w" (sliding window hash): p1 = bucket width ms, p2 = n buckets per window
--   kind "c" (calendar budget integer): p1 = key TTL ms (period end + margin), p2 unused
--   block "1" refuses over the limit, "0" only counts (action warn)
--
-- Returns "status,used_before,reset_ms,retry_ms,..." (one bulk string, three numbers per limit)
--   status 1 admitted, 0 refused, 2 already admitted under this reservation (replay: nothing added)
--   reset_ms: window keys only, ms until everything now counted has expired (0 if nothing)
--   retry_ms: window keys that refused only, ms until the cost fits; -1 = not applicable / never

local mode = ARGV[1]
local now = tonumber(ARGV[2])
local rsv_ttl = tonumber(ARGV[3])
local count = #KEYS - 1
local write = mode == 'a'
local status = 1

if write and redis.call('EXISTS', KEYS[1]) == 1 then
  -- A retried call (e.g. after a lost reply) must not consume twice.
  write = false
  status = 2
end

-- Bring a window hash up to `now`: drop buckets that left the window (from the running sum too).
-- Time never goes backwards for a key: a caller whose clock lags uses the newest bucket seen.
local function window_state(key, b, n)
  local st = redis.call('HMGET', key, 'hi', 'sum')
  local cur = math.floor(now / b)
  local hi = tonumber(st[1])
  if hi == nil then
    return cur, 0
  end
  local sum = tonumber(st[2]) or 0
  if hi > cur then
    cur = hi
  end
  if cur > hi then
    if cur - hi > n then
      -- every stored bucket is older than the window
      if write then
        redis.call('DEL', key)
      end
      return cur, 0
    end
    for j = hi - n, cur - n - 1 do
      local f = tostring(j)
      local v = tonumber(redis.call('HGET', key, f))
      if v then
        sum = sum - v
        if write then
          redis.call('HDEL', key, f)
        end
      end
    end
    if write then
      redis.call('HSET', key, 'hi', cur, 'sum', sum)
    end
  end
  return cur, sum
end

local function bucket(key, j)
  return tonumber(redis.call('HGET', key, tostring(j))) or 0
end

local spec = {}
for i = 1, count do
  local kind, limit, cost, block, p1, p2 =
    string.match(ARGV[3 + i], '^(%a):(%d+):(%d+):(%d):(%d+):(%d+)$')
  spec[i] = {kind, tonumber(limit), tonumber(cost), block == '1', tonumber(p1), tonumber(p2)}
end

local out = {status}
local curs = {}
local refused = false

for i = 1, count do
  local key = KEYS[i + 1]
  local kind, limit, cost = spec[i][1], spec[i][2], spec[i][3]
  local block = spec[i][4] and status == 1
  local used, retry_ms = 0, -1
  if kind == 'w' then
    local b, n = spec[i][5], spec[i][6]
    local cur, sum = window_state(key, b, n)
    curs[i] = cur
    used = sum
    if block and sum + cost > limit then
      refused = true
      if cost <= limit then
        -- the earliest bucket expiry after which the oldest usage has freed enough room
        local need = sum + cost - limit
        local freed = 0
        for j = cur - n, cur do
          freed = freed + bucket(key, j)
          if freed >= need then
            retry_ms = (j + n + 1) * b - now
            break
          end
        end
      end
    end
  else
    used = tonumber(redis.call('GET', key)) or 0
    if block and used + cost > limit then
      refused = true
    end
  end
  out[#out + 1] = used
  out[#out + 1] = 0
  out[#out + 1] = retry_ms
end

if refused or not write then
  -- reset: when the newest counted bucket expires (admitted calls get it from their own bucket)
  for i = 1, count do
    if spec[i][1] == 'w' and out[2 + (i - 1) * 3] > 0 then
      local key = KEYS[i + 1]
      local b, n = spec[i][5], spec[i][6]
      for j = curs[i], curs[i] - n, -1 do
        if bucket(key, j) > 0 then
          out[3 + (i - 1) * 3] = (j + n + 1) * b - now
          break
        end
      end
    end
  end
end

local function reply()
  for i = 1, #out do
    out[i] = string.format('%d', out[i])
  end
  return table.concat(out, ',')
end

if refused then
  out[1] = 0
  return reply()
end
if not write then
  return reply()
end

local record = {}
for i = 1, count do
  local key = KEYS[i + 1]
  local kind, cost = spec[i][1], spec[i][3]
  if kind == 'w' then
    local b, n = spec[i][5], spec[i][6]
    local cur = curs[i]
    local used = out[2 + (i - 1) * 3]
    redis.call('HINCRBY', key, tostring(cur), cost)
    redis.call('HSET', key, 'hi', cur, 'sum', used + cost)
    -- the newest bucket stops counting at (cur + n + 1) * b; keep one extra second of slack
    redis.call('PEXPIRE', key, (cur + n + 1) * b - now + 1000)
    out[3 + (i - 1) * 3] = (cur + n + 1) * b - now
    record[#record + 1] = key
    record[#record + 1] = 'w:' .. cost .. ':' .. tostring(cur) .. ':' .. n
  else
    redis.call('INCRBY', key, cost)
    redis.call('PEXPIRE', key, spec[i][5])
    record[#record + 1] = key
    record[#record + 1] = 'c:' .. cost
  end
end
if #record > 0 then
  redis.call('HSET', KEYS[1], unpack(record))
  redis.call('PEXPIRE', KEYS[1], rsv_ttl)
end
return reply()
