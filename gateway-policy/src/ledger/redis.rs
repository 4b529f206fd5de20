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
//! | `P{T}:settled:<hold id>` | string with a TTL | marks a hold settled or released (idempotency) |
//! | `Pinstances` | integer | a counter each ledger instance increments once to name its holds |
//!
//! A hold id is `<instance>.<ticket>.<request id>`: unique per reservation
//! even when a client reuses an `x-request-id`.
//!
//! # Scripts
//!
//! Reserve, settle, read and open are Lua scripts run with `EVALSHA` (and
//! `SCRIPT LOAD` + `EVALSHA` again when Redis answers `NOSCRIPT`), so each
//! is atomic. Money is kept as decimal integer strings and added, subtracted
//! and compared exactly in two base-10^9 limbs inside the scripts (Lua
//! numbers are doubles); token counters use `HINCRBY`. No float is ever
//! stored.
//!
//! # Expiry
//!
//! A hold is an entry of `P{T}:holds` plus its expiry in `P{T}:expiry`,
//! not a key with a TTL: a key that Redis expires by itself takes its amount
//! with it, and the tenant's `reserved` total would keep it forever. Instead
//! every reserve (and every periodic read) first releases the holds whose
//! expiry passed, subtracting exactly their amounts from `reserved`, so
//! `reserved` is always the sum of the live holds. A replica that crashed
//! leaves holds that come back to the budget once their TTL passes.
//!
//! # Settling
//!
//! [`Ledger::settle`] is synchronous: it puts the settlement on a bounded
//! queue for a background task, which runs the settle script (retrying
//! with backoff while Redis is unreachable, up to
//! [`RedisLedgerConfig::settle_retry_for`]). When the queue is full the
//! settlement is dropped (logged, counted in
//! [`RedisLedgerStats::settles_dropped`]) and its hold expires after its
//! TTL: the money returns but the request is not charged. Settling is
//! idempotent per hold (a settled marker with a TTL), so a retry after a
//! lost reply never charges twice.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use gateway_core::{
    Charge, Ledger, LedgerError, Money, Reservation, ReserveRequest, TenantId, Usage,
};
use redis::{RedisError, Script, ScriptInvocation};

use super::{AccountLedger, TenantAccount};
use crate::redis_shared::{
    Background, Connection, Counter, Worker, incr_instance, lock, millis, retry,
};

/// How a [`RedisLedger`] connects and keeps its holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLedgerConfig {
    /// A `redis://` URL (`redis://[user:password@]host:port[/db]`).
    pub url: String,
    /// Prefix of every key (default `gateway:`); ledgers with different
    /// prefixes share nothing.
    pub prefix: String,
    /// How long a hold lives without being settled (default 10 minutes).
    /// Longer than any request may run: a request still running past it
    /// loses its hold, and its late settle is charged only what is left.
    pub hold_ttl: Duration,
    /// How long a settled marker lives (default 24 hours): a settle of the
    /// same hold retried within it is a no-op.
    pub settled_ttl: Duration,
    /// Settlements waiting for Redis (default 8192); beyond it settlements
    /// are dropped and their holds expire.
    pub settle_queue: usize,
    /// How long a settlement is retried while Redis is unreachable
    /// (default 60 s).
    pub settle_retry_for: Duration,
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
            hold_ttl: Duration::from_secs(600),
            settled_ttl: Duration::from_secs(24 * 3600),
            settle_queue: 8192,
            settle_retry_for: Duration::from_secs(60),
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
}

/// Counters of a [`RedisLedger`]'s settlements since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisLedgerStats {
    /// Settlements put on the queue.
    pub settles_queued: u64,
    /// Settlements applied in Redis.
    pub settles_applied: u64,
    /// Settlements Redis had already seen (a no-op).
    pub settles_duplicate: u64,
    /// Settlements dropped because the queue was full or closed: their
    /// holds expire after the TTL, the requests are not charged.
    pub settles_dropped: u64,
    /// Settlements given up after errors: same effect as dropped.
    pub settles_failed: u64,
    /// Attempts retried after a connection error.
    pub settle_retries: u64,
    /// Holds released because their reserve failed or was abandoned.
    pub releases: u64,
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
    dropped: Counter,
    failed: Counter,
    retries: Counter,
    releases: Counter,
}

/// What the background task runs.
#[derive(Debug)]
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

/// What the background tasks share with the ledger.
struct Core {
    config: RedisLedgerConfig,
    conn: Connection,
    instance: u64,
    scripts: Scripts,
    /// A synchronous connection for [`RedisLedger::open_blocking`].
    blocking: Mutex<Option<redis::Connection>>,
    cache: Mutex<HashMap<TenantId, Cached>>,
    budgets: Mutex<HashMap<TenantId, Option<Money>>>,
    counters: Counters,
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

impl Core {
    fn keys(&self, tenant: &TenantId) -> Keys {
        Keys::new(&self.config.prefix, tenant)
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
        let values: Vec<Option<String>> = self
            .conn
            .invoke(
                self.scripts
                    .read
                    .key(&keys.account)
                    .key(&keys.holds)
                    .key(&keys.expiry),
            )
            .await?;
        let state = State::parse(&values);
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
        let (applied, values): (i64, Vec<Option<String>>) = self
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
            .await?;
        self.remember(tenant, State::parse(&values), false);
        Ok(applied == 1)
    }

    /// Runs a settle or release until it is applied, retrying with backoff
    /// (20 ms doubling to 2 s) while Redis cannot be reached, for up to
    /// [`RedisLedgerConfig::settle_retry_for`].
    async fn apply(&self, op: Op) {
        let result = retry(
            self.config.settle_retry_for,
            Duration::from_secs(2),
            || self.settle_once(&op),
            |e| {
                self.counters.retries.bump();
                tracing::debug!(error = %e, "redis ledger: settle failed, retrying");
            },
        )
        .await;
        match result {
            Ok(true) => {
                if matches!(op, Op::Release { .. }) {
                    self.counters.releases.bump();
                } else {
                    self.counters.applied.bump();
                }
            }
            Ok(false) => self.counters.duplicate.bump(),
            Err(e) => {
                self.counters.failed.bump();
                tracing::error!(
                    error = %e,
                    op = ?op,
                    "redis ledger: settlement given up; its hold expires after the TTL"
                );
            }
        }
    }
}

/// The background tasks: the queue's runs settlements, up to 64 at once;
/// the refresher re-reads the accounts this ledger knows every
/// [`RedisLedgerConfig::refresh_interval`], releasing expired holds on the
/// way. The refresher's first pass, right away, also makes the multiplexed
/// connection, so the first requests do not wait for it.
impl Worker for Core {
    type Op = Op;
    const REFRESH_AT_START: bool = true;

    fn run(&self, op: Op) -> impl Future<Output = ()> + Send {
        self.apply(op)
    }

    fn refresh_every(&self) -> Duration {
        self.config.refresh_interval
    }

    async fn refresh(&self) {
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
/// budget. Keys, scripts and expiry: `docs/operations.md`, "The Redis
/// ledger".
///
/// [`AccountLedger::account`] (the admin view) answers from a cache that
/// follows this ledger's own replies and is re-read every
/// [`RedisLedgerConfig::refresh_interval`]; [`RedisLedger::fetch`] reads
/// Redis.
///
/// Needs a Tokio runtime for its background tasks; they start when the
/// ledger is made inside one, or on its first reserve.
pub struct RedisLedger {
    /// The core, the settlement queue and the background tasks (stopped
    /// when the ledger is dropped).
    background: Background<Core>,
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
    /// itself) and starts the background tasks.
    ///
    /// # Errors
    /// [`LedgerError::Unavailable`] if the URL is invalid or Redis cannot
    /// be reached.
    pub async fn connect(config: RedisLedgerConfig) -> Result<RedisLedger, LedgerError> {
        let conn = RedisLedger::connection(&config)?;
        let mut manager = conn.manager().await.map_err(|e| unavailable(&e))?;
        let instance: u64 = incr_instance(&config.prefix)
            .query_async(&mut manager)
            .await
            .map_err(|e| unavailable(&e))?;
        let ledger = RedisLedger::from_core(config, conn, instance, None);
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
    /// [`LedgerError::Unavailable`] if the URL is invalid or Redis cannot
    /// be reached.
    pub fn connect_blocking(config: RedisLedgerConfig) -> Result<RedisLedger, LedgerError> {
        let conn = RedisLedger::connection(&config)?;
        let mut blocking = conn.blocking().map_err(|e| unavailable(&e))?;
        let instance: u64 = incr_instance(&config.prefix)
            .query(&mut blocking)
            .map_err(|e| unavailable(&e))?;
        let ledger = RedisLedger::from_core(config, conn, instance, Some(blocking));
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
    ) -> RedisLedger {
        let queue = config.settle_queue;
        let core = Core {
            config,
            conn,
            instance,
            scripts: Scripts::new(),
            blocking: Mutex::new(blocking),
            cache: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        };
        RedisLedger {
            background: Background::new(core, queue),
        }
    }

    fn core(&self) -> &Core {
        &self.background.core
    }

    /// Starts the background tasks if they are not running and a Tokio
    /// runtime is current.
    fn ensure_started(&self) {
        self.background.ensure_started();
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

    /// Waits until every settlement queued before this call was applied in
    /// Redis (or given up).
    pub async fn flush(&self) {
        self.background.flush().await;
    }

    /// Settlement counters since this ledger started.
    pub fn stats(&self) -> RedisLedgerStats {
        let c = &self.core().counters;
        RedisLedgerStats {
            settles_queued: c.queued.get(),
            settles_applied: c.applied.get(),
            settles_duplicate: c.duplicate.get(),
            settles_dropped: c.dropped.get(),
            settles_failed: c.failed.get(),
            settle_retries: c.retries.get(),
            releases: c.releases.get(),
        }
    }

    fn hold_id(&self, ticket: u64, request: &str) -> String {
        format!("{}.{ticket}.{request}", self.core().instance)
    }

    fn enqueue(&self, op: Op) -> bool {
        match self.background.sender().try_send(op) {
            Ok(()) => true,
            Err(why) => {
                self.core().counters.dropped.bump();
                tracing::warn!(
                    reason = why,
                    "redis ledger: settlement dropped; its hold expires after the TTL"
                );
                false
            }
        }
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
        let ticket = self.background.next_ticket();
        let hold = self.hold_id(ticket, request.request_id.as_str());
        let tenant = &request.tenant;
        let keys = core.keys(tenant);
        // Until the script answers, a drop or an error releases the hold
        // (the script may have run): cancel safe.
        let mut release = ReleaseOnDrop {
            ledger: self,
            tenant,
            hold: Some(hold.clone()),
        };
        let (code, available, values): (i64, String, Vec<Option<String>>) = core
            .conn
            .invoke(
                keys.hold_call(&core.scripts.reserve, &hold)
                    .arg(request.amount.picos())
                    .arg(millis(core.config.hold_ttl))
                    .arg(core.budget_arg(tenant)),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        core.remember(tenant, State::parse(&values), false);
        match code {
            1 => {
                release.hold = None;
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
        let hold = self.hold_id(reservation.ticket(), reservation.request_id().as_str());
        if self.enqueue(Op::Settle {
            tenant: reservation.tenant().clone(),
            hold,
            charge,
        }) {
            self.core().counters.queued.bump();
        }
    }
}

#[async_trait::async_trait]
impl AccountLedger for RedisLedger {
    async fn flush(&self) {
        RedisLedger::flush(self).await;
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
    fn keys_share_one_hash_slot() {
        let k = Keys::new("gateway:", &TenantId::new("acme"));
        assert_eq!(k.account, "gateway:{acme}:account");
        assert_eq!(k.holds, "gateway:{acme}:holds");
        assert_eq!(k.expiry, "gateway:{acme}:expiry");
        assert_eq!(k.settled("3.1.req-1"), "gateway:{acme}:settled:3.1.req-1");
    }
}
