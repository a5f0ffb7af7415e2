-- Hexarch settlement (and refund) of one reservation in one hash-tag group. Idempotent: the
-- reservation record is deleted in the same atomic step, so a second call finds nothing to do.
--
-- KEYS[1]      reservation record written by admit.lua
-- KEYS[2..]    the counter keys of that admission, in the same order
-- ARGV[i]      the actual usage for KEYS[i + 1]; "-1" keeps the reservation as it is
--              (refund passes "0" for every key)
--
-- Returns 1 when the reservation was applied, 0 when there was none (already settled or refunded,
-- never admitted, or expired).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end

for i = 2, #KEYS do
  local key = KEYS[i]
  local actual = tonumber(ARGV[i - 1])
  local rec = redis.call('HGET', KEYS[1], key)
  if rec and actual >= 0 and redis.call('EXISTS', key) == 1 then
    local kind, reserved, rest = string.match(rec, '^(%a):(%-?%d+):?(.*)$')
    local delta = actual - tonumber(reserved)
    if delta ~= 0 and kind == 'w' then
      local bucket, n = string.match(rest, '^(%-?%d+):(%d+)$')
      local hi = tonumber(redis.call('HGET', key, 'hi'))
      -- a bucket that already left the window no longer counts: nothing to correct
      if hi and tonumber(bucket) >= hi - tonumber(n) then
        local v = redis.call('HINCRBY', key, bucket, delta)
        if v < 0 then
          redis.call('HSET', key, bucket, 0)
          delta = delta - v
        end
        if redis.call('HINCRBY', key, 'sum', delta) < 0 then
          redis.call('HSET', key, 'sum', 0)
        end
      end
    elseif delta ~= 0 and kind == 'c' then
      if redis.call('INCRBY', key, delta) < 0 then
        redis.call('SET', key, 0, 'KEEPTTL')
      end
    end
  end
end
redis.call('DEL', KEYS[1])
return 1
