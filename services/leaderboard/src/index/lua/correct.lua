if redis.call('EXISTS', KEYS[4]) == 0 then
  if redis.call('EXISTS', KEYS[5]) == 1 then return {'rebuilding'} end
  return {'unbuilt'}
end
local conflicts = 0
for i = 1, #ARGV, 4 do
  local owner, seen, target = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', KEYS[2], owner) or ''
  if current ~= target then
    if current ~= seen then
      conflicts = conflicts + 1
    else
      if current ~= '' then
        redis.call('ZREM', KEYS[1], string.sub(current, string.find(current, ':', 1, true) + 1))
      end
      if target == '' then
        redis.call('HDEL', KEYS[2], owner)
        redis.call('HDEL', KEYS[3], owner)
      else
        redis.call('ZADD', KEYS[1], 0, string.sub(target, string.find(target, ':', 1, true) + 1))
        redis.call('HSET', KEYS[2], owner, target)
        redis.call('HSET', KEYS[3], owner, ARGV[i + 3])
      end
    end
  end
end
return {'ready', conflicts}
