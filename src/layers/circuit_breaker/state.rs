//! The public vocabulary of a breaker: its [`State`] and a call's
//! [`Outcome`].

use std::fmt;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls go through and their outcomes are counted.
    Closed,
    /// Calls are rejected until the open time has passed.
    Open,
    /// A fixed number of probe calls decide whether to close or re-open.
    HalfOpen,
    /// Every call is rejected until an operator resets the breaker.
    ForcedOpen,
    /// Every call goes through and nothing is counted.
    Disabled,
}

impl State {
    /// `closed`, `open`, `half_open`, `forced_open` or `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "closed" => Self::Closed,
            "open" => Self::Open,
            "half_open" => Self::HalfOpen,
            "forced_open" => Self::ForcedOpen,
            "disabled" => Self::Disabled,
            _ => return None,
        })
    }

    pub(crate) fn code(self) -> u64 {
        self as u64
    }

    pub(crate) fn from_code(code: u64) -> Self {
        match code {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            _ => Self::Disabled,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Counts as a success (slow if it took longer than the slow-call
    /// duration).
    Success,
    /// Counts as a failure.
    Failure,
    /// Not counted (a cancelled call, or one the classifier skips); a
    /// half-open probe gives its permit back.
    Ignored,
}

impl Outcome {
    /// `success`, `failure` or `ignored`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Ignored => "ignored",
        }
    }
}
