//! The send: claim what is tracked, plan batches, send each batch exactly once, forget exactly what CloudFront
//! accepted, and say what happened.

use crate::cloudfront::{
    is_completed, CfFailure, CloudFront, InProgress, MAX_IN_PROGRESS_PATHS,
    MAX_IN_PROGRESS_WILDCARDS,
};
use crate::error::{Error, Result};
use crate::paths::{self, PathRules, QueryStrings};
use crate::store::{Claim, PlannedBatch, Store};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
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
    /// CloudFront's invalidation id, once accepted.
    pub id: Option<String>,
    /// The CallerReference it was (or would be) sent with.
    pub caller_reference: Option<String>,
    /// `InProgress`, `Completed`, `Kept` (not sent, still tracked) or `DryRun`.
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
    /// Batches resumed from an earlier send.
    pub resumed: usize,
    /// Wildcards sent to cover URLs the flood guard could not store one by one.
    pub overflow: Vec<String>,
    /// True when `maxPaths` made the send collapse paths into wildcards.
    pub collapsed: bool,
    /// Paths billed by this send.
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

/// Builds the batches for a set of tracked URLs (and flood-guard wildcards). Returns the plan and whether `maxPaths`
/// made it collapse paths into wildcards.
pub fn plan(urls: &[String], overflow: &[String], cfg: &SendConfig) -> (Vec<PlannedBatch>, bool) {
    let mut sorted: Vec<&String> = urls.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let variants =
        cfg.rules.index_document.is_some() || cfg.rules.query_strings == QueryStrings::Wildcard;
    // Each sent path once, with the tracked URLs behind it. Without variants a URL is its own single path.
    let mut units: Vec<(Vec<String>, String)> = Vec::with_capacity(sorted.len() + overflow.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for url in sorted {
        let paths = if variants {
            paths::send_paths(url, &cfg.rules)
        } else {
            vec![url.clone()]
        };
        if variants {
            let fresh: Vec<String> = paths
                .iter()
                .filter(|p| !seen.contains_key(*p))
                .cloned()
                .collect();
            if fresh.is_empty() {
                // Every form is already sent for another URL: ride along with the first one.
                if let Some(&i) = paths.first().and_then(|p| seen.get(p)) {
                    units[i].1.push('\n');
                    units[i].1.push_str(url);
                }
                continue;
            }
            for p in &fresh {
                seen.insert(p.clone(), units.len());
            }
            units.push((fresh, url.clone()));
        } else {
            units.push((paths, url.clone()));
        }
    }
    for w in overflow {
        units.push((vec![w.clone()], String::new()));
    }
    let total: usize = units.iter().map(|u| u.0.len()).sum();
    if total > cfg.max_paths.unwrap_or(usize::MAX) {
        return (collapse_plan(units, cfg), true);
    }
    (pack(units, cfg.batch_size), false)
}

/// Packs units (sent paths + the tracked URLs behind them, newline-joined) into batches of at most `batch_size` paths
/// and at most 15 wildcards each; a unit's paths stay together.
fn pack(units: Vec<(Vec<String>, String)>, batch_size: usize) -> Vec<PlannedBatch> {
    let mut batches: Vec<PlannedBatch> = Vec::new();
    let mut current = PlannedBatch::default();
    let mut wild = 0;
    for (paths, behind) in units {
        let unit_wild = paths.iter().filter(|p| paths::is_wildcard(p)).count();
        let full = current.paths.len() + paths.len() > batch_size
            || wild + unit_wild > MAX_IN_PROGRESS_WILDCARDS;
        if full && !current.paths.is_empty() {
            batches.push(std::mem::take(&mut current));
            wild = 0;
        }
        wild += unit_wild;
        current.paths.extend(paths);
        current.covers.extend(
            behind
                .split('\n')
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
        );
    }
    if !current.paths.is_empty() {
        batches.push(current);
    }
    batches
}

/// The plan when there are more paths than `maxPaths`: the most specific wildcard cover within the budget.
fn collapse_plan(units: Vec<(Vec<String>, String)>, cfg: &SendConfig) -> Vec<PlannedBatch> {
    let all: Vec<String> = units.iter().flat_map(|u| u.0.iter().cloned()).collect();
    let budget = cfg.max_paths.unwrap_or(usize::MAX).max(1);
    let cover = paths::collapse(&all, budget, MAX_IN_PROGRESS_WILDCARDS);
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
    let mut behind: Vec<String> = vec![String::new(); cover.len()];
    for (paths, urls) in &units {
        let Some(first) = paths.first() else { continue };
        let slot = exact.get(first.as_str()).copied().or_else(|| {
            wild.iter()
                .find(|(_, w)| paths::covers(w, first))
                .map(|(i, _)| *i)
        });
        if let Some(i) = slot {
            behind[i].push('\n');
            behind[i].push_str(urls);
        }
    }
    let units = cover.iter().cloned().map(|p| vec![p]).zip(behind).collect();
    pack(units, cfg.batch_size)
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

/// Logger the sender reports progress to.
pub trait Log: Send + Sync {
    /// Informational line.
    fn info(&self, msg: &str);
    /// Something went wrong but the send goes on.
    fn warn(&self, msg: &str);
}

/// A logger that says nothing.
pub struct Silent;
impl Log for Silent {
    fn info(&self, _: &str) {}
    fn warn(&self, _: &str) {}
}

struct Sender<'a> {
    store: &'a dyn Store,
    cf: &'a CloudFront,
    cfg: &'a SendConfig,
    log: &'a dyn Log,
    deadline: Instant,
    /// What this send believes is in progress on the distribution; re-read from CloudFront when it looks full.
    in_progress: Option<InProgress>,
    /// False once CloudFront refused to list invalidations: the send then relies on TooManyInvalidationsInProgress.
    pacing: bool,
    /// When the lease was last renewed.
    renewed: Instant,
}

enum BatchOutcome {
    Accepted(Vec<(String, String)>),
    Kept(Error),
}

impl Sender<'_> {
    async fn pause(&mut self, claim_id: &str, d: Duration) {
        let d = d.min(self.deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(d).await;
        match self
            .store
            .renew(claim_id, self.cfg.lease.as_millis() as u64)
            .await
        {
            Ok(()) => self.renewed = Instant::now(),
            Err(e) => self
                .log
                .warn(&format!("could not renew the send's lease: {e}")),
        }
    }

    fn timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Waits until the distribution has room for `paths`; false when the deadline passed first.
    async fn wait_for_room(
        &mut self,
        claim_id: &str,
        paths: &[String],
        retries: &mut u32,
    ) -> Result<bool> {
        let wild = paths.iter().filter(|p| paths::is_wildcard(p)).count();
        let files = paths.len() - wild;
        loop {
            let fits = |ip: &InProgress| {
                ip.paths + files <= MAX_IN_PROGRESS_PATHS
                    && ip.wildcards + wild <= MAX_IN_PROGRESS_WILDCARDS
            };
            if !self.pacing || self.in_progress.as_ref().is_some_and(fits) {
                return Ok(true);
            }
            match self.cf.in_progress().await {
                Ok(ip) if fits(&ip) => {
                    self.in_progress = Some(ip);
                    return Ok(true);
                }
                Ok(ip) => {
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
                Err(other) => self.log.warn(&format!("{}", Error::from(other))),
            }
            if self.timed_out() {
                return Ok(false);
            }
            *retries += 1;
            self.pause(claim_id, self.cfg.poll_interval).await;
        }
    }

    /// Sends one planned batch, splitting it if CloudFront says it is too large.
    async fn send_batch(
        &mut self,
        claim_id: &str,
        index: usize,
        paths: &[String],
        retries: &mut u32,
    ) -> BatchOutcome {
        let mut pending: Vec<(String, Vec<String>)> = vec![(index.to_string(), paths.to_vec())];
        let mut accepted = Vec::new();
        let mut backoff = Duration::from_millis(200);
        let mut transient = 0;
        while let Some((label, chunk)) = pending.pop() {
            let reference = caller_reference(self.cf.dist(), claim_id, &label, &chunk);
            loop {
                match self.wait_for_room(claim_id, &chunk, retries).await {
                    Ok(true) => {}
                    Ok(false) => return BatchOutcome::Kept(self.deadline_error()),
                    Err(e) => return BatchOutcome::Kept(e),
                }
                match self.cf.create_invalidation(&chunk, &reference).await {
                    Ok(created) => {
                        if let Some(ip) = self.in_progress.as_mut() {
                            let wild = chunk.iter().filter(|p| paths::is_wildcard(p)).count();
                            ip.wildcards += wild;
                            ip.paths += chunk.len() - wild;
                        }
                        accepted.push((created.id, reference.clone()));
                        backoff = Duration::from_millis(200);
                        transient = 0;
                        break;
                    }
                    Err(CfFailure::BatchTooLarge(_)) if chunk.len() > 1 => {
                        let (a, b) = chunk.split_at(chunk.len() / 2);
                        self.log
                            .info(&format!("Batch too large: splitting {} paths", chunk.len()));
                        pending.push((format!("{label}.1"), b.to_vec()));
                        pending.push((format!("{label}.0"), a.to_vec()));
                        break;
                    }
                    Err(CfFailure::TooManyInProgress(msg)) => {
                        // Our estimate was wrong: re-read it after a pause.
                        self.in_progress = None;
                        self.log
                            .info(&format!("CloudFront is busy ({msg}); waiting"));
                    }
                    Err(CfFailure::Transient(msg)) if transient >= MAX_TRANSIENT_FAILURES => {
                        return BatchOutcome::Kept(CfFailure::Transient(msg).into())
                    }
                    Err(CfFailure::Transient(msg)) => {
                        transient += 1;
                        self.log
                            .warn(&format!("CloudFront did not answer ({msg}); retrying"));
                    }
                    Err(CfFailure::BatchTooLarge(m)) => {
                        return BatchOutcome::Kept(CfFailure::BatchTooLarge(m).into())
                    }
                    Err(CfFailure::Fatal { code, message }) => {
                        return BatchOutcome::Kept(Error::CloudFront { code, message })
                    }
                }
                if self.timed_out() {
                    return BatchOutcome::Kept(self.deadline_error());
                }
                *retries += 1;
                let pause = if self.in_progress.is_none() {
                    self.cfg.poll_interval
                } else {
                    backoff
                };
                self.pause(claim_id, pause).await;
                backoff = (backoff * 2).min(Duration::from_secs(20));
            }
        }
        BatchOutcome::Accepted(accepted)
    }

    fn deadline_error(&self) -> Error {
        Error::Timeout(format!(
            "sendTimeoutMs ({} ms) passed; unsent paths stay tracked for the next send",
            self.cfg.send_timeout.as_millis()
        ))
    }

    async fn send_claim(&mut self, claim: Claim, report: &mut SendReport) -> Result<()> {
        let plan = match claim.plan {
            Some(plan) => plan,
            None => {
                let (plan, collapsed) = plan(&claim.urls, &claim.overflow, self.cfg);
                report.collapsed |= collapsed;
                self.store.save_plan(&claim.id, plan).await?
            }
        };
        report.overflow.extend(claim.overflow.iter().cloned());
        let mut failure: Option<Error> = None;
        for (index, batch) in plan.iter().enumerate() {
            if claim.done.contains(&index) {
                continue;
            }
            let mut entry = BatchReport {
                status: "Kept".into(),
                paths: batch.paths.clone(),
                resumed: claim.resumed,
                ..BatchReport::default()
            };
            if failure.is_none() {
                self.log.info(&format!(
                    "Sending invalidation to CloudFront... ({} paths)",
                    batch.paths.len()
                ));
                match self
                    .send_batch(&claim.id, index, &batch.paths, &mut entry.retries)
                    .await
                {
                    BatchOutcome::Accepted(created) => {
                        self.store.batch_done(&claim.id, index, batch).await?;
                        if self.renewed.elapsed() > self.cfg.lease / 3 {
                            self.store
                                .renew(&claim.id, self.cfg.lease.as_millis() as u64)
                                .await?;
                            self.renewed = Instant::now();
                        }
                        self.log.info("Success! 201");
                        let (ids, refs): (Vec<_>, Vec<_>) = created.into_iter().unzip();
                        entry.id = Some(ids.join(","));
                        entry.caller_reference = Some(refs.join(","));
                        entry.status = "InProgress".into();
                        report.paths += batch.paths.len();
                        report.billed_paths += batch.paths.len() as u64;
                        report.resumed += usize::from(claim.resumed);
                    }
                    BatchOutcome::Kept(e) => {
                        self.log.warn(&format!("Error! {e}"));
                        failure = Some(e);
                    }
                }
            }
            if entry.status == "Kept" {
                entry.error = failure.as_ref().map(ToString::to_string);
                entry.caller_reference = Some(caller_reference(
                    self.cf.dist(),
                    &claim.id,
                    &index.to_string(),
                    &batch.paths,
                ));
                report.kept += batch.covers.len();
            }
            report.batches.push(entry);
        }
        match failure {
            None => self.store.finish(&claim.id).await,
            Some(e) => {
                self.store.release(&claim.id).await?;
                report.error.get_or_insert(e);
                Ok(())
            }
        }
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
                for id in ids {
                    match self.cf.invalidation_status(&id).await {
                        Ok(status) => {
                            all_done &= is_completed(&status);
                            last = status;
                        }
                        Err(e) => {
                            all_done = false;
                            self.log.warn(&format!("{}", Error::from(e)));
                        }
                    }
                }
                if all_done {
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
        let urls = store.list().await?;
        let (planned, collapsed) = plan(&urls, &[], cfg);
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
    let claims = store.claim(cfg.lease.as_millis() as u64).await?;
    let mut sender = Sender {
        store,
        cf,
        cfg,
        log,
        deadline: Instant::now() + cfg.send_timeout,
        in_progress: None,
        pacing: true,
        renewed: Instant::now(),
    };
    let mut seen = HashSet::new();
    for claim in claims {
        if !seen.insert(claim.id.clone()) {
            continue;
        }
        let id = claim.id.clone();
        if let Err(e) = sender.send_claim(claim, &mut report).await {
            // The store failed mid-send: give the claim back so the next send resumes it.
            let _ = store.release(&id).await;
            return Err(e);
        }
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
    report.billed_this_month = billed_before + report.billed_paths;
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
    fn batches_respect_the_size_and_never_come_out_empty() {
        let cfg = SendConfig::default();
        for n in [1, 999, 1000, 1001, 2000, 2500] {
            let (batches, collapsed) = plan(&urls(n), &[], &cfg);
            assert!(!collapsed);
            assert_eq!(batches.len(), n.div_ceil(1000), "n = {n}");
            assert!(batches
                .iter()
                .all(|b| !b.paths.is_empty() && b.paths.len() <= 1000));
            let total: usize = batches.iter().map(|b| b.covers.len()).sum();
            assert_eq!(total, n);
        }
        assert!(plan(&[], &[], &cfg).0.is_empty());
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
        let (batches, collapsed) = plan(&tracked, &[], &cfg);
        assert!(collapsed);
        let sent: Vec<&String> = batches.iter().flat_map(|b| &b.paths).collect();
        assert!(sent.len() <= 10);
        for t in &tracked {
            assert!(sent.iter().any(|s| paths::covers(s, t)), "{t} not covered");
        }
        let covered: usize = batches.iter().map(|b| b.covers.len()).sum();
        assert_eq!(covered, 500);
    }
}
