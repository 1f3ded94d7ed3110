//! The send: claim what is tracked, plan batches, send each batch exactly once, forget exactly what CloudFront
//! accepted, and say what happened.

use crate::cloudfront::{
    is_completed, CfFailure, CloudFront, InProgress, MAX_IN_PROGRESS_WILDCARDS,
};
use crate::error::{Error, Result};
use crate::paths::{self, PathRules, QueryStrings};
use crate::store::{Claim, PlannedBatch, Store};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Paths a month that CloudFront does not bill.
pub const FREE_PATHS_PER_MONTH: u64 = 1000;
/// Price of one path past the free ones, in US dollars.
pub const PRICE_PER_PATH_USD: f64 = 0.005;
/// Consecutive throttling/5xx/network failures of one batch (each already retried by the SDK) before it is kept for
/// a later send.
const MAX_TRANSIENT_FAILURES: u32 = 8;

/// How sends behave; fixed per tracker.
#[derive(Clone, Debug)]
pub struct SendConfig {
    /// Paths per CreateInvalidation request (1..=3000).
    pub batch_size: usize,
    /// Most paths one send may bill; more tracked paths are collapsed into wildcards.
    pub max_paths: Option<usize>,
    /// How tracked URLs become sent paths.
    pub rules: PathRules,
    /// Lease of a claim: a sender silent for longer is taken for dead and its claim resumed.
    pub lease: Duration,
    /// How long a send keeps trying (waiting for capacity, retrying) before it keeps the rest for later.
    pub send_timeout: Duration,
    /// Pause between polls of CloudFront while waiting for capacity or completion.
    pub poll_interval: Duration,
}

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            max_paths: None,
            rules: PathRules::default(),
            lease: Duration::from_secs(60),
            send_timeout: Duration::from_secs(15 * 60),
            poll_interval: Duration::from_secs(10),
        }
    }
}

/// What the caller asks of one send.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendOptions {
    /// Poll until every batch is completed (or the deadline passes).
    pub wait: bool,
    /// Plan only: send and change nothing.
    pub dry_run: bool,
}

/// What happened to one batch.
#[derive(Clone, Debug, Default)]
pub struct BatchReport {
    /// CloudFront's invalidation id, once accepted (comma-separated when split; of a kept batch, those of the parts
    /// CloudFront accepted before the failure).
    pub id: Option<String>,
    /// The CallerReference it was (or would be) sent with (of each part, when split).
    pub caller_reference: Option<String>,
    /// `InProgress`, `Completed`, `Kept` (not sent, still tracked), `Rejected` (every path refused) or `DryRun`.
    pub status: String,
    /// The paths of the batch.
    pub paths: Vec<String>,
    /// True when the batch comes from a send that failed or died earlier.
    pub resumed: bool,
    /// Attempts beyond the first (throttling, 5xx, network, capacity waits).
    pub retries: u32,
    /// Why it was kept, when it was.
    pub error: Option<String>,
}

/// What one send did.
#[derive(Debug, Default)]
pub struct SendReport {
    /// Paths CloudFront accepted in this send (or would be sent, in a dry run).
    pub paths: usize,
    /// Every batch, in order.
    pub batches: Vec<BatchReport>,
    /// Tracked URLs kept for a later send because their batch was not accepted.
    pub kept: usize,
    /// Batches of an earlier send that failed or died, accepted by this one.
    pub resumed: usize,
    /// Wildcards sent to cover URLs the flood guard could not store one by one.
    pub overflow: Vec<String>,
    /// Paths CloudFront refused as invalid; dropped so they cannot hold back the rest.
    pub rejected: Vec<String>,
    /// True when `maxPaths` made the send collapse paths into wildcards.
    pub collapsed: bool,
    /// Paths billed by this send: not those of a resumed batch CloudFront had made before it.
    pub billed_paths: u64,
    /// Paths billed this month through this store, this send included.
    pub billed_this_month: u64,
    /// Estimated price of this send in US dollars (free 1,000 paths a month, then $0.005 a path).
    pub estimated_cost_usd: f64,
    /// True for a dry run.
    pub dry_run: bool,
    /// The failure that made batches be kept, if any.
    pub error: Option<Error>,
}

/// Sent paths and the tracked URLs behind them, kept together in one batch.
struct Unit {
    paths: Vec<String>,
    covers: Vec<String>,
}

/// Builds the batches for the tracked URLs of a claim (and its flood-guard wildcards). Returns the plan and whether
/// `maxPaths` made it collapse paths into wildcards.
pub fn plan(
    mut urls: Vec<String>,
    overflow: Vec<String>,
    cfg: &SendConfig,
) -> (Vec<PlannedBatch>, bool) {
    urls.sort_unstable();
    urls.dedup();
    // A flood-guard wildcard that is also tracked (a wildcard asked for with `storeUrl`) is sent once.
    let overflow: Vec<String> = overflow
        .into_iter()
        .filter(|w| urls.binary_search(w).is_err())
        .collect();
    let budget = cfg.max_paths.unwrap_or(usize::MAX);
    // The sender's own rules apply to what it sends, whatever rules the URLs were tracked under (another process's
    // `keep`, say): `strip` sends each tracked query variant as its bare path, once.
    let variants =
        cfg.rules.index_document.is_some() || cfg.rules.query_strings != QueryStrings::Keep;
    let wildcards = overflow.into_iter().map(|w| Unit {
        paths: vec![w],
        covers: Vec::new(),
    });
    if !variants && urls.len() + wildcards.len() <= budget {
        // The usual case: each tracked URL is its own path, moved into its batch, not copied.
        let mut packer = Packer::new(cfg.batch_size);
        for url in urls {
            packer.push(vec![url], None);
        }
        for unit in wildcards {
            packer.push(unit.paths, Some(unit.covers));
        }
        return (packer.finish(), false);
    }
    let mut units: Vec<Unit> = Vec::with_capacity(urls.len());
    // Path -> unit, so a form already sent for one URL is not sent again for another.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for url in urls {
        let forms = if variants {
            paths::send_paths(&url, &cfg.rules)
        } else {
            vec![url.clone()]
        };
        let fresh: Vec<String> = forms
            .iter()
            .filter(|p| !seen.contains_key(*p))
            .cloned()
            .collect();
        if fresh.is_empty() {
            if let Some(&i) = forms.first().and_then(|p| seen.get(p)) {
                units[i].covers.push(url);
            }
            continue;
        }
        for p in &fresh {
            seen.insert(p.clone(), units.len());
        }
        units.push(Unit {
            paths: fresh,
            covers: vec![url],
        });
    }
    // Likewise one that is a form of a tracked URL (its query-string wildcard, say).
    units.extend(wildcards.filter(|w| !seen.contains_key(&w.paths[0])));
    let total: usize = units.iter().map(|u| u.paths.len()).sum();
    if total > budget {
        return (collapse_plan(units, budget, cfg.batch_size), true);
    }
    (pack(units, cfg.batch_size), false)
}

/// Packs units into batches of at most `batch_size` paths and at most 15 wildcards each.
fn pack(units: Vec<Unit>, batch_size: usize) -> Vec<PlannedBatch> {
    let mut packer = Packer::new(batch_size);
    for unit in units {
        packer.push(unit.paths, Some(unit.covers));
    }
    packer.finish()
}

/// Fills batches in order: at most `batch_size` paths and at most 15 wildcards each, a unit's paths kept together.
/// A unit without covers is its own tracked URL; a batch made only of such units keeps no separate covers.
struct Packer {
    batch_size: usize,
    batches: Vec<PlannedBatch>,
    current: PlannedBatch,
    load: InProgress,
}

impl Packer {
    fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            batches: Vec::new(),
            current: PlannedBatch::default(),
            load: InProgress::default(),
        }
    }

    fn push(&mut self, paths: Vec<String>, covers: Option<Vec<String>>) {
        let unit = InProgress::of(&paths);
        let full = self.current.paths.len() + paths.len() > self.batch_size
            || self.load.wildcards + unit.wildcards > MAX_IN_PROGRESS_WILDCARDS;
        if full && !self.current.paths.is_empty() {
            self.batches.push(std::mem::take(&mut self.current));
            self.load = InProgress::default();
        }
        self.load.add(&unit);
        match (&mut self.current.covers, covers) {
            (Some(all), Some(more)) => all.extend(more),
            (None, None) => {}
            // The first unit with covers of its own: write out those of the plain URLs before it.
            (current, more) => {
                let mut all = current.take().unwrap_or_else(|| self.current.paths.clone());
                all.extend(more.unwrap_or_else(|| paths.clone()));
                *current = Some(all);
            }
        }
        self.current.paths.extend(paths);
    }

    fn finish(mut self) -> Vec<PlannedBatch> {
        if !self.current.paths.is_empty() {
            self.batches.push(self.current);
        }
        self.batches
    }
}

/// The plan when there are more paths than `budget`: the most specific wildcard cover within it.
fn collapse_plan(units: Vec<Unit>, budget: usize, batch_size: usize) -> Vec<PlannedBatch> {
    let all: Vec<String> = units.iter().flat_map(|u| u.paths.iter().cloned()).collect();
    let cover = paths::collapse(&all, budget.max(1), MAX_IN_PROGRESS_WILDCARDS);
    let exact: HashMap<&str, usize> = cover
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let wild: Vec<(usize, &String)> = cover
        .iter()
        .enumerate()
        .filter(|(_, p)| paths::is_wildcard(p))
        .collect();
    let mut covered: Vec<Vec<String>> = vec![Vec::new(); cover.len()];
    for unit in units {
        let Some(first) = unit.paths.first() else {
            continue;
        };
        let slot = exact.get(first.as_str()).copied().or_else(|| {
            wild.iter()
                .find(|(_, w)| paths::covers(w, first))
                .map(|(i, _)| *i)
        });
        if let Some(i) = slot {
            covered[i].extend(unit.covers);
        }
    }
    let units = cover
        .iter()
        .cloned()
        .zip(covered)
        .map(|(p, covers)| Unit {
            paths: vec![p],
            covers,
        })
        .collect();
    pack(units, batch_size)
}

/// The CallerReference of a batch: derived from its content, so a retry of the same batch (in this process or
/// after a crash) is recognised by CloudFront and never billed twice, and two batches never share one.
pub fn caller_reference(dist: &str, claim_id: &str, index: &str, paths: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [dist, claim_id, index] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for p in paths {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!(
        "cfit-{claim_id}-{index}-{}",
        &hex::encode(h.finalize())[..16]
    )
}

/// Names in `entry` the invalidations CloudFront made of a batch: `(id, CallerReference)` of each (several when it
/// was split), comma-separated.
fn name_invalidations(entry: &mut BatchReport, made: Vec<(String, String)>) {
    if !made.is_empty() {
        let (ids, refs): (Vec<_>, Vec<_>) = made.into_iter().unzip();
        entry.id = Some(ids.join(","));
        entry.caller_reference = Some(refs.join(","));
    }
}

/// Whether CloudFront made an invalidation it answered with before a send that `began` then: its `CreateTime` is
/// earlier or unknown. A time that counts no milliseconds and falls in the second the send began may be either: taken
/// as made before, the side on which a URL served again meanwhile is invalidated again rather than left stale.
fn made_earlier(create_time: Option<std::time::SystemTime>, began: std::time::SystemTime) -> bool {
    let Some(t) = create_time else { return true };
    let since =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (made, began) = (since(t), since(began));
    made < began || (made.subsec_nanos() == 0 && made.as_secs() == began.as_secs())
}

/// Queues the two halves of a chunk, labelled so that a retry of the same split reuses the same CallerReferences.
fn split(pending: &mut Vec<(String, Vec<String>)>, label: &str, chunk: &[String]) {
    let (a, b) = chunk.split_at(chunk.len() / 2);
    pending.push((format!("{label}.1"), b.to_vec()));
    pending.push((format!("{label}.0"), a.to_vec()));
}

/// Logger the sender reports progress to.
pub trait Log: Send + Sync {
    /// Informational line.
    fn info(&self, msg: &str);
    /// Something went wrong but the send goes on.
    fn warn(&self, msg: &str);
}

struct Sender<'a> {
    store: &'a dyn Store,
    cf: &'a CloudFront,
    cfg: &'a SendConfig,
    log: &'a dyn Log,
    deadline: Instant,
    /// When the send began: an invalidation CloudFront says it made before then was not made by this send.
    began: std::time::SystemTime,
    /// What this send believes is in progress on the distribution; re-read from CloudFront when it looks full.
    in_progress: Option<InProgress>,
    /// False once CloudFront refused to list invalidations: the send then relies on TooManyInvalidationsInProgress.
    pacing: bool,
    /// The last failure this send retried, for the error it ends with if its deadline passes.
    last_failure: Option<String>,
    /// The claims this send holds and has not yet finished or given back: their leases are renewed meanwhile.
    held: &'a Held,
}

/// The shortest time between renewals, however short the lease (a lease shorter than three times this is renewed
/// late: it is for tests).
const MIN_RENEWAL_PERIOD: Duration = Duration::from_millis(100);

/// Claims a send holds, behind a lock that a renewal holds while it runs, so that a claim finished or given back is
/// never renewed after.
type Held = tokio::sync::Mutex<std::collections::BTreeSet<String>>;

/// Renews the lease of every claim in `held` every third of the lease, for as long as the send runs (it never
/// returns: the send drops it when done). A sender busy with one claim (waiting for room on CloudFront, or in one
/// slow request) keeps its others too, so that no other sender takes them for abandoned.
async fn keep_leases(
    store: &dyn Store,
    cfg: &SendConfig,
    held: &Held,
    log: &dyn Log,
) -> std::convert::Infallible {
    let lease_ms = cfg.lease.as_millis() as u64;
    loop {
        tokio::time::sleep((cfg.lease / 3).max(MIN_RENEWAL_PERIOD)).await;
        let held = held.lock().await;
        for id in held.iter() {
            if let Err(e) = store.renew(id, lease_ms).await {
                log.warn(&format!("could not renew the send's lease: {e}"));
            }
        }
    }
}

enum BatchOutcome {
    /// CloudFront accepted the batch: `(invalidation id, CallerReference)` of each request (several when it was
    /// split), the paths it refused as invalid, dropped so they cannot block the rest forever, and how many of its
    /// paths CloudFront answered with an invalidation made before this send (an earlier try had reached it, and was
    /// billed then), and the paths of the parts of a split batch made now.
    Accepted {
        created: Vec<(String, String)>,
        refused: Vec<String>,
        made_before: usize,
        parts_made_now: Vec<String>,
    },
    /// Not accepted: the batch stays tracked for a later send. When it had been split, the `(invalidation id,
    /// CallerReference)` of the parts CloudFront accepted before the failure (sent again, they get these back).
    Kept(Error, Vec<(String, String)>),
}

impl Sender<'_> {
    /// Sleeps `d`, or until the deadline if sooner.
    async fn pause(&self, d: Duration) {
        tokio::time::sleep(d.min(self.deadline.saturating_duration_since(Instant::now()))).await;
    }

    fn timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Runs a CloudFront call within what is left of the send's time: the SDK's own timeouts (30 s an attempt, and
    /// its retries) are longer than many a `sendTimeoutMs`. A request cut short is as one that got no answer: a
    /// CreateInvalidation is kept, and sent again later under the same CallerReference.
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<T, CfFailure>>,
    ) -> std::result::Result<T, CfFailure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, call).await.unwrap_or_else(|_| {
            Err(CfFailure::network(format!(
                "no answer within sendTimeoutMs ({} ms)",
                self.cfg.send_timeout.as_millis()
            )))
        })
    }

    /// Waits until the distribution has room for `paths`; false when the deadline passed first.
    async fn wait_for_room(&mut self, paths: &[String], retries: &mut u32) -> Result<bool> {
        let need = InProgress::of(paths);
        let mut transient = 0;
        loop {
            let fits = |ip: &InProgress| ip.has_room_for(&need);
            if !self.pacing || self.in_progress.as_ref().is_some_and(fits) {
                return Ok(true);
            }
            match self.within(self.cf.in_progress()).await {
                Ok(ip) if fits(&ip) => {
                    self.in_progress = Some(ip);
                    return Ok(true);
                }
                Ok(ip) => {
                    transient = 0;
                    self.log.info(&format!(
                        "Waiting for CloudFront: {} paths and {} wildcards in progress",
                        ip.paths, ip.wildcards
                    ));
                }
                Err(CfFailure::Fatal { code, .. }) if code == "AccessDenied" => {
                    self.log.warn(
                        "CloudFront refused to list invalidations (AccessDenied): sending without pacing; \
                         grant cloudfront:ListInvalidations and cloudfront:GetInvalidation to pace sends",
                    );
                    self.pacing = false;
                    return Ok(true);
                }
                Err(CfFailure::Fatal { code, message }) => {
                    return Err(Error::CloudFront { code, message })
                }
                Err(other) => {
                    let e = Error::from(other);
                    self.log.warn(&e.to_string());
                    transient += 1;
                    if transient >= MAX_TRANSIENT_FAILURES {
                        return Err(e);
                    }
                    self.note_failure(&e);
                }
            }
            if self.timed_out() {
                return Ok(false);
            }
            *retries += 1;
            self.pause(self.cfg.poll_interval).await;
        }
    }

    /// Sends one planned batch, splitting it if CloudFront says it is too large (or refuses a path of it); `splits`,
    /// the labels of the batch and parts an earlier sender split, are sent as their halves at once.
    async fn send_batch(
        &mut self,
        claim_id: &str,
        index: usize,
        paths: &[String],
        splits: &BTreeSet<String>,
        retries: &mut u32,
    ) -> BatchOutcome {
        let mut pending: Vec<(String, Vec<String>)> = vec![(index.to_string(), paths.to_vec())];
        let mut accepted = Vec::new();
        let mut made_before = 0;
        let mut parts_made_now = Vec::new();
        // Paths CloudFront refused one by one (InvalidArgument): dropped, so that they cannot hold back the rest.
        let mut refused = Vec::new();
        let mut backoff = Duration::from_millis(200);
        let mut transient = 0;
        while let Some((label, chunk)) = pending.pop() {
            if chunk.len() > 1 && splits.contains(&label) {
                // Sent whole, it would not get back a part CloudFront made: a new invalidation, billed again.
                split(&mut pending, &label, &chunk);
                continue;
            }
            let reference = caller_reference(self.cf.dist(), claim_id, &label, &chunk);
            let mut halve = false;
            loop {
                match self.wait_for_room(&chunk, retries).await {
                    Ok(true) => {}
                    Ok(false) => return BatchOutcome::Kept(self.deadline_error(), accepted),
                    Err(e) => return BatchOutcome::Kept(e, accepted),
                }
                match self
                    .within(self.cf.create_invalidation(&chunk, &reference))
                    .await
                {
                    Ok(created) => {
                        if let Some(ip) = self.in_progress.as_mut() {
                            ip.add(&InProgress::of(&chunk));
                        }
                        if made_earlier(created.create_time, self.began) {
                            made_before += chunk.len();
                        } else if chunk.len() < paths.len() {
                            parts_made_now.extend(chunk.iter().cloned());
                        }
                        accepted.push((created.id, reference.clone()));
                        backoff = Duration::from_millis(200);
                        transient = 0;
                        break;
                    }
                    Err(CfFailure::BatchTooLarge(_)) if chunk.len() > 1 => {
                        self.log
                            .info(&format!("Batch too large: splitting {} paths", chunk.len()));
                        halve = true;
                        break;
                    }
                    Err(CfFailure::Fatal { code, .. }) if code == "InvalidArgument" => {
                        if chunk.len() > 1 {
                            // One path CloudFront will not take must not hold back the others: found by halves.
                            halve = true;
                        } else {
                            refused.extend(chunk.iter().cloned());
                        }
                        break;
                    }
                    Err(CfFailure::TooManyInProgress(msg)) => {
                        // Our estimate was wrong: re-read it after a pause.
                        self.in_progress = None;
                        self.log
                            .info(&format!("CloudFront is busy ({msg}); waiting"));
                    }
                    Err(failure @ CfFailure::Transient { .. })
                        if transient >= MAX_TRANSIENT_FAILURES =>
                    {
                        return BatchOutcome::Kept(failure.into(), accepted)
                    }
                    Err(failure @ CfFailure::Transient { .. }) => {
                        transient += 1;
                        let e = Error::from(failure);
                        self.log.warn(&format!("{e}; retrying"));
                        self.note_failure(&e);
                    }
                    Err(CfFailure::BatchTooLarge(m)) => {
                        return BatchOutcome::Kept(CfFailure::BatchTooLarge(m).into(), accepted)
                    }
                    Err(CfFailure::Fatal { code, message }) => {
                        return BatchOutcome::Kept(Error::CloudFront { code, message }, accepted)
                    }
                }
                if self.timed_out() {
                    return BatchOutcome::Kept(self.deadline_error(), accepted);
                }
                *retries += 1;
                let pause = if self.in_progress.is_none() {
                    self.cfg.poll_interval
                } else {
                    backoff
                };
                self.pause(pause).await;
                backoff = (backoff * 2).min(Duration::from_secs(20));
            }
            if halve {
                // Recorded before either half is sent: a retry (of this send, or after a crash) sends the halves.
                if let Err(e) = self.store.batch_split(claim_id, &label).await {
                    return BatchOutcome::Kept(e, accepted);
                }
                split(&mut pending, &label, &chunk);
            }
        }
        for path in &refused {
            self.log.warn(&format!(
                "CloudFront refused the path {path}; it is dropped"
            ));
        }
        BatchOutcome::Accepted {
            created: accepted,
            refused,
            made_before,
            parts_made_now,
        }
    }

    /// Keeps a failure the send retried for its deadline's error; not the cut at the deadline itself.
    fn note_failure(&mut self, e: &Error) {
        if !self.timed_out() {
            self.last_failure = Some(e.to_string());
        }
    }

    fn deadline_error(&self) -> Error {
        let last = match &self.last_failure {
            Some(failure) => format!(" (last failure: {failure})"),
            None => String::new(),
        };
        Error::Timeout(format!(
            "sendTimeoutMs ({} ms) passed{last}; unsent paths stay tracked for the next send",
            self.cfg.send_timeout.as_millis()
        ))
    }

    /// Sends what is left of one claim. `older` holds the URLs of earlier claims of this send that had not reached
    /// CloudFront before it: a claim planned here leaves them out, so a URL served again while an earlier send failed is
    /// not billed twice for nothing.
    async fn send_claim(
        &mut self,
        claim: Claim,
        older: &mut Option<HashSet<String>>,
        report: &mut SendReport,
    ) -> Result<()> {
        let Claim {
            id,
            resumed,
            urls,
            overflow,
            plan: saved,
            done,
            splits,
        } = claim;
        report.overflow.extend(overflow.iter().cloned());
        let planned = match saved {
            Some(plan) => plan,
            None => {
                // Not planned yet (a new claim, or one whose sender died or failed before planning it): it never
                // reached CloudFront, and leaves out what the claims planned before it send.
                let urls = match older.as_ref() {
                    Some(seen) => urls.into_iter().filter(|u| !seen.contains(u)).collect(),
                    None => urls,
                };
                let (planned, collapsed) = plan(urls, overflow, self.cfg);
                report.collapsed |= collapsed;
                self.store.save_plan(&id, planned).await?
            }
        };
        // The batches of a claim are sent in order, and a failure stops the rest: of those not done, only the first
        // may have reached CloudFront already (its answer lost, or its sender dead). If it had, its CallerReference
        // gets that invalidation back, made before a URL of it may have been served again: such a URL then goes in
        // the new claim too. The later ones cover their URLs when this send makes them.
        let mut undone = (0..planned.len()).filter(|i| !done.contains(i));
        let first_undone = undone.next().filter(|_| resumed);
        if let (true, Some(seen)) = (resumed, older.as_mut()) {
            for i in undone {
                seen.extend(planned[i].covered().iter().cloned());
            }
        }
        let mut failure: Option<Error> = None;
        for (index, batch) in planned.into_iter().enumerate() {
            if done.contains(&index) {
                continue;
            }
            let mut entry = BatchReport {
                status: "Kept".into(),
                resumed,
                ..BatchReport::default()
            };
            // The paths of the batch that its invalidations hold, when CloudFront refused some.
            let mut held: Option<Vec<String>> = None;
            if failure.is_none() {
                self.log.info(&format!(
                    "Sending invalidation to CloudFront... ({} paths)",
                    batch.paths.len()
                ));
                match self
                    .send_batch(&id, index, &batch.paths, &splits, &mut entry.retries)
                    .await
                {
                    BatchOutcome::Accepted {
                        created,
                        refused: rejected,
                        made_before,
                        parts_made_now,
                    } => {
                        if let (Some(seen), true) = (older.as_mut(), first_undone == Some(index)) {
                            if made_before == 0 {
                                seen.extend(batch.covered().iter().cloned());
                            } else if batch.covers.is_none() {
                                // Split, and some parts made before: the parts made now cover their paths, which
                                // are the URLs themselves.
                                seen.extend(parts_made_now);
                            }
                        }
                        let sent = batch.paths.len() - rejected.len();
                        let made = !created.is_empty();
                        name_invalidations(&mut entry, created);
                        entry.status = if made { "InProgress" } else { "Rejected" }.into();
                        report.paths += sent;
                        report.billed_paths += sent.saturating_sub(made_before) as u64;
                        if let Err(e) = self.store.batch_done(&id, index, &batch, sent).await {
                            // CloudFront made it: the report says so (the next send gets it back, not a new one).
                            entry.paths = batch.paths;
                            report.batches.push(entry);
                            return Err(e);
                        }
                        if made {
                            self.log.info("Success! 201");
                        }
                        report.resumed += usize::from(resumed);
                        // The batch lists what its invalidations hold; the report, what CloudFront refused.
                        if !rejected.is_empty() {
                            let refused: HashSet<&String> = rejected.iter().collect();
                            held = Some(
                                batch
                                    .paths
                                    .iter()
                                    .filter(|p| !refused.contains(p))
                                    .cloned()
                                    .collect(),
                            );
                        }
                        report.rejected.extend(rejected);
                    }
                    BatchOutcome::Kept(e, parts) => {
                        self.log.warn(&format!("Error! {e}"));
                        failure = Some(e);
                        name_invalidations(&mut entry, parts);
                    }
                }
            }
            if entry.status == "Kept" {
                entry.error = failure.as_ref().map(ToString::to_string);
                entry.caller_reference.get_or_insert_with(|| {
                    caller_reference(self.cf.dist(), &id, &index.to_string(), &batch.paths)
                });
                report.kept += batch.covered().len();
            }
            entry.paths = held.unwrap_or(batch.paths);
            report.batches.push(entry);
        }
        // Under the lock, so that no renewal comes after; out of the held ones once done, so that a store failure
        // leaves it to the send's error path to release.
        let mut held = self.held.lock().await;
        match failure {
            None => self.store.finish(&id).await?,
            Some(e) => {
                self.store.release(&id).await?;
                report.error.get_or_insert(e);
            }
        }
        held.remove(&id);
        Ok(())
    }

    async fn wait_completed(&self, report: &mut SendReport) {
        let mut pending: Vec<usize> = (0..report.batches.len())
            .filter(|&i| report.batches[i].id.is_some())
            .collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for i in pending {
                let ids: Vec<String> = report.batches[i]
                    .id
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                let mut all_done = true;
                let mut last = String::new();
                let mut unfollowable = false;
                for id in ids {
                    match self.within(self.cf.invalidation_status(&id)).await {
                        Ok(status) => {
                            all_done &= is_completed(&status);
                            last = status;
                        }
                        // Asking again will not help (AccessDenied, say): the batch was sent, but whether it
                        // completed cannot be known; waiting out the deadline would say nothing more. Not so
                        // NoSuchInvalidation just after it was made, which may be CloudFront catching up: asked again.
                        Err(CfFailure::Fatal { code, message }) if code != "NoSuchInvalidation" => {
                            unfollowable = true;
                            report.error.get_or_insert(Error::CloudFront {
                                code,
                                message: format!(
                                    "{message} (asked for the status of invalidation {id}, which was sent: not \
                                     waiting for it)"
                                ),
                            });
                        }
                        Err(e) => {
                            all_done = false;
                            self.log.warn(&format!("{}", Error::from(e)));
                        }
                    }
                }
                if unfollowable {
                    if !last.is_empty() {
                        report.batches[i].status = last;
                    }
                } else if all_done {
                    report.batches[i].status = "Completed".into();
                } else {
                    if !last.is_empty() {
                        report.batches[i].status = last;
                    }
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if self.timed_out() {
                report.error.get_or_insert(Error::Timeout(
                    "the deadline passed before every invalidation completed".into(),
                ));
                break;
            }
            let d = self
                .cfg
                .poll_interval
                .min(self.deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(d).await;
        }
    }
}

/// Runs one send. Store failures are errors; CloudFront failures keep the rest tracked and are in the report.
pub async fn send(
    store: &dyn Store,
    cf: &CloudFront,
    cfg: &SendConfig,
    opts: SendOptions,
    log: &dyn Log,
) -> Result<SendReport> {
    let mut report = SendReport {
        dry_run: opts.dry_run,
        ..SendReport::default()
    };
    if opts.dry_run {
        let listing = store.list().await?;
        report.overflow.clone_from(&listing.overflow);
        let (planned, collapsed) = plan(listing.urls, listing.overflow, cfg);
        report.collapsed = collapsed;
        for b in planned {
            report.paths += b.paths.len();
            report.batches.push(BatchReport {
                status: "DryRun".into(),
                paths: b.paths,
                ..BatchReport::default()
            });
        }
        report.billed_this_month = store.billed_this_month().await?;
        report.estimated_cost_usd = estimate(report.billed_this_month, report.paths as u64);
        return Ok(report);
    }
    let billed_before = store.billed_this_month().await?;
    let mut claims = store.claim(cfg.lease.as_millis() as u64).await?;
    // Claims planned by an earlier sender first: their batches are fixed, and the claims planned here leave out the
    // URLs those hold (below).
    claims.sort_by_key(|c| (!c.resumed, c.plan.is_none()));
    let held: Held = tokio::sync::Mutex::new(claims.iter().map(|c| c.id.clone()).collect());
    let mut sender = Sender {
        store,
        cf,
        cfg,
        log,
        deadline: Instant::now() + cfg.send_timeout,
        began: std::time::SystemTime::now(),
        in_progress: None,
        pacing: true,
        last_failure: None,
        held: &held,
    };
    // Only when an earlier claim is resumed beside another can two hold the same URL (served again meanwhile).
    let mut older = (claims.len() > 1 && claims.iter().any(|c| c.resumed)).then(HashSet::new);
    let work = async {
        for claim in claims {
            if report.error.is_some() && !claim.resumed {
                // A claim of this send failed: the new one, not tried yet, is given back rather than tried and kept,
                // or every send while CloudFront keeps refusing would leave one more claim behind (memory in the
                // store, and a request per claim once it accepts again). The next send claims its URLs anew.
                let mut held = sender.held.lock().await;
                store.give_back(&claim.id).await?;
                held.remove(&claim.id);
                drop(held);
                report.kept += claim.urls.len();
                continue;
            }
            sender.send_claim(claim, &mut older, &mut report).await?;
        }
        Ok::<_, Error>(())
    };
    let sent = tokio::select! {
        sent = work => sent,
        never = keep_leases(store, cfg, &held, log) => match never {},
    };
    if let Err(e) = sent {
        // The store failed mid-send: give back every claim not finished, for the next send to resume. The report says
        // what CloudFront made before.
        for id in std::mem::take(&mut *held.lock().await) {
            let _ = store.release(&id).await;
        }
        report.error = Some(e);
        report.billed_this_month = billed_before + report.billed_paths;
        report.estimated_cost_usd = estimate(billed_before, report.billed_paths);
        return Ok(report);
    }
    if !report.overflow.is_empty() {
        log.warn(&format!(
            "The tracked-URL limit was reached; covered by wildcards: {}",
            report.overflow.join(", ")
        ));
    }
    if opts.wait && report.error.is_none() {
        sender.wait_completed(&mut report).await;
    }
    // As the store counts it: a resumed batch that CloudFront had made before counts once, when it is done.
    report.billed_this_month = store
        .billed_this_month()
        .await
        .unwrap_or(billed_before + report.billed_paths);
    report.estimated_cost_usd = estimate(billed_before, report.billed_paths);
    Ok(report)
}

/// Price of `paths` more paths this month, after `billed_before` already billed.
pub fn estimate(billed_before: u64, paths: u64) -> f64 {
    let billable = |n: u64| n.saturating_sub(FREE_PATHS_PER_MONTH);
    (billable(billed_before + paths) - billable(billed_before)) as f64 * PRICE_PER_PATH_USD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("/p/{i:05}")).collect()
    }

    #[test]
    fn an_invalidation_is_made_earlier_unless_its_time_says_it_came_after_the_send_began() {
        let at = |ms: u64| Some(std::time::UNIX_EPOCH + Duration::from_millis(ms));
        let began = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        assert!(made_earlier(at(1_700_000_000_499), began));
        assert!(!made_earlier(at(1_700_000_000_500), began));
        assert!(!made_earlier(at(1_700_000_000_501), began));
        assert!(!made_earlier(at(1_700_000_001_000), began));
        // No milliseconds, in the second the send began: it may have been made before.
        assert!(made_earlier(at(1_700_000_000_000), began));
        assert!(made_earlier(None, began));
    }

    #[test]
    fn a_path_both_tracked_and_recorded_by_the_flood_guard_is_sent_once() {
        let cfg = SendConfig::default();
        let (batches, _) = plan(
            vec!["/img/*".into(), "/a".into()],
            vec!["/img/*".into(), "/js/*".into()],
            &cfg,
        );
        let sent: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.paths.iter().map(String::as_str))
            .collect();
        assert_eq!(sent, ["/a", "/img/*", "/js/*"]);
        let cfg = SendConfig {
            rules: PathRules {
                query_strings: QueryStrings::Wildcard,
                ..PathRules::default()
            },
            ..SendConfig::default()
        };
        let (batches, _) = plan(vec!["/a.jpg".into()], vec!["/a.jpg?*".into()], &cfg);
        let sent: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.paths.iter().map(String::as_str))
            .collect();
        assert_eq!(sent, ["/a.jpg", "/a.jpg?*"]);
    }

    #[test]
    fn a_sender_that_strips_query_strings_sends_variants_tracked_with_them_once() {
        let cfg = SendConfig {
            rules: PathRules {
                query_strings: QueryStrings::Strip,
                ..PathRules::default()
            },
            ..SendConfig::default()
        };
        let tracked = ["/a.jpg?w=1", "/a.jpg?w=2", "/b.css"];
        let (batches, _) = plan(
            tracked.iter().map(|&u| u.into()).collect(),
            Vec::new(),
            &cfg,
        );
        let sent: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.paths.iter().map(String::as_str))
            .collect();
        assert_eq!(sent, ["/a.jpg", "/b.css"]);
        let mut covered: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.covers.iter().flatten().map(String::as_str))
            .collect();
        covered.sort_unstable();
        assert_eq!(
            covered, tracked,
            "every tracked variant is forgotten once its path is accepted"
        );
    }

    #[test]
    fn batches_respect_the_size_and_never_come_out_empty() {
        let cfg = SendConfig::default();
        for n in [1, 999, 1000, 1001, 2000, 2500] {
            let (batches, collapsed) = plan(urls(n), Vec::new(), &cfg);
            assert!(!collapsed);
            assert_eq!(batches.len(), n.div_ceil(1000), "n = {n}");
            assert!(batches
                .iter()
                .all(|b| !b.paths.is_empty() && b.paths.len() <= 1000));
            let total: usize = batches.iter().map(|b| b.covered().len()).sum();
            assert_eq!(total, n);
        }
        assert!(plan(Vec::new(), Vec::new(), &cfg).0.is_empty());
    }

    #[test]
    fn variants_stay_in_one_batch_and_each_form_is_sent_once() {
        let cfg = SendConfig {
            batch_size: 4,
            rules: PathRules {
                index_document: Some("index.html".into()),
                ..PathRules::default()
            },
            ..SendConfig::default()
        };
        let tracked = vec![
            "/docs/".to_string(),
            "/docs/index.html".to_string(),
            "/a".to_string(),
        ];
        let (batches, _) = plan(tracked, vec!["/img/*".into()], &cfg);
        let sent: Vec<&String> = batches.iter().flat_map(|b| &b.paths).collect();
        assert_eq!(sent.len(), 5, "{sent:?}"); // /a, /docs, /docs/, /docs/index.html, /img/*
        let docs = batches
            .iter()
            .find(|b| b.paths.contains(&"/docs/".to_string()))
            .unwrap();
        assert!(
            docs.paths.contains(&"/docs".to_string())
                && docs.paths.contains(&"/docs/index.html".to_string())
        );
        let mut covered: Vec<&String> = batches.iter().flat_map(|b| b.covered()).collect();
        covered.sort();
        assert_eq!(covered, ["/a", "/docs/", "/docs/index.html"]);
    }

    #[test]
    fn overflow_wildcards_ride_with_plain_urls_but_cover_nothing() {
        let (batches, _) = plan(urls(3), vec!["/img/*".into()], &SendConfig::default());
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].paths.len(), 4);
        assert_eq!(batches[0].covered(), &urls(3)[..]);
    }

    #[test]
    fn plain_batches_keep_the_urls_once() {
        let (batches, _) = plan(urls(10), Vec::new(), &SendConfig::default());
        assert!(batches.iter().all(|b| b.covers.is_none()));
    }

    #[test]
    fn caller_references_differ_per_batch_and_repeat_per_content() {
        let a = caller_reference("D", "c1", "0", &urls(3));
        assert_eq!(a, caller_reference("D", "c1", "0", &urls(3)));
        assert_ne!(a, caller_reference("D", "c1", "1", &urls(3)));
        assert_ne!(a, caller_reference("D", "c2", "0", &urls(3)));
        assert_ne!(a, caller_reference("E", "c1", "0", &urls(3)));
        assert_ne!(a, caller_reference("D", "c1", "0", &urls(4)));
    }

    #[test]
    fn cost_counts_only_paths_past_the_free_thousand() {
        assert_eq!(estimate(0, 1000), 0.0);
        assert!((estimate(0, 1001) - 0.005).abs() < 1e-9);
        assert!((estimate(900, 300) - 1.0).abs() < 1e-9);
        assert!((estimate(5000, 200) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_path_budget_collapses_into_covering_wildcards() {
        let cfg = SendConfig {
            max_paths: Some(10),
            ..SendConfig::default()
        };
        let tracked = urls(500);
        let (batches, collapsed) = plan(tracked.clone(), Vec::new(), &cfg);
        assert!(collapsed);
        let sent: Vec<&String> = batches.iter().flat_map(|b| &b.paths).collect();
        assert!(sent.len() <= 10);
        for t in &tracked {
            assert!(sent.iter().any(|s| paths::covers(s, t)), "{t} not covered");
        }
        let covered: usize = batches.iter().map(|b| b.covered().len()).sum();
        assert_eq!(covered, 500);
    }
}
