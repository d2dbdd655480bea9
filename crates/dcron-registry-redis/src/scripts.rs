//! The Lua scripts: every decision that reads and writes more than one key runs as one script,
//! so Redis executes it atomically. Each writing script publishes its change on the
//! namespace's channel in the same step (see `events` for the message format).

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by several scripts, prepended to their bodies.
const PRELUDE: &str = r#"
local function key_type(k) return redis.call('TYPE', k)['ok'] end
local function lease_of(k)
  if key_type(k) ~= 'hash' then return false end
  return redis.call('HGET', k, 'lease')
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function clear_claims(idx, prefix)
  if key_type(idx) == 'zset' then
    local members = redis.call('ZRANGE', idx, 0, -1)
    for i = 1, #members, 500 do
      local batch = {}
      for j = i, math.min(i + 499, #members) do batch[#batch + 1] = prefix .. members[j] end
      redis.call('UNLINK', unpack(batch))
    end
  end
  redis.call('DEL', idx)
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// KEYS: node, node index. ARGV: lease id, node JSON, ttl ms, index member, channel.
/// Replaces any older registration of the node.
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'lease', ARGV[1], 'node', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], 'np:' .. ARGV[2])
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

/// KEYS: node. ARGV: lease id, node JSON, channel. 1 when written, 0 when the lease is gone.
/// `HSET` never touches the key's TTL, so the record stays attached to the lease.
pub(crate) static UPDATE_NODE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if lease_of(KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'node', ARGV[2])
redis.call('PUBLISH', ARGV[3], 'np:' .. ARGV[2])
return 1
"#,
    )
});

/// KEYS: node, node index. ARGV: lease id, index member, channel, node id.
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
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'nd:' .. ARGV[4])
return 1
"#,
    )
});

/// KEYS: node index. ARGV: node key prefix. Returns `[member, record, …]` for every live node
/// (`''` for a record that is missing or of the wrong type) and prunes expired members.
pub(crate) static LIST_NODES: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
if key_type(KEYS[1]) ~= 'set' then return out end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. m
  local t = key_type(k)
  if t == 'none' then
    redis.call('SREM', KEYS[1], m)
  else
    local v = false
    if t == 'hash' then v = redis.call('HGET', k, 'node') end
    out[#out + 1] = m
    out[#out + 1] = v or ''
  end
end
return out
"#,
    )
});

/// KEYS: task, tombstone, claim index. ARGV: mode (`create`/`update`/`force`), record JSON,
/// channel, claim key prefix, task name. Returns `ok`, `exists`, `tombstoned` or `notfound`.
pub(crate) static PUT_TASK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local mode = ARGV[1]
if mode == 'create' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'tombstoned' end
elseif mode == 'update' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'tombstoned' end
  if redis.call('EXISTS', KEYS[1]) == 0 then return 'notfound' end
else
  if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[3], 'tc:' .. ARGV[5]) end
  clear_claims(KEYS[3], ARGV[4])
end
redis.call('SET', KEYS[1], ARGV[2])
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

/// KEYS: task, tombstone, claim index. ARGV: channel, claim key prefix, task name.
pub(crate) static CLEANUP_TASK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('DEL', KEYS[1]) == 1 then redis.call('PUBLISH', ARGV[1], 'tr:' .. ARGV[3]) end
if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[1], 'tc:' .. ARGV[3]) end
clear_claims(KEYS[3], ARGV[2])
return 1
"#,
    )
});

/// KEYS: token counter, then per fire: tombstone, claim key, claim index.
/// ARGV: retention ms, then per fire: claim JSON up to `"token":`, index member (millis).
/// Returns one integer per fire: -1 tombstoned, 0 lost, otherwise the won fencing token.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ret = tonumber(ARGV[1])
local now = now_ms()
local out = {}
local n = (#KEYS - 1) / 3
-- One INCRBY reserves a token for every fire of the batch; tokens of fires not won are
-- skipped (tokens only need to be distinct and increasing).
local base = redis.call('INCRBY', KEYS[1], n) - n
for i = 1, n do
  local tomb, claim, idx = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  if redis.call('EXISTS', tomb) == 1 then
    out[i] = -1
  elseif redis.call('EXISTS', claim) == 1 then
    out[i] = 0
  else
    local tok = base + i
    redis.call('SET', claim, ARGV[2 * i] .. tok .. '}', 'PX', ret)
    if key_type(idx) ~= 'zset' then redis.call('DEL', idx) end
    -- Expired index members are pruned on one claim in 16 (and on every listing).
    if tok % 16 == 0 then redis.call('ZREMRANGEBYSCORE', idx, '-inf', now - 1000) end
    redis.call('ZADD', idx, now + ret, ARGV[2 * i + 1])
    if redis.call('PTTL', idx) < ret then redis.call('PEXPIRE', idx, ret) end
    out[i] = tok
  end
end
return out
"#,
    )
});

/// KEYS: claim index. ARGV: claim key prefix. Returns `[member, claim, …]` for retained claims
/// (`''` for a value of the wrong type) and prunes index members that expired.
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
