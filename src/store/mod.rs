//! Where tracked URLs live between sends.
//!
//! Every backend (memory, Redis, a JavaScript object) implements [`Store`]. The send protocol is written once, in
//! `send.rs`, against this trait: a send *claims* what is tracked, saves the *plan* of batches it will send, marks
//! each batch *done* as CloudFront accepts it and *finishes* the claim at the end. A claim whose sender died keeps its
//! plan; the next send resumes it first, with the same batches and CallerReferences, so nothing is sent twice.

pub mod js;
pub mod memory;
pub mod redis;

use crate::error::Result;
use async_trait::async_trait;
use std::collections::BTreeSet;

/// One tracked URL and when it stops being tracked (`None`: never), in milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The normalised path, as sent to CloudFront.
    pub path: String,
    /// Expiry time in Unix milliseconds; `None` keeps the URL until it is sent.
    pub expires_at: Option<u64>,
}

/// One CreateInvalidation request of a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlannedBatch {
    /// The paths sent to CloudFront (directory variants, wildcards).
    pub paths: Vec<String>,
    /// The tracked URLs this batch covers, what the store forgets once CloudFront accepts it; `None` when they are
    /// the paths themselves (no variants, no collapse: the usual case, kept once in memory and in the store).
    pub covers: Option<Vec<String>>,
}

impl PlannedBatch {
    /// A batch whose paths are the tracked URLs themselves.
    pub fn plain(paths: Vec<String>) -> Self {
        Self {
            paths,
            covers: None,
        }
    }

    /// The tracked URLs this batch covers.
    pub fn covered(&self) -> &[String] {
        self.covers.as_deref().unwrap_or(&self.paths)
    }
}

/// What the next send will send (see [`Store::list`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Tracked URLs, sorted, each once.
    pub urls: Vec<String>,
    /// Wildcards the flood guard recorded when the store was full, sorted, each once.
    pub overflow: Vec<String>,
}

/// What a sender has claimed: tracked URLs taken out of the tracked set, atomically, for one send.
#[derive(Clone, Debug, Default)]
pub struct Claim {
    /// Unique id of the claim; part of every CallerReference derived from it.
    pub id: String,
    /// True when this claim was left behind by an earlier sender that failed or died.
    pub resumed: bool,
    /// The tracked URLs in the claim.
    pub urls: Vec<String>,
    /// Wildcards recorded by the flood guard when the store was full.
    pub overflow: Vec<String>,
    /// The plan saved by the sender that made the claim, if it got that far.
    pub plan: Option<Vec<PlannedBatch>>,
    /// Indices of planned batches CloudFront already accepted.
    pub done: BTreeSet<usize>,
    /// Labels of batches (`2`) and parts of batches (`2.1`) a sender split: sent again, they are sent as their parts,
    /// under the same CallerReferences, so a part CloudFront made is got back rather than billed again in the whole.
    pub splits: BTreeSet<String>,
}

/// What `put` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// URLs not stored one by one because the store held `max_tracked` URLs already; each is covered by an
    /// overflow wildcard instead.
    pub overflowed: usize,
}

/// A place to keep tracked URLs.
///
/// Implementations must keep their keys to themselves (the Redis store never touches a key outside its prefix) and
/// must make `claim` atomic with respect to `put`: a URL stored while a send runs is either in the claim or still
/// tracked afterwards, never lost.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and errors, e.g. `redis`.
    fn kind(&self) -> &'static str;

    /// False when the store's operations run on the JavaScript thread (a custom store), so that a thread blocked on
    /// them would wait forever: the flush at process exit leaves such a store alone.
    fn can_block_on(&self) -> bool {
        true
    }

    /// Track these URLs (insert, or update the expiry of one already tracked). When `max_tracked` URLs are tracked
    /// already, new ones are not stored: `overflow_wildcard` of each is recorded instead.
    async fn put(&self, entries: &[Entry], max_tracked: usize) -> Result<PutOutcome>;

    /// Record flood-guard wildcards directly (used when the in-process buffer itself overflows).
    async fn put_overflow(&self, wildcards: &[String]) -> Result<()>;

    /// Change the expiry of each of these URLs that is tracked (to `expires_at`); an untracked one is left alone.
    async fn set_expiries(&self, changes: &[Entry]) -> Result<()>;

    /// Stop tracking these URLs.
    async fn remove(&self, paths: &[String]) -> Result<()>;

    /// Everything the next send will send: tracked, unexpired URLs and flood-guard wildcards, and those of claims not
    /// yet sent.
    async fn list(&self) -> Result<Listing>;

    /// Claims for a send: first every claim whose lease has run out (a sender that died or gave up), then a new claim
    /// of everything tracked now (if anything is). Each returned claim is leased to the caller for `lease_ms`.
    async fn claim(&self, lease_ms: u64) -> Result<Vec<Claim>>;

    /// Save the plan of a claim before its first batch is sent, unless another sender saved one first: the plan in
    /// force is returned, so every sender of a claim sends the same batches.
    async fn save_plan(&self, claim_id: &str, plan: Vec<PlannedBatch>)
        -> Result<Vec<PlannedBatch>>;

    /// Record that a batch (`label`: its index) or a part of one (`2.1`) of a claim was split, before its halves are
    /// sent.
    async fn batch_split(&self, claim_id: &str, label: &str) -> Result<()>;

    /// Record that CloudFront accepted batch `index` of a claim, and count `billed` paths (those it did not refuse) in
    /// this month's bill.
    async fn batch_done(
        &self,
        claim_id: &str,
        index: usize,
        batch: &PlannedBatch,
        billed: usize,
    ) -> Result<()>;

    /// Extend the lease of a claim still being worked on.
    async fn renew(&self, claim_id: &str, lease_ms: u64) -> Result<()>;

    /// Give a claim up for now: it stays, with its plan, for the next send to resume.
    async fn release(&self, claim_id: &str) -> Result<()>;

    /// Give back a claim nothing of which was planned or sent: its URLs and wildcards are tracked again, as if never
    /// claimed (a URL tracked again meanwhile keeps the later expiry). A claim with a saved plan is released instead.
    async fn give_back(&self, claim_id: &str) -> Result<()>;

    /// Drop a claim whose every batch was accepted.
    async fn finish(&self, claim_id: &str) -> Result<()>;

    /// Paths billed this calendar month (UTC) by sends through this store.
    async fn billed_this_month(&self) -> Result<u64>;

    /// Close connections; the next call reconnects.
    async fn disconnect(&self) -> Result<()>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The key of this month's bill counter, e.g. `2026-11`.
pub fn month_key(now_ms: u64) -> String {
    let days = (now_ms / 86_400_000) as i64;
    let (y, m, _) = civil_from_days(days);
    format!("{y:04}-{m:02}")
}

// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A new unique claim id: time, process and a counter, so two senders never pick the same one.
pub fn new_claim_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{nanos}:{}:{n}:{:p}", std::process::id(), &COUNTER);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes());
    format!("{}-{}", nanos / 1_000_000, &hex::encode(digest)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_key_is_utc_calendar_month() {
        assert_eq!(month_key(0), "1970-01");
        // 2026-11-23T18:00:00Z
        assert_eq!(month_key(1_795_456_800_000), "2026-11");
        // 2024-02-29T23:59:59Z, a leap day
        assert_eq!(month_key(1_709_251_199_000), "2024-02");
        assert_eq!(month_key(1_709_251_200_000), "2024-03");
    }

    #[test]
    fn claim_ids_are_unique() {
        let ids: BTreeSet<String> = (0..1000).map(|_| new_claim_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
