//! `EtcdConfig`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::backends::DEFAULT_PREFIX;
use crate::error::StoreError;

/// How to reach etcd.
///
/// ```
/// use battlement::backends::EtcdConfig;
///
/// let config: EtcdConfig = serde_json::from_str(r#"{
///     "endpoints": ["http://127.0.0.1:2379"],
///     "username": "svc", "password": "secret"
/// }"#).unwrap();
/// assert_eq!(config.timeout().as_millis(), 500);
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The endpoints, e.g. `http://127.0.0.1:2379`.
    endpoints: Vec<String>,
    /// The key namespace.
    #[serde(default = "default_prefix")]
    prefix: String,
    /// Bounds every call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    timeout: Duration,
    /// Bounds connecting.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    connect_timeout: Duration,
    /// The user name.
    #[serde(default)]
    username: Option<String>,
    /// The password (the user name's; never shown in `Debug`).
    #[serde(default)]
    password: Option<String>,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

impl EtcdConfig {
    /// These endpoints (e.g. `http://127.0.0.1:2379`), default settings.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: default_prefix(),
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            username: None,
            password: None,
        }
    }

    /// Namespaces every key under `prefix` (default `battlement`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bounds every call (default 500 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bounds connecting (default 2 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Authenticates as `username`.
    pub fn with_user(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub(crate) fn prefix_str(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn credentials(&self) -> Option<(&str, &str)> {
        Some((
            self.username.as_deref()?,
            self.password.as_deref().unwrap_or(""),
        ))
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(String::is_empty) {
            return Err(StoreError::Config("etcd: no endpoint".into()));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StoreError::Config(
                "etcd: timeouts must be above zero".into(),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(StoreError::Config("etcd: password without username".into()));
        }
        Ok(())
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_configs_are_errors() {
        assert!(EtcdConfig::new(Vec::<String>::new()).validate().is_err());
        assert!(
            EtcdConfig::new(["http://a:1"])
                .with_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(EtcdConfig::new(["http://a:1"]).validate().is_ok());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = EtcdConfig::new(["http://a:1"]).with_user("svc", "hunter2");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && s.contains("svc"), "{s}");
    }
}
