//! `Quota`: N per period with a burst.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, de};

use crate::error::ConfigError;

/// Largest value the integer GCRA state may reach. Every number a store
/// keeps or computes stays below 2^53, so the Redis Lua script (which
/// computes in doubles) is exact.
pub(crate) const MAX_EXACT: u64 = 1 << 53;

/// `count` requests per `period`, with up to `burst` at once.
///
/// ```
/// use std::time::Duration;
/// use battlement::rate_limit::Quota;
///
/// let q = Quota::per_second(10).unwrap();
/// assert_eq!(q.burst(), 10);
/// assert_eq!(q.emission_interval(), Duration::from_millis(100));
/// let q: Quota = "50/m".parse().unwrap();
/// assert_eq!((q.count(), q.period()), (50, Duration::from_secs(60)));
/// assert_eq!(q.with_burst(5).unwrap().burst(), 5);
/// assert!(Quota::new(0, Duration::from_secs(1)).is_err());
/// ```
///
/// # What it admits
///
/// The limiter is a GCRA (a leaky bucket, decided per request): a full
/// bucket admits `burst` requests at once, then one every `period /
/// count` as it drains. So "5 per 10 s" admits five requests at once, and
/// the sixth is told to come back in 2 s (`retry-after: 2`), not 10:
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::rate_limit::{Policy, RateLimitLayer};
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let quota = "5/10s".parse().unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(MemoryStore::new()).policy(Policy::new("q", quota).unwrap()))
///     .service(service_fn(|_: Request<String>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
///     }));
/// for _ in 0..5 {
///     let res = svc.clone().oneshot(Request::new(String::new())).await.unwrap();
///     assert_eq!(res.status(), StatusCode::OK);
/// }
/// let sixth = svc.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(sixth.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(sixth.headers()["retry-after"], "2");
/// # });
/// ```
///
/// # In a config
///
/// A quota is read (serde, [`FromStr`]) in one of two forms:
///
/// - a string `"N/<duration>"`: `N` requests per duration, with a burst
///   of `N`. The duration is a number and a unit (`"5/10s"`, `"1000/1m"`,
///   `"3/500ms"`, `"7/1h 30m"`: any [`humantime`] duration) or a unit
///   alone (`"100/s"`, `"50/m"`, `"2/h"`);
/// - a table `{ count, period, burst }`: `count` requests (at least 1)
///   per `period` (a duration string), with up to `burst` at once (at
///   least 1; default `count`). No other field is allowed.
///
/// Both are validated as [`Quota::new`] and [`Quota::with_burst`] are, and
/// a quota is written back as a table.
///
/// ```
/// use std::time::Duration;
/// use battlement::stack::StackConfig;
///
/// let config = StackConfig::from_toml(r#"
///     [[rate_limit.policies]]
///     name = "per-ip"
///     quota = "5/10s"
///
///     [[rate_limit.policies]]
///     name = "bursty"
///     quota = { count = 100, period = "1m", burst = 20 }
/// "#).unwrap();
/// let policies = config.rate_limit.unwrap().policies;
/// let (per_ip, bursty) = (policies[0].quota, policies[1].quota);
/// assert_eq!((per_ip.count(), per_ip.period(), per_ip.burst()), (5, Duration::from_secs(10), 5));
/// assert_eq!((bursty.count(), bursty.period(), bursty.burst()), (100, Duration::from_secs(60), 20));
///
/// let typo = StackConfig::from_toml(r#"
///     [[rate_limit.policies]]
///     name = "per-ip"
///     quota = "5 per 10s"
/// "#).unwrap_err();
/// assert_eq!(
///     typo.message(),
///     r#"stack config at `rate_limit.policies[0].quota`: invalid quota "5 per 10s": expected "N/<duration>" such as "100/s", "5/10s" or "3/500ms""#,
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "QuotaTable")]
pub struct Quota {
    count: u64,
    period_us: u64,
    burst: u64,
}

impl Quota {
    /// `count` per `period`, burst = `count`.
    pub fn new(count: u64, period: Duration) -> Result<Self, ConfigError> {
        let period_us = u64::try_from(period.as_micros())
            .map_err(|_| ConfigError::new("rate limit period is too long"))?;
        Self::validated(count, period_us, count)
    }

    /// `count` per second.
    pub fn per_second(count: u64) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` per minute.
    pub fn per_minute(count: u64) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` per hour.
    pub fn per_hour(count: u64) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(3600))
    }

    /// The same rate with a burst of `burst` (at least 1).
    pub fn with_burst(self, burst: u64) -> Result<Self, ConfigError> {
        Self::validated(self.count, self.period_us, burst)
    }

    fn validated(count: u64, period_us: u64, burst: u64) -> Result<Self, ConfigError> {
        if count == 0 {
            return Err(ConfigError::new("rate limit count must be at least 1"));
        }
        if period_us == 0 {
            return Err(ConfigError::new("rate limit period must be at least 1 µs"));
        }
        if burst == 0 {
            return Err(ConfigError::new("rate limit burst must be at least 1"));
        }
        let capacity = burst
            .checked_mul(period_us)
            .filter(|c| c.saturating_add(period_us) < MAX_EXACT / 2);
        if capacity.is_none() || count >= MAX_EXACT / 4 {
            return Err(ConfigError::new(
                "rate limit burst × period is too large (keep it below 2^52 µs)",
            ));
        }
        Ok(Self {
            count,
            period_us,
            burst,
        })
    }

    /// Requests per period.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_micros(self.period_us)
    }

    /// The period in microseconds.
    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// Requests allowed at once.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Time between two requests at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.period_us.saturating_mul(1_000) / self.count)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?} burst {}", self.count, self.period(), self.burst)
    }
}

/// `"N/<duration>"`: `N` requests per duration, with a burst of `N`. The
/// duration is a number and a unit (`10s`, `1m`, `500ms`, `1h 30m`: any
/// [`humantime`] duration) or a unit alone (`s`, `m`, `h`, ...: one of it).
/// The `RATE_LIMIT` syntax of the examples, and a config's string form.
impl FromStr for Quota {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || {
            ConfigError::new(format!(
                "invalid quota {s:?}: expected \"N/<duration>\" such as \"100/s\", \"5/10s\" or \"3/500ms\""
            ))
        };
        let (count, period) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(period)
        } else {
            humantime::parse_duration(&format!("1{period}"))
        }
        .map_err(|_| bad())?;
        Self::new(count, period)
            .map_err(|e| ConfigError::new(format!("invalid quota {s:?}: {}", e.message())))
    }
}

/// What a quota may be written as, in errors and in the schema.
const EXPECTED: &str = r#"a quota: "N/<duration>" such as "5/10s", or a table { count, period }"#;

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Quota;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Quota, E> {
                s.parse::<Quota>().map_err(|e| E::custom(e.message()))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Quota, A::Error> {
                let invalid =
                    |e: &dyn fmt::Display| de::Error::custom(format!("invalid quota: {e}"));
                let table = QuotaTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map_err(|e| invalid(&e))?;
                Quota::try_from(table).map_err(|e| invalid(&e.message()))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// A table: `count` requests per `period`, up to `burst` at once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct QuotaTable {
    /// Requests per period, at least 1.
    #[schemars(range(min = 1))]
    count: u64,
    /// The period: a duration such as "1s", "10s", "1m" or "500ms".
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    period: Duration,
    /// Requests allowed at once, at least 1 (default: count).
    #[serde(default)]
    #[schemars(range(min = 1))]
    burst: Option<u64>,
}

impl TryFrom<QuotaTable> for Quota {
    type Error = ConfigError;

    fn try_from(c: QuotaTable) -> Result<Self, ConfigError> {
        let q = Quota::new(c.count, c.period)?;
        match c.burst {
            Some(b) => q.with_burst(b),
            None => Ok(q),
        }
    }
}

impl From<Quota> for QuotaTable {
    fn from(q: Quota) -> Self {
        Self {
            count: q.count,
            period: q.period(),
            burst: Some(q.burst),
        }
    }
}

/// Either form: a string `"N/<duration>"` or a table.
impl JsonSchema for Quota {
    fn schema_name() -> Cow<'static, str> {
        "Quota".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": EXPECTED,
            "oneOf": [
                {
                    "description": "\"N/<duration>\": N requests per duration, with a burst of N",
                    "type": "string",
                    "pattern": r"^\s*\+?[0-9]+\s*/\s*\S.*$",
                    "examples": ["100/s", "5/10s", "1000/1m", "3/500ms"]
                },
                QuotaTable::json_schema(generator)
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_validate() {
        assert_eq!(
            "100/s".parse::<Quota>().unwrap(),
            Quota::per_second(100).unwrap()
        );
        assert_eq!(
            "3/h".parse::<Quota>().unwrap().period(),
            Duration::from_secs(3600)
        );
        for bad in ["", "10", "x/s", "10/x", "0/s", "-1/s", "5/0s"] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
        assert!(Quota::per_second(1).unwrap().with_burst(0).is_err());
        assert!(
            Quota::per_hour(1).unwrap().with_burst(10_000_000).is_err(),
            "too large"
        );
    }

    #[test]
    fn serde_round_trip_and_errors() {
        let q: Quota =
            serde_json::from_str(r#"{"count": 10, "period": "1s", "burst": 20}"#).unwrap();
        assert_eq!(q.burst(), 20);
        let back: Quota = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(back, q);
        assert!(serde_json::from_str::<Quota>(r#"{"count": 0, "period": "1s"}"#).is_err());
    }
}
