if redis.call('EXISTS', KEYS[4]) == 0 then return {} end
local current = redis.call('HGET', KEYS[2], ARGV[1])
if not current then return {false} end
local key = string.sub(current, string.find(current, ':', 1, true) + 1)
return {key, redis.call('ZRANK', KEYS[1], key), redis.call('HGET', KEYS[3], ARGV[1])}
