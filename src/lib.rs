#![deny(clippy::all)]
//! cf-invalidation-tracker: track every URL a Node.js server serves and invalidate exactly those paths on CloudFront.
//!
//! This file is the whole Node.js surface: option structs, the exported class and functions, and error mapping.
//! Everything below it is plain async Rust.

pub mod buffer;
pub mod cloudfront;
pub mod error;
pub mod paths;
pub mod send;
pub mod store;
pub mod tracker;

use crate::cloudfront::CfConfig;
use crate::error::Error;
use crate::paths::{PathRules, QueryStrings};
use crate::send::{Log, SendConfig, SendOptions, SendReport};
use crate::store::js::{Dispatch, JsStore};
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisConfig, RedisSentinel, RedisStore, RedisTls};
use crate::store::Store;
use crate::tracker::{Tracker, TrackerConfig, DEFAULT_FLUSH_INTERVAL, REMOVE};
use futures::FutureExt;
use napi::bindgen_prelude::Utf16String;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

/// Separates the stable error code from the message; index.js turns it into `err.code`.
const CODE_SEP: char = '\u{1}';

fn to_js(e: Error) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("{}{CODE_SEP}{e}", e.code()))
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Error::Internal(format!("panic: {what}"))
}

/// Runs a future so that neither an error nor a panic escapes as anything but a rejected promise.
async fn guarded<T>(fut: impl Future<Output = error::Result<T>>) -> napi::Result<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r.map_err(to_js),
        Err(payload) => Err(to_js(panic_message(payload))),
    }
}

fn guarded_sync<T>(f: impl FnOnce() -> error::Result<T>) -> napi::Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(to_js),
        Err(payload) => Err(to_js(panic_message(payload))),
    }
}

/// Options of the native tracker, already validated by index.js.
#[napi(object, object_to_js = false)]
pub struct NativeOptions {
    /// CloudFront distribution id (empty: dry runs only).
    pub dist: String,
    /// Access key id (with `secret_key`; else the default AWS credential chain).
    pub access_key: Option<String>,
    /// Secret access key.
    pub secret_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Signing region.
    pub region: Option<String>,
    /// CloudFront-compatible endpoint URL.
    pub endpoint: Option<String>,
    /// `memory`, `redis` or `js`.
    pub store: String,
    /// Redis URL, for the `redis` store.
    pub redis_url: Option<String>,
    /// Redis key prefix.
    pub redis_prefix: Option<String>,
    /// The Redis server is a node of a Redis Cluster.
    pub redis_cluster: Option<bool>,
    /// More nodes of that cluster to learn it from.
    pub redis_cluster_nodes: Option<Vec<String>>,
    /// The master's name, for a master that Redis Sentinel names.
    pub redis_sentinel_name: Option<String>,
    /// The Sentinels' URLs.
    pub redis_sentinel_nodes: Option<Vec<String>>,
    /// PEM: certificate authorities a `rediss://` connection trusts instead of the public ones.
    pub redis_tls_ca: Option<String>,
    /// PEM: client certificate of a `rediss://` connection (with `redis_tls_key`).
    pub redis_tls_cert: Option<String>,
    /// PEM: the client certificate's private key.
    pub redis_tls_key: Option<String>,
    /// Optional methods the JavaScript store has.
    pub store_methods: Option<Vec<String>>,
    /// Which JavaScript store object it is: the trackers of this process given the same one share its claims.
    pub store_id: Option<u32>,
    /// Per-call timeout of a JavaScript store, in ms.
    pub store_timeout_ms: Option<u32>,
    /// Paths per CreateInvalidation request.
    pub batch_size: Option<u32>,
    /// Most paths one send may bill.
    pub max_paths: Option<u32>,
    /// Flood guard: most URLs tracked one by one.
    pub max_tracked_urls: Option<u32>,
    /// `keep`, `strip` or `wildcard`.
    pub query_strings: Option<String>,
    /// Index document, e.g. `index.html`.
    pub index_document: Option<String>,
    /// Send deadline, in ms.
    pub send_timeout_ms: Option<u32>,
    /// Poll interval while waiting on CloudFront, in ms.
    pub poll_interval_ms: Option<u32>,
    /// Lease of a send's claim, in ms.
    pub lease_ms: Option<u32>,
    /// Longest time URLs gather before they are written, in ms.
    pub flush_interval_ms: Option<u32>,
    /// Most distinct URLs buffered in memory.
    pub buffer_capacity: Option<u32>,
    /// Names the memory store's claims after a piece of work replayed on failure (S3 events).
    pub claim_name: Option<String>,
}

/// One line for the logger.
#[napi(object)]
pub struct LogLine {
    /// `info` or `warn`.
    pub level: String,
    /// The message.
    pub message: String,
}

type LogFn = ThreadsafeFunction<LogLine, (), LogLine, Status, false, true>;

struct JsLog(Option<LogFn>);

impl JsLog {
    fn emit(&self, level: &str, message: &str) {
        if let Some(f) = &self.0 {
            let line = LogLine {
                level: level.into(),
                message: message.into(),
            };
            f.call(line, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

impl Log for JsLog {
    fn info(&self, msg: &str) {
        self.emit("info", msg);
    }
    fn warn(&self, msg: &str) {
        self.emit("warn", msg);
    }
}

/// What happened to one batch.
#[napi(object)]
pub struct BatchReport {
    /// CloudFront's invalidation id (comma-separated when the batch had to be split).
    pub id: Option<String>,
    /// The CallerReference it was sent with.
    pub caller_reference: Option<String>,
    /// `InProgress`, `Completed`, `Kept` or `DryRun`.
    pub status: String,
    /// Its paths.
    pub paths: Vec<String>,
    /// True when resumed from an earlier send.
    pub resumed: bool,
    /// Attempts beyond the first.
    pub retries: u32,
    /// Why it was kept.
    pub error: Option<String>,
}

/// What a send did.
#[napi(object)]
pub struct Report {
    /// Paths sent.
    pub paths: u32,
    /// Every batch.
    pub batches: Vec<BatchReport>,
    /// Tracked URLs kept for a later send.
    pub kept: u32,
    /// Batches of an earlier send that failed or died, accepted by this one.
    pub resumed: u32,
    /// Flood-guard wildcards sent.
    pub overflow: Vec<String>,
    /// Paths CloudFront refused as invalid (dropped).
    pub rejected: Vec<String>,
    /// True when `maxPaths` collapsed paths into wildcards.
    pub collapsed: bool,
    /// Paths billed by this send.
    pub billed_paths: u32,
    /// Paths billed this month through this store.
    pub billed_this_month: u32,
    /// Estimated price of this send, USD.
    pub estimated_cost_usd: f64,
    /// True for a dry run.
    pub dry_run: bool,
    /// `code` + separator + message of the failure that kept batches, if any.
    pub error: Option<String>,
}

impl From<SendReport> for Report {
    fn from(r: SendReport) -> Self {
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        Report {
            paths: n(r.paths),
            batches: r
                .batches
                .into_iter()
                .map(|b| BatchReport {
                    id: b.id,
                    caller_reference: b.caller_reference,
                    status: b.status,
                    paths: b.paths,
                    resumed: b.resumed,
                    retries: b.retries,
                    error: b.error,
                })
                .collect(),
            kept: n(r.kept),
            resumed: n(r.resumed),
            overflow: r.overflow,
            rejected: r.rejected,
            collapsed: r.collapsed,
            billed_paths: u32::try_from(r.billed_paths).unwrap_or(u32::MAX),
            billed_this_month: u32::try_from(r.billed_this_month).unwrap_or(u32::MAX),
            estimated_cost_usd: r.estimated_cost_usd,
            dry_run: r.dry_run,
            error: r.error.map(|e| format!("{}{CODE_SEP}{e}", e.code())),
        }
    }
}

/// A distribution found by `listDistributions`.
#[napi(object)]
pub struct Distribution {
    /// Distribution id.
    pub id: String,
    /// Its CloudFront domain.
    pub domain_name: String,
    /// Its origins' domain names.
    pub origins: Vec<String>,
    /// The origin path of each of `origins`, in order (`/production`; empty for none).
    pub origin_paths: Vec<String>,
    /// Deployment status.
    pub status: String,
}

/// A duration option given in milliseconds, or `default`.
fn ms(v: Option<u32>, default: Duration) -> Duration {
    v.map_or(default, |v| Duration::from_millis(v.into()))
}

/// How long a custom store's method may take before its call fails, unless `storeTimeoutMs` says otherwise.
const JS_STORE_TIMEOUT: Duration = Duration::from_secs(30);

fn build(
    opts: NativeOptions,
    log: Option<LogFn>,
    dispatch: Option<Dispatch>,
) -> error::Result<Arc<Tracker>> {
    let query_strings: QueryStrings = opts
        .query_strings
        .as_deref()
        .unwrap_or("keep")
        .parse()
        .map_err(Error::InvalidArgument)?;
    let rules = PathRules {
        query_strings,
        index_document: opts.index_document.filter(|s| !s.is_empty()),
    };
    let store: Arc<dyn Store> = match opts.store.as_str() {
        "memory" => Arc::new(match opts.claim_name {
            Some(name) => MemoryStore::with_claim_names(name),
            None => MemoryStore::new(),
        }),
        "redis" => {
            let mut cfg = RedisConfig::new(
                opts.redis_url
                    .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            );
            if let Some(prefix) = opts.redis_prefix {
                cfg.prefix = prefix;
            }
            cfg.cluster = opts.redis_cluster.unwrap_or(false);
            cfg.cluster_nodes = opts.redis_cluster_nodes.unwrap_or_default();
            if let Some(name) = opts.redis_sentinel_name {
                cfg.sentinel = Some(RedisSentinel {
                    name,
                    nodes: opts.redis_sentinel_nodes.unwrap_or_default(),
                });
            }
            let client = match (opts.redis_tls_cert, opts.redis_tls_key) {
                (Some(cert), Some(key)) => Some((cert.into_bytes(), key.into_bytes())),
                (None, None) => None,
                _ => {
                    return Err(Error::InvalidArgument(
                        "redis.tls needs both cert and key, or neither".into(),
                    ))
                }
            };
            let ca = opts.redis_tls_ca.map(String::into_bytes);
            if ca.is_some() || client.is_some() {
                cfg.tls = Some(RedisTls { ca, client });
            }
            Arc::new(RedisStore::new(cfg)?)
        }
        "js" => {
            let dispatch = dispatch
                .ok_or_else(|| Error::InvalidArgument("a custom store needs its methods".into()))?;
            Arc::new(JsStore::new(
                dispatch,
                opts.store_methods.unwrap_or_default(),
                opts.store_id,
                ms(opts.store_timeout_ms, JS_STORE_TIMEOUT),
                rules.clone(),
            ))
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown store kind '{other}'"
            )))
        }
    };
    let send_defaults = SendConfig::default();
    let batch_size = opts
        .batch_size
        .map_or(send_defaults.batch_size, |b| b as usize);
    if !(1..=3000).contains(&batch_size) {
        return Err(Error::InvalidArgument(
            "batchSize must be between 1 and 3000".into(),
        ));
    }
    let defaults = TrackerConfig::default();
    let config = TrackerConfig {
        send: SendConfig {
            batch_size,
            max_paths: opts.max_paths.map(|m| m as usize),
            rules,
            lease: ms(opts.lease_ms, send_defaults.lease),
            send_timeout: ms(opts.send_timeout_ms, send_defaults.send_timeout),
            poll_interval: ms(opts.poll_interval_ms, send_defaults.poll_interval),
        },
        max_tracked: opts
            .max_tracked_urls
            .map_or(defaults.max_tracked, |m| m as usize),
        flush_interval: opts
            .flush_interval_ms
            .map_or(defaults.flush_interval, |v| Duration::from_millis(v.into())),
        buffer_capacity: opts
            .buffer_capacity
            .map_or(defaults.buffer_capacity, |c| c.max(1) as usize),
    };
    let cf = CfConfig {
        dist: opts.dist,
        access_key: opts.access_key,
        secret_key: opts.secret_key,
        session_token: opts.session_token,
        region: opts.region,
        endpoint: opts.endpoint,
    };
    let runtime =
        napi::bindgen_prelude::within_runtime_if_available(tokio::runtime::Handle::try_current)
            .map_err(|e| Error::Internal(format!("no async runtime: {e}")))?;
    Ok(Tracker::new(
        store,
        cf,
        config,
        Arc::new(JsLog(log)),
        runtime,
    ))
}

/// `flushIntervalMs` when it is not given.
#[napi]
pub const DEFAULT_FLUSH_INTERVAL_MS: u32 = DEFAULT_FLUSH_INTERVAL.as_millis() as u32;

/// The TTL that marks a removal (`removeUrl`) among the calls handed to `trackBatch`.
#[napi]
pub const BATCH_REMOVE_TTL: f64 = REMOVE;

/// What follows a batch of calls handed to `trackBatch`, which tells the writer when to write it.
#[napi]
pub enum BatchEnd {
    /// More calls may follow at once: the writer goes on gathering.
    Running,
    /// The calls paused (the event loop came round): a burst gathered so far is written now.
    Paused,
    /// Gathered for a write interval already (the middleware's): written now.
    Due,
}

impl From<BatchEnd> for tracker::BatchEnd {
    fn from(then: BatchEnd) -> Self {
        match then {
            BatchEnd::Running => Self::Running,
            BatchEnd::Paused => Self::Paused,
            BatchEnd::Due => Self::Due,
        }
    }
}

/// The native half of a tracker; index.js wraps it in the public `Tracker` class.
#[napi]
pub struct NativeTracker {
    inner: Arc<Tracker>,
}

#[napi]
impl NativeTracker {
    /// Builds a tracker. Does no I/O.
    #[napi(constructor)]
    pub fn new(
        options: NativeOptions,
        log: Option<LogFn>,
        store: Option<Dispatch>,
    ) -> napi::Result<Self> {
        guarded_sync(|| build(options, log, store)).map(|inner| NativeTracker { inner })
    }

    /// How long the writer gathers calls before a write, in ms (`flushIntervalMs`, or its default): the middleware's
    /// hand-over comes as often.
    #[napi(getter)]
    pub fn flush_interval_ms(&self) -> u32 {
        u32::try_from(self.inner.flush_interval().as_millis()).unwrap_or(u32::MAX)
    }

    /// Tracks a URL; returns the write window to await with `written`.
    #[napi]
    pub fn track(
        &self,
        url: String,
        ttl_in_sec: Option<f64>,
        wildcard: Option<bool>,
    ) -> napi::Result<i64> {
        guarded_sync(|| self.inner.track(url, ttl_in_sec, wildcard.unwrap_or(false)))
            .map(|w| w as i64)
    }

    /// Tracks a batch of URLs in one call (index.js gathers `storeUrl` calls and the middleware's removals): `urls`
    /// is the URLs joined, `lengths` their lengths (UTF-16 code units), `ttls` their TTLs in seconds (`0`: none;
    /// `BATCH_REMOVE_TTL`: a removal); `then`: what follows them. All or none; returns the window.
    #[napi]
    pub fn track_batch(
        &self,
        urls: Utf16String,
        lengths: &[u32],
        ttls: &[f64],
        then: BatchEnd,
    ) -> napi::Result<i64> {
        guarded_sync(|| self.inner.track_batch(&urls, lengths, ttls, then.into())).map(|w| w as i64)
    }

    /// Resolves when the URLs of write window `window` are in the store.
    #[napi]
    pub async fn written(&self, window: i64) -> napi::Result<()> {
        let t = self.inner.clone();
        guarded(async move { t.written(window.max(0) as u64).await }).await
    }

    /// Resolves true once `window` is in the store, however many writes failed before (the writer retries them);
    /// false after `timeoutMs`. Pending, it keeps the process alive, for a custom store written on its thread.
    #[napi]
    pub async fn written_within(&self, window: i64, timeout_ms: u32) -> napi::Result<bool> {
        let t = self.inner.clone();
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        guarded(async move { Ok(t.written_within(window.max(0) as u64, timeout).await) }).await
    }

    /// The path a URL is tracked as.
    #[napi]
    pub fn normalize(&self, url: String) -> napi::Result<String> {
        guarded_sync(|| self.inner.normalize(&url))
    }

    /// Writes buffered URLs now.
    #[napi]
    pub async fn flush(&self) -> napi::Result<()> {
        let t = self.inner.clone();
        guarded(async move { t.flush().await }).await
    }

    /// Writes buffered URLs before the process exits, blocking for at most `timeoutMs`; false when the store cannot
    /// be waited on from the JavaScript thread (a custom store).
    #[napi]
    pub fn flush_blocking(&self, timeout_ms: u32) -> napi::Result<bool> {
        guarded_sync(|| {
            self.inner
                .flush_blocking(Duration::from_millis(u64::from(timeout_ms)))
        })
    }

    /// Drops the calls still waiting to be written (after a write failed, by a process giving up on the store);
    /// returns what was dropped ("2 tracked URLs"), or null when nothing waited.
    #[napi]
    pub fn discard(&self) -> napi::Result<Option<String>> {
        guarded_sync(|| Ok(self.inner.discard()))
    }

    /// Changes a tracked URL's TTL, in order with the other calls; returns the write window.
    #[napi]
    pub fn set_ttl(&self, url: String, ttl_in_sec: f64) -> napi::Result<i64> {
        guarded_sync(|| self.inner.set_ttl(&url, ttl_in_sec)).map(|w| w as i64)
    }

    /// Stops tracking a URL (or a wildcard `track` made), in order with the other calls; returns the write window.
    #[napi]
    pub fn remove(&self, url: String, wildcard: Option<bool>) -> napi::Result<i64> {
        guarded_sync(|| self.inner.remove(&url, wildcard.unwrap_or(false))).map(|w| w as i64)
    }

    /// Every URL the next send will invalidate.
    #[napi]
    pub async fn list(&self) -> napi::Result<Vec<String>> {
        let t = self.inner.clone();
        guarded(async move { t.list().await }).await
    }

    /// Sends every tracked URL.
    #[napi]
    pub async fn send(&self, wait: Option<bool>, dry_run: Option<bool>) -> napi::Result<Report> {
        let t = self.inner.clone();
        let opts = SendOptions {
            wait: wait.unwrap_or(false),
            dry_run: dry_run.unwrap_or(false),
        };
        guarded(async move { t.send(opts).await.map(Report::from) }).await
    }

    /// Writes what is buffered and closes the store's connections.
    #[napi]
    pub async fn disconnect(&self) -> napi::Result<()> {
        let t = self.inner.clone();
        guarded(async move { t.disconnect().await }).await
    }

    /// Lists the account's distributions.
    #[napi]
    pub async fn list_distributions(&self) -> napi::Result<Vec<Distribution>> {
        let t = self.inner.clone();
        guarded(async move {
            let list = t.list_distributions().await?;
            Ok(list
                .into_iter()
                .map(|d| Distribution {
                    id: d.id,
                    domain_name: d.domain_name,
                    origins: d.origins,
                    origin_paths: d.origin_paths,
                    status: d.status,
                })
                .collect())
        })
        .await
    }

    /// The status of one invalidation.
    #[napi]
    pub async fn invalidation_status(&self, id: String) -> napi::Result<String> {
        let t = self.inner.clone();
        guarded(async move { t.invalidation_status(&id).await }).await
    }
}
