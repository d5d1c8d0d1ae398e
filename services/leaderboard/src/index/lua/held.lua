if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {'rebuilding'} end
  return {'unbuilt'}
end
return {'ready', redis.call('HMGET', KEYS[3], unpack(ARGV))}
