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
-- ARGV[6..]    field, increment, field, increment, ...
--
-- Returns 1 when counted now, 0 when the reservation was counted before (nothing changes).

if not redis.call('SET', KEYS[3], ARGV[5], 'NX', 'EX', tonumber(ARGV[3])) then
  return 0
end
for i = 6, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  if n ~= 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[i], n)
    redis.call('HINCRBY', KEYS[2], ARGV[i], n)
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
if #KEYS >= 5 then
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[5], ARGV[4])
end
return 1
