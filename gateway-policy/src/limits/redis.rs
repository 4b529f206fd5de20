//! [`RedisLimiter`]: tenant rate and concurrency limits kept in Redis,
//! shared by every gateway replica that uses the same Redis and key prefix.
//!
//! # Keys
//!
//! For a tenant `T` and the prefix `P` (default `gateway:`, the Redis
//! ledger's), all in one Redis Cluster hash slot (the `{T}` hash tag):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{T}:limit:requests` | hash, TTL 60 s | the requests-per-minute bucket: `level` (x 60000), `at` (Redis server time, ms) |
//! | `P{T}:limit:tokens` | hash, TTL 60 s | the tokens-per-minute bucket, the same fields |
//! | `P{T}:limit:leases` | sorted set | lease id -> its expiry (Redis server time, ms) |
//! | `Pinstances` | integer | incremented once per limiter (and ledger) instance; names its leases |
//!
//! A lease id is `<instance>.<ticket>`. A bucket key left alone for a minute
//! would be full again: it expires then, and an absent bucket is a full one.
//!
//! # Buckets
//!
//! A bucket of `C` per minute holds at most `C` and refills continuously
//! at `C` per 60 000 ms, as [`TenantLimiter`](super::TenantLimiter)'s do.
//! The script keeps the level multiplied by 60 000 so that every step is an
//! integer: a millisecond adds exactly `C`, a request takes `n * 60000`,
//! and the wait for a refused request is `ceil((n * 60000 - level) / C)`
//! ms, computed by the script on Redis's clock (`TIME`), so the replicas'
//! clocks do not matter. Limits above [`RedisLimiter::MAX_PER_MINUTE`] count as it (the
//! arithmetic stays below 2^53, exact in Lua's doubles).
//!
//! # Concurrency
//!
//! Each admitted request of a tenant with `max_concurrency` holds a lease:
//! a member of `P{T}:limit:leases` scored by its expiry. The admit script
//! first drops the expired leases, then counts the rest. A limiter extends
//! its live leases every third of [`RedisLimiterConfig::lease_ttl`], so a
//! lease outlives its request only if the replica dies: then it expires
//! within the TTL and the slot comes back. Dropping the permit queues the
//! lease's release (a bounded queue, [`RedisLimiterConfig::release_queue`];
//! when it is full the lease expires after its TTL) for a background task
//! that removes it (`ZREM`), retried while Redis is unreachable for up to
//! the lease TTL (after which the lease has expired anyway).
//!
//! # Atomicity
//!
//! One script checks the concurrency, then the requests bucket, then the
//! tokens bucket, and takes from all of them only if all admit: a refusal
//! consumes nothing, as in memory. A reply lost after the script ran (a
//! timeout) leaves its bucket tokens taken; its lease is released.
//!
//! # Failing fast
//!
//! An admit that finds Redis unreachable (connection refused, a timeout, a
//! dropped connection) marks it down: for the next
//! [`RedisLimiter::PROBE_EVERY`] every admit fails at once, without asking
//! Redis; after that one admit at a time tries Redis again (the others
//! still fail at once) until one gets an answer. So a Redis that is gone
//! or hangs costs one connect or reply timeout per second, not one per
//! request.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_core::TenantId;
use redis::{RedisError, Script};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{AdmitError, LimitError, LimitKind, LimitPermit, Limiter};
use crate::Tenant;
use crate::redis_shared::{
    Background, Connection, Counter, Sender, Worker, incr_instance, lock, millis, retry,
    unreachable,
};

/// How a [`RedisLimiter`] connects and keeps its leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLimiterConfig {
    /// A `redis://` URL (`redis://[user:password@]host:port[/db]`).
    pub url: String,
    /// Prefix of every key (default `gateway:`, as the Redis ledger's);
    /// limiters with different prefixes share nothing.
    pub prefix: String,
    /// How long a concurrency lease lives without being extended (default
    /// 30 s). The limiter extends its live leases every third of it; a
    /// crashed replica's leases come back after it.
    pub lease_ttl: Duration,
    /// Releases waiting for Redis (default 8192); beyond it a release is
    /// dropped and its lease expires after the TTL.
    pub release_queue: usize,
    /// Time to connect (default 2 s).
    pub connect_timeout: Duration,
    /// Time for a reply (default 2 s); an admit waiting longer fails.
    pub response_timeout: Duration,
}

impl RedisLimiterConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisLimiterConfig {
            url: url.into(),
            prefix: "gateway:".into(),
            lease_ttl: Duration::from_secs(30),
            release_queue: 8192,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }

    /// The same Redis, key prefix and timeouts as a Redis ledger's.
    pub fn from_ledger(ledger: &crate::RedisLedgerConfig) -> Self {
        RedisLimiterConfig {
            url: ledger.url.clone(),
            prefix: ledger.prefix.clone(),
            connect_timeout: ledger.connect_timeout,
            response_timeout: ledger.response_timeout,
            ..RedisLimiterConfig::new("")
        }
    }

    /// With another key prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// With another lease TTL.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }
}

/// Counters of a [`RedisLimiter`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisLimiterStats {
    /// Requests admitted by the script.
    pub admitted: u64,
    /// Requests refused by a limit.
    pub refused: u64,
    /// Admits that failed because Redis could not be reached or answered
    /// with an error (the requests were refused).
    pub unavailable: u64,
    /// Leases released in Redis.
    pub releases: u64,
    /// Releases given up after errors: those leases expire after the TTL.
    pub releases_failed: u64,
    /// Releases dropped because the queue was full or closed: those leases
    /// expire after the TTL.
    pub releases_dropped: u64,
    /// Live leases a refresh found gone from Redis (expired while Redis was
    /// unreachable, or Redis restarted) and put back.
    pub leases_restored: u64,
}

/// Integer arithmetic on buckets, server time.
const PRELUDE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The level (x 60000) of the bucket at `key` allowing `c` per minute, refilled to `now`.
local function level(key, c, now)
  local full = c * 60000
  local v = redis.call('HMGET', key, 'level', 'at')
  if not v[1] then return full end
  local l = tonumber(v[1])
  if l > full then l = full end
  local e = now - tonumber(v[2])
  if e < 0 then e = 0 end
  if e > 60000 then e = 60000 end
  if e * c >= full - l then return full end
  return l + e * c
end
-- 0 when `n` fits in level `l`, else the milliseconds until it would.
local function wait(l, c, n)
  local need = n * 60000
  if need <= l then return 0 end
  if n > c then return 60000 end
  return math.ceil((need - l) / c)
end
local function take(key, l, now)
  redis.call('HSET', key, 'level', string.format('%d', l), 'at', string.format('%d', now))
  redis.call('PEXPIRE', key, 60000)
end
local function keep(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
";

/// KEYS: requests bucket, tokens bucket, leases.
/// ARGV: rpm (0: none), tpm (0: none), tokens, max concurrency (0: none),
/// lease id, lease TTL (ms).
/// Returns {1, 0, 0} when admitted, {0, kind, wait ms} when refused (kind
/// 1 requests, 2 tokens, 3 concurrency).
const ADMIT: &str = r"
local now = now_ms()
local rpm, tpm, n, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max then return {0, 3, 1000} end
end
local lr, lt
if rpm > 0 then
  lr = level(KEYS[1], rpm, now)
  local w = wait(lr, rpm, 1)
  if w > 0 then return {0, 1, w} end
end
if tpm > 0 then
  lt = level(KEYS[2], tpm, now)
  local w = wait(lt, tpm, n)
  if w > 0 then return {0, 2, w} end
end
if rpm > 0 then take(KEYS[1], lr - 60000, now) end
if tpm > 0 then take(KEYS[2], lt - n * 60000, now) end
if max > 0 then
  local ttl = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
  keep(KEYS[3], ttl)
end
return {1, 0, 0}
";

/// KEYS: leases. ARGV: lease TTL (ms), lease ids.
/// Extends each lease; returns how many were gone (and are put back).
const REFRESH: &str = r"
local now = now_ms()
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = 0
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) == 1 then gone = gone + 1 end
end
keep(KEYS[1], ttl)
return gone
";

#[derive(Debug)]
struct Scripts {
    admit: Script,
    refresh: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            admit: Script::new(&format!("{PRELUDE}{ADMIT}")),
            refresh: Script::new(&format!("{PRELUDE}{REFRESH}")),
        }
    }
}

/// The keys of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Keys {
    requests: String,
    tokens: String,
    leases: String,
}

impl Keys {
    fn new(prefix: &str, tenant: &TenantId) -> Self {
        let tag = format!("{prefix}{{{}}}:limit", tenant.as_str());
        Keys {
            requests: format!("{tag}:requests"),
            tokens: format!("{tag}:tokens"),
            leases: format!("{tag}:leases"),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    admitted: Counter,
    refused: Counter,
    unavailable: Counter,
    releases: Counter,
    releases_failed: Counter,
    releases_dropped: Counter,
    leases_restored: Counter,
}

fn unavailable(e: &RedisError) -> AdmitError {
    AdmitError::Unavailable(format!("redis: {e}"))
}

/// What the background task runs: remove a lease.
#[derive(Debug)]
struct Release {
    tenant: TenantId,
    lease: String,
}

/// What the limiter shares with its permits and background tasks.
struct Core {
    config: RedisLimiterConfig,
    conn: Connection,
    /// The instance number that names this limiter's leases, taken on the
    /// first connection.
    instance: OnceCell<u64>,
    scripts: Scripts,
    /// This limiter's live leases (lease id -> tenant), extended by the
    /// refresher.
    leases: Mutex<HashMap<String, TenantId>>,
    counters: Counters,
    /// When an admit last found Redis unreachable; `None` while it answers.
    down_since: Mutex<Option<Instant>>,
    /// An admit is trying Redis while it is marked down.
    probing: AtomicBool,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// Clears [`Core::probing`] when the admit that probes ends, however it
/// ends (answered, failed or dropped).
struct Probe<'a>(Option<&'a AtomicBool>);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(probing) = self.0 {
            probing.store(false, Ordering::Release);
        }
    }
}

impl Core {
    /// While Redis is marked down: `Err` at once, except for one admit at
    /// a time once [`RedisLimiter::PROBE_EVERY`] has passed since the last
    /// failure (it gets a [`Probe`] and tries Redis).
    fn gate(&self) -> Result<Probe<'_>, AdmitError> {
        let Some(since) = *lock(&self.down_since) else {
            return Ok(Probe(None));
        };
        if since.elapsed() >= RedisLimiter::PROBE_EVERY
            && self
                .probing
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(Probe(Some(&self.probing)));
        }
        Err(AdmitError::Unavailable(
            "redis: unreachable (the last attempt failed; retrying every second)".into(),
        ))
    }

    /// Records whether Redis answered an admit.
    fn note<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Ok(_) => *lock(&self.down_since) = None,
            Err(e) if unreachable(e) => *lock(&self.down_since) = Some(Instant::now()),
            Err(_) => {}
        }
    }

    /// Connects if not yet connected, and the instance number.
    async fn instance(&self) -> Result<u64, RedisError> {
        let mut conn = self.conn.manager().await?;
        let instance = self
            .instance
            .get_or_try_init(|| async move {
                incr_instance(&self.config.prefix)
                    .query_async::<u64>(&mut conn)
                    .await
            })
            .await?;
        Ok(*instance)
    }

    async fn release_once(&self, tenant: &TenantId, lease: &str) -> Result<(), RedisError> {
        let mut conn = self.conn.manager().await?;
        let keys = Keys::new(&self.config.prefix, tenant);
        let _removed: i64 = redis::cmd("ZREM")
            .arg(&keys.leases)
            .arg(lease)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes a lease, retrying with backoff (20 ms doubling to 1 s) while
    /// Redis cannot be reached, for up to the lease TTL.
    async fn release(&self, Release { tenant, lease }: Release) {
        let result = retry(
            self.config.lease_ttl,
            Duration::from_secs(1),
            || self.release_once(&tenant, &lease),
            |e| tracing::debug!(error = %e, "redis limiter: release failed, retrying"),
        )
        .await;
        match result {
            Ok(()) => self.counters.releases.bump(),
            Err(e) => {
                self.counters.releases_failed.bump();
                tracing::warn!(
                    error = %e,
                    tenant = %tenant,
                    lease = lease.as_str(),
                    "redis limiter: release given up; the lease expires after its TTL"
                );
            }
        }
    }

    /// Extends every live lease of this limiter, one script per tenant.
    async fn refresh(&self) -> Result<(), RedisError> {
        let mut by_tenant: HashMap<TenantId, Vec<String>> = HashMap::new();
        for (lease, tenant) in lock(&self.leases).iter() {
            by_tenant
                .entry(tenant.clone())
                .or_default()
                .push(lease.clone());
        }
        if by_tenant.is_empty() {
            return Ok(());
        }
        for (tenant, leases) in by_tenant {
            let keys = Keys::new(&self.config.prefix, &tenant);
            for chunk in leases.chunks(512) {
                let mut call = self.scripts.refresh.key(&keys.leases);
                call.arg(millis(self.config.lease_ttl));
                for lease in chunk {
                    call.arg(lease);
                }
                let gone: u64 = self.conn.invoke(&call).await?;
                if gone > 0 {
                    self.counters.leases_restored.add(gone);
                    tracing::warn!(
                        tenant = %tenant,
                        leases = gone,
                        "redis limiter: live leases were gone from redis and are put back"
                    );
                }
            }
        }
        Ok(())
    }
}

/// The background tasks: the queue's releases leases, up to 64 at once;
/// the refresher extends this limiter's live leases every third of the
/// lease TTL, starting one third after the first admit.
impl Worker for Core {
    type Op = Release;
    const REFRESH_AT_START: bool = false;

    fn run(&self, op: Release) -> impl Future<Output = ()> + Send {
        self.release(op)
    }

    fn refresh_every(&self) -> Duration {
        (self.config.lease_ttl / 3).max(Duration::from_millis(1))
    }

    async fn refresh(&self) {
        if let Err(e) = Core::refresh(self).await {
            tracing::debug!(error = %e, "redis limiter: lease refresh failed");
        }
    }
}

/// Rate and concurrency limits in Redis, shared by every replica that uses
/// the same Redis and key prefix: requests per minute and tokens per
/// minute as token buckets, concurrency as expiring leases, all checked
/// and taken by one atomic Lua script on Redis's clock. Enforces the same
/// [`Tenant`] limits as [`TenantLimiter`](super::TenantLimiter), with the
/// same refusals and `Retry-After`, across replicas. Keys and scripts:
/// `docs/operations.md`, "Limits shared by replicas".
///
/// When Redis cannot be reached, [`Limiter::admit`] fails with
/// [`AdmitError::Unavailable`] for tenants that have a limit (at once for
/// [`PROBE_EVERY`](RedisLimiter::PROBE_EVERY) after a failure, see the
/// module's "Failing fast"): the gateway fails closed with 503
/// `limiter_unavailable`, as it does with 503 `ledger_unavailable` when the
/// Redis ledger is unavailable. Tenants without any limit are admitted
/// without asking Redis.
///
/// Needs a Tokio runtime for its background tasks (lease release and
/// refresh); they start on the first admit.
///
/// # Examples
///
/// ```no_run
/// use std::num::NonZeroU32;
/// use gateway_policy::{Limiter, RedisLimiter, RedisLimiterConfig, Tenant};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let limiter = RedisLimiter::new(RedisLimiterConfig::new("redis://127.0.0.1:6379")).unwrap();
/// let tenant = Tenant {
///     requests_per_minute: NonZeroU32::new(60),
///     max_concurrency: NonZeroU32::new(4),
///     ..Tenant::new("team-a")
/// };
/// // Every replica calling this shares the same 60 requests per minute
/// // and 4 slots.
/// match limiter.admit(&tenant, 100, tokio::time::Instant::now()).await {
///     Ok(_permit) => { /* run the request; dropping the permit frees its slot */ }
///     Err(e) => eprintln!("refused: {e}"),
/// }
/// # }
/// ```
pub struct RedisLimiter {
    /// The core, the release queue and the background tasks (stopped when
    /// the limiter is dropped).
    background: Background<Core>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.core().config.prefix)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// The largest per-minute limit the scripts keep exactly (150 billion):
    /// larger limits count as this.
    pub const MAX_PER_MINUTE: u64 = 150_000_000_000;

    /// After an admit found Redis unreachable, admits fail at once for this
    /// long; then one admit at a time tries Redis again. Also the
    /// `Retry-After` of the gateway's 503 `limiter_unavailable`.
    pub const PROBE_EVERY: Duration = Duration::from_secs(1);

    /// A limiter on `config`'s Redis. Nothing is connected yet: the
    /// connection (multiplexed, reconnecting by itself) is made on the
    /// first admit, so this needs no runtime.
    ///
    /// # Errors
    /// [`AdmitError::Unavailable`] if the URL is invalid.
    pub fn new(config: RedisLimiterConfig) -> Result<RedisLimiter, AdmitError> {
        let conn = Connection::open(&config.url, config.connect_timeout, config.response_timeout)
            .map_err(|e| unavailable(&e))?;
        let queue = config.release_queue;
        let core = Core {
            config,
            conn,
            instance: OnceCell::new(),
            scripts: Scripts::new(),
            leases: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            down_since: Mutex::new(None),
            probing: AtomicBool::new(false),
        };
        Ok(RedisLimiter {
            background: Background::new(core, queue),
        })
    }

    /// [`new`](RedisLimiter::new), then connects now.
    ///
    /// # Errors
    /// [`AdmitError::Unavailable`] if the URL is invalid or Redis cannot
    /// be reached.
    pub async fn connect(config: RedisLimiterConfig) -> Result<RedisLimiter, AdmitError> {
        let limiter = RedisLimiter::new(config)?;
        limiter
            .core()
            .instance()
            .await
            .map_err(|e| unavailable(&e))?;
        limiter.ensure_started();
        Ok(limiter)
    }

    /// The configuration.
    pub fn config(&self) -> &RedisLimiterConfig {
        &self.core().config
    }

    /// Counters since this limiter started.
    pub fn stats(&self) -> RedisLimiterStats {
        let c = &self.core().counters;
        RedisLimiterStats {
            admitted: c.admitted.get(),
            refused: c.refused.get(),
            unavailable: c.unavailable.get(),
            releases: c.releases.get(),
            releases_failed: c.releases_failed.get(),
            releases_dropped: c.releases_dropped.get(),
            leases_restored: c.leases_restored.get(),
        }
    }

    /// Leases this limiter holds for requests in flight.
    pub fn leases(&self) -> usize {
        lock(&self.core().leases).len()
    }

    /// Waits until every lease released before this call was removed from
    /// Redis (or given up).
    pub async fn flush(&self) {
        self.background.flush().await;
    }

    fn core(&self) -> &Arc<Core> {
        &self.background.core
    }

    /// Starts the background tasks if they are not running and a Tokio
    /// runtime is current.
    fn ensure_started(&self) {
        self.background.ensure_started();
    }

    async fn run_admit(
        &self,
        tenant: &Tenant,
        tokens: u64,
        release: &mut ReleaseOnDrop<'_>,
    ) -> Result<(i64, i64, u64), RedisError> {
        let core = self.core();
        let instance = core.instance().await?;
        let ticket = self.background.next_ticket();
        let lease = format!("{instance}.{ticket}");
        if tenant.max_concurrency.is_some() {
            release.lease = Some(lease.clone());
        }
        let keys = Keys::new(&core.config.prefix, &tenant.id);
        let per_minute = |n: u64| n.min(Self::MAX_PER_MINUTE);
        let (code, kind, wait): (i64, i64, u64) = core
            .conn
            .invoke(
                core.scripts
                    .admit
                    .key(&keys.requests)
                    .key(&keys.tokens)
                    .key(&keys.leases)
                    .arg(tenant.requests_per_minute.map_or(0, |n| u64::from(n.get())))
                    .arg(tenant.tokens_per_minute.map_or(0, |n| per_minute(n.get())))
                    // Anything above the largest limit is refused the same way.
                    .arg(tokens.min(Self::MAX_PER_MINUTE + 1))
                    .arg(tenant.max_concurrency.map_or(0, |n| n.get()))
                    .arg(&lease)
                    .arg(millis(core.config.lease_ttl)),
            )
            .await?;
        Ok((code, kind, wait))
    }
}

// The largest value the scripts compute, a minute's refill of the largest
// limit, is exact in a double.
const _: () = assert!(RedisLimiter::MAX_PER_MINUTE * 60_000 < 1 << 53);

/// Releases a lease whose admit did not return a permit (failed, refused
/// or abandoned while waiting for Redis).
struct ReleaseOnDrop<'a> {
    core: &'a Core,
    tx: &'a Sender<Release>,
    tenant: &'a TenantId,
    lease: Option<String>,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            release(self.core, self.tx, self.tenant.clone(), lease);
        }
    }
}

/// Queues a lease's release; when the queue is full or closed (the runtime
/// shut down) the lease expires after its TTL.
fn release(core: &Core, tx: &Sender<Release>, tenant: TenantId, lease: String) {
    if let Err(why) = tx.try_send(Release { tenant, lease }) {
        core.counters.releases_dropped.bump();
        tracing::warn!(
            reason = why,
            "redis limiter: release dropped; the lease expires after its TTL"
        );
    }
}

/// An admitted request's lease; dropping it releases the lease.
struct LeaseGuard {
    core: Arc<Core>,
    tx: Sender<Release>,
    tenant: TenantId,
    lease: String,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        lock(&self.core.leases).remove(&self.lease);
        release(
            &self.core,
            &self.tx,
            self.tenant.clone(),
            std::mem::take(&mut self.lease),
        );
    }
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn admit(
        &self,
        tenant: &Tenant,
        tokens: u64,
        _now: Instant,
    ) -> Result<LimitPermit, AdmitError> {
        if tenant.requests_per_minute.is_none()
            && tenant.tokens_per_minute.is_none()
            && tenant.max_concurrency.is_none()
        {
            return Ok(LimitPermit::new(()));
        }
        self.ensure_started();
        let core = self.core();
        let _probe = match core.gate() {
            Ok(probe) => probe,
            Err(e) => {
                core.counters.unavailable.bump();
                return Err(e);
            }
        };
        // Until the script answers, a drop or an error releases the lease
        // (the script may have run): cancel safe.
        let mut release = ReleaseOnDrop {
            core,
            tx: self.background.sender(),
            tenant: &tenant.id,
            lease: None,
        };
        let reply = self.run_admit(tenant, tokens, &mut release).await;
        core.note(&reply);
        let (code, kind, wait) = match reply {
            Ok(reply) => reply,
            Err(e) => {
                core.counters.unavailable.bump();
                return Err(unavailable(&e));
            }
        };
        if code != 1 {
            release.lease = None;
            core.counters.refused.bump();
            let kind = match kind {
                1 => LimitKind::Requests,
                2 => LimitKind::Tokens,
                3 => LimitKind::Concurrency,
                other => {
                    return Err(AdmitError::Unavailable(format!(
                        "redis: the admit script answered an unknown limit {other}"
                    )));
                }
            };
            return Err(AdmitError::Limited(LimitError {
                kind,
                retry_after: Duration::from_millis(wait),
            }));
        }
        core.counters.admitted.bump();
        let Some(lease) = release.lease.take() else {
            return Ok(LimitPermit::new(()));
        };
        lock(&core.leases).insert(lease.clone(), tenant.id.clone());
        Ok(LimitPermit::new(LeaseGuard {
            core: core.clone(),
            tx: self.background.sender().clone(),
            tenant: tenant.id.clone(),
            lease,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_slot_apart_from_the_ledger() {
        let k = Keys::new("gateway:", &TenantId::new("acme"));
        assert_eq!(
            k,
            Keys {
                requests: "gateway:{acme}:limit:requests".into(),
                tokens: "gateway:{acme}:limit:tokens".into(),
                leases: "gateway:{acme}:limit:leases".into(),
            }
        );
    }

    #[test]
    fn the_limiter_follows_the_ledger_config() {
        let ledger = crate::RedisLedgerConfig::new("redis://h:1/2").prefix("p:");
        let c = RedisLimiterConfig::from_ledger(&ledger);
        assert_eq!(
            (c.url.as_str(), c.prefix.as_str(), c.lease_ttl),
            ("redis://h:1/2", "p:", Duration::from_secs(30))
        );
    }

    #[test]
    fn a_bad_url_is_a_typed_error() {
        let err = RedisLimiter::new(RedisLimiterConfig::new("http://nope")).unwrap_err();
        assert!(
            matches!(&err, AdmitError::Unavailable(m) if m.starts_with("redis: ")),
            "{err:?}"
        );
    }
}
