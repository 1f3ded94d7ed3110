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
    /// Removals not buffered since the last successful write, as `capacity` of them were waiting already.
    removals_dropped: usize,
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

    /// Calls waiting to be written (one per URL): what fills the buffer towards a write.
    fn waiting(&self) -> usize {
        self.entries.len() + self.removals.len() + self.expiries.len()
    }

    /// True when a call on `path` waits to be written.
    fn has_call(&self, path: &str) -> bool {
        self.entries.contains_key(path)
            || self.removals.contains(path)
            || self.expiries.contains_key(path)
    }

    /// Buffers a store of `path`, its latest call. Once `capacity` URLs are buffered, a URL not among them is covered
    /// by its overflow wildcard instead: never dropped, never unbounded.
    fn track(&mut self, path: Cow<'_, str>, expires_at: Option<u64>, capacity: usize) {
        if !self.removals.is_empty() || !self.expiries.is_empty() {
            // Storing the URL again sets its expiry in the store, whatever an earlier call changed.
            self.removals.remove(path.as_ref());
            self.expiries.remove(path.as_ref());
        }
        if let Some(e) = self.entries.get_mut(path.as_ref()) {
            *e = expires_at;
        } else if self.entries.len() < capacity {
            self.entries.insert(path.into_owned(), expires_at);
        } else {
            let wildcard = crate::paths::overflow_wildcard(&path);
            crate::store::memory::add_overflow(&mut self.overflow, &wildcard);
        }
    }

    /// Buffers a removal of `path`, its latest call.
    fn untrack(&mut self, path: Cow<'_, str>, capacity: usize) {
        self.entries.remove(path.as_ref());
        self.expiries.remove(path.as_ref());
        self.add_removal(path, capacity);
    }

    /// Once `capacity` removals wait, a further one is dropped and counted: its URL stays tracked if it was, and the
    /// next send invalidates it once more (the safe side), while memory stays bounded when removals pour in (404s
    /// for URLs from the internet) and the store is down.
    fn add_removal(&mut self, path: Cow<'_, str>, capacity: usize) {
        // A path that 404s again (a scanner's favourite) is looked up, not copied.
        if !self.removals.contains(path.as_ref()) {
            if self.removals.len() < capacity {
                self.removals.insert(path.into_owned());
            } else {
                self.removals_dropped += 1;
            }
        }
    }
}

/// One call of a batch handed over at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batched {
    /// `storeUrl`: track the URL, until this expiry (ms since the epoch) if any.
    Track(Option<u64>),
    /// `removeUrl`: stop tracking it.
    Remove,
}

/// What a write did beyond writing what was buffered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// What the store did with the URLs ([`PutOutcome::overflowed`]), plus the overflow wildcards the buffer made.
    pub put: PutOutcome,
    /// Removals dropped since the last write, as the buffer held as many as it may.
    pub removals_dropped: usize,
}

/// A deduplicating buffer of URLs on their way to the store, bounded in URLs and in removals (expiry changes of URLs
/// not buffered, which only the application makes, are not bounded: dropping one could end tracking too early).
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
    /// A buffer holding at most `capacity` distinct URLs and `capacity` removals; the writer is woken when `threshold`
    /// calls are waiting.
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
        self.push_many(
            std::iter::once((Cow::Owned(path), Batched::Track(expires_at))),
            false,
        )
    }

    /// Buffers calls under one lock, in order (a store as [`WriteBuffer::push`], a removal as
    /// [`WriteBuffer::remove`]), and returns the window they will be written in. A URL already buffered costs a
    /// lookup, no allocation. `due`: write this window now, not at the end of the interval (the caller gathered its
    /// calls for an interval already).
    pub fn push_many<'a>(
        &self,
        calls: impl IntoIterator<Item = (Cow<'a, str>, Batched)>,
        due: bool,
    ) -> u64 {
        let mut p = self.lock();
        let (before, empty) = (p.waiting(), p.is_empty());
        let newly_due = due && !p.due;
        p.due |= due;
        for (path, call) in calls {
            match call {
                Batched::Track(expires_at) => p.track(path, expires_at, self.capacity),
                Batched::Remove => p.untrack(path, self.capacity),
            }
            p.calls += 1;
        }
        let (window, after) = (p.window, p.waiting());
        drop(p);
        self.wake_if(empty || newly_due, before, after);
        window
    }

    /// Wakes the writer when asked to (the first call of a window starts its clock; a due window is written at once)
    /// or when the calls waiting reach the threshold.
    fn wake_if(&self, asked: bool, before: usize, after: usize) {
        if asked || (before < self.threshold && after >= self.threshold) {
            self.wake.notify_one();
        }
    }

    /// Stops tracking a URL: forgets it if it is buffered, and removes it from the store in the next write, before
    /// anything stored after this call. Returns the write window. At most `capacity` removals wait for a write; past
    /// that, the URL's removal from the store is dropped and reported by the next write (see `Pending::add_removal`).
    pub fn remove(&self, path: String) -> u64 {
        let capacity = self.capacity;
        self.change(|p| p.untrack(Cow::Owned(path), capacity))
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
        let (before, empty) = (p.waiting(), p.is_empty());
        f(&mut p);
        p.calls += 1;
        let (window, after) = (p.window, p.waiting());
        drop(p);
        self.wake_if(empty, before, after);
        window
    }

    /// URLs waiting to be written.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// What waits to be written, for a log line: "3 tracked URLs, 60 removals".
    pub fn describe_waiting(&self) -> String {
        let p = self.lock();
        let parts = [
            (p.entries.len(), "tracked URLs"),
            (p.removals.len(), "removals"),
            (p.expiries.len(), "expiry changes"),
            (p.overflow.len(), "overflow wildcards"),
        ];
        let waiting: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        if waiting.is_empty() {
            "0 tracked URLs".to_owned()
        } else {
            waiting.join(", ")
        }
    }

    /// Drops every call still waiting to be written (a write under way is not stopped); returns what was dropped,
    /// described as by [`Self::describe_waiting`], or None when nothing waited. For a process that gives up on a
    /// store that failed (the command line), so that nothing is retried or written at exit.
    pub fn discard(&self) -> Option<String> {
        let waiting = self.describe_waiting();
        let mut p = self.lock();
        if p.is_empty() {
            return None;
        }
        p.entries.clear();
        p.removals.clear();
        p.expiries.clear();
        p.overflow.clear();
        p.due = false;
        Some(waiting)
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

    /// Resolves true once `window` reached the store, however many attempts failed before; false once `timeout`
    /// passed first.
    pub async fn written_within(&self, window: u64, timeout: Duration) -> bool {
        let mut rx = self.progress.subscribe();
        let written = async move { rx.wait_for(|p| p.written >= window).await.is_ok() };
        tokio::time::timeout(timeout, written)
            .await
            .unwrap_or(false)
    }

    /// Writes everything buffered now to the store.
    pub async fn flush(&self, store: &dyn Store, max_tracked: usize) -> Result<Flushed> {
        let _writer = self.writer.lock().await;
        let (entries, removals, expiries, overflow, removals_dropped, window) = {
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
                std::mem::take(&mut p.removals_dropped),
                window,
            )
        };
        let removals: Vec<String> = removals.into_iter().collect();
        let batch: Vec<Entry> = entries
            .into_iter()
            .map(|(path, expires_at)| Entry { path, expires_at })
            .collect();
        let expiries: Vec<Entry> = expiries
            .into_iter()
            .map(|(path, expires_at)| Entry { path, expires_at })
            .collect();
        let overflow: Vec<String> = overflow.into_iter().collect();
        // A URL is in one of these only: the order among them does not matter.
        let result = async {
            if !removals.is_empty() {
                store.remove(&removals).await?;
            }
            if !expiries.is_empty() {
                store.set_expiries(&expiries).await?;
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
            Ok(put) => {
                self.progress
                    .send_modify(|p| p.written = p.written.max(window));
                Ok(Flushed {
                    put,
                    removals_dropped,
                })
            }
            Err(e) => {
                // Keep what could not be written (changes already made are made again, to the same effect), with
                // the calls made since on the same URLs as if they had come after it, as they did: a URL stored
                // since keeps its new call; one whose expiry changed since is stored with that expiry; one removed
                // since stays removed. A removal stands unless the URL was stored since (an expiry change made
                // since applies to a URL no longer tracked: it does nothing). What is kept stays within the buffer's
                // bounds, as calls made meanwhile may have filled it: URLs past them are covered by their overflow
                // wildcard, removals past them are dropped.
                let mut p = self.lock();
                p.removals_dropped += removals_dropped;
                for e in batch {
                    let expires_at = match p.expiries.remove(&e.path) {
                        Some(newer) => newer,
                        None if !p.has_call(&e.path) => e.expires_at,
                        None => continue,
                    };
                    p.track(Cow::Owned(e.path), expires_at, self.capacity);
                }
                for path in removals {
                    p.expiries.remove(&path);
                    if !p.entries.contains_key(&path) {
                        p.add_removal(Cow::Owned(path), self.capacity);
                    }
                }
                for Entry { path, expires_at } in expiries {
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
            (p.calls, p.waiting(), honour_due && p.due)
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

    /// A memory store whose next `blocked` writes each wait until the test lets them go, then fail: what a store
    /// that goes down in the middle of a write looks like to the buffer, with calls made while the write was under
    /// way. Later writes succeed.
    struct FaultyStore {
        inner: MemoryStore,
        blocked: std::sync::atomic::AtomicUsize,
        entered: Notify,
        release: Notify,
    }

    impl FaultyStore {
        fn new(blocked: usize) -> Self {
            Self {
                inner: MemoryStore::new(),
                blocked: blocked.into(),
                entered: Notify::new(),
                release: Notify::new(),
            }
        }

        async fn write(&self) -> Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            let blocks = self
                .blocked
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if blocks {
                self.entered.notify_one();
                self.release.notified().await;
                return Err(Error::Store {
                    method: "set",
                    message: "connection reset".into(),
                });
            }
            Ok(())
        }

        /// Runs `flush` on `buf` until the store blocks it, makes `meanwhile` calls, then lets the write fail.
        async fn fail_a_write(self: &Arc<Self>, buf: &Arc<WriteBuffer>, meanwhile: impl FnOnce()) {
            let writing = tokio::spawn({
                let (buf, store) = (buf.clone(), self.clone());
                async move { buf.flush(store.as_ref(), usize::MAX).await }
            });
            self.entered.notified().await;
            meanwhile();
            self.release.notify_one();
            assert!(writing.await.unwrap().is_err());
        }
    }

    #[async_trait]
    impl Store for FaultyStore {
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
        async fn set_expiries(&self, changes: &[Entry]) -> Result<()> {
            self.write().await?;
            self.inner.set_expiries(changes).await
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
        async fn batch_split(&self, claim_id: &str, label: &str) -> Result<()> {
            self.inner.batch_split(claim_id, label).await
        }
        async fn batch_done(
            &self,
            claim_id: &str,
            index: usize,
            batch: &PlannedBatch,
            billed: usize,
        ) -> Result<()> {
            self.inner.batch_done(claim_id, index, batch, billed).await
        }
        async fn renew(&self, claim_id: &str, lease_ms: u64) -> Result<()> {
            self.inner.renew(claim_id, lease_ms).await
        }
        async fn release(&self, claim_id: &str) -> Result<()> {
            self.inner.release(claim_id).await
        }
        async fn give_back(&self, claim_id: &str) -> Result<()> {
            self.inner.give_back(claim_id).await
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
            buf.push_many(
                std::iter::once((Cow::Borrowed(path), Batched::Track(None))),
                true,
            )
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
    async fn removals_and_expiry_changes_wake_the_writer_when_they_reach_the_threshold() {
        let buf = Arc::new(WriteBuffer::new(100, 10));
        for call in [
            |b: &WriteBuffer, i| b.remove(format!("/gone/{i}")),
            |b: &WriteBuffer, i| b.set_expiry(format!("/kept/{i}"), None),
        ] {
            call(&buf, 0);
            buf.work().await; // the writer wakes for the first call, then gathers
            let started = Instant::now();
            let writer = tokio::spawn({
                let buf = buf.clone();
                async move { buf.tick(Duration::from_secs(5), true).await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            for i in 1..10 {
                call(&buf, i);
            }
            writer.await.unwrap();
            assert_within(started, Duration::from_secs(1));
            buf.flush(&MemoryStore::new(), usize::MAX).await.unwrap();
        }
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
    async fn discarded_calls_are_not_written_and_later_calls_are() {
        let buf = WriteBuffer::new(100, 50);
        let store = MemoryStore::new();
        buf.push("/a".into(), None);
        buf.push("/b".into(), None);
        buf.remove("/c".into());
        assert_eq!(buf.discard().as_deref(), Some("2 tracked URLs, 1 removals"));
        assert!(buf.is_empty());
        assert_eq!(buf.discard(), None);
        let w = buf.push("/d".into(), None);
        buf.flush(&store, usize::MAX).await.unwrap();
        buf.written(w).await.unwrap();
        assert_eq!(store.list().await.unwrap().urls, vec!["/d"]);
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
        let buf = Arc::new(WriteBuffer::new(100, 100));
        let store = Arc::new(FaultyStore::new(1));
        let expired = Some(1); // a past expiry: the URL stops being tracked
        let later = Some(crate::store::now_ms() + 3_600_000);
        let tracked = ["/r1", "/r2", "/r3", "/e1", "/e2", "/e3"].map(|path| Entry {
            path: path.into(),
            expires_at: None,
        });
        store.inner.put(&tracked, usize::MAX).await.unwrap();

        // The window that fails: URLs, removals, expiry changes (what overflowed is kept too: see the flood test).
        for u in ["/a", "/b", "/c"] {
            buf.push(u.into(), None);
        }
        let window = buf.push("/c2".into(), None);
        for u in ["/r1", "/r2", "/r3"] {
            buf.remove(u.into());
        }
        buf.set_expiry("/e1".into(), None);
        buf.set_expiry("/e2".into(), expired);
        buf.set_expiry("/e3".into(), later);
        // While it is under way, newer calls on some of its URLs.
        store
            .fail_a_write(&buf, || {
                buf.push("/b".into(), expired);
                buf.set_expiry("/c".into(), expired);
                buf.set_expiry("/c2".into(), later);
                buf.push("/r1".into(), None);
                buf.set_expiry("/r3".into(), later);
                buf.remove("/e1".into());
                buf.set_expiry("/e3".into(), expired);
            })
            .await;
        assert!(buf.written(window).await.is_err());

        buf.flush(store.as_ref(), usize::MAX).await.unwrap();
        assert!(buf.is_empty());
        let listing = store.list().await.unwrap();
        // Kept: /a, the removal of /r2 and /r3, /e2's expiry. Newer: /b's, /c's and /c2's expiry, /r1 stored again,
        // /e1 removed, /e3's expiry.
        assert_eq!(listing.urls, vec!["/a", "/c2", "/r1"]);
    }

    #[tokio::test]
    async fn a_full_buffer_overflows_into_wildcards() {
        let buf = WriteBuffer::new(2, 2);
        let store = MemoryStore::new();
        buf.push("/x/1".into(), None);
        buf.push("/x/2".into(), None);
        buf.push("/img/3".into(), None);
        let flushed = buf.flush(&store, usize::MAX).await.unwrap();
        assert_eq!(flushed.put.overflowed, 1);
        let claims = store.claim(1000).await.unwrap();
        assert_eq!(claims[0].overflow, vec!["/img/*"]);
    }

    #[tokio::test]
    async fn a_batch_makes_its_stores_and_removals_in_order() {
        let buf = WriteBuffer::new(100, 50);
        let store = MemoryStore::new();
        buf.push("/tracked".into(), None);
        buf.flush(&store, usize::MAX).await.unwrap();
        let track = |path: &'static str| (Cow::Borrowed(path), Batched::Track(None));
        let remove = |path: &'static str| (Cow::Borrowed(path), Batched::Remove);
        buf.push_many(
            [
                remove("/tracked"),
                track("/back"),
                remove("/back"),
                track("/back"),
                track("/gone"),
                remove("/gone"),
                remove("/never-tracked"),
            ],
            false,
        );
        buf.flush(&store, usize::MAX).await.unwrap();
        assert_eq!(store.list().await.unwrap().urls, vec!["/back"]);
    }

    #[tokio::test]
    async fn a_store_down_under_a_flood_keeps_the_buffer_within_its_bounds() {
        const CAPACITY: usize = 8;
        const ROUNDS: usize = 5;
        let buf = Arc::new(WriteBuffer::new(CAPACITY, CAPACITY));
        let store = Arc::new(FaultyStore::new(ROUNDS));
        let kept = "/kept/by-a-dropped-removal";
        store
            .inner
            .put(
                &[Entry {
                    path: kept.into(),
                    expires_at: None,
                }],
                usize::MAX,
            )
            .await
            .unwrap();
        // A full buffer's worth of new URLs and of removals (404s) before each write, and as many while it runs;
        // every write fails.
        let served = std::sync::Mutex::new(Vec::new());
        let flood = |round: usize, when: &str| {
            for i in 0..CAPACITY {
                let path = format!("/{when}{round}/page{i}");
                buf.push(path.clone(), None);
                served.lock().unwrap().push(path);
                buf.remove(format!("/{when}{round}/missing{i}"));
            }
        };
        for round in 0..ROUNDS {
            flood(round, "before");
            if round == 0 {
                // Past the bound: its removal is dropped, so the URL stays tracked.
                buf.remove(kept.into());
            }
            store.fail_a_write(&buf, || flood(round, "during")).await;
            let p = buf.lock();
            assert!(
                p.entries.len() <= CAPACITY,
                "{} URLs buffered",
                p.entries.len()
            );
            assert!(
                p.removals.len() <= CAPACITY,
                "{} removals",
                p.removals.len()
            );
        }
        let flushed = buf.flush(store.as_ref(), usize::MAX).await.unwrap();
        assert!(buf.is_empty());
        // Every URL served is tracked one by one or covered by a wildcard; the removals past the bound are counted.
        let listing = store.list().await.unwrap();
        for path in served.lock().unwrap().iter() {
            let cover = crate::paths::overflow_wildcard(path);
            assert!(
                listing.urls.contains(path) || listing.overflow.contains(&cover),
                "{path} is neither tracked nor covered: {listing:?}"
            );
        }
        assert!(listing.urls.contains(&kept.to_owned()), "{listing:?}");
        // Of the 2 x 5 x 8 removals and the one of `kept`, the buffer held 8 at a time.
        assert_eq!(
            flushed.removals_dropped,
            2 * ROUNDS * CAPACITY + 1 - CAPACITY
        );
    }
}
