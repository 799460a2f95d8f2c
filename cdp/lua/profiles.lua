-- Live profile state: the identity graph and each profile's features, changed atomically.
--
-- ARGV: 1 key prefix, 2 JSON array of changes, 3 marker TTL (s), 4 identifier cap,
--       5 days of daily counts kept, 6 now (ms), 7 records stream, 8 '1' when replaying
--       (the audit rows exist already: only identity mappings are recorded again),
--       9 JSON array of markers: the stream entries whose events these changes are,
--       10 days of audience history kept, 11 the profile-changes stream ('' for none),
--       12 events of audience history kept per profile (the newest; trimmed to it at the
--       end of the call).
-- A change is {kind="event"|"consent"|"suppress"|"unsuppress", ...}. An event change may
-- stand for `n` events of the same identifiers (counts summed, `t0` the earliest time, `t`
-- the latest). If any marker exists the call changes nothing and returns -1: those entries
-- were applied before. Rows for ClickHouse (identities, merges, consent) go to the records
-- stream in the same call, so they exist if and only if the change does.
--
-- A profile's id is derived from its root: the identifier seen first (earliest event time,
-- then the smaller string). When two profiles merge, the one with the earlier root survives;
-- when a late event makes another identifier the earliest, the profile is moved to the new
-- id. So the same events give the same profiles in whatever order they arrive.
-- Returns {events applied, merges, refused merges}.

local P = ARGV[1]
local changes = cjson.decode(ARGV[2])
local marker_ttl = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local keep_days = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
local records = ARGV[7]
local replaying = ARGV[8] == '1'
local markers = cjson.decode(ARGV[9])
local history_days = tonumber(ARGV[10])
local changes_stream = ARGV[11]
local history_cap = tonumber(ARGV[12])
local first_day = math.floor(now / 86400000) - keep_days + 1
local history_from = now - history_days * 86400000
local VIEWED_KEPT = 20
local LOG_KEPT = 100
local PARTS = {'ids', 'traits', 'traits_at', 'days', 'cart', 'cart_items', 'viewed',
               'viewed_items', 'consent', 'consent_at', 'consent_src', 'suppression', 'log',
               'absorbed', 'history'}

local applied, merges, refused = 0, 0, 0
local days_added = {}  -- profile and day pairs this call has put in a profile's days
local history_added = {}  -- profiles whose history this call has added to (trimmed at its end)
local changed = {}  -- profiles this call changed, for the audience worker: pid -> {name=true}
local merged_pairs = {}  -- {from, to} of each merge, in order

-- Key names are made once per call: in a script, joining strings costs about what a
-- command does.
local key_names = {}
local function names_of(pid)
  local names = key_names[pid]
  if not names then
    names = {P .. ':profile:' .. pid, {}}  -- the profile's key, its day keys
    key_names[pid] = names
  end
  return names
end
local function key(pid, part)
  local names = names_of(pid)
  if not part then return names[1] end
  local name = names[part]
  if not name then
    name = names[1] .. ':' .. part
    names[part] = name
  end
  return name
end
local function day_key(pid, day)
  local days = names_of(pid)[2]
  local name = days[day]
  if not name then
    name = names_of(pid)[1] .. ':day:' .. day
    days[day] = name
  end
  return name
end
local function identity_key(ident) return P .. ':identity:' .. ident end

-- What this call read or wrote of the identity keys and of profiles' identifier times,
-- kept in step with every write below, so that each is read from Redis once a call.
local owners = {}  -- identifier -> profile id, or false for none
local firsts = {}  -- profile id -> identifier -> first seen (ms)
local function owner_of(ident)
  local pid = owners[ident]
  if pid == nil then
    pid = redis.call('GET', identity_key(ident))
    owners[ident] = pid
  end
  return pid
end
local function set_owner(ident, pid)
  redis.call('SET', identity_key(ident), pid)
  owners[ident] = pid
end
local function first_seen_of(pid, ident)
  local known = firsts[pid]
  if not known then
    known = {}
    firsts[pid] = known
  end
  local first = known[ident]
  if first == nil then
    first = tonumber(redis.call('HGET', key(pid, 'ids'), ident)) or false
    known[ident] = first
  end
  return first
end
local function set_first_seen(pid, ident, t)
  redis.call('HSET', key(pid, 'ids'), ident, t)
  if firsts[pid] then firsts[pid][ident] = t end
end

local salt = redis.call('GET', P .. ':salt')
if not salt then
  salt = redis.sha1hex(tostring(now) .. tostring(math.random()))
  redis.call('SET', P .. ':salt', salt)
end
local function profile_id(root) return 'p_' .. string.sub(redis.sha1hex(salt .. root), 1, 24) end

local function before(t1, i1, t2, i2)
  return t1 < t2 or (t1 == t2 and i1 < i2)
end

-- Rows for ClickHouse gather here and go out as one stream entry per table at the end.
local rows = {}
local function record(tbl, row)
  if replaying and tbl ~= 'identities' then return end
  rows[tbl] = rows[tbl] or {}
  table.insert(rows[tbl], row)
end

local KINDS = {a = 'anonymous_id', u = 'user_id', e = 'email', p = 'phone'}
local function record_identity(ident, pid)
  -- The version, which orders an identifier's mappings, is given when the rows go out.
  record('identities', {kind = KINDS[string.sub(ident, 1, 1)], value = string.sub(ident, 3),
                        profile_id = pid, at = now})
end

local function send_records()
  local identities = rows['identities']
  if identities then
    local last = redis.call('INCRBY', P .. ':identity_version', #identities)
    for i, row in ipairs(identities) do row.version = last - #identities + i end
  end
  for tbl, list in pairs(rows) do
    redis.call('XADD', records, '*', 'table', tbl, 'rows', cjson.encode(list))
  end
end

local function log(pid, level, message, at)
  redis.call('LPUSH', key(pid, 'log'), cjson.encode({at = at, level = level, message = message}))
  redis.call('LTRIM', key(pid, 'log'), 0, LOG_KEPT - 1)
end

local function meta_number(pid, field)
  return tonumber(redis.call('HGET', key(pid), field) or '0') or 0
end

local function is_known(ident) return string.sub(ident, 1, 2) ~= 'a:' end

-- Identity keys always name live profiles; within this call, profiles merged away are
-- followed through `moved`. Ids from outside follow the stored merge redirects.
local moved = {}
local function live(pid)
  while moved[pid] do pid = moved[pid] end
  return pid
end
local function live_stored(pid)
  for _ = 1, 32 do
    local next_pid = redis.call('GET', P .. ':merged:' .. pid)
    if not next_pid then return pid end
    pid = next_pid
  end
  return pid
end

-- A profile made by a bot's event is marked `bot_only` until a person's event comes to it
-- (or it merges with a profile that had one): such a profile belongs to no audience.
local function new_profile(ident, t, bot)
  local pid = profile_id(ident)
  firsts[pid] = nil
  redis.call('HSET', key(pid), 'root', ident, 'first_seen', t, 'last_seen', t)
  if bot then redis.call('HSET', key(pid), 'bot_only', 1) end
  redis.call('SADD', P .. ':profiles', pid)
  return pid
end

local function add_identifier(pid, ident, t)
  set_owner(ident, pid)
  set_first_seen(pid, ident, t)
  if string.sub(ident, 1, 2) == 'u:' then redis.call('HINCRBY', key(pid), 'users', 1) end
  if is_known(ident) and redis.call('HINCRBY', key(pid), 'known', 1) == 1 then
    redis.call('SADD', P .. ':profiles:known', pid)
  end
  record_identity(ident, pid)
end

local function keep_latest(dst_values, dst_times, field, value, t)
  local current_t = redis.call('HGET', dst_times, field)
  if current_t then
    current_t = tonumber(current_t)
    if t < current_t then return false end
    if t == current_t and value <= (redis.call('HGET', dst_values, field) or '') then return false end
  end
  redis.call('HSET', dst_values, field, value)
  redis.call('HSET', dst_times, field, t)
  return true
end

-- keep_latest for many fields of one time: one read of their times, one write of each hash.
local function keep_latest_all(dst_values, dst_times, values, t)
  local names = {}
  for name in pairs(values) do names[#names + 1] = name end
  local times = redis.call('HMGET', dst_times, unpack(names))
  local kept_values, kept_times = {}, {}
  for i, name in ipairs(names) do
    local current_t, value = tonumber(times[i]), values[name]
    if not current_t or t > current_t
        or (t == current_t and value > (redis.call('HGET', dst_values, name) or '')) then
      kept_values[#kept_values + 1] = name; kept_values[#kept_values + 1] = value
      kept_times[#kept_times + 1] = name; kept_times[#kept_times + 1] = t
    end
  end
  if #kept_values > 0 then
    redis.call('HSET', dst_values, unpack(kept_values))
    redis.call('HSET', dst_times, unpack(kept_times))
  end
end

local function trim_viewed(pid)
  local extra = redis.call('ZCARD', key(pid, 'viewed')) - VIEWED_KEPT
  if extra > 0 then
    local old = redis.call('ZRANGE', key(pid, 'viewed'), 0, extra - 1)
    redis.call('ZREM', key(pid, 'viewed'), unpack(old))
    redis.call('HDEL', key(pid, 'viewed_items'), unpack(old))
  end
end

local function clear_cart(pid, upto)
  local items = redis.call('HGETALL', key(pid, 'cart'))
  for i = 1, #items, 2 do
    local added = tonumber(redis.call('HGET', key(pid, 'cart_items'), items[i] .. ':at') or '0')
    if added <= upto then
      redis.call('HDEL', key(pid, 'cart'), items[i])
      redis.call('HDEL', key(pid, 'cart_items'), items[i], items[i] .. ':at')
    end
  end
end

-- The counters, first and last times, root and time zone of `from`, added into `to`.
local function move_meta(from, to, exists)
  local m = redis.call('HGETALL', key(from))
  local meta = {}
  for i = 1, #m, 2 do meta[m[i]] = m[i + 1] end
  for _, field in ipairs({'events', 'orders', 'revenue', 'users', 'known'}) do
    if meta[field] then redis.call('HINCRBY', key(to), field, meta[field]) end
  end
  if not meta['bot_only'] then  -- a person's: so is the profile it goes into
    redis.call('HDEL', key(to), 'bot_only')
  elseif not exists then  -- (moved to a new root: as it was)
    redis.call('HSET', key(to), 'bot_only', 1)
  end
  local first = tonumber(meta['first_seen'])
  local current_first = tonumber(redis.call('HGET', key(to), 'first_seen'))
  if first and (not current_first or first < current_first) then
    redis.call('HSET', key(to), 'first_seen', first)
  end
  for _, field in ipairs({'last_seen', 'last_order_at', 'cart_at', 'cart_cleared_at'}) do
    local v = tonumber(meta[field])
    local cur = tonumber(redis.call('HGET', key(to), field))
    if v and (not cur or v > cur) then redis.call('HSET', key(to), field, v) end
  end
  if not exists then redis.call('HSET', key(to), 'root', meta['root']) end
  if meta['tz'] then
    local cur_tz, cur = unpack(redis.call('HMGET', key(to), 'tz', 'tz_at'))
    local at, cur_at = tonumber(meta['tz_at']), tonumber(cur)
    if not cur_at or at > cur_at or (at == cur_at and meta['tz'] > (cur_tz or '')) then
      redis.call('HSET', key(to), 'tz', meta['tz'], 'tz_at', meta['tz_at'])
    end
  end
  if tonumber(meta['known'] or '0') > 0 then redis.call('SADD', P .. ':profiles:known', to) end
end

local function move_identifiers(from, to)
  local ids = redis.call('HGETALL', key(from, 'ids'))
  for i = 1, #ids, 2 do
    local ident, first = ids[i], tonumber(ids[i + 1])
    set_owner(ident, to)
    local cur = first_seen_of(to, ident)
    if not cur or first < cur then set_first_seen(to, ident, first) end
    record_identity(ident, to)
  end
end

-- Per field, the value set last in event time wins (traits, consent).
local function move_latest(from, to, part)
  local values = redis.call('HGETALL', key(from, part))
  local kept = {}
  for i = 1, #values, 2 do
    local t = tonumber(redis.call('HGET', key(from, part .. '_at'), values[i]))
    if keep_latest(key(to, part), key(to, part .. '_at'), values[i], values[i + 1], t) then
      kept[#kept + 1] = values[i]
    end
  end
  return kept
end

local function move_days(from, to)
  for _, day in ipairs(redis.call('ZRANGE', key(from, 'days'), 0, -1)) do
    local counts = redis.call('HGETALL', day_key(from, day))
    for i = 1, #counts, 2 do redis.call('HINCRBY', day_key(to, day), counts[i], counts[i + 1]) end
    if #counts > 0 then
      redis.call('EXPIREAT', day_key(to, day), (tonumber(day) + keep_days) * 86400)
      redis.call('ZADD', key(to, 'days'), day, day)
    end
    redis.call('DEL', day_key(from, day))
  end
end

local function move_cart(from, to)
  local cart = redis.call('HGETALL', key(from, 'cart'))
  for i = 1, #cart, 2 do
    local added = tonumber(redis.call('HGET', key(from, 'cart_items'), cart[i] .. ':at') or '0')
    redis.call('HINCRBY', key(to, 'cart'), cart[i], cart[i + 1])
    redis.call('HSETNX', key(to, 'cart_items'), cart[i],
               redis.call('HGET', key(from, 'cart_items'), cart[i]))
    local at = tonumber(redis.call('HGET', key(to, 'cart_items'), cart[i] .. ':at') or '0')
    if added > at then redis.call('HSET', key(to, 'cart_items'), cart[i] .. ':at', added) end
  end
  -- An order of either profile empties what either put in the cart before it.
  clear_cart(to, tonumber(redis.call('HGET', key(to), 'cart_cleared_at') or '0'))
end

local function move_viewed(from, to)
  local viewed = redis.call('ZRANGE', key(from, 'viewed'), 0, -1, 'WITHSCORES')
  for i = 1, #viewed, 2 do
    redis.call('ZADD', key(to, 'viewed'), 'GT', viewed[i + 1], viewed[i])
    redis.call('HSET', key(to, 'viewed_items'), viewed[i],
               redis.call('HGET', key(from, 'viewed_items'), viewed[i]))
  end
  trim_viewed(to)
end

local function move_consent(from, to)
  for _, purpose in ipairs(move_latest(from, to, 'consent')) do
    redis.call('HSET', key(to, 'consent_src'), purpose,
               redis.call('HGET', key(from, 'consent_src'), purpose))
  end
  local suppression = redis.call('HGETALL', key(from, 'suppression'))
  for i = 1, #suppression, 2 do
    redis.call('HSETNX', key(to, 'suppression'), suppression[i], suppression[i + 1])
  end
end

local function move_history(from, to)
  local history = key(from, 'history')
  if redis.call('EXISTS', history) == 1 then
    redis.call('ZUNIONSTORE', key(to, 'history'), 2, key(to, 'history'), history,
               'AGGREGATE', 'MIN')
    redis.call('ZREMRANGEBYRANK', key(to, 'history'), 0, -history_cap - 1)
  end
end

local function move_log(from, to)
  local entries = redis.call('LRANGE', key(from, 'log'), 0, -1)
  if #entries > 0 then
    redis.call('RPUSH', key(to, 'log'), unpack(entries))
    redis.call('LTRIM', key(to, 'log'), 0, LOG_KEPT - 1)
  end
end

-- `to` answers for `from` and for every id `from` had absorbed.
local function redirect(from, to)
  -- `to` may itself have been merged away once (a root that became the earliest again).
  redis.call('DEL', P .. ':merged:' .. to)
  local absorbed = redis.call('SMEMBERS', key(from, 'absorbed'))
  redis.call('SADD', key(to, 'absorbed'), from, unpack(absorbed))
  redis.call('SREM', key(to, 'absorbed'), to)
  for _, old in ipairs(absorbed) do
    if old ~= to then redis.call('SET', P .. ':merged:' .. old, to) end
  end
  redis.call('SET', P .. ':merged:' .. from, to)
end

local function retire(from)
  local retired = {key(from)}
  for _, part in ipairs(PARTS) do retired[#retired + 1] = key(from, part) end
  redis.call('DEL', unpack(retired))
  firsts[from] = nil
  redis.call('SREM', P .. ':profiles', from)
  redis.call('SREM', P .. ':profiles:known', from)
end

-- Move everything of profile `from` into `to` (which may not exist yet), then retire `from`.
local function move(from, to, cause, message_id, at)
  local exists = redis.call('EXISTS', key(to)) == 1
  if not exists then redis.call('SADD', P .. ':profiles', to) end
  move_meta(from, to, exists)
  move_identifiers(from, to)
  move_latest(from, to, 'traits')
  move_days(from, to)
  move_cart(from, to)
  move_viewed(from, to)
  move_consent(from, to)
  move_log(from, to)
  move_history(from, to)
  redirect(from, to)
  retire(from)
  moved[from] = to
  moved[to] = nil
  local names = changed[to] or {}
  for name in pairs(changed[from] or {}) do names[name] = true end
  changed[from] = nil
  changed[to] = names
  merged_pairs[#merged_pairs + 1] = {from, to}
  record('identity_merges', {survivor = to, merged = from, cause = cause,
                             message_id = message_id, event_at = at, at = now})
  merges = merges + 1
end

-- The profile's root is its earliest identifier; when that changes, so does its id.
local function check_root(pid, ident, t, message_id)
  local m = redis.call('HMGET', key(pid), 'root', 'first_seen')
  if before(t, ident, tonumber(m[2]) or 0, m[1]) then
    redis.call('HSET', key(pid), 'root', ident, 'first_seen', t)
    local renamed = profile_id(ident)
    if renamed ~= pid then
      move(pid, renamed, 'earlier identifier ' .. ident, message_id, t)
      return renamed
    end
  end
  return pid
end

local function touch_identifier(pid, ident, t, message_id)
  local first = first_seen_of(pid, ident)
  if first and first <= t then return pid end
  set_first_seen(pid, ident, t)
  return check_root(pid, ident, t, message_id)
end

local function merge(a, b, cause, message_id, t)
  local ra, rb = redis.call('HGET', key(a), 'root'), redis.call('HGET', key(b), 'root')
  local fa, fb = meta_number(a, 'first_seen'), meta_number(b, 'first_seen')
  if before(fb, rb, fa, ra) then a, b = b, a end
  move(b, a, cause, message_id, t)
  return a
end

local function refuse(pid, other, reason, message_id, t)
  refused = refused + 1
  record('identity_merges', {survivor = pid, merged = other, cause = 'refused: ' .. reason,
                             message_id = message_id, event_at = t, at = now})
  log(pid, 'warning', 'not merged with another profile: ' .. reason, t)
end

local function apply_consent(pid, c, t, source, message_id)
  local field = c[1] .. ':' .. c[2]
  local status = c[3]
  local current = redis.call('HGET', key(pid, 'consent'), field)
  if status == 'denied' and current == 'granted' then status = 'revoked' end
  local kept = keep_latest(key(pid, 'consent'), key(pid, 'consent_at'), field, status, t)
  if kept then redis.call('HSET', key(pid, 'consent_src'), field, source) end
  record('consent_log', {profile_id = pid, channel = c[1], purpose = c[2], status = status,
                         at = t, source = source, message_id = message_id,
                         current = kept, recorded_at = now})
end

local function resolve(e)
  local t, mid = e.t0 or e.t, e.mid
  local ids = e.ids
  if e.prev then  -- alias: the previous id is a known user id, or else an anonymous id
    local prev = 'u:' .. e.prev
    if not owner_of(prev) then prev = 'a:' .. e.prev end
    ids[#ids + 1] = prev
  end
  local owner, owned = {}, {}
  for _, ident in ipairs(ids) do
    local pid = owner_of(ident)
    if pid then
      owner[ident] = pid
      if not owned[pid] then owned[pid] = true; owned[#owned + 1] = pid end
    end
  end
  local user = nil
  if string.sub(ids[1], 1, 2) == 'u:' then user = ids[1] end
  local pending_user = user ~= nil and owner[user] == nil

  -- The profile the event belongs to: its user's, else the first one compatible with it,
  -- else a new one rooted at the event's smallest identifier.
  local anchor = user and owner[user]
  if not anchor then
    for _, pid in ipairs(owned) do
      if not user or meta_number(pid, 'users') == 0 then anchor = pid; break end
    end
  end
  local created = nil
  if not anchor then
    local root = nil
    for _, ident in ipairs(ids) do
      if not owner[ident] and (not root or ident < root) then root = ident end
    end
    anchor = new_profile(root, t, e.bot)
    created = anchor
  end

  -- Bring the others in, unless that would join two people known by different user ids
  -- (only an explicit alias may) or exceed the identifier cap.
  for _, pid in ipairs(owned) do
    pid = live(pid)
    if pid ~= anchor then
      local users_a = meta_number(anchor, 'users') + (pending_user and 1 or 0)
      local size = redis.call('HLEN', key(anchor, 'ids')) + redis.call('HLEN', key(pid, 'ids'))
      if users_a > 0 and meta_number(pid, 'users') > 0 and not e.prev then
        refuse(anchor, pid, 'both have a user id', mid, t)
      elseif size > cap then
        refuse(anchor, pid, 'more than ' .. cap .. ' identifiers', mid, t)
      else
        anchor = merge(anchor, pid, e.type, mid, t)
      end
    end
  end
  for _, ident in ipairs(ids) do
    local pid = owner[ident] and live(owner[ident])
    if not pid then
      if redis.call('HLEN', key(anchor, 'ids')) >= cap then
        log(anchor, 'warning', ident .. ' not linked: the profile holds ' .. cap .. ' identifiers', t)
      else
        add_identifier(anchor, ident, t)
        -- A profile made by this event is rooted at its smallest new identifier already.
        if anchor ~= created then anchor = check_root(anchor, ident, t, mid) end
      end
    elseif pid == anchor then
      anchor = touch_identifier(anchor, ident, t, mid)
    end
  end
  return anchor
end

local function apply_event(e)
  local pid = resolve(e)
  local t = e.t
  local profile = key(pid)
  -- The profile's own fields are read once and written once, at the end.
  local m = redis.call('HMGET', profile, 'last_seen', 'tz', 'tz_at', 'cart_cleared_at', 'events',
                       'cart_at', 'orders', 'last_order_at', 'bot_only')
  if m[9] and not e.bot then redis.call('HDEL', profile, 'bot_only') end
  local updates = {'events', (tonumber(m[5]) or 0) + (e.n or 1)}
  local function update(field, value)
    updates[#updates + 1] = field
    updates[#updates + 1] = value
  end
  if t > (tonumber(m[1]) or 0) then update('last_seen', t) end
  local tz_at, tz_t = tonumber(m[3]) or 0, e.tzt or t
  -- The zone told last in event time; of two told at the same moment, the greater name (as
  -- the SQL path picks: in any order of arrival, the same).
  if e.tz and (tz_t > tz_at or (tz_t == tz_at and e.tz > (m[2] or ''))) then
    update('tz', e.tz)
    update('tz_at', tz_t)
  end

  local day = math.floor(t / 86400000)
  if e.f and day >= first_day then
    local dk = day_key(pid, day)
    -- One read and one write for all the counts: a script's command costs more than its work.
    local names, counts = {}, {}
    for name, count in pairs(e.f) do names[#names + 1] = name; counts[#counts + 1] = count end
    local current = redis.call('HMGET', dk, unpack(names))
    local sums = {}
    for i, name in ipairs(names) do
      sums[#sums + 1] = name
      sums[#sums + 1] = (tonumber(current[i]) or 0) + counts[i]
    end
    redis.call('HSET', dk, unpack(sums))
    local known_day = pid .. day
    if not days_added[known_day] and redis.call('ZADD', key(pid, 'days'), day, day) == 1 then
      redis.call('EXPIREAT', dk, (day + keep_days) * 86400)
      redis.call('ZREMRANGEBYSCORE', key(pid, 'days'), '-inf', first_day - 1)
    end
    days_added[known_day] = true
  end
  if e.tr then keep_latest_all(key(pid, 'traits'), key(pid, 'traits_at'), e.tr, t) end
  if e.h then
    local scored = {}
    for _, happened in ipairs(e.h) do  -- {time, member}
      if happened[1] > history_from then
        scored[#scored + 1] = happened[1]; scored[#scored + 1] = happened[2]
      end
    end
    if #scored > 0 then
      redis.call('ZADD', key(pid, 'history'), unpack(scored))
      history_added[pid] = true
    end
  end
  local names = changed[pid] or {}
  for _, name in ipairs(e.evs or {}) do names[name] = true end
  changed[pid] = names
  if e.cart then
    local op, product = e.cart[1], e.cart[2]
    local cleared = tonumber(m[4]) or 0
    if op == 'clear' then
      if t > cleared then
        -- Keep only what was put in after the order (a late event may be older).
        clear_cart(pid, t)
        update('cart_cleared_at', t)
      end
    elseif t > cleared then
      if op == 'add' then
        local items = key(pid, 'cart_items')
        redis.call('HINCRBY', key(pid, 'cart'), product, e.cart[3])
        local at = tonumber(redis.call('HGET', items, product .. ':at') or '0')
        if t > at then
          redis.call('HSET', items, product, e.cart[4], product .. ':at', t)
        else
          redis.call('HSET', items, product, e.cart[4])
        end
      else
        local left = redis.call('HINCRBY', key(pid, 'cart'), product, -e.cart[3])
        if left <= 0 then
          redis.call('HDEL', key(pid, 'cart'), product)
          redis.call('HDEL', key(pid, 'cart_items'), product, product .. ':at')
        end
      end
    end
    if t > (tonumber(m[6]) or 0) then update('cart_at', t) end
  end
  if e.views then
    local scored, items = {'GT'}, {}
    for _, view in ipairs(e.views) do  -- {product, time, item}, in event order
      scored[#scored + 1] = view[2]; scored[#scored + 1] = view[1]
      items[#items + 1] = view[1]; items[#items + 1] = view[3]
    end
    local added = redis.call('ZADD', key(pid, 'viewed'), unpack(scored))
    redis.call('HSET', key(pid, 'viewed_items'), unpack(items))
    if added > 0 then trim_viewed(pid) end
  end
  if e.order then
    update('orders', (tonumber(m[7]) or 0) + 1)
    -- HINCRBY keeps every digit; a Lua number would be written as %.14g.
    redis.call('HINCRBY', profile, 'revenue', e.order)
    if t > (tonumber(m[8]) or 0) then update('last_order_at', t) end
  end
  redis.call('HSET', profile, unpack(updates))
  if e.consent then
    for _, c in ipairs(e.consent) do apply_consent(pid, c, t, e.type, e.mid) end
  end
  if e.warn then
    for _, message in ipairs(e.warn) do log(pid, 'warning', message, t) end
  end
end

for _, marker in ipairs(markers) do
  if redis.call('EXISTS', marker) == 1 then return {-1, 0, 0} end
end
for _, marker in ipairs(markers) do redis.call('SET', marker, '1', 'EX', marker_ttl) end

for _, c in ipairs(changes) do
  if c.kind == 'event' then
    apply_event(c)
    applied = applied + (c.n or 1)
  else
    local pid = live_stored(c.profile)
    if redis.call('EXISTS', key(pid)) == 1 then
      if c.kind == 'consent' then
        apply_consent(pid, c.consent, c.t, c.source, '')
      elseif c.kind == 'suppress' then
        redis.call('HSET', key(pid, 'suppression'), c.channel,
                   cjson.encode({reason = c.reason, at = c.t, source = c.source}))
        record('suppression_log', {profile_id = pid, channel = c.channel, reason = c.reason,
                                   suppressed = true, at = c.t, source = c.source})
      elseif c.kind == 'unsuppress' then
        redis.call('HDEL', key(pid, 'suppression'), c.channel)
        record('suppression_log', {profile_id = pid, channel = c.channel, reason = '',
                                   suppressed = false, at = c.t, source = c.source})
      end
      applied = applied + 1
      changed[pid] = changed[pid] or {}
      changed[pid]['consent'] = true
    end
  end
end
-- Once a call per profile, at its end: what aged out goes, and what is past the cap (a
-- client sending without end, a bot on the public write key, would make every evaluation of
-- its profile read all of it). So after every call a history is the newest `history_cap` of
-- the profile's kept events (by time, then member), whatever the calls' sizes were: what
-- `rules/sql.py` counts. The events dropped for the cap are changes too (an audience
-- counting them may be left): their names are announced.
for pid in pairs(history_added) do
  local id = live(pid)
  local history = key(id, 'history')
  redis.call('ZREMRANGEBYSCORE', history, '-inf', history_from)
  local excess = redis.call('ZCARD', history) - history_cap
  if excess > 0 then
    local names = changed[id] or {}
    for _, member in ipairs(redis.call('ZRANGE', history, 0, excess - 1)) do
      names[cjson.decode(member)[2]] = true
    end
    changed[id] = names
    redis.call('ZREMRANGEBYRANK', history, 0, excess - 1)
  end
end
send_records()
if changes_stream ~= '' and next(changed) then
  local live_ids, names_of = {}, {}
  for pid, names in pairs(changed) do
    local id = live(pid)
    if redis.call('EXISTS', key(id)) == 1 then
      if not names_of[id] then live_ids[#live_ids + 1] = id; names_of[id] = {} end
      for name in pairs(names) do names_of[id][#names_of[id] + 1] = name end
    end
  end
  -- Capped: with no audience worker running, it does not grow without end.
  redis.call('XADD', changes_stream, 'MAXLEN', '~', 1000000, '*', 'p', cjson.encode(live_ids),
             'e', cjson.encode(names_of), 'm', cjson.encode(merged_pairs), 'at', now)
end
return {applied, merges, refused}
