//! The write-behind buffer behind `storeUrl`, `removeUrl` and `setUrlTTL`: calls land in hash maps that keep the
//! latest call per URL (a later `storeUrl` replaces an earlier removal or TTL change, the latest TTL wins); one writer
//! moves them to the store in pipelined batches. Callers learn when their window reached the store. Since every
//! change goes through the buffer, changes reach the store in the order they were made.

use crate::error::{Error, Result};
use crate::store::{Entry, PutOutcome, Store};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How far the buffer has reached the store.
#[derive(Clone, Default)]
struct Progress {
    /// Every window up to this one is in the store.
    written: u64,
    /// Every window up to this one had a failed write attempt (its URLs stay buffered and are retried).
    failed: u64,
    error: Option<Arc<Error>>,
}

/// Buffered URLs and their expiry. foldhash: fast on short strings, and seeded per process, since the keys come
/// from the internet.
type Entries = HashMap<String, Option<u64>, foldhash::fast::RandomState>;

/// Expiry changes of URLs not buffered, applied to those the store tracks.
type Expiries = HashMap<String, Option<u64>, foldhash::fast::RandomState>;

#[derive(Default)]
struct Pending {
    entries: Entries,
    /// URLs to stop tracking. A URL is in at most one of `entries`, `removals` and `expiries` (its latest call).
    removals: BTreeSet<String>,
    expiries: Expiries,
    overflow: BTreeSet<String>,
    window: u64,
    /// Calls so far, to tell a pause from a steady stream of repeated URLs.
    calls: u64,
    /// The caller asked for this window to be written now rather than at the end of the interval.
    due: bool,
}

/// How often a gathering writer looks at the buffer.
const GATHER_STEP: Duration = Duration::from_millis(1);
/// A burst of at least this many URLs is written as soon as calls pause, without waiting out the interval.
const BURST: usize = 256;
/// Calls per gathering step that make a burst (about 250,000 a second); a server's steady stream is far below.
const BURST_RATE: u64 = 256;

impl Pending {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.removals.is_empty()
            && self.expiries.is_empty()
            && self.overflow.is_empty()
    }

    /// True when a call on `path` waits to be written.
    fn has_call(&self, path: &str) -> bool {
        self.entries.contains_key(path)
            || self.removals.contains(path)
            || self.expiries.contains_key(path)
    }
}

/// A bounded, deduplicating buffer of URLs on their way to the store.
pub struct WriteBuffer {
    pending: Mutex<Pending>,
    /// Serialises take-and-write, so a later write of a URL never lands before an earlier one.
    writer: tokio::sync::Mutex<()>,
    progress: watch::Sender<Progress>,
    wake: Notify,
    /// Signalled when the caller says its calls paused (the end of a synchronous run of `storeUrl` calls).
    paused: Notify,
    capacity: usize,
    threshold: usize,
}

impl WriteBuffer {
    /// A buffer holding at most `capacity` distinct URLs; the writer is woken when `threshold` are waiting.
    pub fn new(capacity: usize, threshold: usize) -> Self {
        Self {
            pending: Mutex::new(Pending {
                window: 1,
                ..Pending::default()
            }),
            writer: tokio::sync::Mutex::new(()),
            progress: watch::channel(Progress::default()).0,
            wake: Notify::new(),
            paused: Notify::new(),
            capacity: capacity.max(1),
            threshold: threshold.clamp(1, capacity.max(1)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Buffers one URL and returns the window it will be written in. When the buffer is full, a URL not already in
    /// it is covered by its overflow wildcard instead (never dropped, never unbounded).
    pub fn push(&self, path: String, expires_at: Option<u64>) -> u64 {
        self.push_many(std::iter::once((Cow::Owned(path), expires_at)), false)
    }

    /// Buffers URLs under one lock (as [`WriteBuffer::push`] each) and returns the window they will be written in.
    /// A URL already buffered costs a lookup, no allocation. `due`: write this window now, not at the end of the
    /// interval (the caller gathered its calls for an interval already).
    pub fn push_many<'a>(
        &self,
        urls: impl IntoIterator<Item = (Cow<'a, str>, Option<u64>)>,
        due: bool,
    ) -> u64 {
        let mut p = self.lock();
        let before = p.entries.len();
        let empty = p.is_empty();
        let newly_due = due && !p.due;
        p.due |= due;
        for (path, expires_at) in urls {
            if !p.removals.is_empty() || !p.expiries.is_empty() {
                // Storing the URL again sets its expiry in the store, whatever an earlier call changed.
                p.removals.remove(path.as_ref());
                p.expiries.remove(path.as_ref());
            }
            if let Some(e) = p.entries.get_mut(path.as_ref()) {
                *e = expires_at;
            } else if p.entries.len() < self.capacity {
                p.entries.insert(path.into_owned(), expires_at);
            } else {
                let wildcard = crate::paths::overflow_wildcard(&path);
                crate::store::memory::add_overflow(&mut p.overflow, &wildcard);
            }
            p.calls += 1;
        }
        let (window, after) = (p.window, p.entries.len());
        drop(p);
        // The first call of a window starts the writer's clock; a full or due window wakes it at once.
        if empty || newly_due || (before < self.threshold && after >= self.threshold) {
            self.wake.notify_one();
        }
        window
    }

    /// Stops tracking a URL: forgets it if it is buffered, and removes it from the store in the next write, before
    /// anything stored after this call. Returns the write window.
    pub fn remove(&self, path: String) -> u64 {
        self.change(|p| {
            p.entries.remove(&path);
            p.expiries.remove(&path);
            p.removals.insert(path);
        })
    }

    /// Changes how long a URL stays tracked: a buffered URL at once, one in the store with the next write (nothing
    /// when the store does not track it). Returns the write window.
    pub fn set_expiry(&self, path: String, expires_at: Option<u64>) -> u64 {
        self.change(|p| {
            if let Some(e) = p.entries.get_mut(&path) {
                *e = expires_at;
            } else if !p.removals.contains(&path) {
                p.expiries.insert(path, expires_at);
            }
        })
    }

    fn change(&self, f: impl FnOnce(&mut Pending)) -> u64 {
        let mut p = self.lock();
        let empty = p.is_empty();
        f(&mut p);
        let window = p.window;
        drop(p);
        if empty {
            self.wake.notify_one();
        }
        window
    }

    /// URLs waiting to be written.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing (no URL, removal, expiry change or overflow wildcard) waits to be written.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Resolves when `window` reached the store, or fails with the error of its first failed write attempt.
    pub async fn written(&self, window: u64) -> Result<()> {
        let mut rx = self.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.written >= window || p.failed >= window)
            .await
            .map_err(|_| Error::Internal("the write buffer was dropped".into()))?;
        if progress.written >= window {
            return Ok(());
        }
        Err(progress.error.as_ref().map_or_else(
            || Error::Internal("write failed".into()),
            |e| e.as_ref().clone(),
        ))
    }

    /// Writes everything buffered now to the store.
    pub async fn flush(&self, store: &dyn Store, max_tracked: usize) -> Result<PutOutcome> {
        let _writer = self.writer.lock().await;
        let (entries, removals, expiries, overflow, window) = {
            let mut p = self.lock();
            let window = p.window;
            p.window += 1;
            p.due = false;
            // The next window likely gathers as many URLs: sized for them, so that inserts do not rehash.
            let size = p.entries.len().min(self.threshold.max(BURST));
            (
                std::mem::replace(
                    &mut p.entries,
                    Entries::with_capacity_and_hasher(size, Default::default()),
                ),
                std::mem::take(&mut p.removals),
                std::mem::take(&mut p.expiries),
                std::mem::take(&mut p.overflow),
                window,
            )
        };
        let removals: Vec<String> = removals.into_iter().collect();
        let batch: Vec<Entry> = entries
            .into_iter()
            .map(|(path, expires_at)| Entry { path, expires_at })
            .collect();
        let overflow: Vec<String> = overflow.into_iter().collect();
        // A URL is in one of these only: the order among them does not matter.
        let result = async {
            if !removals.is_empty() {
                store.remove(&removals).await?;
            }
            for (path, expires_at) in &expiries {
                store.set_expiry(path, *expires_at).await?;
            }
            let mut outcome = PutOutcome::default();
            if !batch.is_empty() {
                outcome = store.put(&batch, max_tracked).await?;
            }
            if !overflow.is_empty() {
                store.put_overflow(&overflow).await?;
                outcome.overflowed += overflow.len();
            }
            Ok::<_, Error>(outcome)
        }
        .await;
        match result {
            Ok(outcome) => {
                self.progress
                    .send_modify(|p| p.written = p.written.max(window));
                Ok(outcome)
            }
            Err(e) => {
                // Keep what could not be written (changes already made are made again, to the same effect), with
                // the calls made since on the same URLs as if they had come after it, as they did: a URL stored
                // since keeps its new call; one whose expiry changed since is stored with that expiry; one removed
                // since stays removed. A removal stands unless the URL was stored since (an expiry change made
                // since applies to a URL no longer tracked: it does nothing).
                let mut p = self.lock();
                for e in batch {
                    if let Some(newer) = p.expiries.remove(&e.path) {
                        p.entries.insert(e.path, newer);
                    } else if !p.has_call(&e.path) {
                        p.entries.insert(e.path, e.expires_at);
                    }
                }
                for path in removals {
                    p.expiries.remove(&path);
                    if !p.entries.contains_key(&path) {
                        p.removals.insert(path);
                    }
                }
                for (path, expires_at) in expiries {
                    if !p.has_call(&path) {
                        p.expiries.insert(path, expires_at);
                    }
                }
                for w in overflow {
                    crate::store::memory::add_overflow(&mut p.overflow, &w);
                }
                drop(p);
                let shared = Arc::new(e.clone());
                self.progress.send_modify(|p| {
                    p.failed = p.failed.max(window);
                    p.error = Some(shared);
                });
                Err(e)
            }
        }
    }

    /// Waits until a URL is pushed into an empty buffer (or the writer is woken to stop).
    pub async fn work(&self) {
        self.wake.notified().await;
    }

    /// Gathers URLs before a write: returns when the buffer is full, when a burst of calls has stopped (its caller is
    /// likely waiting for it), when the window is due (`honour_due`), or when `interval` has passed. A burst is
    /// written within a millisecond or two of its end, a due window at once; a steady stream or a trickle of calls
    /// once per interval, with the writer asleep in between. A writer backing off after a failure passes
    /// `honour_due: false`, so that calls cannot shorten its backoff.
    pub async fn tick(&self, interval: Duration, honour_due: bool) {
        let deadline = Instant::now() + interval;
        let progress = || {
            let p = self.lock();
            (p.calls, p.entries.len(), honour_due && p.due)
        };
        let (mut calls, mut len, due) = progress();
        if due {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if len >= self.threshold || left.is_zero() {
                return;
            }
            let paused = tokio::time::timeout(GATHER_STEP.min(left), self.paused.notified())
                .await
                .is_ok();
            let now = progress();
            let new_calls = now.0 - calls;
            if now.2 || ((paused || new_calls == 0) && now.1 >= BURST) {
                // Due, or a burst just ended.
                return;
            }
            if new_calls < BURST_RATE {
                // Not a burst: sleep out the interval, unless the buffer fills or the window falls due.
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, self.wake.notified()).await;
                return;
            }
            (calls, len) = (now.0, now.1);
        }
    }

    /// Says that calls paused: a burst being gathered is written now rather than at the next look.
    pub fn calls_paused(&self) {
        self.paused.notify_one();
    }

    /// Wakes the writer (e.g. so it notices its tracker is gone).
    pub fn wake_writer(&self) {
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{Claim, Listing, PlannedBatch};
    use async_trait::async_trait;

    /// A memory store whose first write waits until the test lets it go, then fails: what a store that goes down in
    /// the middle of a write looks like to the buffer, with calls made while the write was under way.
    struct FailsFirstWrite {
        inner: MemoryStore,
        entered: Notify,
        release: Notify,
        failed: std::sync::atomic::AtomicBool,
    }

    impl FailsFirstWrite {
        fn new() -> Self {
            Self {
                inner: MemoryStore::new(),
                entered: Notify::new(),
                release: Notify::new(),
                failed: std::sync::atomic::AtomicBool::new(false),
            }
        }

        async fn write(&self) -> Result<()> {
            if self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            self.entered.notify_one();
            self.release.notified().await;
            Err(Error::Store {
                method: "set",
                message: "connection reset".into(),
            })
        }
    }

    #[async_trait]
    impl Store for FailsFirstWrite {
        fn kind(&self) -> &'static str {
            "failing"
        }
        async fn put(&self, entries: &[Entry], max_tracked: usize) -> Result<PutOutcome> {
            self.write().await?;
            self.inner.put(entries, max_tracked).await
        }
        async fn put_overflow(&self, wildcards: &[String]) -> Result<()> {
            self.write().await?;
            self.inner.put_overflow(wildcards).await
        }
        async fn set_expiry(&self, path: &str, expires_at: Option<u64>) -> Result<()> {
            self.write().await?;
            self.inner.set_expiry(path, expires_at).await
        }
        async fn remove(&self, paths: &[String]) -> Result<()> {
            self.write().await?;
            self.inner.remove(paths).await
        }
        async fn list(&self) -> Result<Listing> {
            self.inner.list().await
        }
        async fn claim(&self, lease_ms: u64) -> Result<Vec<Claim>> {
            self.inner.claim(lease_ms).await
        }
        async fn save_plan(
            &self,
            claim_id: &str,
            plan: Vec<PlannedBatch>,
        ) -> Result<Vec<PlannedBatch>> {
            self.inner.save_plan(claim_id, plan).await
        }
        async fn batch_done(
            &self,
            claim_id: &str,
            index: usize,
            batch: &PlannedBatch,
        ) -> Result<()> {
            self.inner.batch_done(claim_id, index, batch).await
        }
        async fn renew(&self, claim_id: &str, lease_ms: u64) -> Result<()> {
            self.inner.renew(claim_id, lease_ms).await
        }
        async fn release(&self, claim_id: &str) -> Result<()> {
            self.inner.release(claim_id).await
        }
        async fn finish(&self, claim_id: &str) -> Result<()> {
            self.inner.finish(claim_id).await
        }
        async fn billed_this_month(&self) -> Result<u64> {
            self.inner.billed_this_month().await
        }
        async fn disconnect(&self) -> Result<()> {
            self.inner.disconnect().await
        }
    }

    /// Fails unless at most `limit` has passed since `started`.
    fn assert_within(started: Instant, limit: Duration) {
        let elapsed = started.elapsed();
        assert!(elapsed < limit, "took {elapsed:?}, more than {limit:?}");
    }

    #[tokio::test]
    async fn a_paused_burst_is_written_at_once_and_a_trickle_waits_for_the_interval() {
        let buf = WriteBuffer::new(100_000, 10_000);
        for i in 0..BURST {
            buf.push(format!("/{i}"), None);
        }
        let started = Instant::now();
        buf.tick(Duration::from_millis(500), true).await;
        assert_within(started, Duration::from_millis(250));

        let small = WriteBuffer::new(100_000, 10_000);
        small.push("/one".into(), None);
        small.work().await; // as the writer does: the first URL wakes it
        let started = Instant::now();
        small.tick(Duration::from_millis(40), true).await;
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    #[tokio::test]
    async fn a_due_window_is_written_at_once_unless_the_writer_backs_off() {
        let due = |buf: &WriteBuffer, path: &'static str| {
            buf.push_many(std::iter::once((Cow::Borrowed(path), None)), true)
        };
        let buf = Arc::new(WriteBuffer::new(100_000, 10_000));
        due(&buf, "/first");
        buf.work().await;
        let started = Instant::now();
        buf.tick(Duration::from_secs(5), true).await;
        assert_within(started, Duration::from_secs(1));

        // Backing off after a failure, the writer sleeps out its interval, however due the window.
        let started = Instant::now();
        buf.tick(Duration::from_millis(40), false).await;
        assert!(started.elapsed() >= Duration::from_millis(40));

        // A writer asleep in its interval wakes when the window falls due.
        buf.flush(&MemoryStore::new(), usize::MAX).await.unwrap();
        buf.push("/trickle".into(), None);
        buf.work().await;
        let started = Instant::now();
        let writer = tokio::spawn({
            let buf = buf.clone();
            async move { buf.tick(Duration::from_secs(5), true).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        due(&buf, "/gathered");
        writer.await.unwrap();
        assert_within(started, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn duplicates_collapse_and_latest_ttl_wins() {
        let buf = WriteBuffer::new(100, 50);
        let store = MemoryStore::new();
        let w1 = buf.push("/a".into(), Some(1));
        let w2 = buf.push("/a".into(), None);
        buf.push("/b".into(), None);
        assert_eq!(w1, w2);
        assert_eq!(buf.len(), 2);
        buf.flush(&store, usize::MAX).await.unwrap();
        buf.written(w1).await.unwrap();
        assert_eq!(store.list().await.unwrap().urls, vec!["/a", "/b"]);
    }

    #[tokio::test]
    async fn removals_and_ttl_changes_reach_the_store_in_call_order() {
        let buf = WriteBuffer::new(100, 50);
        let store = MemoryStore::new();
        for u in [
            "/again",
            "/gone",
            "/stored-after-ttl",
            "/short",
            "/removed-then-ttl",
        ] {
            buf.push(u.into(), None);
        }
        buf.flush(&store, usize::MAX).await.unwrap();
        let expired = Some(1); // a past expiry: the URL stops being tracked
        buf.remove("/again".into());
        buf.push("/again".into(), None);
        buf.push("/gone".into(), None);
        buf.remove("/gone".into());
        buf.set_expiry("/stored-after-ttl".into(), expired);
        buf.push("/stored-after-ttl".into(), None);
        buf.set_expiry("/short".into(), expired);
        buf.remove("/removed-then-ttl".into());
        buf.set_expiry("/removed-then-ttl".into(), None);
        buf.flush(&store, usize::MAX).await.unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            store.list().await.unwrap().urls,
            vec!["/again", "/stored-after-ttl"]
        );
    }

    #[tokio::test]
    async fn a_failed_write_keeps_its_calls_as_if_those_made_meanwhile_came_after() {
        let buf = Arc::new(WriteBuffer::new(4, 100));
        let store = Arc::new(FailsFirstWrite::new());
        let expired = Some(1); // a past expiry: the URL stops being tracked
        let later = Some(crate::store::now_ms() + 3_600_000);
        let tracked = ["/r1", "/r2", "/r3", "/e1", "/e2", "/e3"].map(|path| Entry {
            path: path.into(),
            expires_at: None,
        });
        store.inner.put(&tracked, usize::MAX).await.unwrap();

        // The window that fails: four URLs (the buffer is full), one more over the top, removals, expiry changes.
        for u in ["/a", "/b", "/c", "/c2"] {
            buf.push(u.into(), None);
        }
        let window = buf.push("/img/x".into(), None);
        for u in ["/r1", "/r2", "/r3"] {
            buf.remove(u.into());
        }
        buf.set_expiry("/e1".into(), None);
        buf.set_expiry("/e2".into(), expired);
        buf.set_expiry("/e3".into(), later);
        let writing = tokio::spawn({
            let (buf, store) = (buf.clone(), store.clone());
            async move { buf.flush(store.as_ref(), usize::MAX).await }
        });
        store.entered.notified().await;
        // While it is under way, newer calls on some of its URLs.
        buf.push("/b".into(), expired);
        buf.set_expiry("/c".into(), expired);
        buf.set_expiry("/c2".into(), later);
        buf.push("/r1".into(), None);
        buf.set_expiry("/r3".into(), later);
        buf.remove("/e1".into());
        buf.set_expiry("/e3".into(), expired);
        store.release.notify_one();
        assert!(writing.await.unwrap().is_err());
        assert!(buf.written(window).await.is_err());

        buf.flush(store.as_ref(), usize::MAX).await.unwrap();
        assert!(buf.is_empty());
        let listing = store.list().await.unwrap();
        // Kept: /a, the removal of /r2 and /r3, /e2's expiry, the overflow wildcard. Newer: /b's, /c's and /c2's
        // expiry, /r1 stored again, /e1 removed, /e3's expiry.
        assert_eq!(listing.urls, vec!["/a", "/c2", "/r1"]);
        assert_eq!(listing.overflow, vec!["/img/*"]);
    }

    #[tokio::test]
    async fn a_full_buffer_overflows_into_wildcards() {
        let buf = WriteBuffer::new(2, 2);
        let store = MemoryStore::new();
        buf.push("/x/1".into(), None);
        buf.push("/x/2".into(), None);
        buf.push("/img/3".into(), None);
        let outcome = buf.flush(&store, usize::MAX).await.unwrap();
        assert_eq!(outcome.overflowed, 1);
        let claims = store.claim(1000).await.unwrap();
        assert_eq!(claims[0].overflow, vec!["/img/*"]);
    }
}
