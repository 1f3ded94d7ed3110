//! The native in-memory store (`store: 'memory://'`): one process, nothing survives it.

use super::{
    month_key, new_claim_id, now_ms, Claim, Entry, Listing, PlannedBatch, PutOutcome, Store,
};
use crate::error::Result;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

/// Most overflow wildcards kept before the flood guard falls back to `/*`.
pub(crate) const MAX_OVERFLOW_WILDCARDS: usize = 1000;

#[derive(Default)]
struct MemClaim {
    urls: HashMap<String, Option<u64>>,
    overflow: BTreeSet<String>,
    plan: Option<Vec<PlannedBatch>>,
    done: BTreeSet<usize>,
    splits: BTreeSet<String>,
    lease_until: u64,
}

#[derive(Default)]
struct State {
    urls: HashMap<String, Option<u64>>,
    overflow: BTreeSet<String>,
    claims: BTreeMap<String, MemClaim>,
    billed: HashMap<String, u64>,
    claims_made: u64,
}

impl State {
    fn purge_expired(&mut self, now: u64) {
        self.urls.retain(|_, exp| exp.is_none_or(|e| e > now));
    }
}

/// Tracked URLs in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Names claims `<name>-<n>` instead of at random (see [`MemoryStore::with_claim_names`]).
    claim_names: Option<String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose claims are named `<name>-0`, `<name>-1`, … For a short-lived tracker that replays one
    /// piece of work (an S3 event Lambda may deliver again): the same work gets the same CallerReferences, so what
    /// CloudFront accepted the first time is not billed again.
    pub fn with_claim_names(name: String) -> Self {
        Self {
            claim_names: Some(name),
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way later calls trip on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The later of two expiries (`None`: none, the latest).
fn later(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    a.zip(b).map(|(a, b)| a.max(b))
}

/// Adds `wildcard` to an overflow set, keeping it bounded.
pub(crate) fn add_overflow(set: &mut BTreeSet<String>, wildcard: &str) {
    if set.len() < MAX_OVERFLOW_WILDCARDS || set.contains(wildcard) {
        set.insert(wildcard.to_owned());
    } else {
        set.insert("/*".to_owned());
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn put(&self, entries: &[Entry], max_tracked: usize) -> Result<PutOutcome> {
        let mut state = self.lock();
        state.purge_expired(now_ms());
        let mut outcome = PutOutcome::default();
        for entry in entries {
            if state.urls.len() < max_tracked || state.urls.contains_key(&entry.path) {
                state.urls.insert(entry.path.clone(), entry.expires_at);
            } else {
                add_overflow(
                    &mut state.overflow,
                    &crate::paths::overflow_wildcard(&entry.path),
                );
                outcome.overflowed += 1;
            }
        }
        Ok(outcome)
    }

    async fn put_overflow(&self, wildcards: &[String]) -> Result<()> {
        let mut state = self.lock();
        for w in wildcards {
            add_overflow(&mut state.overflow, w);
        }
        Ok(())
    }

    async fn set_expiries(&self, changes: &[Entry]) -> Result<()> {
        let mut state = self.lock();
        for Entry { path, expires_at } in changes {
            if let Some(exp) = state.urls.get_mut(path) {
                *exp = *expires_at;
            }
            // Also in the claims of sends under way: a claim given back keeps it.
            for claim in state.claims.values_mut() {
                if let Some(exp) = claim.urls.get_mut(path) {
                    *exp = *expires_at;
                }
            }
        }
        Ok(())
    }

    async fn remove(&self, paths: &[String]) -> Result<()> {
        let mut state = self.lock();
        for p in paths {
            state.urls.remove(p);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Listing> {
        let mut state = self.lock();
        state.purge_expired(now_ms());
        let mut urls: BTreeSet<String> = state.urls.keys().cloned().collect();
        let mut overflow = state.overflow.clone();
        for claim in state.claims.values() {
            urls.extend(claim.urls.keys().cloned());
            overflow.extend(claim.overflow.iter().cloned());
        }
        Ok(Listing {
            urls: urls.into_iter().collect(),
            overflow: overflow.into_iter().collect(),
        })
    }

    async fn claim(&self, lease_ms: u64) -> Result<Vec<Claim>> {
        let now = now_ms();
        let mut state = self.lock();
        state.purge_expired(now);
        let mut claims = Vec::new();
        for (id, c) in state.claims.iter_mut() {
            if c.lease_until <= now {
                c.lease_until = now + lease_ms;
                claims.push(Claim {
                    id: id.clone(),
                    resumed: true,
                    urls: c.urls.keys().cloned().collect(),
                    overflow: c.overflow.iter().cloned().collect(),
                    plan: c.plan.clone(),
                    done: c.done.clone(),
                    splits: c.splits.clone(),
                });
            }
        }
        if !state.urls.is_empty() || !state.overflow.is_empty() {
            let id = match &self.claim_names {
                Some(name) => format!("{name}-{}", state.claims_made),
                None => new_claim_id(),
            };
            state.claims_made += 1;
            let urls = std::mem::take(&mut state.urls);
            let overflow = std::mem::take(&mut state.overflow);
            claims.push(Claim {
                id: id.clone(),
                resumed: false,
                urls: urls.keys().cloned().collect(),
                overflow: overflow.iter().cloned().collect(),
                plan: None,
                done: BTreeSet::new(),
                splits: BTreeSet::new(),
            });
            state.claims.insert(
                id,
                MemClaim {
                    urls,
                    overflow,
                    plan: None,
                    done: BTreeSet::new(),
                    splits: BTreeSet::new(),
                    lease_until: now + lease_ms,
                },
            );
        }
        Ok(claims)
    }

    async fn save_plan(
        &self,
        claim_id: &str,
        plan: Vec<PlannedBatch>,
    ) -> Result<Vec<PlannedBatch>> {
        match self.lock().claims.get_mut(claim_id) {
            Some(c) => Ok(c.plan.get_or_insert(plan).clone()),
            None => Ok(plan),
        }
    }

    async fn batch_split(&self, claim_id: &str, label: &str) -> Result<()> {
        if let Some(c) = self.lock().claims.get_mut(claim_id) {
            c.splits.insert(label.to_owned());
        }
        Ok(())
    }

    async fn batch_done(
        &self,
        claim_id: &str,
        index: usize,
        batch: &PlannedBatch,
        billed: usize,
    ) -> Result<()> {
        let mut state = self.lock();
        if let Some(c) = state.claims.get_mut(claim_id) {
            c.done.insert(index);
            for url in batch.covered() {
                c.urls.remove(url);
            }
        }
        *state.billed.entry(month_key(now_ms())).or_default() += billed as u64;
        Ok(())
    }

    async fn renew(&self, claim_id: &str, lease_ms: u64) -> Result<()> {
        if let Some(c) = self.lock().claims.get_mut(claim_id) {
            c.lease_until = now_ms() + lease_ms;
        }
        Ok(())
    }

    async fn release(&self, claim_id: &str) -> Result<()> {
        if let Some(c) = self.lock().claims.get_mut(claim_id) {
            c.lease_until = 0;
        }
        Ok(())
    }

    async fn give_back(&self, claim_id: &str) -> Result<()> {
        let planned = self
            .lock()
            .claims
            .get(claim_id)
            .is_some_and(|c| c.plan.is_some());
        if planned {
            return self.release(claim_id).await;
        }
        let mut state = self.lock();
        if let Some(c) = state.claims.remove(claim_id) {
            for (url, expires_at) in c.urls {
                state
                    .urls
                    .entry(url)
                    .and_modify(|e| *e = later(*e, expires_at))
                    .or_insert(expires_at);
            }
            for w in &c.overflow {
                add_overflow(&mut state.overflow, w);
            }
        }
        Ok(())
    }

    async fn finish(&self, claim_id: &str) -> Result<()> {
        self.lock().claims.remove(claim_id);
        Ok(())
    }

    async fn billed_this_month(&self) -> Result<u64> {
        Ok(self
            .lock()
            .billed
            .get(&month_key(now_ms()))
            .copied()
            .unwrap_or(0))
    }

    async fn disconnect(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: path.into(),
            expires_at: None,
        }
    }

    fn batch(paths: &[&str]) -> PlannedBatch {
        PlannedBatch::plain(paths.iter().map(|p| p.to_string()).collect())
    }

    #[tokio::test]
    async fn a_claim_takes_everything_and_later_puts_stay_tracked() {
        let store = MemoryStore::new();
        store.put(&[entry("/a"), entry("/b")], 10).await.unwrap();
        let claims = store.claim(60_000).await.unwrap();
        assert_eq!(claims.len(), 1);
        store.put(&[entry("/during")], 10).await.unwrap();
        // A second sender while the first holds its lease claims only what came since.
        let second = store.claim(60_000).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].urls, vec!["/during"]);
        assert!(!second[0].resumed);
    }

    #[tokio::test]
    async fn a_released_claim_is_resumed_with_its_plan_and_done_batches() {
        let store = MemoryStore::new();
        store.put(&[entry("/a"), entry("/b")], 10).await.unwrap();
        let claim = store.claim(60_000).await.unwrap().remove(0);
        let plan = vec![batch(&["/a"]), batch(&["/b"])];
        store.save_plan(&claim.id, plan.clone()).await.unwrap();
        store
            .batch_done(&claim.id, 0, &plan[0], plan[0].paths.len())
            .await
            .unwrap();
        store.release(&claim.id).await.unwrap();
        assert_eq!(store.list().await.unwrap().urls, vec!["/b"]);

        let resumed = store.claim(60_000).await.unwrap().remove(0);
        assert!(resumed.resumed);
        assert_eq!(resumed.id, claim.id);
        assert_eq!(resumed.plan, Some(plan.clone()));
        assert!(resumed.done.contains(&0));
        // Whoever saves a plan second gets the first one back.
        let other = vec![batch(&["/b", "/a"])];
        assert_eq!(store.save_plan(&claim.id, other).await.unwrap(), plan);
        store.finish(&claim.id).await.unwrap();
        assert!(store.list().await.unwrap().urls.is_empty());
        assert_eq!(store.billed_this_month().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn the_flood_guard_records_wildcards_instead_of_growing() {
        let store = MemoryStore::new();
        let many: Vec<Entry> = (0..100).map(|i| entry(&format!("/img/{i}"))).collect();
        let outcome = store.put(&many, 10).await.unwrap();
        assert_eq!(outcome.overflowed, 90);
        let listing = store.list().await.unwrap();
        assert_eq!(listing.urls.len(), 10);
        assert_eq!(listing.overflow, vec!["/img/*"]);
        let claim = store.claim(1000).await.unwrap().remove(0);
        assert_eq!(claim.overflow, vec!["/img/*"]);
        // Claimed and not yet sent, the wildcard is still listed.
        assert_eq!(store.list().await.unwrap().overflow, vec!["/img/*"]);
        // An already tracked URL is updated, not overflowed.
        store.put(&[entry("/img/0")], 0).await.unwrap();
    }

    #[tokio::test]
    async fn expired_urls_are_not_listed_or_claimed() {
        let store = MemoryStore::new();
        let past = Entry {
            path: "/old".into(),
            expires_at: Some(now_ms() - 1),
        };
        store.put(&[past, entry("/new")], 10).await.unwrap();
        assert_eq!(store.list().await.unwrap().urls, vec!["/new"]);
        assert_eq!(store.claim(1000).await.unwrap()[0].urls, vec!["/new"]);
    }
}
