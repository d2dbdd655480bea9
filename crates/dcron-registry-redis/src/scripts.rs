//! The Lua scripts: every decision that reads and writes more than one key runs as one script,
//! so Redis executes it atomically (no other command runs between its reads and its writes).
//! Each writing script publishes its change on the namespace's channel in the same step (see
//! `events` for the message format).
//!
//! Redis does not roll a script back when a command inside it fails: the writes made before the
//! failing command stay. So every script first does what can fail (type checks of the keys it
//! reads, the `INCR` of the sequence), and only then writes; a key of an unexpected type is
//! checked with `TYPE` rather than left to fail a command.

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by several scripts, prepended to their bodies.
const PRELUDE: &str = r#"
local function key_type(k) return redis.call('TYPE', k)['ok'] end
local function lease_of(k)
  if key_type(k) ~= 'hash' then return false end
  return redis.call('HGET', k, 'lease')
end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function now_ms() return math.floor(now_us() / 1000) end
-- The generation of a life key: a number, nil when there is no life, 'bad' when the key does
-- not hold a life.
local function life_gen(k)
  local t = key_type(k)
  if t == 'none' then return nil end
  if t ~= 'hash' then return 'bad' end
  local h = redis.call('HMGET', k, 'gen', 'since_s', 'since_ns')
  local g, s, ns = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])
  if not g or g < 1 or not s or not ns or ns < 0 or ns >= 1000000000 then return 'bad' end
  return g
end
local function write_life(k, g, since_s, since_ns)
  redis.call('DEL', k)
  redis.call('HSET', k, 'gen', g, 'since_s', since_s, 'since_ns', since_ns)
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// KEYS: node, node index, node-change counter. ARGV: lease id, node JSON, ttl ms, index
/// member, channel. Replaces any older registration of the node.
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v = redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'lease', ARGV[1], 'node', ARGV[2], 'ver', v)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], 'np:' .. v .. ':' .. ARGV[2])
return 1
"#,
    )
});

/// KEYS: node. ARGV: lease id, ttl ms. 1 when renewed, 0 when the lease is gone.
pub(crate) static KEEP_ALIVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if lease_of(KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#,
    )
});

/// KEYS: node, node-change counter. ARGV: lease id, node JSON, channel. 1 when written, 0 when
/// the lease is gone. `HSET` never touches the key's TTL, so the record stays attached to the
/// lease.
pub(crate) static UPDATE_NODE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if lease_of(KEYS[1]) ~= ARGV[1] then return 0 end
local v = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'ver', v)
redis.call('PUBLISH', ARGV[3], 'np:' .. v .. ':' .. ARGV[2])
return 1
"#,
    )
});

/// KEYS: node, node index, node-change counter. ARGV: lease id, index member, channel, node id.
/// Removes the record only when it still belongs to this lease.
pub(crate) static UNREGISTER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local t = key_type(KEYS[1])
if t == 'none' then
  redis.call('SREM', KEYS[2], ARGV[2])
  return 0
end
if lease_of(KEYS[1]) ~= ARGV[1] then return 0 end
local v = redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'nd:' .. v .. ':' .. ARGV[4])
return 1
"#,
    )
});

/// KEYS: node index, node-change counter. ARGV: node key prefix. Returns the counter, then
/// `[member, record, version, …]` for every live node (`''` for a record that is missing or of
/// the wrong type) and prunes expired members. The counter is read in the same atomic step, so
/// every change with a version up to it is reflected in the list.
pub(crate) static LIST_NODES: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
local cur = 0
if key_type(KEYS[2]) == 'string' then cur = tonumber(redis.call('GET', KEYS[2])) or 0 end
out[1] = cur
if key_type(KEYS[1]) ~= 'set' then return out end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. m
  local t = key_type(k)
  if t == 'none' then
    redis.call('SREM', KEYS[1], m)
  else
    local v, ver = false, false
    if t == 'hash' then
      local h = redis.call('HMGET', k, 'node', 'ver')
      v, ver = h[1], h[2]
    end
    out[#out + 1] = m
    out[#out + 1] = v or ''
    out[#out + 1] = tonumber(ver) or 0
  end
end
return out
"#,
    )
});

/// KEYS: task, tombstone, life, sequence. ARGV: mode (`create`/`update`/`force`), record JSON,
/// channel, task name, live-since seconds, live-since nanoseconds (both `''` when the record
/// has no `created_at`), the sequence's scale and offset (`RedisKeys::token_scale`). Returns `ok`, `exists`, `tombstoned`, `notfound` or `nosince`.
///
/// `create` and `force` start a new life (the next number of the sequence as its generation,
/// live-since from the record) in the same step; `force` also removes the tombstone; `update`
/// keeps the life. Claims are never touched: they live until their retention ends.
pub(crate) static PUT_TASK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local mode = ARGV[1]
local g = false
if mode == 'create' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'tombstoned' end
  if ARGV[5] == '' then return 'nosince' end
  g = redis.call('INCR', KEYS[4]) * tonumber(ARGV[7]) + tonumber(ARGV[8])
elseif mode == 'update' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'tombstoned' end
  if redis.call('EXISTS', KEYS[1]) == 0 then return 'notfound' end
else
  if ARGV[5] == '' then return 'nosince' end
  g = redis.call('INCR', KEYS[4]) * tonumber(ARGV[7]) + tonumber(ARGV[8])
  if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[3], 'tc:' .. ARGV[4]) end
end
redis.call('SET', KEYS[1], ARGV[2])
if g then write_life(KEYS[3], g, ARGV[5], ARGV[6]) end
redis.call('PUBLISH', ARGV[3], 'tp:' .. ARGV[2])
return 'ok'
"#,
    )
});

/// KEYS: tombstone. ARGV: tombstone JSON, channel. 1 when written, 0 when one already exists
/// (its original time is kept).
pub(crate) static MARK_DELETED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('PUBLISH', ARGV[2], 'tt:' .. ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// KEYS: tombstone. ARGV: channel, task name. 1 when cleared, 0 when there was none.
pub(crate) static CLEAR_TOMBSTONE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[1], 'tc:' .. ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// KEYS: task, tombstone, life. ARGV: channel, task name. Removes the name's record, tombstone
/// and life; its claims stay until their retention ends, and the sequence (the namespace's) is
/// kept.
pub(crate) static CLEANUP_TASK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('DEL', KEYS[1]) == 1 then redis.call('PUBLISH', ARGV[1], 'tr:' .. ARGV[2]) end
if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[1], 'tc:' .. ARGV[2]) end
redis.call('DEL', KEYS[3])
return 1
"#,
    )
});

/// KEYS: sequence, then one life key per name. ARGV: the sequence's scale and offset
/// (`RedisKeys::token_scale`), then per name the live-since seconds and nanoseconds to start a
/// life with. Returns `[generation, since_s, since_ns, …]`, one triple
/// per name: the existing life, or a new one (the next number of the sequence) when the name
/// has none or its key does not hold a life.
pub(crate) static ENSURE_LIVES: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
for i = 2, #KEYS do
  local k = KEYS[i]
  local g = life_gen(k)
  local s, ns
  if g == nil or g == 'bad' then
    g = redis.call('INCR', KEYS[1]) * tonumber(ARGV[1]) + tonumber(ARGV[2])
    s, ns = ARGV[2 * i - 1], ARGV[2 * i]
    write_life(k, g, s, ns)
  else
    local h = redis.call('HMGET', k, 'since_s', 'since_ns')
    s, ns = h[1], h[2]
  end
  out[#out + 1] = g
  out[#out + 1] = s
  out[#out + 1] = ns
end
return out
"#,
    )
});

/// KEYS: sequence, tombstone, life. ARGV: live-since seconds, nanoseconds, channel, task name,
/// the sequence's scale and offset (`RedisKeys::token_scale`).
/// Starts a new life whatever is there: removes the tombstone, keeps the task record and the
/// claims. Returns the new generation.
pub(crate) static RESTART_LIFE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local g = redis.call('INCR', KEYS[1]) * tonumber(ARGV[5]) + tonumber(ARGV[6])
if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[3], 'tc:' .. ARGV[4]) end
write_life(KEYS[3], g, ARGV[1], ARGV[2])
return g
"#,
    )
});

/// Claims a batch of fires for one claimant.
///
/// KEYS: sequence, then per task of the batch: tombstone, life, claim index; then per fire:
/// its claim key. ARGV: node id, epoch, number of tasks, the sequence's scale and offset
/// (`RedisKeys::token_scale`: the `n`th number of the sequence is the token `n * scale +
/// offset`), then per fire: task number (1-based), generation, deadline (µs since the epoch),
/// retention ms, index member (the instant's milliseconds). In the cluster layout every task of
/// one call is of one bucket (one hash slot, one sequence).
///
/// Per fire, in the order of `dcron_core::claim`: `{'T'}` tombstoned; `{'S', g}` or `{'S'}`
/// superseded (current generation, none); `{'E', token}` won earlier by this claimant;
/// `{'L', holder}` lost; `{'D'}` past the deadline by the server's clock; `{'W', token}` won;
/// `{'F', reason}` when a key of this fire does not hold what it should (the others are still
/// decided).
///
/// Cost, O(batch) and no scan: one `INCRBY` reserves the batch's tokens; each task's tombstone,
/// life (`HGET gen`) and index (one `ZADD`, one `PTTL`) are touched once; a fire that is won
/// costs one `SET NX PX` (a claim is the string `<token>:<generation>:<epoch>:<node id>`), and
/// only a fire that is not written reads its claim.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local node, epoch, ntasks = ARGV[1], ARGV[2], tonumber(ARGV[3])
local scale, offset = tonumber(ARGV[4]), tonumber(ARGV[5])
local nfires = #KEYS - 1 - 3 * ntasks
local now = now_us()
local now_milli = math.floor(now / 1000)
local base = redis.call('INCRBY', KEYS[1], nfires) - nfires
local tombs, gens, added, longest = {}, {}, {}, {}
local out = {}
-- The generation of a life key for a claim (only `gen` matters here): a number, false when
-- there is no life, 'bad' when the key does not hold one. `pcall`: a key of another type
-- answers an error instead of failing the script.
local function claim_gen(k)
  local h = redis.pcall('HGET', k, 'gen')
  if type(h) == 'table' then return 'bad' end
  if not h then return false end
  local g = tonumber(h)
  if not g or g < 1 then return 'bad' end
  return g
end
-- The answer for a fire whose claim key exists, or nil when it does not.
local function held(claim)
  local t = key_type(claim)
  if t == 'none' then return nil end
  if t ~= 'string' then return {'F', 'the claim key holds a ' .. t} end
  local tok, _, ep, nd = string.match(redis.call('GET', claim), '^(%d+):(%d+):(%d+):(.+)$')
  if not tok then return {'F', 'the claim key does not hold a claim'} end
  if nd == node and ep == epoch then return {'E', tonumber(tok)} end
  return {'L', nd}
end
for i = 1, nfires do
  local a = 5 + 5 * (i - 1)
  local t = tonumber(ARGV[a + 1])
  local claim = KEYS[1 + 3 * ntasks + i]
  if tombs[t] == nil then tombs[t] = redis.call('EXISTS', KEYS[3 * t - 1]) == 1 end
  if gens[t] == nil then gens[t] = claim_gen(KEYS[3 * t]) end
  local g = gens[t]
  if tombs[t] then
    out[i] = {'T'}
  elseif g == 'bad' then
    out[i] = {'F', 'the life key does not hold a life'}
  elseif not g or g ~= tonumber(ARGV[a + 2]) then
    if g then out[i] = {'S', g} else out[i] = {'S'} end
  elseif now > tonumber(ARGV[a + 3]) then
    out[i] = held(claim) or {'D'}
  else
    local tok = (base + i) * scale + offset
    local ret = tonumber(ARGV[a + 4])
    local value = string.format('%d:%d:%s:%s', tok, g, epoch, node)
    if redis.call('SET', claim, value, 'NX', 'PX', ret) then
      local list = added[t] or {}
      list[#list + 1] = now_milli + ret
      list[#list + 1] = ARGV[a + 5]
      added[t] = list
      if not longest[t] or ret > longest[t] then longest[t] = ret end
      out[i] = {'W', tok}
    else
      out[i] = held(claim) or {'F', 'the claim key could not be written'}
    end
  end
end
-- The index of each task written: one ZADD (replacing a key of another type), expired members
-- pruned on one task in 16 (and on every listing), and a TTL of twice the longest retention
-- when it has less than that left, so most batches only read it.
for t, list in pairs(added) do
  local idx = KEYS[3 * t + 1]
  if type(redis.pcall('ZADD', idx, unpack(list))) == 'table' then
    redis.call('DEL', idx)
    redis.call('ZADD', idx, unpack(list))
  end
  if (base + t) % 16 == 0 then redis.call('ZREMRANGEBYSCORE', idx, '-inf', now_milli - 1000) end
  if redis.call('PTTL', idx) < longest[t] then redis.call('PEXPIRE', idx, 2 * longest[t]) end
end
return out
"#,
    )
});

/// KEYS: claim index. ARGV: claim key prefix. Returns `[member, claim, …]` for retained claims
/// (`''` for a key of the wrong type) and prunes index members that expired.
pub(crate) static LIST_CLAIMS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
if key_type(KEYS[1]) ~= 'zset' then return out end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms() - 1000)
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local k = ARGV[1] .. m
  local t = key_type(k)
  if t == 'string' then
    out[#out + 1] = m
    out[#out + 1] = redis.call('GET', k)
  elseif t ~= 'none' then
    out[#out + 1] = m
    out[#out + 1] = ''
  end
end
return out
"#,
    )
});

/// Takes a running slot.
///
/// KEYS: the caller's node key, the slot key. ARGV: the caller's lease id, the slot record
/// (`dcron_core::SlotRecord` JSON of the caller's lease and fire). Returns `{'X'}` when the
/// caller's lease has ended (nothing written); `{'T'}` when the slot is now held by the caller
/// (free, its holder's lease ended, or already held by the same lease for the same fire);
/// `{'H', record}` when another fire holds it; `{'F', reason}` when the slot key does not hold
/// a slot.
///
/// A slot is a hash: `lease` (the holder's lease id), `nkey` (the holder's node key) and `rec`
/// (the record). It is held while the holder's node key still carries that lease id, so it
/// ends with the lease (expiry, unregistration or a newer registration) without a TTL of its
/// own.
pub(crate) static ACQUIRE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if lease_of(KEYS[1]) ~= ARGV[1] then return {'X'} end
local t = key_type(KEYS[2])
if t == 'hash' then
  local h = redis.call('HMGET', KEYS[2], 'lease', 'nkey', 'rec')
  if not h[1] or not h[2] or not h[3] then return {'F', 'the slot hash lacks a field'} end
  if h[3] == ARGV[2] then return {'T'} end
  if lease_of(h[2]) == h[1] then return {'H', h[3]} end
elseif t ~= 'none' then
  return {'F', 'the slot key holds a ' .. t}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'lease', ARGV[1], 'nkey', KEYS[1], 'rec', ARGV[2])
return {'T'}
"#,
    )
});

/// Frees a running slot held by the caller for its fire.
///
/// KEYS: the slot key. ARGV: the slot record of the caller's lease and fire. Returns 1 when
/// freed, 0 when the slot is not held by that lease for that fire (nothing changes).
pub(crate) static RELEASE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if key_type(KEYS[1]) ~= 'hash' then return 0 end
if redis.call('HGET', KEYS[1], 'rec') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"#,
    )
});
