//! `RedisStore`: state shared by every instance through Redis (standalone or
//! Cluster).

/// The Lua script `scripts/<file>`, after the `now_us` function of
/// `scripts/now.lua` that every script reading the time shares.
macro_rules! timed_script {
    ($file:literal) => {
        concat!(
            include_str!("scripts/now.lua"),
            include_str!(concat!("scripts/", $file))
        )
    };
}

mod circuit_breaker;
mod config;
mod decision_queue;
mod gate;
mod idempotency;
mod rate_limit;

#[cfg(any(fuzzing, test))]
pub(crate) use rate_limit::decision as script_decision;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Script,
    ScriptInvocation, ServerErrorKind, Value,
};

pub use config::{RedisConfig, ReplicaWait};
use decision_queue::DecisionQueue;
use gate::Gate;

use super::{Backend, Durability, KeySpace};
use crate::clock::SharedClock;
use crate::error::StoreError;

/// State in Redis, shared by every process that points at the same server.
///
/// One multiplexed connection (standalone: one connection; Cluster: the
/// cluster client, which follows slot moves) is shared by every clone, so
/// concurrent callers pipeline over it. Every call is bounded by the
/// configured timeout (default 50 ms). On a standalone server, a call that
/// times out or loses the connection marks the server down: later calls
/// fail at once (`StoreError::Down`, so the layer's failure policy
/// applies without waiting) while one background probe, every 100 ms,
/// pings the server and reconnects, each attempt bounded by the timeout.
///
/// # What the server must keep
///
/// Exactly-once idempotency and exact limits hold only while Redis keeps
/// what it acknowledged:
/// - **No eviction.** Every key here has a time to live, so any
///   `maxmemory-policy` but `noeviction` (`allkeys-*`, `volatile-*`) may
///   drop one under memory pressure: an evicted idempotency claim lets a
///   duplicate run beside its request, an evicted record runs it again.
///   [`from_config`](Self::from_config) warns when the policy is another.
///   Redis holds idempotency records unbounded (one per key for its
///   retention), so size `maxmemory` for the keyed requests of one
///   retention, and watch `used_memory`.
/// - **Persistence.** A restart without `appendonly yes` (AOF,
///   `appendfsync everysec` or `always`) forgets every claim and record:
///   a replayed key runs again. The first idempotency claim warns when
///   `appendonly` is off.
/// - **Replication is asynchronous.** A master that acknowledged a claim
///   (or a stored response) and failed before its replica had it loses it
///   at failover; the key can then run twice. Replicas usually trail by
///   well under a millisecond, so the window is the last writes before
///   the crash, but it is real: with the replica behind, the test suite
///   makes the same key run twice across a failover.
///   [`RedisConfig::wait_for_replicas`] closes it for idempotency: each
///   claim and record waits (`WAIT`) until a replica has it, and one no
///   replica confirmed in time fails the request (503) instead of being
///   acknowledged. `min-replicas-to-write N` with `min-replicas-max-lag`
///   on the server narrows it for every write (a master refuses writes
///   while fewer replicas are connected and recent) without closing it:
///   the lag it allows can still be lost. Rate-limit state lost this way
///   costs at most the charges of the last moments before the crash (a
///   few over-admissions on the keys of that master's slots); breaker
///   state, a transition seen again.
///
/// # Several policies
///
/// The rate-limit policies of one request are decided all or nothing
/// ([`RateLimitStore::decide_all`](crate::rate_limit::RateLimitStore::decide_all)).
/// On a standalone server that is one script call (shared with concurrent
/// decisions) that reads every key and writes them only if all admit.
/// A Cluster script may only name keys of one slot, and each policy's key
/// has its own hash tag: the keys are grouped by slot, one script call
/// per slot is sent at once, and each is all or nothing. When one slot
/// denies (or fails), the charges the other slots spent are given back in
/// a second call per slot. The stored state then ends as if the request
/// had never been decided (debt drains linearly and stops at zero, so a
/// later give-back is exact), with two limits: during the round trip in
/// between, the spent charges are held, so a concurrent request on those
/// keys may be denied that would have been admitted (under-admission,
/// never over-admission); and if the give-back itself fails, those
/// charges stay spent, as separate decisions would have left them.
///
/// ```no_run
/// # async fn run() -> Result<(), battlement::StoreError> {
/// use battlement::backends::{Backend, RedisConfig, RedisStore};
/// let redis = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// redis.ping().await?;
/// let cluster = RedisStore::from_config(
///     RedisConfig::cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]).prefix("shop"),
/// ).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: RwLock<Option<Connection>>,
    keys: KeySpace,
    timeout: Duration,
    config: RedisConfig,
    clock: Option<SharedClock>,
    decisions: DecisionQueue,
    gate: Gate,
    /// Whether the first idempotency claim checked `appendonly`.
    persistence_checked: AtomicBool,
}

#[derive(Clone)]
enum Connection {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Either connection, usable wherever redis takes a connection.
impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisStore {
    /// Connects to one standalone server at `url` with default settings.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::from_config(RedisConfig::standalone(url)).await
    }

    /// Connects as `config` says and checks the server answers a `PING`.
    pub async fn from_config(config: RedisConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let keys = KeySpace::new(config.prefix_str())?;
        let connect = open(&config);
        let conn = tokio::time::timeout(config.connect_timeout(), connect)
            .await
            .map_err(|_| StoreError::Timeout(config.connect_timeout()))??;
        let store = Self {
            inner: Arc::new(Inner {
                conn: RwLock::new(Some(conn)),
                keys,
                timeout: config.timeout(),
                config,
                clock: None,
                decisions: DecisionQueue::default(),
                gate: Gate::default(),
                persistence_checked: AtomicBool::new(false),
            }),
        };
        store.ping().await?;
        store.warn_if_keys_can_be_evicted().await;
        Ok(store)
    }

    /// The server's `maxmemory-policy`, if it lets `CONFIG GET` read it
    /// (managed services may rename or refuse the command).
    pub async fn eviction_policy(&self) -> Option<String> {
        self.config_value("maxmemory-policy").await
    }

    /// Whether the server keeps an append-only file (`appendonly yes`),
    /// if it lets `CONFIG GET` read it: without one, a restart loses
    /// every write since the last snapshot.
    pub async fn appendonly(&self) -> Option<bool> {
        Some(self.config_value("appendonly").await? == "yes")
    }

    /// `CONFIG GET name`'s value, if the server answers it.
    async fn config_value(&self, name: &str) -> Option<String> {
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg(name);
        let reply: Vec<String> = self.query(&get).await.ok()?;
        reply.into_iter().nth(1)
    }

    /// Warns, at the first idempotency claim of this store, when the
    /// server keeps no append-only file: a restart then forgets the
    /// claims and records, and a replayed key runs again.
    pub(crate) async fn warn_once_if_not_persistent(&self) {
        let checked = &self.inner.persistence_checked;
        if checked.load(Ordering::Relaxed) || checked.swap(true, Ordering::Relaxed) {
            return;
        }
        // Asked once: a server that refuses CONFIG would otherwise cost
        // every claim a round trip.
        if self.appendonly().await == Some(false) {
            tracing::warn!(
                "redis appendonly is off: a restart forgets every idempotency claim and \
                 record, and a replayed key runs its request again; set appendonly yes"
            );
        }
    }

    /// Warns once, at connect, when the server may evict keys to free
    /// memory: every key here has a time to live, so any policy but
    /// `noeviction` may drop one early. An evicted idempotency claim or
    /// record runs its request again; an evicted rate-limit state admits
    /// a fresh burst.
    async fn warn_if_keys_can_be_evicted(&self) {
        match self.eviction_policy().await {
            Some(policy) if policy != "noeviction" => tracing::warn!(
                maxmemory_policy = %policy,
                "redis may evict keys under memory pressure: an evicted idempotency claim \
                 or record runs its request twice, an evicted rate-limit state admits a \
                 new burst; set maxmemory-policy noeviction (or give this data its own \
                 server)"
            ),
            Some(_) => {}
            None => tracing::debug!("redis maxmemory-policy unreadable (CONFIG GET refused)"),
        }
    }

    /// The settings this store was built from.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Decides with `clock` instead of the Redis server's `TIME` (for
    /// tests; in production every instance should share the server clock).
    pub fn with_clock(self, clock: SharedClock) -> Self {
        let conn = self.inner.conn.read().ok().and_then(|c| c.clone());
        Self {
            inner: Arc::new(Inner {
                conn: RwLock::new(conn),
                keys: self.inner.keys.clone(),
                timeout: self.inner.timeout,
                config: self.inner.config.clone(),
                clock: Some(clock),
                decisions: DecisionQueue::default(),
                gate: Gate::default(),
                persistence_checked: AtomicBool::new(false),
            }),
        }
    }

    /// The caller clock's time as a script argument; empty when the
    /// scripts use Redis `TIME`.
    pub(crate) fn caller_now(&self) -> String {
        self.caller_clock()
            .map(|c| c.now_micros().to_string())
            .unwrap_or_default()
    }

    /// Where rate-limit decisions queue to share a script call: standalone
    /// servers with batching on only (a script's keys must share a
    /// cluster slot).
    fn decision_queue(&self) -> Option<&tokio::sync::mpsc::Sender<decision_queue::Queued>> {
        if !self.inner.config.batches_decisions() {
            return None;
        }
        self.inner.decisions.sender(Arc::downgrade(&self.inner))
    }

    /// The caller clock, if one was set.
    pub(crate) fn caller_clock(&self) -> Option<&SharedClock> {
        self.inner.clock.as_ref()
    }

    /// Runs a Lua script (`EVALSHA`, loading it on `NOSCRIPT`) with the
    /// per-call timeout.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(|mut c| async move { script.invoke_async(&mut c).await })
            .await
    }

    /// Runs the script `code` (whose `EVALSHA` hash is `script`'s) on
    /// `key` with `args`, with the per-call timeout. With
    /// [`wait_for_replicas`](RedisConfig::wait_for_replicas) set, a `WAIT`
    /// follows it in one pipeline, on the connection of `key`'s master;
    /// returns the script's reply and whether enough replicas have it.
    pub(crate) async fn invoke_replicated<T: FromRedisValue>(
        &self,
        script: &Script,
        code: &'static str,
        key: &str,
        args: &[Vec<u8>],
    ) -> Result<(T, bool), StoreError> {
        let Some(wait) = self.inner.config.replica_wait() else {
            let mut invocation = script.key(key);
            for arg in args {
                invocation.arg(arg.as_slice());
            }
            return Ok((self.invoke(&invocation).await?, true));
        };
        let pipeline = |eval: &str, script: &str| {
            let mut pipe = redis::pipe();
            pipe.cmd(eval).arg(script).arg(1).arg(key);
            for arg in args {
                pipe.arg(arg.as_slice());
            }
            let ms = u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX);
            pipe.cmd("WAIT").arg(wait.replicas).arg(ms.max(1));
            pipe
        };
        let (hashed, whole) = (
            pipeline("EVALSHA", script.get_hash()),
            pipeline("EVAL", code),
        );
        let (reply, acked): (T, u32) = self
            .bounded(|mut c| async move {
                match hashed.query_async(&mut c).await {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        whole.query_async(&mut c).await
                    }
                    other => other,
                }
            })
            .await?;
        Ok((reply, acked >= wait.replicas))
    }

    /// Runs `cmd` with the per-call timeout.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.bounded(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs `call` on the shared connection, bounded by the per-call
    /// timeout; errors are mapped to [`StoreError`]. Fails at once while
    /// the server is known down (see [`gate`]).
    async fn bounded<T, F>(&self, call: impl FnOnce(Connection) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let timeout = self.inner.timeout;
        let conn = self.connection()?;
        let ticket = self.inner.gate.enter()?;
        let err = match tokio::time::timeout(timeout, call(conn)).await {
            Ok(Ok(answer)) => {
                self.inner.gate.succeeded();
                return Ok(answer);
            }
            Ok(Err(e)) => map_error(e, timeout),
            Err(_) => StoreError::Timeout(timeout),
        };
        gate::on_error(&self.inner, ticket, &err);
        Err(err)
    }

    fn connection(&self) -> Result<Connection, StoreError> {
        let guard = self.inner.conn.read().map_err(|_| StoreError::Closed)?;
        guard.clone().ok_or(StoreError::Closed)
    }
}

async fn open(config: &RedisConfig) -> Result<Connection, StoreError> {
    if config.is_cluster() {
        let client = ClusterClient::builder(config.urls().iter().map(String::as_str))
            .connection_timeout(config.connect_timeout())
            .response_timeout(config.connect_timeout())
            .retries(2)
            .build()
            .map_err(config_error)?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| map_error(e, config.connect_timeout()))?;
        Ok(Connection::Cluster(conn))
    } else {
        open_standalone(config, config.connect_timeout()).await
    }
}

/// One connection to a standalone server, its connect bounded by
/// `connect_timeout`.
async fn open_standalone(
    config: &RedisConfig,
    connect_timeout: Duration,
) -> Result<Connection, StoreError> {
    let url = config
        .urls()
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    let client = redis::Client::open(url).map_err(config_error)?;
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(config.timeout()));
    let conn = client
        .get_multiplexed_async_connection_with_config(&settings)
        .await
        .map_err(|e| map_error(e, connect_timeout))?;
    Ok(Connection::Standalone(conn))
}

fn config_error(err: RedisError) -> StoreError {
    StoreError::Config(format!("redis: {err}"))
}

/// Maps a redis client error without leaking its type.
pub(crate) fn map_error(err: RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        StoreError::Timeout(timeout)
    } else if err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_unrecoverable_error()
        || err.is_cluster_error()
    {
        StoreError::Unavailable(format!("redis: {err}"))
    } else {
        StoreError::Backend(format!("redis: {err}"))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Backend for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn keyspace(&self) -> &KeySpace {
        &self.inner.keys
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let reply: String = self.query(&redis::cmd("PING")).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Protocol(format!(
                "redis: PING answered {reply:?}"
            )))
        }
    }

    fn close(&self) {
        if let Ok(mut conn) = self.inner.conn.write() {
            conn.take();
        }
    }

    /// From `appendonly` and `save`, as the server says now.
    async fn durability(&self) -> Durability {
        match self.appendonly().await {
            Some(true) => Durability::AppendOnly,
            Some(false) => match self.config_value("save").await {
                Some(save) if !save.trim().is_empty() => Durability::Snapshots,
                Some(_) => Durability::Volatile,
                None => Durability::Unknown,
            },
            None => Durability::Unknown,
        }
    }
}
