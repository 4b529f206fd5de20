//! [`RedisLedger`]: budgets kept in Redis, shared by every gateway replica
//! that uses the same Redis and key prefix.
//!
//! # Keys
//!
//! For a tenant `T` and the prefix `P` (default `gateway:`), all in one
//! Redis Cluster hash slot (the `{T}` hash tag):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{T}:account` | hash | `budget` (absent: unlimited), `spent`, `reserved` (picodollars, decimal integers), `requests`, `prompt`, `cached`, `completion`, `canceled`, `drafted`, `accepted`, `expired_holds`, `late_settles`, `version` |
//! | `P{T}:holds` | hash | hold id -> amount held (picodollars) |
//! | `P{T}:expiry` | sorted set | hold id, scored by its expiry (Redis server time, ms) |
//! | `P{T}:settled:<hold id>` | string with a TTL | marks a hold settled or released (idempotency); lives [`RedisLedgerConfig::settled_ttl`] (default 1 hour) |
//! | `Pinstances` | integer | a counter each ledger instance increments once to name its holds |
//!
//! A hold id is `<instance>.<ticket>.<nonce>`: the instance number, this
//! ledger's ticket, and a 128-bit random nonce drawn once per ledger from
//! the OS. It is the gateway's own, never the client's `x-request-id`, and
//! unique even when a Redis that lost its data hands out an instance number
//! again.
//!
//! # Scripts
//!
//! Reserve, settle, renew, read and open are Lua scripts run with `EVALSHA`
//! (and `SCRIPT LOAD` + `EVALSHA` again when Redis answers `NOSCRIPT`), so
//! each is atomic. Money is kept as decimal integer strings and added,
//! subtracted and compared exactly in two base-10^9 limbs inside the
//! scripts (Lua numbers are doubles); token counters use `HINCRBY`. No float
//! is ever stored.
//!
//! # Expiry and renewal
//!
//! A hold is an entry of `P{T}:holds` plus its expiry in `P{T}:expiry`,
//! not a key with a TTL: a key that Redis expires by itself takes its amount
//! with it, and the tenant's `reserved` total would keep it forever. Instead
//! every reserve (and every periodic read) first releases the holds whose
//! expiry passed, subtracting exactly their amounts from `reserved`, so
//! `reserved` is always the sum of the live holds. While its request lives
//! a hold is renewed: every third of [`RedisLedgerConfig::hold_ttl`] the
//! ledger pushes the expiry of all its live holds forward (one script call
//! per tenant). A replica that crashed stops renewing, and its holds come
//! back to the budget within one TTL.
//!
//! # Settling
//!
//! [`Ledger::settle`] is synchronous: it hands the settlement to a
//! background task, which appends it to the journal (`journal.rs`: a file
//! under [`RedisLedgerConfig::journal_dir`], fsynced, or memory when no
//! directory is set) and then runs the settle script, many at once on the
//! multiplexed connection (pipelined; one slow reply holds up no other).
//! A settle that fails is retried with backoff until Redis takes it; it is
//! never dropped. Entries left at a crash are replayed at the next start.
//! Settling is idempotent per hold (the settled marker), so a replay or a
//! retry after a lost reply never charges twice.
//!
//! The journal is bounded: a reserve is refused (fail closed) when the
//! live holds plus the settlements not yet in Redis reach
//! [`RedisLedgerConfig::journal_max_entries`]. While Redis cannot be
//! reached a reserve fails at once ([`LedgerError::Unavailable`]) instead
//! of waiting for a timeout; the background tasks probe Redis and lift
//! this as soon as it answers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use gateway_core::{
    Charge, Ledger, LedgerError, Money, Reservation, ReserveRequest, SettleOutcome, TenantId, Usage,
};
use redis::{RedisError, Script, ScriptInvocation};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::journal::{FILE_NAME as JOURNAL_FILE, Journal};
use super::{AccountLedger, TenantAccount};
use crate::redis_shared::{
    Background, Connection, Counter, Worker, incr_instance, lock, millis, unreachable,
};

/// How a [`RedisLedger`] connects and keeps its holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLedgerConfig {
    /// A `redis://` URL (`redis://[user:password@]host:port[/db]`).
    pub url: String,
    /// Prefix of every key (default `gateway:`); ledgers with different
    /// prefixes share nothing.
    pub prefix: String,
    /// How long a hold lives without being renewed (default 60 s). Live
    /// holds are renewed every third of it, so only the holds of a replica
    /// that stopped (crashed, or cut off from Redis for longer than this)
    /// expire.
    pub hold_ttl: Duration,
    /// How long a settled marker lives after its settle (default 1 hour):
    /// a settle of the same hold replayed or retried within it is a no-op.
    /// Keep it above the longest a replica may stay down with journal
    /// entries whose done record was not written.
    pub settled_ttl: Duration,
    /// Where the settle journal is kept (`None`, the default: in memory
    /// only, lost with the process). One directory per replica.
    pub journal_dir: Option<PathBuf>,
    /// The most holds plus settlements not yet in Redis (default 65536):
    /// beyond it reserves are refused until Redis takes the backlog.
    pub journal_max_entries: usize,
    /// How long a shutdown flush waits for Redis to take the journal
    /// (default 10 s); what is left stays in the journal file for the next
    /// start.
    pub flush_timeout: Duration,
    /// How often the cached account view is re-read from Redis (default
    /// 1 s); it also follows every reply of this ledger's own scripts.
    pub refresh_interval: Duration,
    /// Time to connect (default 2 s).
    pub connect_timeout: Duration,
    /// Time for a reply (default 2 s); a reserve waiting longer fails.
    pub response_timeout: Duration,
}

impl RedisLedgerConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisLedgerConfig {
            url: url.into(),
            prefix: "gateway:".into(),
            hold_ttl: Duration::from_secs(60),
            settled_ttl: Duration::from_secs(3600),
            journal_dir: None,
            journal_max_entries: 65_536,
            flush_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }

    /// With another key prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// With another hold TTL.
    #[must_use]
    pub fn hold_ttl(mut self, ttl: Duration) -> Self {
        self.hold_ttl = ttl;
        self
    }

    /// With another settled-marker TTL.
    #[must_use]
    pub fn settled_ttl(mut self, ttl: Duration) -> Self {
        self.settled_ttl = ttl;
        self
    }

    /// With a journal file in `dir`.
    #[must_use]
    pub fn journal_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.journal_dir = Some(dir.into());
        self
    }

    /// With another journal bound.
    #[must_use]
    pub fn journal_max_entries(mut self, n: usize) -> Self {
        self.journal_max_entries = n;
        self
    }

    /// With another reply timeout.
    #[must_use]
    pub fn response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = t;
        self
    }
}

/// Counters of a [`RedisLedger`]'s settlements since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisLedgerStats {
    /// Settlements handed to the ledger.
    pub settles_queued: u64,
    /// Settlements applied in Redis.
    pub settles_applied: u64,
    /// Settlements Redis had already seen (a no-op).
    pub settles_duplicate: u64,
    /// Settlements and releases waiting for Redis now (in the journal).
    pub journal_pending: u64,
    /// Entries found in the journal at start, replayed.
    pub replayed: u64,
    /// Journal writes that failed (their entries stay pending in memory).
    pub journal_errors: u64,
    /// Attempts retried after an error.
    pub settle_retries: u64,
    /// Holds released because their reserve failed or was abandoned.
    pub releases: u64,
    /// Hold renewals applied (one per live hold per renewal).
    pub holds_renewed: u64,
    /// Reserves refused at once because Redis could not be reached.
    pub refused_unavailable: u64,
    /// Reserves refused because the journal was full.
    pub refused_journal_full: u64,
}

/// A tenant's account in Redis with the Redis ledger's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisAccount {
    /// The account.
    pub account: TenantAccount,
    /// Holds released because their TTL passed before a settle.
    pub expired_holds: u64,
    /// Settles that arrived after their hold had expired (charged, capped
    /// at the budget).
    pub late_settles: u64,
}

/// The fields of `P{T}:account`, in the order every script returns them.
const FIELDS: [&str; 13] = [
    "version",
    "budget",
    "spent",
    "reserved",
    "requests",
    "prompt",
    "cached",
    "completion",
    "canceled",
    "drafted",
    "accepted",
    "expired_holds",
    "late_settles",
];

/// Exact arithmetic on non-negative decimal integers (up to 20 digits) in
/// two base-10^9 limbs, the account's state (the Lua table `FIELDS`, made
/// from [`FIELDS`], comes first), server time, and the purge of expired
/// holds.
const PRELUDE: &str = r"
local B = 1000000000
local function big(s)
  if not s then return {0, 0} end
  local n = #s
  if n <= 9 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))}
end
local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= B then hi, lo = hi + 1, lo - B end
  return {hi, lo}
end
local function sub(a, b)
  local hi, lo = a[1] - b[1], a[2] - b[2]
  if lo < 0 then hi, lo = hi - 1, lo + B end
  if hi < 0 then return {0, 0} end
  return {hi, lo}
end
local function le(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] <= b[2]) end
local function str(a)
  if a[1] == 0 then return string.format('%d', a[2]) end
  return string.format('%d%09d', a[1], a[2])
end
local function state(account)
  return redis.call('HMGET', account, unpack(FIELDS))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function purge(account, holds, expiry, now)
  local ids = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 1000)
  if #ids == 0 then return end
  local reserved = big(redis.call('HGET', account, 'reserved'))
  for _, id in ipairs(ids) do
    local amount = redis.call('HGET', holds, id)
    if amount then
      reserved = sub(reserved, big(amount))
      redis.call('HDEL', holds, id)
    end
    redis.call('ZREM', expiry, id)
  end
  redis.call('HSET', account, 'reserved', str(reserved))
  redis.call('HINCRBY', account, 'expired_holds', #ids)
  redis.call('HINCRBY', account, 'version', 1)
end
";

/// KEYS: account, holds, expiry, settled marker.
/// ARGV: hold id, amount, hold TTL (ms), configured budget ('' for none).
/// Returns {1, '0', state} when held, {0, available, state} when refused,
/// {2, '0', state} when the hold was released before this ran.
const RESERVE: &str = r"
local now = now_ms()
purge(KEYS[1], KEYS[2], KEYS[3], now)
if redis.call('EXISTS', KEYS[4]) == 1 then return {2, '0', state(KEYS[1])} end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {1, '0', state(KEYS[1])} end
local budget = redis.call('HGET', KEYS[1], 'budget')
if (not budget) and ARGV[4] ~= '' then
  budget = ARGV[4]
  redis.call('HSET', KEYS[1], 'budget', budget)
end
local amount = big(ARGV[2])
local reserved = big(redis.call('HGET', KEYS[1], 'reserved'))
if budget then
  local used = add(big(redis.call('HGET', KEYS[1], 'spent')), reserved)
  local available = sub(big(budget), used)
  if not le(amount, available) then return {0, str(available), state(KEYS[1])} end
end
redis.call('HSET', KEYS[1], 'reserved', str(add(reserved, amount)))
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
return {1, '0', state(KEYS[1])}
";

/// KEYS: account, holds, expiry, settled marker.
/// ARGV: hold id, cost, prompt, cached, completion, canceled, drafted,
/// accepted, marker TTL (ms), 'settle' or 'release'.
/// Returns {1, state} when applied, {0, state} when already settled.
const SETTLE: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return {0, state(KEYS[1])} end
redis.call('SET', KEYS[4], '1', 'PX', ARGV[9])
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  local reserved = sub(big(redis.call('HGET', KEYS[1], 'reserved')), big(held))
  redis.call('HSET', KEYS[1], 'reserved', str(reserved))
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if ARGV[10] == 'settle' then
  if not held then redis.call('HINCRBY', KEYS[1], 'late_settles', 1) end
  local cost = big(ARGV[2])
  local spent = big(redis.call('HGET', KEYS[1], 'spent'))
  local budget = redis.call('HGET', KEYS[1], 'budget')
  if budget then
    local room = sub(big(budget), spent)
    if not le(cost, room) then cost = room end
  end
  redis.call('HSET', KEYS[1], 'spent', str(add(spent, cost)))
  redis.call('HINCRBY', KEYS[1], 'requests', 1)
  redis.call('HINCRBY', KEYS[1], 'prompt', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'cached', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'completion', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'canceled', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'drafted', ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'accepted', ARGV[8])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return {1, state(KEYS[1])}
";

/// KEYS: account, holds, expiry. Releases expired holds, returns the state.
const READ: &str = r"
purge(KEYS[1], KEYS[2], KEYS[3], now_ms())
return state(KEYS[1])
";

/// KEYS: account, holds, expiry. ARGV: hold TTL (ms), hold ids...
/// Pushes the expiry of each hold still held forward; returns how many.
const RENEW: &str = r"
local at = now_ms() + tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[3], at, ARGV[i])
    n = n + 1
  end
end
return n
";

/// KEYS: account. ARGV: budget ('' for none). Returns the state.
const OPEN: &str = r"
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'budget')
else
  redis.call('HSET', KEYS[1], 'budget', ARGV[1])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return state(KEYS[1])
";

#[derive(Debug)]
struct Scripts {
    reserve: Script,
    settle: Script,
    read: Script,
    renew: Script,
    open: Script,
}

impl Scripts {
    fn new() -> Self {
        let fields: Vec<String> = FIELDS.iter().map(|f| format!("'{f}'")).collect();
        let fields = format!("local FIELDS = {{{}}}\n", fields.join(", "));
        let with = |body: &str| Script::new(&format!("{fields}{PRELUDE}{body}"));
        Scripts {
            reserve: with(RESERVE),
            settle: with(SETTLE),
            read: with(READ),
            renew: with(RENEW),
            open: with(OPEN),
        }
    }
}

/// The keys of one tenant.
#[derive(Debug, Clone)]
struct Keys {
    account: String,
    holds: String,
    expiry: String,
    tag: String,
}

impl Keys {
    fn new(prefix: &str, tenant: &TenantId) -> Self {
        let tag = format!("{prefix}{{{}}}", tenant.as_str());
        Keys {
            account: format!("{tag}:account"),
            holds: format!("{tag}:holds"),
            expiry: format!("{tag}:expiry"),
            tag,
        }
    }

    fn settled(&self, hold: &str) -> String {
        format!("{}:settled:{hold}", self.tag)
    }

    /// A call of `script` (reserve or settle) with the KEYS account, holds,
    /// expiry and `hold`'s settled marker, and `hold` as ARGV[1].
    fn hold_call<'a>(&self, script: &'a Script, hold: &str) -> ScriptInvocation<'a> {
        let mut call = script.key(&self.account);
        call.key(&self.holds)
            .key(&self.expiry)
            .key(self.settled(hold))
            .arg(hold);
        call
    }
}

/// A field as the scripts return it: a decimal integer or nil.
fn field(value: Option<&String>) -> Option<u64> {
    let s = value?;
    match s.parse::<u64>() {
        Ok(n) => Some(n),
        // More than u64 can hold (an unlimited tenant's spend): saturate.
        Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Some(u64::MAX),
        Err(_) => None,
    }
}

/// The account fields in [`FIELDS`] order, parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    version: u64,
    account: RedisAccount,
}

impl State {
    fn parse(values: &[Option<String>]) -> State {
        let get = |i: usize| field(values.get(i).and_then(Option::as_ref));
        let n = |i: usize| get(i).unwrap_or(0);
        State {
            version: n(0),
            account: RedisAccount {
                account: TenantAccount {
                    budget: get(1).map(Money::from_picos),
                    spent: Money::from_picos(n(2)),
                    reserved: Money::from_picos(n(3)),
                    requests: n(4),
                    usage: Usage::clamped(n(5), n(6), n(7), n(9), n(10), n(8)),
                },
                expired_holds: n(11),
                late_settles: n(12),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cached {
    state: State,
    /// Consecutive periodic reads that saw an older version (Redis lost
    /// its data): the second one is believed.
    older_reads: u8,
}

#[derive(Debug, Default)]
struct Counters {
    queued: Counter,
    applied: Counter,
    duplicate: Counter,
    replayed: Counter,
    journal_errors: Counter,
    retries: Counter,
    releases: Counter,
    renewed: Counter,
    refused_unavailable: Counter,
    refused_full: Counter,
}

/// What the settle task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Release the hold and charge.
    Settle {
        tenant: TenantId,
        hold: String,
        charge: Charge,
    },
    /// Release the hold without charging (its reserve failed or was
    /// abandoned).
    Release { tenant: TenantId, hold: String },
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Op {
    /// The journal payload: `s|r <tenant hex> <hold hex>`, then for a
    /// settle the cost (picodollars), the six token counts and `s`/`a`
    /// (settled or abandoned).
    fn encode(&self) -> String {
        match self {
            Op::Release { tenant, hold } => {
                format!("r {} {}", hex(tenant.as_str()), hex(hold))
            }
            Op::Settle {
                tenant,
                hold,
                charge,
            } => {
                let u = charge.usage;
                let outcome = match charge.outcome {
                    SettleOutcome::Settled => "s",
                    SettleOutcome::Abandoned => "a",
                };
                format!(
                    "s {} {} {} {} {} {} {} {} {} {outcome}",
                    hex(tenant.as_str()),
                    hex(hold),
                    charge.cost.picos(),
                    u.prompt(),
                    u.cached(),
                    u.completion(),
                    u.drafted(),
                    u.accepted(),
                    u.canceled(),
                )
            }
        }
    }

    /// The op of a journal payload; `None` when it is not one.
    fn decode(payload: &str) -> Option<Op> {
        let parts: Vec<&str> = payload.split(' ').collect();
        let tenant = TenantId::new(unhex(parts.get(1)?)?);
        let hold = unhex(parts.get(2)?)?;
        match (parts.first().copied()?, parts.len()) {
            ("r", 3) => Some(Op::Release { tenant, hold }),
            ("s", 11) => {
                let n = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok());
                let outcome = match parts.get(10).copied()? {
                    "s" => SettleOutcome::Settled,
                    "a" => SettleOutcome::Abandoned,
                    _ => return None,
                };
                Some(Op::Settle {
                    tenant,
                    hold,
                    charge: Charge {
                        cost: Money::from_picos(n(3)?),
                        usage: Usage::clamped(n(4)?, n(5)?, n(6)?, n(7)?, n(8)?, n(9)?),
                        outcome,
                    },
                })
            }
            _ => None,
        }
    }
}

/// A message to the settle task.
#[derive(Debug)]
enum Msg {
    Op(Op),
    /// Answer once every op handed over before it is applied.
    Flush(oneshot::Sender<()>),
}

/// What the settle task starts with: its queue, the journal and the entries
/// replayed from it.
struct SettleStart {
    rx: mpsc::Receiver<Msg>,
    journal: Journal,
    replayed: Vec<(u64, Op)>,
}

/// What the background tasks share with the ledger.
struct Core {
    config: RedisLedgerConfig,
    conn: Connection,
    instance: u64,
    /// 128 random bits, hex: the last part of this ledger's hold ids.
    nonce: String,
    scripts: Scripts,
    /// A synchronous connection for [`RedisLedger::open_blocking`].
    blocking: Mutex<Option<redis::Connection>>,
    cache: Mutex<HashMap<TenantId, Cached>>,
    budgets: Mutex<HashMap<TenantId, Option<Money>>>,
    counters: Counters,
    /// Live holds by ticket: renewed until settled.
    live: Mutex<HashMap<u64, (TenantId, String)>>,
    /// Settlements and releases handed over and not applied in Redis yet.
    pending: AtomicUsize,
    /// Reserves running now.
    reserving: AtomicUsize,
    /// Redis did not answer the last attempt: reserves fail at once.
    down: AtomicBool,
    /// When live holds were last renewed.
    last_renew: Mutex<Option<Instant>>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("prefix", &self.config.prefix)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &RedisError) -> LedgerError {
    LedgerError::Unavailable(format!("redis: {e}"))
}

/// 128 bits from the OS, hex.
fn nonce() -> Result<String, LedgerError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| LedgerError::Unavailable(format!("no OS randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The settle queue's room: twice the journal bound, at least 1024.
fn config_room(config: &RedisLedgerConfig) -> usize {
    config.journal_max_entries.saturating_mul(2).max(1024)
}

/// The most settle scripts in flight at once.
const IN_FLIGHT: usize = 256;
/// The most hold ids in one renew call.
const RENEW_CHUNK: usize = 512;

impl Core {
    fn keys(&self, tenant: &TenantId) -> Keys {
        Keys::new(&self.config.prefix, tenant)
    }

    fn hold_id(&self, ticket: u64) -> String {
        format!("{}.{ticket}.{}", self.instance, self.nonce)
    }

    /// Records whether Redis answered.
    fn note<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Ok(_) => self.down.store(false, Ordering::Relaxed),
            Err(e) if unreachable(e) => self.down.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
    }

    /// Keeps the newer of the cached and the given state. A periodic read
    /// (`read`) that is older twice in a row is believed: Redis restarted.
    fn remember(&self, tenant: &TenantId, state: State, read: bool) {
        let mut cache = lock(&self.cache);
        let entry = cache.entry(tenant.clone()).or_default();
        if state.version >= entry.state.version {
            entry.state = state;
            entry.older_reads = 0;
        } else if read {
            entry.older_reads += 1;
            if entry.older_reads >= 2 {
                entry.state = state;
                entry.older_reads = 0;
            }
        }
    }

    fn budget_arg(&self, tenant: &TenantId) -> String {
        lock(&self.budgets)
            .get(tenant)
            .copied()
            .flatten()
            .map_or_else(String::new, |b| b.picos().to_string())
    }

    async fn read(&self, tenant: &TenantId) -> Result<State, RedisError> {
        let keys = self.keys(tenant);
        let result: Result<Vec<Option<String>>, RedisError> = self
            .conn
            .invoke(
                self.scripts
                    .read
                    .key(&keys.account)
                    .key(&keys.holds)
                    .key(&keys.expiry),
            )
            .await;
        self.note(&result);
        let state = State::parse(&result?);
        self.remember(tenant, state, true);
        Ok(state)
    }

    /// Runs the settle script once; `Ok(true)` when it applied.
    async fn settle_once(&self, op: &Op) -> Result<bool, RedisError> {
        let (tenant, hold, charge) = match op {
            Op::Settle {
                tenant,
                hold,
                charge,
            } => (tenant, hold, Some(charge)),
            Op::Release { tenant, hold } => (tenant, hold, None),
        };
        let keys = self.keys(tenant);
        let usage = charge.map_or(Usage::ZERO, |c| c.usage);
        let result: Result<(i64, Vec<Option<String>>), RedisError> = self
            .conn
            .invoke(
                keys.hold_call(&self.scripts.settle, hold)
                    .arg(charge.map_or(0, |c| c.cost.picos()))
                    .arg(usage.prompt())
                    .arg(usage.cached())
                    .arg(usage.completion())
                    .arg(usage.canceled())
                    .arg(usage.drafted())
                    .arg(usage.accepted())
                    .arg(millis(self.config.settled_ttl))
                    .arg(if charge.is_some() {
                        "settle"
                    } else {
                        "release"
                    }),
            )
            .await;
        self.note(&result);
        let (applied, values) = result?;
        self.remember(tenant, State::parse(&values), false);
        Ok(applied == 1)
    }

    /// Counts what an applied (or already applied) op did.
    fn count(&self, op: &Op, applied: bool) {
        match (op, applied) {
            (Op::Release { .. }, true) => self.counters.releases.bump(),
            (Op::Settle { .. }, true) => self.counters.applied.bump(),
            (_, false) => self.counters.duplicate.bump(),
        }
    }

    /// How often the refresher runs: the refresh interval, or a third of
    /// the hold TTL when that is shorter (renewal must keep up).
    fn tick(&self) -> Duration {
        self.config
            .refresh_interval
            .min(self.config.hold_ttl / 3)
            .max(Duration::from_millis(10))
    }

    /// Pushes the expiry of every live hold forward, one script call per
    /// tenant and chunk, all in flight at once.
    async fn renew(&self) -> Result<(), RedisError> {
        let mut by_tenant: HashMap<TenantId, Vec<String>> = HashMap::new();
        for (tenant, hold) in lock(&self.live).values() {
            by_tenant
                .entry(tenant.clone())
                .or_default()
                .push(hold.clone());
        }
        let ttl = millis(self.config.hold_ttl);
        let mut calls = Vec::new();
        for (tenant, holds) in &by_tenant {
            let keys = self.keys(tenant);
            for chunk in holds.chunks(RENEW_CHUNK) {
                let mut call = self.scripts.renew.key(&keys.account);
                call.key(&keys.holds).key(&keys.expiry).arg(ttl);
                for hold in chunk {
                    call.arg(hold);
                }
                calls.push(async move { self.conn.invoke::<u64>(&call).await });
            }
        }
        for result in futures::future::join_all(calls).await {
            self.note(&result);
            self.counters.renewed.add(result?);
        }
        Ok(())
    }

    /// Waits until the op queue answers a flush.
    async fn probe(&self) -> Result<(), RedisError> {
        let result: Result<String, RedisError> = async {
            let mut conn = self.conn.manager().await?;
            redis::cmd("PING").query_async(&mut conn).await
        }
        .await;
        self.note(&result);
        result.map(|_| ())
    }
}

/// The settle task: appends what it is handed to the journal (one fsync per
/// batch), runs up to [`IN_FLIGHT`] settle scripts at once, retries those
/// that fail after a backoff (20 ms doubling to 1 s) and never gives one
/// up, records the applied ones as done, and answers flushes. It ends when
/// the ledger is gone and everything is applied, or, with a journal file,
/// as soon as the ledger is gone (the file keeps the rest).
async fn settle_loop(core: Arc<Core>, start: SettleStart, stop: CancellationToken) {
    let SettleStart {
        mut rx,
        journal,
        replayed,
    } = start;
    let mut journal = Some(journal);
    let durable = journal.as_ref().is_some_and(Journal::durable);
    let mut ready: VecDeque<(u64, Op)> = replayed.into();
    let mut unapplied: BTreeSet<u64> = ready.iter().map(|(s, _)| *s).collect();
    let mut last_seq = unapplied.last().copied().unwrap_or(0);
    let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    let mut done: Vec<u64> = Vec::new();
    let mut backoff = Duration::from_millis(20);
    let mut resume = Instant::now();
    let mut buf = Vec::new();
    let mut open = true;
    let mut stopped_at: Option<Instant> = None;
    loop {
        while in_flight.len() < IN_FLIGHT && Instant::now() >= resume {
            let Some((seq, op)) = ready.pop_front() else {
                break;
            };
            let core = core.clone();
            in_flight.push(async move {
                let result = core.settle_once(&op).await;
                (seq, op, result)
            });
        }
        if !done.is_empty() {
            let seqs = std::mem::take(&mut done);
            (journal, _) = run_journal(journal, &core, move |j| ((), j.done(&seqs))).await;
        }
        let first = unapplied.first().copied();
        let (answered, waiting): (Vec<_>, Vec<_>) = flushes
            .drain(..)
            .partition(|(upto, _)| first.is_none_or(|f| f > *upto));
        flushes = waiting;
        for (_, tx) in answered {
            let _ = tx.send(());
        }
        if journal.is_none() || (!open && ready.is_empty() && in_flight.is_empty()) {
            return;
        }
        if stopped_at.is_some_and(|at| durable || at.elapsed() > core.config.flush_timeout) {
            if !unapplied.is_empty() {
                tracing::warn!(
                    left = unapplied.len(),
                    durable,
                    "redis ledger: stopped with settlements not in redis"
                );
            }
            return;
        }
        tokio::select! {
            n = rx.recv_many(&mut buf, 1024), if open => {
                if n == 0 {
                    open = false;
                    continue;
                }
                let mut ops = Vec::with_capacity(n);
                let mut waiting = Vec::new();
                for msg in buf.drain(..) {
                    match msg {
                        Msg::Op(op) => ops.push(op),
                        Msg::Flush(tx) => waiting.push(tx),
                    }
                }
                let payloads: Vec<String> = ops.iter().map(Op::encode).collect();
                let seqs;
                (journal, seqs) = run_journal(journal, &core, |j| j.append(payloads)).await;
                for (seq, op) in seqs.unwrap_or_default().into_iter().zip(ops) {
                    unapplied.insert(seq);
                    last_seq = last_seq.max(seq);
                    ready.push_back((seq, op));
                }
                flushes.extend(waiting.into_iter().map(|tx| (last_seq, tx)));
            }
            Some((seq, op, result)) = in_flight.next(), if !in_flight.is_empty() => {
                match result {
                    Ok(applied) => {
                        core.count(&op, applied);
                        core.pending.fetch_sub(1, Ordering::Relaxed);
                        unapplied.remove(&seq);
                        done.push(seq);
                        backoff = Duration::from_millis(20);
                    }
                    Err(e) => {
                        core.counters.retries.bump();
                        tracing::debug!(error = %e, "redis ledger: settle failed, retrying");
                        ready.push_front((seq, op));
                        resume = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
            () = tokio::time::sleep_until(resume), if !ready.is_empty() && in_flight.len() < IN_FLIGHT => {}
            () = stop.cancelled(), if stopped_at.is_none() => {
                stopped_at = Some(Instant::now());
            }
        }
    }
}

/// Runs `f` on the journal (on the blocking pool when it is a file) and
/// counts and logs its I/O error; the journal comes back `None` when the
/// blocking task did not come back (the runtime is shutting down).
async fn run_journal<F, R>(
    journal: Option<Journal>,
    core: &Core,
    f: F,
) -> (Option<Journal>, Option<R>)
where
    F: FnOnce(&mut Journal) -> (R, std::io::Result<()>) + Send + 'static,
    R: Send + 'static,
{
    let Some(mut journal) = journal else {
        return (None, None);
    };
    let (out, result) = if journal.durable() {
        let joined = tokio::task::spawn_blocking(move || {
            let out = f(&mut journal);
            (journal, out)
        })
        .await;
        match joined {
            Ok((j, out)) => {
                journal = j;
                out
            }
            Err(e) => {
                tracing::error!(error = %e, "redis ledger: the journal task was lost");
                return (None, None);
            }
        }
    } else {
        f(&mut journal)
    };
    if let Err(e) = result {
        core.counters.journal_errors.bump();
        tracing::error!(error = %e, "redis ledger: journal write failed; entries kept in memory");
    }
    (Some(journal), Some(out))
}

/// The refresher: every [`Core::tick`], a probe while Redis is down, the
/// renewal of live holds when a third of the hold TTL has passed, and a
/// re-read of the accounts this ledger knows (releasing expired holds on
/// the way). Its first pass, right away, also makes the multiplexed
/// connection, so the first requests do not wait for it.
impl Worker for Core {
    type Op = std::convert::Infallible;
    const REFRESH_AT_START: bool = true;

    async fn run(&self, op: Self::Op) {
        match op {}
    }

    fn refresh_every(&self) -> Duration {
        self.tick()
    }

    async fn refresh(&self) {
        if self.down.load(Ordering::Relaxed) && self.probe().await.is_err() {
            return;
        }
        let due = lock(&self.last_renew).is_none_or(|at| at.elapsed() >= self.config.hold_ttl / 3);
        if due {
            match self.renew().await {
                Ok(()) => *lock(&self.last_renew) = Some(Instant::now()),
                Err(e) => {
                    tracing::warn!(error = %e, "redis ledger: renewing holds failed");
                    return;
                }
            }
        }
        let tenants: Vec<TenantId> = lock(&self.cache).keys().cloned().collect();
        for tenant in tenants {
            if let Err(e) = self.read(&tenant).await {
                tracing::debug!(error = %e, tenant = %tenant, "redis ledger: refresh failed");
                break;
            }
        }
    }
}

/// Budgets in Redis, shared by every replica that uses the same Redis and
/// key prefix: reserve and settle are atomic Lua scripts, so concurrent
/// requests on any number of replicas can never together overspend a
/// budget. Keys, scripts, renewal and the journal: `docs/operations.md`,
/// "The Redis ledger".
///
/// [`AccountLedger::account`] (the admin view) answers from a cache that
/// follows this ledger's own replies and is re-read every
/// [`RedisLedgerConfig::refresh_interval`]; [`RedisLedger::fetch`] reads
/// Redis.
///
/// Needs a Tokio runtime for its background tasks; they start when the
/// ledger is made inside one, or on its first reserve.
pub struct RedisLedger {
    /// The core and the refresher (stopped when the ledger is dropped).
    background: Background<Core>,
    /// The settle task's queue.
    tx: mpsc::Sender<Msg>,
    /// What the settle task starts with, until it starts.
    settle_start: Mutex<Option<SettleStart>>,
    /// Stops the settle task when the ledger is dropped.
    stop: CancellationToken,
}

impl Drop for RedisLedger {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLedger")
            .field("prefix", &self.core().config.prefix)
            .field("instance", &self.core().instance)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RedisLedger {
    /// Connects to Redis (a multiplexed connection that reconnects by
    /// itself), opens the journal and starts the background tasks; entries
    /// left in the journal by an earlier run are replayed.
    ///
    /// # Errors
    /// [`LedgerError::Unavailable`] if the URL is invalid, Redis cannot be
    /// reached, or the journal cannot be opened.
    pub async fn connect(config: RedisLedgerConfig) -> Result<RedisLedger, LedgerError> {
        let conn = RedisLedger::connection(&config)?;
        let mut manager = conn.manager().await.map_err(|e| unavailable(&e))?;
        let instance: u64 = incr_instance(&config.prefix)
            .query_async(&mut manager)
            .await
            .map_err(|e| unavailable(&e))?;
        let ledger = RedisLedger::from_core(config, conn, instance, None)?;
        ledger.ensure_started();
        Ok(ledger)
    }

    /// Connects to Redis synchronously, for a caller that is not async
    /// (start-up code); blocks the calling thread for at most the connect
    /// and response timeouts. The multiplexed connection is made on first
    /// use; the background tasks start now if a Tokio runtime is current,
    /// else on the first reserve.
    ///
    /// # Errors
    /// [`LedgerError::Unavailable`] if the URL is invalid, Redis cannot be
    /// reached, or the journal cannot be opened.
    pub fn connect_blocking(config: RedisLedgerConfig) -> Result<RedisLedger, LedgerError> {
        let conn = RedisLedger::connection(&config)?;
        let mut blocking = conn.blocking().map_err(|e| unavailable(&e))?;
        let instance: u64 = incr_instance(&config.prefix)
            .query(&mut blocking)
            .map_err(|e| unavailable(&e))?;
        let ledger = RedisLedger::from_core(config, conn, instance, Some(blocking))?;
        ledger.ensure_started();
        Ok(ledger)
    }

    /// A client for the configured URL, not connected yet.
    fn connection(config: &RedisLedgerConfig) -> Result<Connection, LedgerError> {
        Connection::open(&config.url, config.connect_timeout, config.response_timeout)
            .map_err(|e| unavailable(&e))
    }

    fn from_core(
        config: RedisLedgerConfig,
        conn: Connection,
        instance: u64,
        blocking: Option<redis::Connection>,
    ) -> Result<RedisLedger, LedgerError> {
        let (journal, replayed) = match &config.journal_dir {
            None => (Journal::in_memory(), Vec::new()),
            Some(dir) => {
                let (journal, old, skipped) = Journal::open(dir).map_err(|e| {
                    LedgerError::Unavailable(format!(
                        "journal {}: {e}",
                        dir.join(JOURNAL_FILE).display()
                    ))
                })?;
                if skipped > 0 {
                    tracing::warn!(
                        skipped,
                        dir = %dir.display(),
                        "redis ledger: journal lines torn or corrupt, skipped"
                    );
                }
                let mut replayed = Vec::with_capacity(old.len());
                for (seq, payload) in old {
                    match Op::decode(&payload) {
                        Some(op) => replayed.push((seq, op)),
                        None => tracing::error!(
                            seq,
                            payload,
                            "redis ledger: journal entry not understood, skipped"
                        ),
                    }
                }
                (journal, replayed)
            }
        };
        let core = Core {
            config,
            conn,
            instance,
            nonce: nonce()?,
            scripts: Scripts::new(),
            blocking: Mutex::new(blocking),
            cache: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            live: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(replayed.len()),
            reserving: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            last_renew: Mutex::new(None),
        };
        core.counters.replayed.add(replayed.len() as u64);
        if !replayed.is_empty() {
            tracing::info!(
                entries = replayed.len(),
                "redis ledger: replaying settlements from the journal"
            );
        }
        // Room for every op the journal bound admits, twice over: a send
        // is never refused for room (see `enqueue`).
        let room = config_room(&core.config);
        let (tx, rx) = mpsc::channel(room);
        Ok(RedisLedger {
            background: Background::new(core, 1),
            tx,
            settle_start: Mutex::new(Some(SettleStart {
                rx,
                journal,
                replayed,
            })),
            stop: CancellationToken::new(),
        })
    }

    fn core(&self) -> &Core {
        &self.background.core
    }

    /// Starts the background tasks if they are not running and a Tokio
    /// runtime is current.
    fn ensure_started(&self) {
        self.background.ensure_started();
        let mut slot = lock(&self.settle_start);
        if slot.is_none() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(start) = slot.take() {
            handle.spawn(settle_loop(
                self.background.core.clone(),
                start,
                self.stop.clone(),
            ));
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RedisLedgerConfig {
        &self.core().config
    }

    /// Opens (or updates) `tenant`'s account with a budget (`None`:
    /// unlimited). Several replicas opening the same budget is harmless;
    /// spent money is kept.
    ///
    /// # Errors
    /// [`LedgerError::Unavailable`] if Redis cannot be reached.
    pub async fn open(&self, tenant: &TenantId, budget: Option<Money>) -> Result<(), LedgerError> {
        let core = self.core();
        lock(&core.budgets).insert(tenant.clone(), budget);
        let keys = core.keys(tenant);
        let values: Vec<Option<String>> = core
            .conn
            .invoke(
                core.scripts
                    .open
                    .key(&keys.account)
                    .arg(budget.map_or_else(String::new, |b| b.picos().to_string())),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        core.remember(tenant, State::parse(&values), false);
        Ok(())
    }

    /// [`open`](RedisLedger::open) over a synchronous connection, for
    /// start-up code that is not async; blocks for at most the timeouts.
    ///
    /// # Errors
    /// [`LedgerError::Unavailable`] if Redis cannot be reached.
    pub fn open_blocking(
        &self,
        tenant: &TenantId,
        budget: Option<Money>,
    ) -> Result<(), LedgerError> {
        let core = self.core();
        lock(&core.budgets).insert(tenant.clone(), budget);
        let keys = core.keys(tenant);
        let mut slot = lock(&core.blocking);
        if slot.is_none() {
            *slot = Some(core.conn.blocking().map_err(|e| unavailable(&e))?);
        }
        let Some(conn) = slot.as_mut() else {
            return Err(LedgerError::Unavailable("redis: no connection".into()));
        };
        let result: Result<Vec<Option<String>>, RedisError> = core
            .scripts
            .open
            .key(&keys.account)
            .arg(budget.map_or_else(String::new, |b| b.picos().to_string()))
            .invoke(conn);
        match result {
            Ok(values) => {
                drop(slot);
                core.remember(tenant, State::parse(&values), false);
                Ok(())
            }
            Err(e) => {
                *slot = None;
                Err(unavailable(&e))
            }
        }
    }

    /// Reads `tenant`'s account from Redis (releasing expired holds first).
    ///
    /// # Errors
    /// [`LedgerError::Unavailable`] if Redis cannot be reached.
    pub async fn fetch(&self, tenant: &TenantId) -> Result<RedisAccount, LedgerError> {
        self.core()
            .read(tenant)
            .await
            .map(|s| s.account)
            .map_err(|e| unavailable(&e))
    }

    /// Waits until every settlement handed over before this call is
    /// applied in Redis (however long Redis takes to come back).
    pub async fn flush(&self) {
        self.ensure_started();
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Settlement counters since this ledger started.
    pub fn stats(&self) -> RedisLedgerStats {
        let core = self.core();
        let c = &core.counters;
        RedisLedgerStats {
            settles_queued: c.queued.get(),
            settles_applied: c.applied.get(),
            settles_duplicate: c.duplicate.get(),
            journal_pending: core.pending.load(Ordering::Relaxed) as u64,
            replayed: c.replayed.get(),
            journal_errors: c.journal_errors.get(),
            settle_retries: c.retries.get(),
            releases: c.releases.get(),
            holds_renewed: c.renewed.get(),
            refused_unavailable: c.refused_unavailable.get(),
            refused_journal_full: c.refused_full.get(),
        }
    }

    /// Hands `op` to the settle task. It is not refused: the journal bound
    /// is enforced when holds are made.
    fn enqueue(&self, op: Op) {
        let core = self.core();
        core.pending.fetch_add(1, Ordering::Relaxed);
        self.ensure_started();
        match self.tx.try_send(Msg::Op(op)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                // Beyond what admission allows (settles of forged or
                // repeated reservations): wait for room rather than drop.
                tracing::warn!("redis ledger: settle queue full, waiting for room");
                let tx = self.tx.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = tx.send(msg).await;
                    });
                } else {
                    core.pending.fetch_sub(1, Ordering::Relaxed);
                    tracing::error!(msg = ?msg, "redis ledger: settlement lost, no runtime");
                }
            }
            Err(mpsc::error::TrySendError::Closed(msg)) => {
                // Only when the runtime is gone: nothing can reach Redis now.
                core.pending.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(msg = ?msg, "redis ledger: settlement lost, the runtime is gone");
            }
        }
    }

    /// Counts a reserve in, refusing it when the live holds plus the
    /// settlements not yet in Redis fill the journal bound.
    fn admit(&self) -> Result<Reserving<'_>, LedgerError> {
        let core = self.core();
        let running = core.reserving.fetch_add(1, Ordering::AcqRel);
        let slot = Reserving(&core.reserving);
        let live = lock(&core.live).len();
        let pending = core.pending.load(Ordering::Acquire);
        if running + live + pending >= core.config.journal_max_entries {
            core.counters.refused_full.bump();
            return Err(LedgerError::Unavailable(format!(
                "journal full: {live} holds and {pending} settlements wait for redis \
                 (journal_max_entries = {})",
                core.config.journal_max_entries
            )));
        }
        Ok(slot)
    }
}

/// A reserve counted in [`Core::reserving`] until dropped.
struct Reserving<'a>(&'a AtomicUsize);

impl Drop for Reserving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Releases a hold whose reserve did not return it (failed or dropped).
struct ReleaseOnDrop<'a> {
    ledger: &'a RedisLedger,
    tenant: &'a TenantId,
    hold: Option<String>,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            self.ledger.enqueue(Op::Release {
                tenant: self.tenant.clone(),
                hold,
            });
        }
    }
}

#[async_trait::async_trait]
impl Ledger for RedisLedger {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, LedgerError> {
        self.ensure_started();
        let core = self.core();
        if core.down.load(Ordering::Relaxed) {
            core.counters.refused_unavailable.bump();
            return Err(LedgerError::Unavailable(
                "redis: unreachable (probing in the background)".into(),
            ));
        }
        let _slot = self.admit()?;
        let ticket = self.background.next_ticket();
        let hold = core.hold_id(ticket);
        let tenant = &request.tenant;
        let keys = core.keys(tenant);
        // Until the script answers, a drop or an error releases the hold
        // (the script may have run): cancel safe.
        let mut release = ReleaseOnDrop {
            ledger: self,
            tenant,
            hold: Some(hold.clone()),
        };
        let result: Result<(i64, String, Vec<Option<String>>), RedisError> = core
            .conn
            .invoke(
                keys.hold_call(&core.scripts.reserve, &hold)
                    .arg(request.amount.picos())
                    .arg(millis(core.config.hold_ttl))
                    .arg(core.budget_arg(tenant)),
            )
            .await;
        core.note(&result);
        let (code, available, values) = result.map_err(|e| unavailable(&e))?;
        core.remember(tenant, State::parse(&values), false);
        match code {
            1 => {
                release.hold = None;
                lock(&core.live).insert(ticket, (tenant.clone(), hold));
                Ok(Reservation::new(
                    tenant.clone(),
                    request.request_id.clone(),
                    request.amount,
                    ticket,
                ))
            }
            0 => {
                release.hold = None;
                Err(LedgerError::BudgetExceeded {
                    tenant: tenant.clone(),
                    needed: request.amount,
                    available: Money::from_picos(field(Some(&available)).unwrap_or(0)),
                })
            }
            _ => Err(LedgerError::Unavailable(format!(
                "redis: hold {hold} was released before it was made"
            ))),
        }
    }

    fn settle(&self, reservation: Reservation, charge: Charge) {
        let core = self.core();
        let ticket = reservation.ticket();
        let hold = lock(&core.live)
            .remove(&ticket)
            .map_or_else(|| core.hold_id(ticket), |(_, hold)| hold);
        core.counters.queued.bump();
        self.enqueue(Op::Settle {
            tenant: reservation.tenant().clone(),
            hold,
            charge,
        });
    }
}

#[async_trait::async_trait]
impl AccountLedger for RedisLedger {
    /// Waits for Redis to take every settlement, up to
    /// [`RedisLedgerConfig::flush_timeout`]; what is left stays in the
    /// journal (replayed at the next start when it is a file).
    async fn flush(&self) {
        let limit = self.config().flush_timeout;
        if tokio::time::timeout(limit, RedisLedger::flush(self))
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.core().pending.load(Ordering::Relaxed),
                "redis ledger: redis did not take every settlement before the flush timeout"
            );
        }
    }

    fn account(&self, tenant: &TenantId) -> Option<TenantAccount> {
        self.ensure_started();
        let mut cache = lock(&self.core().cache);
        match cache.get(tenant) {
            Some(c) if c.state.version > 0 => Some(c.state.account.account),
            Some(_) => None,
            None => {
                // Known from now on: the refresher reads it.
                cache.insert(tenant.clone(), Cached::default());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_parsed_exactly_and_saturate() {
        let big = "18446744073709551616".to_string(); // u64::MAX + 1
        assert_eq!(field(Some(&big)), Some(u64::MAX));
        assert_eq!(field(Some(&"123".to_string())), Some(123));
        assert_eq!(field(Some(&"x".to_string())), None);
        assert_eq!(field(None), None);
        let values: Vec<Option<String>> = [
            Some("7"),
            Some("25000000000000"),
            Some("9007199254740993"),
            None,
            Some("2"),
            Some("10"),
            Some("4"),
            Some("6"),
            Some("1"),
            Some("3"),
            Some("2"),
            None,
            Some("1"),
        ]
        .iter()
        .map(|v| v.map(str::to_string))
        .collect();
        let s = State::parse(&values);
        assert_eq!(s.version, 7);
        assert_eq!(
            s.account.account.budget,
            Some(Money::from_picos(25_000_000_000_000))
        );
        // Above 2^53: exact.
        assert_eq!(s.account.account.spent.picos(), 9_007_199_254_740_993);
        assert_eq!(s.account.account.reserved, Money::ZERO);
        assert_eq!(s.account.account.usage.cached(), 4);
        assert_eq!(s.account.account.usage.canceled(), 1);
        assert_eq!(s.account.account.usage.drafted(), 3);
        assert_eq!(s.account.account.usage.accepted(), 2);
        assert_eq!(s.account.late_settles, 1);
        assert_eq!(FIELDS.len(), values.len());
    }

    #[test]
    fn journal_payloads_round_trip_exactly() {
        let ops = [
            Op::Settle {
                tenant: TenantId::new("a b\nc"),
                hold: "3.7.00ff".into(),
                charge: Charge {
                    cost: Money::from_picos(u64::MAX),
                    usage: Usage::clamped(10, 4, 6, 5, 3, 2),
                    outcome: SettleOutcome::Abandoned,
                },
            },
            Op::Release {
                tenant: TenantId::new("t"),
                hold: "1.1.ab".into(),
            },
        ];
        for op in ops {
            let payload = op.encode();
            assert!(!payload.contains('\n'), "{payload}");
            assert_eq!(Op::decode(&payload), Some(op));
        }
        assert_eq!(Op::decode("s 74 31"), None);
        assert_eq!(Op::decode("x 74 31"), None);
        assert_eq!(Op::decode("r 7 31"), None);
    }

    #[test]
    fn keys_share_one_hash_slot() {
        let k = Keys::new("gateway:", &TenantId::new("acme"));
        assert_eq!(k.account, "gateway:{acme}:account");
        assert_eq!(k.holds, "gateway:{acme}:holds");
        assert_eq!(k.expiry, "gateway:{acme}:expiry");
        assert_eq!(k.settled("3.1.req-1"), "gateway:{acme}:settled:3.1.req-1");
    }
}
