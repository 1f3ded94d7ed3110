//! The tracker: normalisation, the write-behind buffer, the store and the sender, in plain async Rust.

use crate::buffer::{Batched, WriteBuffer};
use crate::cloudfront::{CfConfig, CloudFront, DistributionInfo};
use crate::error::{Error, Result};
use crate::paths;
use crate::send::{self, Log, SendConfig, SendOptions, SendReport};
use crate::store::{now_ms, Listing, Store};
use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Everything a tracker is configured with, besides its store and CloudFront settings.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// How sends behave.
    pub send: SendConfig,
    /// Flood guard: most URLs tracked one by one; past it, URLs are covered by wildcards.
    pub max_tracked: usize,
    /// How often buffered URLs are written to the store.
    pub flush_interval: Duration,
    /// Most distinct URLs buffered in memory between writes.
    pub buffer_capacity: usize,
}

/// How long tracked URLs gather before they are written, unless configured: as long as a URL may reasonably wait, as
/// each write costs a round trip to the store (with Redis on the same host, most of the writer's CPU time).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The TTL that marks a removal (`removeUrl`) among the calls of [`Tracker::track_batch`].
pub const REMOVE: f64 = -1.0;

/// What follows a batch of calls handed over from JavaScript ([`Tracker::track_batch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchEnd {
    /// More calls may follow at once (the batch filled up, or another call needed it handed over first): the writer
    /// goes on gathering as usual.
    Running,
    /// The caller's calls paused (its event loop came round): a burst gathered so far is written now.
    Paused,
    /// Gathered for an interval already (the middleware's): written now, unless the writer is backing off.
    Due,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            send: SendConfig::default(),
            max_tracked: 1_000_000,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            buffer_capacity: 100_000,
        }
    }
}

/// Tracks URLs and sends them to CloudFront.
pub struct Tracker {
    store: Arc<dyn Store>,
    cf: CloudFront,
    config: TrackerConfig,
    buffer: Arc<WriteBuffer>,
    log: Arc<dyn Log>,
    runtime: tokio::runtime::Handle,
    flusher: OnceLock<()>,
    /// One send at a time per tracker; other processes are kept apart by the store's claims.
    sending: tokio::sync::Mutex<()>,
    /// The tracker itself, held while calls wait in its buffer, so that a tracker its owner let go of (a JavaScript
    /// tracker collected as garbage) still writes them; let go of once the buffer is empty.
    held: Mutex<Option<Arc<Tracker>>>,
    /// The flood guard's warnings: a flood lasts, and would otherwise be logged at every write.
    overflow_said: Mutex<Recurring>,
    removals_dropped_said: Mutex<Recurring>,
}

/// How often a warning that recurs at every write while its cause lasts is logged again.
const RECURRING_WARNING_EVERY: Duration = Duration::from_secs(60);

/// A warning that recurs at every write while its cause lasts (a flood): said at once, then at most once every
/// [`RECURRING_WARNING_EVERY`], with the count of everything since the last time it was said.
#[derive(Default)]
struct Recurring {
    said_at: Option<Instant>,
    unsaid: u64,
}

impl Recurring {
    /// Notes `count` more; returns the count to say now, if the warning is due.
    fn note(&mut self, count: u64, now: Instant) -> Option<u64> {
        self.unsaid += count;
        if self
            .said_at
            .is_some_and(|at| now.duration_since(at) < RECURRING_WARNING_EVERY)
        {
            return None;
        }
        self.said_at = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

fn expiry(ttl_secs: Option<f64>) -> Result<Option<u64>> {
    match ttl_secs {
        None => Ok(None),
        Some(t) if !t.is_finite() || t < 0.0 => Err(Error::InvalidArgument(format!(
            "ttlInSec must be a finite number >= 0, got {t}"
        ))),
        Some(0.0) => Ok(None),
        Some(t) => Ok(Some(now_ms().saturating_add((t * 1000.0).ceil() as u64))),
    }
}

impl Tracker {
    /// A tracker over `store`. `runtime` runs the background writer.
    pub fn new(
        store: Arc<dyn Store>,
        cf: CfConfig,
        config: TrackerConfig,
        log: Arc<dyn Log>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        // A write carries at most this many URLs before the writer goes: big enough to batch, small enough that a
        // burst is written while it is still coming in.
        let threshold = (config.buffer_capacity / 4).clamp(1, 2_000);
        Arc::new(Self {
            store,
            cf: CloudFront::new(cf),
            buffer: Arc::new(WriteBuffer::new(config.buffer_capacity, threshold)),
            config,
            log,
            runtime,
            flusher: OnceLock::new(),
            sending: tokio::sync::Mutex::new(()),
            held: Mutex::new(None),
            overflow_said: Mutex::default(),
            removals_dropped_said: Mutex::default(),
        })
    }

    /// How long the writer gathers calls before a write (`flushIntervalMs`).
    pub fn flush_interval(&self) -> Duration {
        self.config.flush_interval
    }

    /// The path a URL is tracked as.
    pub fn normalize(&self, url: &str) -> Result<String> {
        Ok(paths::normalize(url, &self.config.send.rules)?)
    }

    /// Tracks a URL (or, with `wildcard`, a wildcard prefix the caller asked for). Returns the write window to await
    /// with [`Tracker::written`]. Costs a normalisation and a hash insert; the store is written in the background.
    pub fn track(
        self: &Arc<Self>,
        url: String,
        ttl_secs: Option<f64>,
        wildcard: bool,
    ) -> Result<u64> {
        let expires_at = expiry(ttl_secs)?;
        let path = if wildcard {
            paths::wildcard(&url, &self.config.send.rules)?
        } else {
            paths::normalize_owned(url, &self.config.send.rules)?
        };
        Ok(self.buffered(|b| b.push(path, expires_at)))
    }

    /// Tracks a batch of URLs handed over in one call: `units` holds them back to back as UTF-16, `lengths` their
    /// lengths in code units, `ttls` their TTLs in seconds (`0`: none; [`REMOVE`]: stop tracking the URL instead).
    /// Either every call is made, in order, or, when a URL is invalid, none is. `then` says what follows, and so when
    /// the writer writes them. Returns the write window.
    pub fn track_batch(
        self: &Arc<Self>,
        units: &[u16],
        lengths: &[u32],
        ttls: &[f64],
        then: BatchEnd,
    ) -> Result<u64> {
        if lengths.len() != ttls.len() {
            return Err(Error::InvalidArgument(format!(
                "a batch of {} URLs came with {} TTLs",
                lengths.len(),
                ttls.len()
            )));
        }
        if lengths.iter().map(|&l| l as usize).sum::<usize>() != units.len() {
            return Err(Error::InvalidArgument(
                "a batch of URLs does not add up to its lengths".into(),
            ));
        }
        // Usually all ASCII: one string for the whole batch, and URLs already clean borrow from it.
        let ascii = units.iter().all(|&u| u < 0x80);
        let joined = if ascii {
            String::from_utf8(units.iter().map(|&u| u as u8).collect())
                .map_err(|e| Error::Internal(e.to_string()))?
        } else {
            String::new()
        };
        let rules = &self.config.send.rules;
        let mut calls = Vec::with_capacity(lengths.len());
        let mut start = 0;
        for (&len, &ttl) in lengths.iter().zip(ttls) {
            let end = start + len as usize;
            let path = if ascii {
                paths::normalize_cow(&joined[start..end], rules)?
            } else {
                Cow::Owned(paths::normalize_owned(
                    String::from_utf16_lossy(&units[start..end]),
                    rules,
                )?)
            };
            let call = if ttl == REMOVE {
                Batched::Remove
            } else {
                Batched::Track(expiry(Some(ttl))?)
            };
            calls.push((path, call));
            start = end;
        }
        let window = self.buffered(|b| b.push_many(calls, then == BatchEnd::Due));
        if then == BatchEnd::Paused {
            self.buffer.calls_paused();
        }
        Ok(window)
    }

    /// Runs `call` on the buffer (with the writer started) and holds the tracker while what it buffered waits. A
    /// call on an empty buffer wakes the writer, which lets go again once the buffer is empty, so the hold needs no
    /// look at the buffer here.
    fn buffered<T>(self: &Arc<Self>, call: impl FnOnce(&WriteBuffer) -> T) -> T {
        self.start_flusher();
        let mut held = self.lock_held();
        let out = call(&self.buffer);
        if held.is_none() {
            *held = Some(Arc::clone(self));
        }
        out
    }

    /// Lets go of the tracker held for its buffered calls, once there are none: returned, to be dropped by the caller
    /// (possibly the last reference) after the lock.
    fn release_if_written(&self) -> Option<Arc<Tracker>> {
        let mut held = self.lock_held();
        if self.buffer.is_empty() {
            held.take()
        } else {
            None
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Option<Arc<Tracker>>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start_flusher(self: &Arc<Self>) {
        self.flusher.get_or_init(|| {
            let weak: Weak<Tracker> = Arc::downgrade(self);
            let buffer = self.buffer.clone();
            let interval = self.config.flush_interval;
            self.runtime.spawn(async move {
                // Idle, the writer sleeps until a URL arrives; then it gathers (see `WriteBuffer::tick`) and writes
                // everything in one go. After a failure it retries with backoff.
                let mut backoff = interval;
                let mut retrying = false;
                loop {
                    if !retrying {
                        buffer.work().await;
                    }
                    buffer.tick(backoff, !retrying).await;
                    let Some(tracker) = weak.upgrade() else { break };
                    if tracker.buffer.is_empty() {
                        drop(tracker.release_if_written());
                        (backoff, retrying) = (interval, false);
                        continue;
                    }
                    match tracker.write_buffer().await {
                        Ok(()) => (backoff, retrying) = (interval, false),
                        Err(e) => {
                            retrying = true;
                            tracker.log.warn(&format!(
                                "cf-invalidation-tracker: could not write {} to the {} store, will retry: {e}",
                                tracker.buffer.describe_waiting(),
                                tracker.store.kind()
                            ));
                            backoff = (backoff * 2).clamp(interval, Duration::from_secs(5));
                        }
                    }
                }
            });
        });
    }

    async fn write_buffer(&self) -> Result<()> {
        let outcome = self
            .buffer
            .flush(self.store.as_ref(), self.config.max_tracked)
            .await?;
        drop(self.release_if_written());
        let due = |said: &Mutex<Recurring>, count: usize| {
            if count == 0 {
                return None;
            }
            let mut said = said.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            said.note(count as u64, Instant::now())
        };
        if let Some(overflowed) = due(&self.overflow_said, outcome.put.overflowed) {
            self.log.warn(&format!(
                "cf-invalidation-tracker: tracked-URL limit reached: {overflowed} URLs will be covered by wildcards \
                 on the next send (said at most once a minute while it lasts)"
            ));
        }
        if let Some(dropped) = due(&self.removals_dropped_said, outcome.removals_dropped) {
            self.log.warn(&format!(
                "cf-invalidation-tracker: {dropped} removals were dropped while {} waited to be written \
                 (bufferCapacity): those URLs stay tracked if they were, and the next send invalidates them (said at \
                 most once a minute while it lasts)",
                self.config.buffer_capacity
            ));
        }
        Ok(())
    }

    /// Resolves when the URLs tracked in `window` are in the store.
    pub async fn written(&self, window: u64) -> Result<()> {
        self.buffer.written(window).await
    }

    /// True once the URLs tracked in `window` are in the store, retries included; false after `timeout`.
    pub async fn written_within(&self, window: u64, timeout: Duration) -> bool {
        self.buffer.written_within(window, timeout).await
    }

    /// Writes every buffered URL to the store now.
    pub async fn flush(&self) -> Result<()> {
        self.write_buffer().await
    }

    /// The flush at process exit: blocks the calling thread until buffered URLs are written, at most `timeout`.
    /// Returns false when it could not try (a custom store runs on the JavaScript thread, which is the one blocked).
    pub fn flush_blocking(&self, timeout: Duration) -> Result<bool> {
        if !self.store.can_block_on() || tokio::runtime::Handle::try_current().is_ok() {
            return Ok(self.buffer.is_empty());
        }
        // Also waits for a write already under way.
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, self.flush()).await })
            .map_err(|_| {
                Error::Timeout(format!(
                    "{} still buffered, not written within {} ms",
                    self.buffer.describe_waiting(),
                    timeout.as_millis()
                ))
            })??;
        Ok(true)
    }

    /// Drops the calls still waiting to be written; returns what was dropped, if anything.
    pub fn discard(&self) -> Option<String> {
        self.buffer.discard()
    }

    /// Changes how long a tracked URL stays tracked (`0`: until sent), in order with the other calls. Returns the
    /// write window that makes the change in the store.
    pub fn set_ttl(self: &Arc<Self>, url: &str, ttl_secs: f64) -> Result<u64> {
        let expires_at = expiry(Some(ttl_secs))?;
        let path = self.normalize(url)?;
        Ok(self.buffered(|b| b.set_expiry(path, expires_at)))
    }

    /// Stops tracking a URL (or, with `wildcard`, the wildcard `track` made of that prefix), in order with the other
    /// calls. Returns the write window that removes it from the store.
    pub fn remove(self: &Arc<Self>, url: &str, wildcard: bool) -> Result<u64> {
        let path = if wildcard {
            paths::wildcard(url, &self.config.send.rules)?
        } else {
            self.normalize(url)?
        };
        Ok(self.buffered(|b| b.remove(path)))
    }

    /// What the next send will invalidate, sorted: tracked URLs and flood-guard wildcards (before the plan expands or
    /// collapses them).
    pub async fn list(&self) -> Result<Vec<String>> {
        self.flush().await?;
        let Listing { mut urls, overflow } = self.store.list().await?;
        urls.extend(overflow);
        urls.sort_unstable();
        urls.dedup();
        Ok(urls)
    }

    /// Sends every tracked URL to CloudFront.
    pub async fn send(&self, opts: SendOptions) -> Result<SendReport> {
        if !opts.dry_run && self.cf.dist().is_empty() {
            return Err(Error::InvalidArgument(
                "Missing CloudFront secret key, access key, or distribution ID".into(),
            ));
        }
        let _one = self.sending.lock().await;
        self.flush().await?;
        send::send(
            self.store.as_ref(),
            &self.cf,
            &self.config.send,
            opts,
            self.log.as_ref(),
        )
        .await
    }

    /// Writes what is buffered, then closes the store's connections; the next call reconnects.
    pub async fn disconnect(&self) -> Result<()> {
        let flushed = self.flush().await;
        let closed = self.store.disconnect().await;
        flushed.and(closed)
    }

    /// The distributions of the account (for finding one by origin).
    pub async fn list_distributions(&self) -> Result<Vec<DistributionInfo>> {
        self.cf.list_distributions().await
    }

    /// The status of one invalidation of the tracker's distribution.
    pub async fn invalidation_status(&self, id: &str) -> Result<String> {
        Ok(self.cf.invalidation_status(id).await?)
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // The background writer holds only the buffer: wake it so it sees the tracker is gone and ends.
        self.buffer.wake_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    struct Quiet;

    impl Log for Quiet {
        fn info(&self, _: &str) {}
        fn warn(&self, _: &str) {}
    }

    #[tokio::test]
    async fn calls_buffered_when_the_owner_lets_go_of_the_tracker_are_still_written() {
        let store = Arc::new(MemoryStore::new());
        let config = TrackerConfig {
            flush_interval: Duration::from_millis(20),
            ..TrackerConfig::default()
        };
        let tracker = Tracker::new(
            store.clone(),
            CfConfig::default(),
            config,
            Arc::new(Quiet),
            tokio::runtime::Handle::current(),
        );
        let weak = Arc::downgrade(&tracker);
        tracker.track("/kept".into(), None, false).unwrap();
        let batch: Vec<u16> = "/batch".encode_utf16().collect();
        tracker
            .track_batch(&batch, &[6], &[0.0], BatchEnd::Due)
            .unwrap();
        drop(tracker);

        let mut urls = Vec::new();
        for _ in 0..200 {
            urls = store.list().await.unwrap().urls;
            if !urls.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(urls, vec!["/batch", "/kept"]);
        // Once they are written, the tracker is let go of, and ends.
        for _ in 0..200 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(weak.strong_count(), 0, "the tracker was not let go of");
    }

    #[test]
    fn a_recurring_warning_is_said_at_once_then_once_a_minute_with_the_count_since() {
        let start = Instant::now();
        let mut said = Recurring::default();
        assert_eq!(said.note(3, start), Some(3));
        assert_eq!(said.note(4, start + Duration::from_secs(1)), None);
        assert_eq!(said.note(5, start + Duration::from_secs(59)), None);
        assert_eq!(said.note(1, start + Duration::from_secs(60)), Some(10));
        assert_eq!(said.note(2, start + Duration::from_secs(200)), Some(2));
    }

    struct Recorded(Mutex<Vec<String>>);

    impl Log for Recorded {
        fn info(&self, _: &str) {}
        fn warn(&self, line: &str) {
            self.0.lock().unwrap().push(line.to_owned());
        }
    }

    #[tokio::test]
    async fn a_lasting_flood_is_not_logged_at_every_write() {
        let store = Arc::new(MemoryStore::new());
        let log = Arc::new(Recorded(Mutex::default()));
        let config = TrackerConfig {
            max_tracked: 2,
            ..TrackerConfig::default()
        };
        let tracker = Tracker::new(
            store.clone(),
            CfConfig::default(),
            config,
            log.clone(),
            tokio::runtime::Handle::current(),
        );
        for write in 0..5 {
            for i in 0..3 {
                tracker
                    .track(format!("/w{write}/u{i}"), None, false)
                    .unwrap();
            }
            tracker.flush().await.unwrap();
        }
        let listing = store.list().await.unwrap();
        assert_eq!(listing.urls.len(), 2, "{:?}", listing.urls);
        assert_eq!(listing.overflow.len(), 5, "{:?}", listing.overflow);
        let lines = log.0.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("limit reached: 1 URLs"), "{}", lines[0]);
    }
}
