//! A store object written in JavaScript, driven through one threadsafe function.
//!
//! The JavaScript side (index.js) turns every calling style a store may use (a value, a Promise or thenable, a
//! node-style callback) into a Promise, binds `this` to the store and connects first when `isConnected()` says so.
//! Everything else happens here: timeouts, type checks, claims and batching are the same code as for native stores.
//! Claims live in this process only: a JavaScript store keeps no in-flight state of ours.

use super::memory::add_overflow;
use super::{
    month_key, new_claim_id, now_ms, Claim, Entry, Listing, PlannedBatch, PutOutcome, Store,
};
use crate::error::{Error, Result};
use crate::paths::{self, PathRules};
use async_trait::async_trait;
use futures::channel::oneshot;
use futures::{stream, StreamExt, TryStreamExt};
use napi::bindgen_prelude::{FromNapiValue, Promise, ToNapiValue};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{sys, Status, ValueType};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Store calls in flight at once during a bulk write.
const CONCURRENCY: usize = 64;

/// One call of a store method, as handed to the JavaScript dispatcher.
#[napi_derive::napi(object)]
pub struct StoreCall {
    /// The store method: `set`, `setTTL`, `del`, `getAllKeys`, `clearAll`, `disconnect`.
    pub method: String,
    /// Its key argument, if any.
    pub key: Option<String>,
    /// Its second argument: the value for `set`, seconds for `setTTL`.
    pub value: Option<f64>,
}

/// What a store method answered.
pub enum StoreReply {
    /// `undefined` or `null`.
    Nothing,
    /// An array of strings.
    Keys(Vec<String>),
    /// Anything else, described.
    Other(String),
}

impl FromNapiValue for StoreReply {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let mut raw_type = 0;
        // SAFETY: env and value come from napi for this call.
        unsafe { sys::napi_typeof(env, value, &mut raw_type) };
        let ty = ValueType::from(raw_type);
        match ty {
            ValueType::Undefined | ValueType::Null => Ok(StoreReply::Nothing),
            ValueType::Object => {
                let mut is_array = false;
                // SAFETY: as above.
                unsafe { sys::napi_is_array(env, value, &mut is_array) };
                if !is_array {
                    return Ok(StoreReply::Other("an object that is not an array".into()));
                }
                // SAFETY: as above.
                Ok(match unsafe { read_keys(env, value) } {
                    Some(keys) => StoreReply::Keys(keys),
                    None => {
                        // SAFETY: as above. A getter that threw leaves its exception pending: it is the store's
                        // wrong answer, reported as such, not thrown into the host.
                        unsafe { clear_pending_exception(env) };
                        StoreReply::Other("an array holding something that is not a string".into())
                    }
                })
            }
            other => Ok(StoreReply::Other(format!("a value of type {other}"))),
        }
    }
}

/// Keys reserved for ahead of reading an array: its `length` alone (a sparse array's, say) is no measure of memory.
const KEYS_RESERVED_MAX: usize = 1 << 16;

/// The strings of the JavaScript array `array`, read one by one; `None` at the first element that is not a string
/// (a hole included) or cannot be read.
///
/// # Safety
/// `env` and `array` must come from napi for the current call, and `array` must be an array.
unsafe fn read_keys(env: sys::napi_env, array: sys::napi_value) -> Option<Vec<String>> {
    let mut len = 0u32;
    // SAFETY: per this function's contract.
    if unsafe { sys::napi_get_array_length(env, array, &mut len) } != sys::Status::napi_ok {
        return None;
    }
    let mut keys = Vec::with_capacity((len as usize).min(KEYS_RESERVED_MAX));
    for i in 0..len {
        let mut element = std::ptr::null_mut();
        // SAFETY: as above.
        if unsafe { sys::napi_get_element(env, array, i, &mut element) } != sys::Status::napi_ok {
            return None;
        }
        let mut ty = 0;
        // SAFETY: as above; `element` was just read.
        unsafe { sys::napi_typeof(env, element, &mut ty) };
        if ValueType::from(ty) != ValueType::String {
            return None;
        }
        // SAFETY: as above; `element` is a string.
        keys.push(unsafe { String::from_napi_value(env, element) }.ok()?);
    }
    Some(keys)
}

/// Clears a JavaScript exception left pending by a failed read, if any.
///
/// # Safety
/// `env` must come from napi for the current call.
unsafe fn clear_pending_exception(env: sys::napi_env) {
    let mut pending = false;
    // SAFETY: per this function's contract.
    unsafe { sys::napi_is_exception_pending(env, &mut pending) };
    if pending {
        let mut exception = std::ptr::null_mut();
        // SAFETY: as above.
        unsafe { sys::napi_get_and_clear_last_exception(env, &mut exception) };
    }
}

impl ToNapiValue for StoreReply {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        match val {
            StoreReply::Keys(k) => unsafe { Vec::<String>::to_napi_value(env, k) },
            _ => unsafe { <()>::to_napi_value(env, ()) },
        }
    }
}

/// The dispatcher: `(call) => Promise<reply>`.
pub type Dispatch =
    ThreadsafeFunction<StoreCall, Promise<StoreReply>, StoreCall, Status, false, true>;

#[derive(Default)]
struct JsClaim {
    urls: HashSet<String>,
    overflow: Vec<String>,
    plan: Option<Vec<PlannedBatch>>,
    done: BTreeSet<usize>,
    splits: BTreeSet<String>,
    leased: bool,
    /// URLs of the claim stored again since it was made (or last resumed): not deleted when their batch is accepted,
    /// and, once no send holds the claim, taken by the next new claim too (the send leaves them out of it where its
    /// invalidations cover them).
    again: HashSet<String>,
    /// Of a new claim: the URLs it took from `again` of older claims, by claim id, given back to them with the claim.
    took: HashMap<String, HashSet<String>>,
}

#[derive(Default)]
struct State {
    overflow: BTreeSet<String>,
    claims: BTreeMap<String, JsClaim>,
    billed: HashMap<String, u64>,
    /// Keys as the store holds them, by the path they mean (a store written for the original package may hold raw
    /// URLs): `del` is called with these.
    raw_keys: HashMap<String, Vec<String>>,
    /// While a store without `del` is cleared of what a claim sent: the paths stored meanwhile, set again after
    /// `clearAll`.
    clearing: Option<HashSet<String>>,
    /// Held while a store without `del` is read, cleared and written again: one at a time, as each clear empties the
    /// store of what another may have just set again (two sends of one store object).
    clears: Arc<tokio::sync::Mutex<()>>,
}

/// A JavaScript store object behind the [`Store`] trait.
pub struct JsStore {
    dispatch: Arc<Dispatch>,
    methods: HashSet<String>,
    timeout: Duration,
    rules: PathRules,
    state: Arc<Mutex<State>>,
}

/// The state kept of each store object, by its id, while a tracker uses it: claims live in this process, so trackers
/// given the same object must share them, or each would claim (and send) what the other is sending.
static STATES: LazyLock<Mutex<HashMap<u32, Weak<Mutex<State>>>>> = LazyLock::new(Mutex::default);

/// The state of store object `id`, shared with the other trackers using it (a state of its own without an id).
fn state_of(id: Option<u32>) -> Arc<Mutex<State>> {
    let Some(id) = id else {
        return Arc::default();
    };
    let mut states = STATES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    states.retain(|_, state| state.strong_count() > 0);
    if let Some(state) = states.get(&id).and_then(Weak::upgrade) {
        return state;
    }
    let state = Arc::default();
    states.insert(id, Arc::downgrade(&state));
    state
}

impl JsStore {
    /// A store calling `dispatch`; `methods` names the optional methods the object has, `id` which object it is.
    pub fn new(
        dispatch: Dispatch,
        methods: Vec<String>,
        id: Option<u32>,
        timeout: Duration,
        rules: PathRules,
    ) -> Self {
        Self {
            dispatch: Arc::new(dispatch),
            methods: methods.into_iter().collect(),
            timeout,
            rules,
            state: state_of(id),
        }
    }

    fn has(&self, method: &str) -> bool {
        self.methods.contains(method)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn call(
        &self,
        method: &'static str,
        key: Option<String>,
        value: Option<f64>,
    ) -> Result<StoreReply> {
        let call = StoreCall {
            method: method.to_owned(),
            key,
            value,
        };
        let store_error = |e: napi::Error| Error::Store {
            method,
            message: e.reason.clone(),
        };
        let attempt = async {
            let promise = self
                .dispatch
                .call_async_catch(call)
                .await
                .map_err(store_error)?;
            promise.await.map_err(|e| {
                // The promise was garbage collected unsettled: the store dropped the callback it was given (or the
                // promise it returned) without answering, so nothing can ever settle it.
                if e.reason == oneshot::Canceled.to_string() {
                    Error::Store {
                        method,
                        message: "it will never answer: the callback it was given (or the promise it returned) was \
                                  dropped without being called (or settled)"
                            .into(),
                    }
                } else {
                    store_error(e)
                }
            })
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| Error::StoreTimeout {
                method,
                ms: self.timeout.as_millis() as u64,
            })?
    }

    async fn call_each(
        &self,
        method: &'static str,
        calls: Vec<(String, Option<f64>)>,
    ) -> Result<()> {
        stream::iter(calls)
            .map(|(key, value)| self.call(method, Some(key), value))
            .buffer_unordered(CONCURRENCY)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    /// Forgets what claim `claim_id` sent, in a store without `del`: the only way is `clearAll`, so every other path it
    /// holds (those other claims hold, those stored since the claim was made, those stored again since) is set again
    /// after it, and so is every path stored while it clears. What they lose is their TTL: a store without `del` cannot
    /// say it. The claim goes once the store is cleared: should reading or clearing the store fail, it stays, and the
    /// next send resumes it (every batch done) and clears again, rather than take what it sent for new URLs. When
    /// clearing failed (it may have cleared all the same, or may yet, if it timed out) or setting the others again
    /// failed, they stay tracked in this process as a claim of their own, for the next send.
    async fn clear_sent(&self, claim_id: &str) -> Result<()> {
        let clears = Arc::clone(&self.lock().clears);
        let _one_at_a_time = clears.lock().await;
        let sent: HashSet<String> = {
            let mut state = self.lock();
            let Some(claim) = state.claims.get(claim_id) else {
                return Ok(());
            };
            let others: HashSet<&String> = state
                .claims
                .iter()
                .filter(|(id, _)| id.as_str() != claim_id)
                .flat_map(|(_, c)| &c.urls)
                .collect();
            // Its URLs the send left out of its plan were covered by an older claim of the same send.
            let sent = claim
                .plan
                .iter()
                .flatten()
                .flat_map(|b| b.covered().iter())
                .chain(&claim.urls)
                .filter(|u| !claim.again.contains(*u) && !others.contains(u))
                .cloned()
                .collect();
            state.clearing = Some(HashSet::new());
            sent
        };
        let held = match self.all_keys().await {
            Ok(held) => held,
            Err(e) => {
                self.lock().clearing = None;
                return Err(e);
            }
        };
        let cleared = self.call("clearAll", None, None).await;
        let mut keep: BTreeSet<String> = held.into_iter().filter(|u| !sent.contains(u)).collect();
        {
            let mut state = self.lock();
            keep.extend(state.clearing.take().unwrap_or_default());
            if cleared.is_ok() {
                state.claims.remove(claim_id);
            }
        }
        match cleared {
            Ok(_) => self.set_again(keep).await,
            Err(e) => {
                self.hold(keep);
                Err(e)
            }
        }
    }

    /// Sets `urls` in the store again; when that fails, they stay tracked in this process as a claim of their own, for
    /// the next send.
    async fn set_again(&self, urls: impl IntoIterator<Item = String>) -> Result<()> {
        let urls: Vec<String> = urls.into_iter().collect();
        let sets = urls.iter().map(|u| (key_of(u), Some(1.0))).collect();
        let set = self.call_each("set", sets).await;
        if set.is_err() {
            self.hold(urls);
        }
        set
    }

    /// Keeps `urls` tracked in this process as a claim of their own, for the next send.
    fn hold(&self, urls: impl IntoIterator<Item = String>) {
        let urls: HashSet<String> = urls.into_iter().collect();
        if !urls.is_empty() {
            let claim = JsClaim {
                urls,
                ..JsClaim::default()
            };
            self.lock().claims.insert(new_claim_id(), claim);
        }
    }

    /// Every path the store holds, sorted, remembering under which keys it holds them.
    async fn all_keys(&self) -> Result<Vec<String>> {
        let keys = match self.call("getAllKeys", None, None).await? {
            StoreReply::Keys(keys) => keys,
            // An empty store answers an empty array: nothing at all is no answer (a callback given a default value,
            // say, so that the store was called without one).
            StoreReply::Nothing => {
                return Err(Error::Store {
                    method: "getAllKeys",
                    message:
                        "answered nothing (undefined or null); it must give an array of strings"
                            .into(),
                })
            }
            StoreReply::Other(what) => {
                return Err(Error::Store {
                    method: "getAllKeys",
                    message: format!("answered with {what}; it must give an array of strings"),
                })
            }
        };
        let mut by_path: HashMap<String, Vec<String>> = HashMap::with_capacity(keys.len());
        for key in keys {
            if let Some(path) = self.path_of(&key) {
                by_path.entry(path).or_default().push(key);
            }
        }
        let mut paths: Vec<String> = by_path.keys().cloned().collect();
        paths.sort_unstable();
        self.lock().raw_keys = by_path;
        Ok(paths)
    }

    /// The path a stored key means: a wildcard the tracker stored (under [`WILDCARD_KEY`]), or a URL normalised as
    /// today. A raw URL that ends in `*` (`/*`, stored as requested by a store of the original package) is a URL
    /// like any other, its `*` encoded: a URL from the internet never becomes a wildcard.
    fn path_of(&self, key: &str) -> Option<String> {
        match key.strip_prefix(WILDCARD_KEY) {
            Some(w) => paths::wildcard(w, &self.rules).ok().filter(|ok| ok == w),
            None => paths::normalize(key, &self.rules).ok(),
        }
    }

    /// `urls` parted in two: those of claim `claim_id` stored again since it was made (or last resumed), and the
    /// others.
    fn split_stored_again(&self, claim_id: &str, urls: &[String]) -> (Vec<String>, Vec<String>) {
        let state = self.lock();
        let again = state.claims.get(claim_id).map(|c| &c.again);
        urls.iter()
            .cloned()
            .partition(|u| again.is_some_and(|a| a.contains(u)))
    }

    /// The keys to delete for these paths.
    fn keys_of(&self, paths: &[String]) -> Vec<(String, Option<f64>)> {
        let state = self.lock();
        paths
            .iter()
            .flat_map(|p| match state.raw_keys.get(p) {
                Some(raw) => raw.clone(),
                None => vec![key_of(p)],
            })
            .map(|k| (k, None))
            .collect()
    }
}

/// Keys of the wildcards the tracker stores start with this: no request target a server receives does (Node answers
/// a request whose target holds a space with 400), so no raw URL a store holds can be taken for one.
const WILDCARD_KEY: &str = "wildcard ";

/// The key a path is stored under: itself, or for a wildcard (a normalised path ends in `*` only then), marked.
fn key_of(path: &str) -> String {
    if path.ends_with('*') {
        format!("{WILDCARD_KEY}{path}")
    } else {
        path.to_owned()
    }
}

fn ttl_secs(expires_at: u64) -> f64 {
    (expires_at.saturating_sub(now_ms()) as f64 / 1000.0)
        .ceil()
        .max(1.0)
}

#[async_trait]
impl Store for JsStore {
    fn kind(&self) -> &'static str {
        "custom"
    }

    fn can_block_on(&self) -> bool {
        false
    }

    async fn put(&self, entries: &[Entry], _max_tracked: usize) -> Result<PutOutcome> {
        {
            let mut state = self.lock();
            if let Some(clearing) = state.clearing.as_mut() {
                clearing.extend(entries.iter().map(|e| e.path.clone()));
            }
            for claim in state.claims.values_mut() {
                let again = entries
                    .iter()
                    .filter(|e| claim.urls.contains(&e.path))
                    .map(|e| e.path.clone());
                claim.again.extend(again);
            }
        }
        let sets = entries
            .iter()
            .map(|e| (key_of(&e.path), Some(1.0)))
            .collect();
        self.call_each("set", sets).await?;
        if self.has("setTTL") {
            let ttls = entries
                .iter()
                .filter_map(|e| e.expires_at.map(|x| (key_of(&e.path), Some(ttl_secs(x)))))
                .collect();
            self.call_each("setTTL", ttls).await?;
        }
        Ok(PutOutcome::default())
    }

    async fn put_overflow(&self, wildcards: &[String]) -> Result<()> {
        let mut state = self.lock();
        for w in wildcards {
            add_overflow(&mut state.overflow, w);
        }
        Ok(())
    }

    async fn set_expiries(&self, changes: &[Entry]) -> Result<()> {
        for Entry { path, expires_at } in changes {
            match *expires_at {
                Some(at) if self.has("setTTL") => {
                    self.call("setTTL", Some(key_of(path)), Some(ttl_secs(at)))
                        .await?;
                }
                // No expiry: stores of the original kind clear a TTL by setting the key again (a TTL of 0 would
                // delete it, as Redis's EXPIRE does).
                None => {
                    self.call("set", Some(key_of(path)), Some(1.0)).await?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    async fn remove(&self, paths: &[String]) -> Result<()> {
        if self.has("del") {
            self.call_each("del", self.keys_of(paths)).await?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Listing> {
        let keys = self.all_keys().await?;
        let state = self.lock();
        // What CloudFront took already, of each claim, and was not stored again since: in a store without `del` until
        // it is cleared, and in the claim until then.
        let mut sent: HashSet<&String> = HashSet::new();
        let mut urls = BTreeSet::new();
        let mut overflow = state.overflow.clone();
        for c in state.claims.values() {
            let done: HashSet<&String> = (c.plan.iter().flatten().enumerate())
                .filter(|(i, _)| c.done.contains(i))
                .flat_map(|(_, b)| b.covered())
                .filter(|u| !c.again.contains(*u))
                .collect();
            urls.extend(c.urls.iter().filter(|u| !done.contains(u)).cloned());
            overflow.extend(c.overflow.iter().cloned());
            sent.extend(done);
        }
        urls.extend(keys.into_iter().filter(|u| !sent.contains(u)));
        Ok(Listing {
            urls: urls.into_iter().collect(),
            overflow: overflow.into_iter().collect(),
        })
    }

    async fn claim(&self, _lease_ms: u64) -> Result<Vec<Claim>> {
        let keys = self.all_keys().await?;
        let mut state = self.lock();
        let mut claims = Vec::new();
        let mut in_flight: HashSet<&String> = HashSet::new();
        for (id, c) in state.claims.iter() {
            if c.leased {
                // Another send of this process holds them.
                in_flight.extend(c.urls.iter());
            } else {
                // Those stored again since it was made go in the new claim too (the send leaves out of it those that
                // this send's invalidations cover); the others are the claim's (its sent ones are in a store without
                // `del` until `clearAll`).
                in_flight.extend(c.urls.iter().filter(|u| !c.again.contains(*u)));
                claims.push(Claim {
                    id: id.clone(),
                    resumed: true,
                    urls: c.urls.iter().cloned().collect(),
                    overflow: c.overflow.clone(),
                    plan: c.plan.clone(),
                    done: c.done.clone(),
                    splits: c.splits.clone(),
                });
            }
        }
        let fresh: Vec<String> = keys
            .into_iter()
            .filter(|k| !in_flight.contains(k))
            .collect();
        let mut took = HashMap::new();
        let taken: HashSet<&String> = fresh.iter().collect();
        for c in &claims {
            if let Some(mine) = state.claims.get_mut(&c.id) {
                mine.leased = true;
                let (now, later) = std::mem::take(&mut mine.again)
                    .into_iter()
                    .partition(|u| taken.contains(u));
                mine.again = later;
                if !now.is_empty() {
                    took.insert(c.id.clone(), now);
                }
            }
        }
        let overflow: Vec<String> = std::mem::take(&mut state.overflow).into_iter().collect();
        if !fresh.is_empty() || !overflow.is_empty() {
            let id = new_claim_id();
            claims.push(Claim {
                id: id.clone(),
                resumed: false,
                urls: fresh.clone(),
                overflow: overflow.clone(),
                plan: None,
                done: BTreeSet::new(),
                splits: BTreeSet::new(),
            });
            state.claims.insert(
                id,
                JsClaim {
                    urls: fresh.into_iter().collect(),
                    overflow,
                    leased: true,
                    took,
                    ..JsClaim::default()
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
        let has_del = self.has("del");
        if has_del {
            // Forget exactly what CloudFront accepted, so URLs stored during the send survive it; a URL stored again
            // while its batch was in flight stays tracked for the next send.
            let (_, forget) = self.split_stored_again(claim_id, batch.covered());
            self.remove(&forget).await?;
            // A URL stored again while its `del` was on the way may have been deleted after it was set: set again.
            let (again, _) = self.split_stored_again(claim_id, &forget);
            let sets = again.into_iter().map(|u| (key_of(&u), Some(1.0))).collect();
            self.call_each("set", sets).await?;
        }
        let mut state = self.lock();
        if let Some(c) = state.claims.get_mut(claim_id) {
            c.done.insert(index);
            if has_del {
                let gone: HashSet<&String> = batch.covered().iter().collect();
                c.urls.retain(|u| !gone.contains(u));
            }
            // Without `del` the URLs stay in the store until `clearAll`, so they stay in the claim: a later send must
            // not take them for new ones.
        }
        *state.billed.entry(month_key(now_ms())).or_default() += billed as u64;
        Ok(())
    }

    async fn renew(&self, _claim_id: &str, _lease_ms: u64) -> Result<()> {
        Ok(())
    }

    async fn release(&self, claim_id: &str) -> Result<()> {
        if let Some(c) = self.lock().claims.get_mut(claim_id) {
            c.leased = false;
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
        // The store still holds the claim's URLs: once the claim is gone, the next claim takes them again, those it
        // took of older claims stored again included.
        let took: Vec<String> = {
            let mut state = self.lock();
            let Some(c) = state.claims.remove(claim_id) else {
                return Ok(());
            };
            for w in &c.overflow {
                add_overflow(&mut state.overflow, w);
            }
            let mut took = Vec::new();
            for (older, urls) in c.took {
                took.extend(urls.iter().cloned());
                if let Some(o) = state.claims.get_mut(&older) {
                    o.again.extend(urls);
                }
            }
            took
        };
        // Those an older claim's accepted batch covered were deleted with it, as this claim had them: set again.
        if self.has("del") {
            self.set_again(took).await?;
        }
        Ok(())
    }

    async fn finish(&self, claim_id: &str) -> Result<()> {
        if self.has("del") {
            self.lock().claims.remove(claim_id);
            return Ok(());
        }
        self.clear_sent(claim_id).await
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
        if self.has("disconnect") {
            self.call("disconnect", None, None).await?;
        }
        Ok(())
    }
}
