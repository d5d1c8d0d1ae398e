if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
local n = #ARGV / 4
local owners = {}
for i = 1, n do owners[i] = ARGV[4 * i - 3] end
local stored = redis.call('HMGET', KEYS[2], unpack(owners))
-- owner -> 'version:key' and display data where this call changes them
local latest, data, removed = {}, {}, {}
for i = 1, n do
  local owner, version, key = owners[i], ARGV[4 * i - 2], ARGV[4 * i - 1]
  local current = latest[owner] or stored[i]
  local apply = true
  if current then
    local sep = string.find(current, ':', 1, true)
    if tonumber(version) > tonumber(string.sub(current, 1, sep - 1)) then
      removed[#removed + 1] = string.sub(current, sep + 1)
    else
      apply = false
    end
  end
  if apply then
    latest[owner] = version .. ':' .. key
    data[owner] = ARGV[4 * i]
  end
end
if #removed > 0 then redis.call('ZREM', KEYS[1], unpack(removed)) end
local members, fields, shown = {}, {}, {}
for owner, value in pairs(latest) do
  members[#members + 1] = 0
  members[#members + 1] = string.sub(value, string.find(value, ':', 1, true) + 1)
  fields[#fields + 1] = owner
  fields[#fields + 1] = value
  shown[#shown + 1] = owner
  shown[#shown + 1] = data[owner]
end
if #fields > 0 then
  redis.call('ZADD', KEYS[1], unpack(members))
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('HSET', KEYS[3], unpack(shown))
end
local ranks = {}
for i = 1, n do
  local current = latest[owners[i]] or stored[i]
  ranks[i] = redis.call('ZRANK', KEYS[1], string.sub(current, string.find(current, ':', 1, true) + 1))
end
return ranks
