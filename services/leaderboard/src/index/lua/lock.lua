if redis.call('EXISTS', KEYS[1]) == 1 then return 'ready' end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 'acquired' end
return 'busy'
