"""The two Lua scripts that are the replay service's logic, run atomically inside Redis: insert a
chunk (validate, rate limiter, store, commit log with the record's block header, counters, FIFO
eviction) and grant a sample (minimum size, rate limiter; the learner's initial updates are not
charged to the ratio). Keys: see replay_service/client.py."""

INSERT_LUA = """
local meta, logkey = KEYS[1], KEYS[2]
-- Check everything before the first write: Redis does not roll back a script that fails
-- midway, which would leave a stored chunk that the counters never include.
local names = {'inserts', 'samples', 'gseq', 'evicted', 'size_steps', 'size_bytes', 'raw_bytes'}
local vals = redis.call('HMGET', meta, unpack(names))
local m = {}
for i, name in ipairs(names) do
  local v = vals[i]
  if v then
    local n = tonumber(v)
    if n == nil or n ~= math.floor(n) then
      return redis.error_reply('replay meta ' .. meta .. ' field ' .. name .. ' holds ' ..
                               string.sub(v, 1, 40) .. ', not an integer; nothing was stored')
    end
    m[name] = n
  else
    m[name] = 0
  end
end
local length, spi, free = tonumber(ARGV[4]), tonumber(ARGV[7]), tonumber(ARGV[11])
if not (length and spi and free and tonumber(ARGV[5]) and tonumber(ARGV[6]) and
        tonumber(ARGV[8])) then
  return redis.error_reply('insert arguments are not numbers; nothing was stored')
end
-- the learner's initial updates (`free` sequences) are not charged to the ratio
if spi > 0 then
  if m['inserts'] * spi - math.max(m['samples'] - free, 0) > tonumber(ARGV[8]) then
    return {0}
  end
end
local g = redis.call('HINCRBY', meta, 'gseq', 1)
local nbytes = string.len(ARGV[1])
redis.call('SET', ARGV[9] .. g, ARGV[1])
if ARGV[10] and ARGV[10] ~= '' then  -- a block record's header: samplers read only what they use
  redis.call('XADD', logkey, g .. '-0', 's', ARGV[2], 'i', ARGV[3], 'n', length, 'b', nbytes,
             'r', ARGV[5], 'h', ARGV[10])
else
  redis.call('XADD', logkey, g .. '-0', 's', ARGV[2], 'i', ARGV[3], 'n', length, 'b', nbytes,
             'r', ARGV[5])
end
redis.call('HINCRBY', meta, 'inserts', length)
redis.call('HINCRBY', meta, 'size_bytes', nbytes)
redis.call('HINCRBY', meta, 'raw_bytes', tonumber(ARGV[5]))
local size = redis.call('HINCRBY', meta, 'size_steps', length)
local cap = tonumber(ARGV[6])
local e = m['evicted']
while size > cap and e + 1 < g do
  e = redis.call('HINCRBY', meta, 'evicted', 1)
  local entry = redis.call('XRANGE', logkey, e .. '-0', e .. '-0')
  if #entry == 1 then
    local f = entry[1][2]
    for j = 1, #f, 2 do
      if f[j] == 'n' then size = redis.call('HINCRBY', meta, 'size_steps', -tonumber(f[j+1]))
      elseif f[j] == 'b' then redis.call('HINCRBY', meta, 'size_bytes', -tonumber(f[j+1]))
      elseif f[j] == 'r' then redis.call('HINCRBY', meta, 'raw_bytes', -tonumber(f[j+1])) end
    end
    redis.call('XDEL', logkey, e .. '-0')
  end
  redis.call('DEL', ARGV[9] .. e)
end
return {1, g, size}
"""

# Returns {granted, reason, gseq, evicted, size_steps, size_bytes, raw_bytes}: the counters tell
# the sampler whether its index is current (no extra round trip when nothing was inserted).
SAMPLE_LUA = """
local meta = KEYS[1]
local m = redis.call('HMGET', meta, 'inserts', 'samples', 'size_steps', 'gseq', 'evicted',
                     'size_bytes', 'raw_bytes')
local ins, smp, size = tonumber(m[1] or '0'), tonumber(m[2] or '0'), tonumber(m[3] or '0')
local n, spi, free = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5] or '0')
local c = {tonumber(m[4] or '0'), tonumber(m[5] or '0'), size, tonumber(m[6] or '0'),
           tonumber(m[7] or '0')}
if size < tonumber(ARGV[4]) then return {0, 1, c[1], c[2], c[3], c[4], c[5]} end
if spi > 0 and ins * spi - math.max(smp + n - free, 0) < tonumber(ARGV[3]) then
  return {0, 2, c[1], c[2], c[3], c[4], c[5]}
end
redis.call('HINCRBY', meta, 'samples', n)
return {1, 0, c[1], c[2], c[3], c[4], c[5]}
"""



def script_caller(client, lua: str, sharded: bool):
    """`call(keys, args)` running `lua` on `client`: a registered script (EVALSHA) on one Redis;
    plain EVAL on a cluster, routed by the keys' slot, so a restarted node needs no SCRIPT LOAD."""
    if not sharded:
        script = client.register_script(lua)
        return lambda keys, args: script(keys=keys, args=args)
    return lambda keys, args: client.eval(lua, len(keys), *keys, *args)
