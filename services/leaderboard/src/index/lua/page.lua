if redis.call('EXISTS', KEYS[4]) == 0 then return {} end
local limit = tonumber(ARGV[3])
local start = 0
local members
if ARGV[1] == 'after' then
  members = redis.call('ZRANGE', KEYS[1], '(' .. ARGV[2], '+', 'BYLEX', 'LIMIT', 0, limit)
  if #members > 0 then start = redis.call('ZRANK', KEYS[1], members[1]) end
else
  if ARGV[1] == 'around' then
    local current = redis.call('HGET', KEYS[2], ARGV[2])
    if not current then return {0} end
    local at = redis.call('ZRANK', KEYS[1], string.sub(current, string.find(current, ':', 1, true) + 1))
    local len = redis.call('ZCARD', KEYS[1])
    if limit > len then limit = len end
    start = at - math.floor(limit / 2)
    if start > len - limit then start = len - limit end
    if start < 0 then start = 0 end
  end
  members = redis.call('ZRANGE', KEYS[1], start, start + limit - 1)
end
local out = {start}
for _, key in ipairs(members) do
  local owner = string.sub(key, string.find(key, '|', 1, true) + 1)
  out[#out + 1] = key
  out[#out + 1] = redis.call('HGET', KEYS[3], owner)
end
return out
