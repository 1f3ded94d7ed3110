//! One error type for the whole core, each variant with a stable code that reaches JavaScript as `err.code`.

use crate::paths::PathError;
use std::sync::Arc;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the tracker.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument or option was refused; nothing was changed.
    #[error("{0}")]
    InvalidArgument(String),

    /// A URL cannot become a CloudFront path; nothing was stored.
    #[error("invalid URL: {0}")]
    InvalidUrl(#[from] PathError),

    /// The Redis store failed (connection, timeout or command error); `at` names the server, without credentials.
    #[error("Redis store{at}: {said}{hint}", at = located(.at), said = one_line(.source), hint = redis_hint(.source))]
    Redis {
        /// What redis-rs reported.
        #[source]
        source: Arc<redis::RedisError>,
        /// The server (its URL without credentials).
        at: Option<Arc<str>>,
    },

    /// A custom store method threw, rejected, called back an error or answered the wrong type.
    #[error("store method '{method}' failed: {message}")]
    Store {
        /// The store method that failed, e.g. `getAllKeys`.
        method: &'static str,
        /// What went wrong.
        message: String,
    },

    /// A custom store method did not answer in time.
    #[error("store method '{method}' did not answer within {ms} ms")]
    StoreTimeout {
        /// The store method that hung.
        method: &'static str,
        /// The timeout that passed.
        ms: u64,
    },

    /// CloudFront refused a request, or could not be reached.
    #[error("CloudFront {code}: {message}")]
    CloudFront {
        /// CloudFront's error code (e.g. `AccessDenied`), or `NetworkError`.
        code: String,
        /// CloudFront's message.
        message: String,
    },

    /// The send deadline (`sendTimeoutMs`) or the wait deadline passed.
    #[error("{0}")]
    Timeout(String),

    /// A bug: a panic or a broken invariant inside the tracker.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code of this error, as listed in the README.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) | Error::InvalidUrl(_) => "ERR_INVALID_ARG_VALUE",
            Error::Redis { .. } => "ERR_CFIT_REDIS",
            Error::Store { .. } => "ERR_CFIT_STORE",
            Error::StoreTimeout { .. } => "ERR_CFIT_STORE_TIMEOUT",
            Error::CloudFront { .. } => "ERR_CFIT_CLOUDFRONT",
            Error::Timeout(_) => "ERR_CFIT_TIMEOUT",
            Error::Internal(_) => "ERR_CFIT_INTERNAL",
        }
    }

    /// True for errors of the arguments, which map to a JavaScript `TypeError`/`RangeError`.
    pub fn is_argument_error(&self) -> bool {
        matches!(self, Error::InvalidArgument(_) | Error::InvalidUrl(_))
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Redis {
            source: Arc::new(e),
            at: None,
        }
    }
}

fn located(at: &Option<Arc<str>>) -> String {
    at.as_deref()
        .map(|a| format!(" at {a}"))
        .unwrap_or_default()
}

/// What redis-rs said, on one line (a reply it could not parse comes on several).
fn one_line(e: &redis::RedisError) -> String {
    let said = e.to_string();
    said.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What to do about a Redis error that has one answer.
fn redis_hint(e: &redis::RedisError) -> &'static str {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => {
            " (this server is a node of a Redis Cluster: set redis.cluster, or --redis-cluster)"
        }
        // An HTTP server on the port, say: its answer is no Redis reply.
        ErrorKind::Parse => " (the server did not answer as Redis does: is this a Redis port?)",
        _ if e.code() == Some("NOAUTH") => {
            " (the server wants a password: give it in the URL, or as redis.password)"
        }
        ErrorKind::AuthenticationFailed => {
            " (check the password, and the user name: one in the URL is sent as a Redis 6 ACL user)"
        }
        _ => "",
    }
}
