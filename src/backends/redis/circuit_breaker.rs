//! `CircuitBreakerStore` for `RedisStore`: one `EVALSHA` per transition (a
//! version compare-and-set) and one per poll of a batch of keys, with
//! Redis `TIME` as the clock of the shared open time unless a caller clock
//! was set.
//!
//! A batch is one `MGET` in a script on a standalone server. On a Cluster
//! every breaker key has its own hash tag, so a batch spans many slots and
//! no one command may name its keys; the batch goes instead, as script
//! arguments, to the node serving the first key still unanswered, which
//! answers every key it serves and marks the others. So a batch costs one
//! call per node holding its keys (a key whose slot is moving is read on
//! its own, following the redirect).

use std::sync::LazyLock;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, Script, ServerErrorKind, Value};

use super::{Connection, RedisStore};
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::circuit_breaker::store::{decode, is_per_record, state_key};
use crate::layers::circuit_breaker::{
    CircuitBreakerStore, LOAD_BATCH, Loaded, Publication, Published, Versioned,
};

static LOAD: LazyLock<Script> = LazyLock::new(|| Script::new(timed_script!("breaker_load.lua")));
static LOAD_MANY: LazyLock<Script> =
    LazyLock::new(|| Script::new(timed_script!("breaker_load_many.lua")));
const LOAD_LOCAL_CODE: &str = timed_script!("breaker_load_local.lua");
static LOAD_LOCAL: LazyLock<Script> = LazyLock::new(|| Script::new(LOAD_LOCAL_CODE));
static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(timed_script!("breaker_publish.lua")));

/// A stored value the store cannot read is a protocol error, not a state.
fn parse(value: &str, now_us: u64) -> Result<Option<Versioned>, StoreError> {
    if value.is_empty() {
        return Ok(None);
    }
    decode(value, now_us)
        .map(Some)
        .ok_or_else(|| StoreError::Protocol(format!("unreadable breaker state {value:?}")))
}

fn protocol(what: impl std::fmt::Display) -> StoreError {
    StoreError::Protocol(format!("redis: {what}"))
}

/// What a Cluster node answered for one key.
enum Local {
    /// Its value (`""`: none).
    Value(String),
    /// The key is not served by that node.
    Elsewhere,
}

impl RedisStore {
    /// One batch on a standalone server: one script call.
    async fn load_batch(&self, keys: &[String]) -> Result<Vec<Loaded>, StoreError> {
        let mut invocation = LOAD_MANY.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(self.caller_now());
        let (values, now_us): (Vec<String>, u64) = self.invoke(&invocation).await?;
        if values.len() != keys.len() {
            return Err(protocol(format!(
                "{} breaker states for {} keys",
                values.len(),
                keys.len()
            )));
        }
        Ok(values.iter().map(|v| parse(v, now_us)).collect())
    }

    /// One batch on a Cluster: one script call per node holding its keys.
    async fn load_batch_cluster(
        &self,
        ids: &[&str],
        keys: &[String],
    ) -> Result<Vec<Loaded>, StoreError> {
        let mut loaded: Vec<Option<Loaded>> = vec![None; keys.len()];
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        while let Some(&first) = pending.first() {
            let (values, now_us) = self.load_local(&keys[first], &pending, keys).await?;
            let mut elsewhere = Vec::new();
            for (&i, value) in pending.iter().zip(values) {
                match value {
                    Local::Value(v) => loaded[i] = Some(parse(&v, now_us)),
                    Local::Elsewhere => elsewhere.push(i),
                }
            }
            if elsewhere.first() == Some(&first) {
                // The node that should serve it does not (its slot is
                // moving): read it alone, following the redirect.
                match self.load(ids[first]).await {
                    Err(e) if !is_per_record(&e) => return Err(e),
                    answer => loaded[first] = Some(answer),
                }
                elsewhere.remove(0);
            }
            pending = elsewhere;
        }
        Ok(loaded
            .into_iter()
            .map(|l| l.unwrap_or_else(|| Err(protocol("breaker state left unread"))))
            .collect())
    }

    /// Runs the local-read script for the keys at `pending` on the node
    /// serving `at`.
    async fn load_local(
        &self,
        at: &str,
        pending: &[usize],
        keys: &[String],
    ) -> Result<(Vec<Local>, u64), StoreError> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
            Route::with_key(at, SlotAddr::Master),
        ));
        let now = self.caller_now();
        let call = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(0).arg(&now);
            for &i in pending {
                cmd.arg(&keys[i]);
            }
            cmd
        };
        let reply = self
            .bounded(|conn| async move {
                let Connection::Cluster(mut conn) = conn else {
                    return Err((ErrorKind::Client, "not a cluster connection").into());
                };
                let evalsha = call("EVALSHA", LOAD_LOCAL.get_hash());
                match send(&mut conn, evalsha, routing.clone()).await {
                    // Not cached on that node yet: send the code, which
                    // caches it.
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        send(&mut conn, call("EVAL", LOAD_LOCAL_CODE), routing).await
                    }
                    other => other,
                }
            })
            .await?;
        let (values, now_us): (Vec<Value>, u64) =
            redis::from_redis_value(reply).map_err(protocol)?;
        if values.len() != pending.len() {
            return Err(protocol(format!(
                "{} breaker states for {} keys",
                values.len(),
                pending.len()
            )));
        }
        let values = values
            .into_iter()
            .map(|v| match v {
                Value::Int(_) => Ok(Local::Elsewhere),
                v => redis::from_redis_value::<String>(v)
                    .map(Local::Value)
                    .map_err(protocol),
            })
            .collect::<Result<_, _>>()?;
        Ok((values, now_us))
    }
}

async fn send(
    conn: &mut redis::cluster_async::ClusterConnection,
    cmd: Cmd,
    routing: RoutingInfo,
) -> redis::RedisResult<Value> {
    conn.route_command(cmd, routing)
        .await
        .and_then(Value::extract_error)
}

impl CircuitBreakerStore for RedisStore {
    async fn load(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        let mut invocation = LOAD.key(state_key(self.keyspace(), id));
        invocation.arg(self.caller_now());
        let (value, now_us): (String, u64) = self.invoke(&invocation).await?;
        parse(&value, now_us)
    }

    async fn load_many(&self, ids: &[&str]) -> Result<Vec<Loaded>, StoreError> {
        let mut loaded = Vec::with_capacity(ids.len());
        for batch in ids.chunks(LOAD_BATCH) {
            let keys: Vec<String> = batch
                .iter()
                .map(|id| state_key(self.keyspace(), id))
                .collect();
            let answers = if self.config().is_cluster() {
                self.load_batch_cluster(batch, &keys).await?
            } else {
                self.load_batch(&keys).await?
            };
            loaded.extend(answers);
        }
        Ok(loaded)
    }

    async fn publish(&self, id: &str, write: Publication) -> Result<Published, StoreError> {
        let mut invocation = PUBLISH.key(state_key(self.keyspace(), id));
        invocation
            .arg(write.expected)
            .arg(write.next.state.as_str())
            .arg(u64::try_from(write.next.open_for.as_micros()).unwrap_or(0))
            .arg(write.next.reopens)
            .arg(u64::try_from(write.next.ttl().as_millis()).unwrap_or(u64::MAX))
            .arg(write.writer)
            .arg(self.caller_now());
        let (version, current, now_us): (u64, String, u64) = self.invoke(&invocation).await?;
        if version > 0 {
            return Ok(Published::Applied(version));
        }
        Ok(Published::Conflict(parse(&current, now_us)?))
    }
}
