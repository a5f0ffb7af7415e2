-- Hexarch usage statistics for one settled reservation, counted once.
--
-- KEYS[1]      today's statistics hash
-- KEYS[2]      this month's statistics hash
-- KEYS[3]      the reservation's "counted" marker
-- KEYS[4]      (optional) the API ticket of the reservation: deleted
-- KEYS[5]      (optional) the ticket index (sorted set): the reservation is removed from it
-- ARGV[1]      TTL of the day hash, seconds
-- ARGV[2]      TTL of the month hash, seconds
-- ARGV[3]      TTL of the marker, seconds
-- ARGV[4]      the reservation id (member of KEYS[5])
-- ARGV[5]      the marker's value: "settled" or "expired"
-- ARGV[6..9]   the increments of the four measures, in MEASURES order (sidecar/stats.py)
-- ARGV[10..]   the subjects counted: "<dimension>|<value>" ("all|*", "model|gpt-4o", ...)
--
-- Every field ``<measure>|<dimension>|<value>`` of each hash is incremented (a zero increment is
-- skipped). The fields are built here, not sent: the call carries 4 numbers and a few subjects
-- instead of 40 field/increment pairs (packing them was the costliest part of the call).
--
-- Returns 1 when counted now, 0 when the reservation was counted before (nothing changes).

local MEASURES = {'requests', 'prompt_tokens', 'completion_tokens', 'cost_usd_micros'}

if not redis.call('SET', KEYS[3], ARGV[5], 'NX', 'EX', tonumber(ARGV[3])) then
  return 0
end
for m = 1, 4 do
  local n = tonumber(ARGV[5 + m])
  if n ~= 0 then
    local measure = MEASURES[m]
    for i = 10, #ARGV do
      local field = measure .. '|' .. ARGV[i]
      redis.call('HINCRBY', KEYS[1], field, n)
      redis.call('HINCRBY', KEYS[2], field, n)
    end
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
if #KEYS >= 5 then
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[5], ARGV[4])
end
return 1
