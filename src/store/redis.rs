//! The Redis store: every key under one prefix in a `{hash tag}`, so a cluster keeps them in one slot.
//!
//! Layout, for prefix `cfit`:
//! - `{cfit}:urls` — sorted set of tracked paths, scored by expiry (Unix ms, `+inf` for none);
//! - `{cfit}:overflow` — set of flood-guard wildcards;
//! - `{cfit}:claims` — sorted set of claim ids, scored by lease deadline;
//! - `{cfit}:holders` — hash of claim id to the store (a random id per store object) that made or last resumed it;
//! - `{cfit}:claim:<id>:urls|overflow|plan|done` — one claim: its URLs, wildcards, saved plan and accepted batches;
//! - `{cfit}:billed:<YYYY-MM>` — paths billed this month.
//!
//! Claiming is a RENAME inside a Lua script, so it is atomic against concurrent `put`s and other senders. No command
//! ever names a key outside the prefix, and nothing lists the keyspace.

use super::memory::MAX_OVERFLOW_WILDCARDS;
use super::{
    month_key, new_claim_id, now_ms, Claim, Entry, Listing, PlannedBatch, PutOutcome, Store,
};
use crate::error::{Error, Result};
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, Script};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// Entries written by one script call; calls run concurrently over the multiplexed connection.
const PUT_CHUNK: usize = 2000;
/// Planned batches written or read per command.
const PLAN_CHUNK: usize = 16;
/// Members read per page when reading large sets.
const READ_PAGE: isize = 10_000;
/// How long a month's bill counter is kept.
const BILL_TTL_SECS: i64 = 40 * 86_400;

/// Connection settings of a Redis store.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://…`.
    pub url: String,
    /// Key prefix; wrapped in `{…}` unless it already holds a hash tag.
    pub prefix: String,
    /// Per-command response timeout.
    pub response_timeout: Duration,
    /// Connect timeout.
    pub connection_timeout: Duration,
    /// Certificates of a `rediss://` connection, when not the public authorities alone.
    pub tls: Option<RedisTls>,
    /// A Redis Cluster: `url` and `cluster_nodes` are nodes to learn it from; each command goes to the node that
    /// serves its key's slot.
    pub cluster: bool,
    /// More nodes of the cluster to learn it from, should the first be down.
    pub cluster_nodes: Vec<String>,
    /// A master that Redis Sentinel names; `url` then gives only its scheme, credentials and database.
    pub sentinel: Option<RedisSentinel>,
}

/// The Sentinels to ask for a master.
#[derive(Clone)]
pub struct RedisSentinel {
    /// The master's name, as the Sentinels monitor it.
    pub name: String,
    /// `redis://[user:pass@]host:port` of Sentinels (`rediss://` for TLS), asked in turn.
    pub nodes: Vec<String>,
}

impl RedisConfig {
    /// Settings with the default prefix and timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "cfit".into(),
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(2),
            tls: None,
            cluster: false,
            cluster_nodes: Vec::new(),
            sentinel: None,
        }
    }
}

/// Never prints the URL's credentials nor any certificate or key.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self
            .cluster_nodes
            .iter()
            .map(|u| without_credentials(u))
            .collect();
        f.debug_struct("RedisConfig")
            .field("url", &without_credentials(&self.url))
            .field("prefix", &self.prefix)
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .field("cluster_nodes", &nodes)
            .field(
                "sentinel",
                &self.sentinel.as_ref().map(|s| {
                    let nodes: Vec<String> =
                        s.nodes.iter().map(|u| without_credentials(u)).collect();
                    (s.name.clone(), nodes)
                }),
            )
            .finish()
    }
}

/// `url` with its `user:password@` shown as `***@`.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The certificates of a TLS connection to Redis, in PEM.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// Certificate authorities to trust instead of the public ones.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its private key, for servers that ask for one (mutual TLS).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = |set: bool| if set { "<given>" } else { "<none>" };
        f.debug_struct("RedisTls")
            .field("ca", &given(self.ca.is_some()))
            .field("client", &given(self.client.is_some()))
            .finish()
    }
}

/// The client of a single server, of a cluster, or of the master Sentinels name.
#[allow(clippy::large_enum_variant)] // one per store
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// A connection to a single server or to a cluster; over a cluster, each command goes to the node that serves its
/// key's slot (every key of a store shares one slot, so a script or a pipeline goes to one node).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    /// The master a Sentinel named, and whether it failed as a server that is no longer the master would (gone,
    /// unreachable, or read-only now): then the next call asks the Sentinels again.
    Sentinel(ConnectionManager, Arc<AtomicBool>),
}

impl Conn {
    fn lost(&self) -> bool {
        matches!(self, Conn::Sentinel(_, lost) if lost.load(Ordering::Relaxed))
    }
}

/// True when a master named by a Sentinel failed as one that is no longer the master would.
fn master_lost(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.kind(), redis::ErrorKind::Server(kind) if demoted(kind))
}

/// True for the error replies of a server that is no longer a master (READONLY, MASTERDOWN).
fn demoted(kind: redis::ServerErrorKind) -> bool {
    matches!(
        kind,
        redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown
    )
}

/// Whether `reply` tells that a master named by a Sentinel is lost: a failure, or an error reply (which a command's
/// caller turns into its error) that only a server no longer the master answers.
trait Reply {
    fn lost(&self) -> bool;
}

impl Reply for redis::Value {
    fn lost(&self) -> bool {
        matches!(self, redis::Value::ServerError(e) if e.kind().is_some_and(demoted))
    }
}

impl Reply for Vec<redis::Value> {
    fn lost(&self) -> bool {
        self.iter().any(Reply::lost)
    }
}

/// `result`, after marking a Sentinel's master lost when it tells so.
fn watch<T: Reply>(lost: &AtomicBool, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
    let gone = match &result {
        Ok(reply) => reply.lost(),
        Err(e) => master_lost(e),
    };
    if gone {
        lost.store(true, Ordering::Relaxed);
    }
    result
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c, lost) => {
                let lost = lost.clone();
                let reply = c.req_packed_command(cmd);
                Box::pin(async move { watch(&lost, reply.await) })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(c, lost) => {
                let lost = lost.clone();
                let replies = c.req_packed_commands(cmd, offset, count);
                Box::pin(async move { watch(&lost, replies.await) })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) | Conn::Sentinel(c, _) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The client for `config`: its URLs checked (an error never shows one, it may hold a password), and its
/// certificates read when it has some.
fn client_for(config: &RedisConfig) -> Result<Client> {
    let sentinels = config.sentinel.iter().flat_map(|s| s.nodes.iter());
    let urls: Vec<&str> = std::iter::once(config.url.as_str())
        .chain(config.cluster_nodes.iter().map(String::as_str))
        .chain(sentinels.map(String::as_str))
        .collect();
    let mut infos = Vec::with_capacity(urls.len());
    for url in &urls {
        infos.push(url.into_connection_info().map_err(|e| {
            Error::InvalidArgument(format!("redis: not a valid Redis URL ({:?})", e.kind()))
        })?);
    }
    let tls = match &config.tls {
        None => None,
        Some(tls) => {
            if let Some(url) = urls.iter().find(|u| !u.starts_with("rediss://")) {
                let url = without_credentials(url);
                return Err(Error::InvalidArgument(format!(
                    "redis.tls: certificates need rediss:// URLs, not {url}"
                )));
            }
            Some(certificates(tls)?)
        }
    };
    if let Some(sentinel) = &config.sentinel {
        let sentinels = &infos[1 + config.cluster_nodes.len()..];
        return sentinel_client(config, sentinel, &infos[0], sentinels, tls);
    }
    if !config.cluster {
        let client = match tls {
            None => redis::Client::open(config.url.as_str()),
            Some(certificates) => redis::Client::build_with_tls(config.url.as_str(), certificates),
        };
        return client.map(Client::Single).map_err(|e| {
            Error::InvalidArgument(format!("redis.tls: the certificates cannot be used: {e}"))
        });
    }
    if infos.iter().any(|i| i.redis_settings().db() != 0) {
        return Err(Error::InvalidArgument(
            "redis.cluster: a cluster has only database 0 (no /<db> in its URLs)".into(),
        ));
    }
    let insecure = infos.iter().any(unverified);
    let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
        .connection_timeout(config.connection_timeout)
        .response_timeout(config.response_timeout);
    if insecure {
        // Set before the certificates, which would otherwise ask for verified TLS.
        builder = builder.tls(redis::TlsMode::Insecure);
    }
    if let Some(certificates) = tls {
        builder = builder.certs(certificates);
    }
    builder.build().map(Client::Cluster).map_err(|e| {
        Error::InvalidArgument(format!(
            "redis.cluster: the cluster's settings cannot be used: {e}"
        ))
    })
}

/// The client of the master `sentinel` names: `master` gives its scheme, credentials and database; the first of
/// `nodes` (the Sentinels' URLs, parsed) gives the Sentinels' credentials.
fn sentinel_client(
    config: &RedisConfig,
    sentinel: &RedisSentinel,
    master: &redis::ConnectionInfo,
    nodes: &[redis::ConnectionInfo],
    tls: Option<redis::TlsCertificates>,
) -> Result<Client> {
    use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    if config.cluster {
        return Err(Error::InvalidArgument(
            "redis: a Sentinel names one master, not a cluster (give sentinel or cluster)".into(),
        ));
    }
    let Some(first) = nodes.first() else {
        return Err(Error::InvalidArgument(
            "redis.sentinel: no Sentinel to ask".into(),
        ));
    };
    let refused = |e: redis::RedisError| Error::InvalidArgument(format!("redis.sentinel: {e}"));
    let mut builder = SentinelClientBuilder::new(
        nodes.iter().map(|n| n.addr().clone()),
        &sentinel.name,
        SentinelServerType::Master,
    )
    .map_err(refused)?;
    let theirs = first.redis_settings();
    if let Some(user) = theirs.username() {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = theirs.password() {
        builder = builder.set_client_to_sentinel_password(password);
    }
    let ours = master.redis_settings();
    builder = builder.set_client_to_redis_db(ours.db());
    if let Some(user) = ours.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = ours.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if sentinel.nodes.iter().any(|u| u.starts_with("rediss://")) {
        builder = builder.set_client_to_sentinel_tls_mode(tls_mode(nodes));
        if let Some(certificates) = &tls {
            builder = builder.set_client_to_sentinel_certificates(certificates.clone());
        }
    }
    if config.url.starts_with("rediss://") {
        builder = builder.set_client_to_redis_tls_mode(tls_mode(std::slice::from_ref(master)));
        if let Some(certificates) = tls {
            builder = builder.set_client_to_redis_certificates(certificates);
        }
    }
    let client = builder.build().map_err(refused)?;
    Ok(Client::Sentinel(tokio::sync::Mutex::new(client)))
}

/// True for a `rediss://…#insecure` URL: TLS without checking the server's certificate.
fn unverified(info: &redis::ConnectionInfo) -> bool {
    matches!(
        info.addr(),
        redis::ConnectionAddr::TcpTls { insecure: true, .. }
    )
}

/// The TLS mode of connections to the servers of `infos`: unverified when one of their URLs asks for it.
fn tls_mode(infos: &[redis::ConnectionInfo]) -> redis::TlsMode {
    if infos.iter().any(unverified) {
        redis::TlsMode::Insecure
    } else {
        redis::TlsMode::Secure
    }
}

/// The certificates of `tls`, checked as a connection will use them.
fn certificates(tls: &RedisTls) -> Result<redis::TlsCertificates> {
    if let Some(ca) = &tls.ca {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let certs = CertificateDer::pem_slice_iter(ca)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "redis.tls: the ca cannot be read: {}",
                    pem_error(&e)
                ))
            })?;
        if certs.is_empty() {
            return Err(Error::InvalidArgument(
                "redis.tls: the ca has no certificate in it (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
    }
    if let Some((cert, key)) = &tls.client {
        check_client_certificate(cert, key)?;
    }
    Ok(redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.ca.clone(),
    })
}

/// What is wrong with a PEM text, in words that never quote it (it may be a private key).
fn pem_error(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error as Pem;
    match e {
        Pem::MissingSectionEnd { .. } => "a section has no END line",
        Pem::IllegalSectionStart { .. } => {
            "a BEGIN line is malformed (line breaks written as \\n?)"
        }
        Pem::Base64Decode(_) => "a section is not base64",
        Pem::NoItemsFound => "no PEM section of the right kind in it",
        _ => "not PEM",
    }
}

/// Checks a client certificate and key as a connection will use them (the key is readable and belongs to the
/// certificate), so that a wrong pair is refused up front, not at every connection attempt.
fn check_client_certificate(cert: &[u8], key: &[u8]) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let refused =
        |why: String| Error::InvalidArgument(format!("redis.tls: the client certificate {why}"));
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("cannot be read: {}", pem_error(&e))))?;
    if chain.is_empty() {
        return Err(refused("has no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        Error::InvalidArgument(format!(
            "redis.tls: the client certificate's private key cannot be read: {}",
            pem_error(&e)
        ))
    })?;
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)
        .map(|_| ())
        .map_err(|e| refused(format!("and key cannot be used together: {e}")))
}

struct Keys {
    urls: String,
    overflow: String,
    claims: String,
    holders: String,
    gen: String,
    base: String,
}

/// True when Redis Cluster hashes keys that start with `prefix` by a tag in it: its first `{` is followed, later, by
/// a `}` with something between.
fn has_hash_tag(prefix: &str) -> bool {
    prefix
        .find('{')
        .and_then(|open| prefix[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let base = if has_hash_tag(prefix) {
            prefix.to_owned()
        } else {
            format!("{{{prefix}}}")
        };
        Self {
            urls: format!("{base}:urls"),
            overflow: format!("{base}:overflow"),
            claims: format!("{base}:claims"),
            holders: format!("{base}:holders"),
            gen: format!("{base}:gen"),
            base,
        }
    }
    fn claim(&self, id: &str, part: &str) -> String {
        format!("{}:claim:{id}:{part}", self.base)
    }
    fn billed(&self, month: &str) -> String {
        format!("{}:billed:{month}", self.base)
    }
}

// KEYS: urls, gen. ARGV: now, most tracked, expected generation ('' for none), generation to start with (when the
// key is missing), '1' when some score is finite, then (score, path) pairs.
//
// The generation changes whenever a tracked URL may have left the set (a claim, a removal, an expiry set): a writer
// that saw generation G and finds it unchanged knows that every URL it stored since G is still tracked, so it need
// not send them again. With an expected generation that is not the current one, or when the set is gone though the
// generation is not (evicted by a maxmemory policy, or deleted by hand), nothing is written and the answer is
// {generation, 1}: the writer sends everything again. A write that recreates the set starts a new generation, whether
// it checked one or not, so that no writer takes the URLs the set lost for tracked. Otherwise each path is tracked (or
// its expiry updated) while fewer than `max` are tracked, in a few variadic ZADDs when all fit, and the answer is
// {generation, 0, paths that did not fit…}.
// The generation a writer sees is the counter and this server's replication id: a replica promoted to master (a
// failover) has a new one, and may lack the last writes the old master acknowledged, so its writers send everything
// again too. (Where INFO is denied, by an ACL or a managed service, the counter alone.)
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now, max = ARGV[1], tonumber(ARGV[2])
local gen = redis.call('GET', KEYS[2])
local started = not gen
if started then gen = ARGV[4]; redis.call('SET', KEYS[2], gen) end
local info = redis.pcall('INFO', 'replication')
local replid = type(info) == 'string' and string.match(info, 'master_replid:(%w+)') or ''
local function id(g) return g .. '@' .. replid end
if ARGV[3] ~= '' and ARGV[3] ~= id(gen) then return {id(gen), 1} end
if not started and redis.call('EXISTS', KEYS[1]) == 0 then
  gen = tostring(redis.call('INCR', KEYS[2]))
  if ARGV[3] ~= '' then return {id(gen), 1} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[5] == '1' then
  for i = 6, #ARGV, 2 do
    if ARGV[i] ~= '+inf' and redis.call('ZSCORE', KEYS[1], ARGV[i + 1]) == 'inf' then
      gen = tostring(redis.call('INCR', KEYS[2]))
      break
    end
  end
end
local n = redis.call('ZCARD', KEYS[1])
if n + (#ARGV - 5) / 2 <= max then
  for i = 6, #ARGV, 1000 do
    redis.call('ZADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  return {id(gen), 0}
end
local out = {id(gen), 0}
for i = 6, #ARGV, 2 do
  local path = ARGV[i + 1]
  if n < max or redis.call('ZSCORE', KEYS[1], path) then
    n = n + redis.call('ZADD', KEYS[1], ARGV[i], path)
  else
    out[#out + 1] = path
  end
end
return out
"#,
    )
});

// KEYS: urls, gen. ARGV: paths. Stops tracking them; a new generation when one was tracked.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local removed = 0
for i = 1, #ARGV, 1000 do
  removed = removed + redis.call('ZREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if removed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[2]) end
return removed
"#,
    )
});

// KEYS: urls, gen, claims, then the URLs of each claim. ARGV: '1' to check the claims, their ids, then score and path
// of each change. Changes the expiry of each tracked path, also in the claims of sends under way (a claim given back
// keeps it); a new generation when one changed. Returns -1, changing nothing, when checked claims are not those given
// (one was made or dropped meanwhile).
static SET_EXPIRIES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local claims = #KEYS - 3
if ARGV[1] == '1' then
  if redis.call('ZCARD', KEYS[3]) ~= claims then return -1 end
  for i = 2, claims + 1 do
    if not redis.call('ZSCORE', KEYS[3], ARGV[i]) then return -1 end
  end
end
local changed = 0
for j = claims + 2, #ARGV, 2 do
  for i = 4, #KEYS do redis.call('ZADD', KEYS[i], 'XX', ARGV[j], ARGV[j + 1]) end
  changed = changed + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[j], ARGV[j + 1])
end
if changed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[2]) end
return changed
"#,
    )
});

/// Tries of SET_EXPIRIES while claims come and go.
const SET_EXPIRY_TRIES: usize = 5;

// KEYS: overflow. ARGV: most wildcards, then wildcards. Records each, keeping the set bounded ('/*' past the bound).
static PUT_OVERFLOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local max = tonumber(ARGV[1])
for i = 2, #ARGV do
  local w = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], w) == 0 and redis.call('SCARD', KEYS[1]) >= max then w = '/*' end
  redis.call('SADD', KEYS[1], w)
end
return 0
"#,
    )
});

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(stale) do redis.call('ZADD', KEYS[3], now + lease, id) end
local made = 0
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[4]); made = 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[5]); made = 1 end
if made == 1 then redis.call('ZADD', KEYS[3], now + lease, ARGV[3]) end
if made == 1 and redis.call('EXISTS', KEYS[6]) == 1 then redis.call('INCR', KEYS[6]) end
for _, id in ipairs(stale) do redis.call('HSET', KEYS[7], id, ARGV[4]) end
if made == 1 then redis.call('HSET', KEYS[7], ARGV[3], ARGV[4]) end
return {stale, made}
"#,
    )
});

// KEYS: claims, plan, draft. ARGV: id. Makes the draft (written in chunks) the claim's plan unless the claim is gone or
// another sender saved a plan first. Returns 1 when the draft became the plan, 0 when a plan existed, -1 when the
// claim is gone.
static SAVE_PLAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then redis.call('DEL', KEYS[3]); return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DEL', KEYS[3]); return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('PERSIST', KEYS[3]); redis.call('RENAME', KEYS[3], KEYS[2]) end
return 1
"#,
    )
});

// KEYS: claims, done, claim urls, bill. ARGV: id, index, paths billed, bill ttl, covered urls…
static BATCH_DONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
for i = 5, #ARGV, 1000 do
  redis.call('ZREM', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('INCRBY', KEYS[4], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[4])
return 1
"#,
    )
});

// KEYS: claims, claim done. ARGV: id, split mark. Records a split in a claim that still exists.
static BATCH_SPLIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then redis.call('SADD', KEYS[2], ARGV[2]) end
return 0
"#,
    )
});

/// How a split is marked in a claim's set of done batches (whose other members are indices).
const SPLIT_MARK: &str = "s:";

// KEYS: claims, urls, overflow, claim urls, claim overflow, claim plan, claim done, holders. ARGV: id, most wildcards,
// holder. Tracks a claim's URLs and wildcards again (a URL tracked meanwhile keeps the later expiry; the wildcards
// within their bound, as PUT_OVERFLOW keeps it) and drops the claim, unless it has a plan: then it is released. Does
// nothing when another sender holds the claim now (it resumed it since). Returns 1 when given back.
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local holder = redis.call('HGET', KEYS[8], ARGV[1])
if holder and holder ~= ARGV[3] then return 0 end
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[1]); return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[4], 'AGGREGATE', 'MAX')
end
local max = tonumber(ARGV[2])
for _, w in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  if redis.call('SISMEMBER', KEYS[3], w) == 0 and redis.call('SCARD', KEYS[3]) >= max then w = '/*' end
  redis.call('SADD', KEYS[3], w)
end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[7])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[8], ARGV[1])
return 1
"#,
    )
});

// KEYS: claims, holders. ARGV: id, new deadline (0 to release), holder. Changes the lease of a claim that still exists,
// unless another sender holds it now (it resumed it since). Returns 1 when changed.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if holder and holder ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"#,
    )
});

/// Tracked URLs in Redis, shared by every process that uses the same server and prefix.
pub struct RedisStore {
    client: Client,
    config: RedisConfig,
    /// The server as errors of reaching it name it: its URL without credentials, or the cluster's or Sentinel's.
    shown: Arc<str>,
    keys: Keys,
    conn: Mutex<Option<Conn>>,
    known: Mutex<Known>,
    /// Who this store is, as the holder of the claims it makes or resumes: a renewal, release or give-back changes a
    /// claim only while this store holds it, so a sender that stalled past its lease (a long pause, a frozen VM)
    /// leaves alone a claim another sender resumed since.
    holder: String,
}

/// A generation for PUT to start from when the key is missing (a new or emptied Redis): random, so that it differs
/// from any generation seen before. 52 bits, an exact number in Lua.
fn new_generation() -> u64 {
    std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), now_ms())
        >> 12
}

/// URLs this store wrote without expiry, and the generation they were written in. A URL is kept as a 128-bit
/// fingerprint (two independently seeded hashes): 16 bytes rather than a copy of the string, and a collision, which
/// would skip a URL not written, is about as likely as 2^-100 per lookup.
#[derive(Default)]
struct Known {
    generation: Option<String>,
    paths: HashSet<u128, foldhash::fast::RandomState>,
    seeds: (
        foldhash::quality::RandomState,
        foldhash::quality::RandomState,
    ),
}

impl Known {
    fn fingerprint(&self, path: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.seeds.0.hash_one(path)) << 64) | u128::from(self.seeds.1.hash_one(path))
    }

    fn contains(&self, path: &str) -> bool {
        self.paths.contains(&self.fingerprint(path))
    }

    fn insert(&mut self, path: &str) {
        let f = self.fingerprint(path);
        self.paths.insert(f);
    }
}

/// Most URLs remembered as written; past it, the memory starts over.
const KNOWN_MAX: usize = 200_000;

/// What the PUT calls of one write answered.
#[derive(Default)]
struct Written {
    generations: BTreeSet<String>,
    /// For each chunk: the generation was not the one expected, so nothing was written.
    stale: Vec<bool>,
    over: Vec<String>,
}

impl RedisStore {
    /// A store for this server and prefix. Opens no connection: the first call connects.
    pub fn new(config: RedisConfig) -> Result<Self> {
        let client = client_for(&config)?;
        if config.prefix.is_empty() {
            return Err(Error::InvalidArgument(
                "redis.prefix must not be empty".into(),
            ));
        }
        let shown = match &config.sentinel {
            Some(sentinel) => format!("the master the Sentinels call {}", sentinel.name),
            None if config.cluster => {
                format!("the Redis Cluster of {}", without_credentials(&config.url))
            }
            None => without_credentials(&config.url),
        };
        Ok(Self {
            keys: Keys::new(&config.prefix),
            client,
            config,
            shown: shown.into(),
            conn: Mutex::new(None),
            known: Mutex::new(Known::default()),
            holder: new_claim_id(),
        })
    }

    /// Gives a claim the lease `until` (0: run out), unless another sender holds it now.
    async fn set_lease(&self, claim_id: &str, until: u64) -> Result<()> {
        self.located(async {
            let mut con = self.conn().await?;
            RENEW
                .key(&self.keys.claims)
                .key(&self.keys.holders)
                .arg(claim_id)
                .arg(until)
                .arg(&self.holder)
                .invoke_async::<i64>(&mut con)
                .await?;
            Ok(())
        })
        .await
    }

    /// Runs `work`; a Redis failure names the server, without credentials (redis-rs says only "Connection refused"
    /// or "AuthenticationFailed", which does not tell which of several servers or settings).
    async fn located<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        work.await.map_err(|e| match e {
            Error::Redis { source, at: None } => Error::Redis {
                source,
                at: Some(self.shown.clone()),
            },
            e => e,
        })
    }

    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection, made on first use (and after `disconnect`). A single server's reconnects by itself; a
    /// cluster's is made once the cluster answers (a failure leaves it to the next call), then follows the cluster's
    /// changes by itself.
    async fn conn(&self) -> Result<Conn> {
        if let Some(conn) = self.lock_conn().as_ref().filter(|c| !c.lost()) {
            return Ok(conn.clone());
        }
        let conn = match &self.client {
            Client::Single(client) => Conn::Single(self.manager(client.clone())?),
            Client::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            Client::Sentinel(sentinel) => {
                let master = sentinel.lock().await.async_get_client().await?;
                Conn::Sentinel(self.manager(master)?, Arc::new(AtomicBool::new(false)))
            }
        };
        // Of two calls that connected at once, the first to get here is kept.
        let mut slot = self.lock_conn();
        match slot.as_ref().filter(|c| !c.lost()) {
            Some(kept) => Ok(kept.clone()),
            None => Ok(slot.insert(conn).clone()),
        }
    }

    /// A connection to one server that reconnects by itself, made on first use.
    fn manager(&self, client: redis::Client) -> Result<ConnectionManager> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.connection_timeout))
            .set_response_timeout(Some(self.config.response_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        Ok(ConnectionManager::new_lazy_with_config(client, cfg)?)
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs PUT over `entries` in concurrent chunks (one chunk, with no entries, just to check `expected`).
    async fn put_chunks(
        &self,
        entries: &[&Entry],
        max_tracked: usize,
        expected: &str,
    ) -> Result<Written> {
        let con = self.conn().await?;
        let now = now_ms().to_string();
        let start = new_generation().to_string();
        let chunks: Vec<&[&Entry]> = if entries.is_empty() {
            vec![&[]]
        } else {
            entries.chunks(PUT_CHUNK).collect()
        };
        let calls = chunks.into_iter().map(|chunk| {
            let mut con = con.clone();
            let mut inv = PUT.prepare_invoke();
            let finite = chunk.iter().any(|e| e.expires_at.is_some());
            inv.key(&self.keys.urls)
                .key(&self.keys.gen)
                .arg(&now)
                .arg(max_tracked)
                .arg(expected)
                .arg(&start)
                .arg(if finite { "1" } else { "0" });
            for e in chunk {
                inv.arg(score(e.expires_at)).arg(&e.path);
            }
            async move { inv.invoke_async::<Vec<String>>(&mut con).await }
        });
        let mut written = Written::default();
        for reply in futures::future::join_all(calls).await {
            let mut reply = reply?.into_iter();
            let (Some(generation), Some(stale)) = (reply.next(), reply.next()) else {
                return Err(Error::Internal("PUT answered without a generation".into()));
            };
            written.stale.push(stale == "1");
            written.generations.insert(generation);
            written.over.extend(reply);
        }
        Ok(written)
    }

    /// Records what a PUT wrote without expiry under the generation it answered, and covers what did not fit.
    async fn finish_put(&self, entries: &[&Entry], written: Written) -> Result<PutOutcome> {
        {
            let mut known = self.lock_known();
            let mut generations = written.generations.into_iter();
            match (generations.next(), generations.next()) {
                (Some(g), None) => {
                    if known.generation.as_ref() != Some(&g) || known.paths.len() > KNOWN_MAX {
                        known.paths.clear();
                        known.generation = Some(g);
                    }
                    let over: BTreeSet<&str> = written.over.iter().map(String::as_str).collect();
                    for e in entries {
                        if e.expires_at.is_none() && !over.contains(e.path.as_str()) {
                            known.insert(&e.path);
                        }
                    }
                }
                // The generation changed while the chunks ran: nothing is known for sure.
                _ => {
                    known.paths.clear();
                    known.generation = None;
                }
            }
        }
        let mut outcome = PutOutcome::default();
        let mut wildcards = BTreeSet::new();
        for path in &written.over {
            outcome.overflowed += 1;
            wildcards.insert(crate::paths::overflow_wildcard(path));
        }
        if !wildcards.is_empty() {
            let wildcards: Vec<String> = wildcards.into_iter().collect();
            self.put_overflow(&wildcards).await?;
        }
        Ok(outcome)
    }

    async fn read_zset(&self, con: &mut Conn, key: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut start = 0isize;
        loop {
            let page: Vec<String> = con.zrange(key, start, start + READ_PAGE - 1).await?;
            let n = page.len() as isize;
            out.extend(page);
            if n < READ_PAGE {
                return Ok(out);
            }
            start += n;
        }
    }

    async fn read_plan(&self, con: &mut Conn, id: &str) -> Result<Vec<PlannedBatch>> {
        let key = self.keys.claim(id, "plan");
        let mut plan = Vec::new();
        let mut start = 0isize;
        loop {
            let page: Vec<String> = con
                .lrange(&key, start, start + PLAN_CHUNK as isize - 1)
                .await?;
            let n = page.len();
            plan.extend(decode_plan(&page)?);
            if n < PLAN_CHUNK {
                return Ok(plan);
            }
            start += n as isize;
        }
    }

    async fn read_claim(&self, con: &mut Conn, id: &str, resumed: bool) -> Result<Claim> {
        let urls = self.read_zset(con, &self.keys.claim(id, "urls")).await?;
        let overflow: Vec<String> = con.smembers(self.keys.claim(id, "overflow")).await?;
        let plan = self.read_plan(con, id).await?;
        // The indices of the batches done, and the labels of the batches and parts split, marked `s:`.
        let marks: Vec<String> = con.smembers(self.keys.claim(id, "done")).await?;
        let (mut done, mut splits) = (BTreeSet::new(), BTreeSet::new());
        for mark in marks {
            match mark.strip_prefix(SPLIT_MARK) {
                Some(label) => splits.insert(label.to_owned()),
                None => done.insert(mark.parse().map_err(|_| {
                    Error::Internal(format!("claim {id}: a done batch reads {mark:?}"))
                })?),
            };
        }
        let plan = (!plan.is_empty()).then_some(plan);
        Ok(Claim {
            id: id.to_owned(),
            resumed,
            urls,
            overflow,
            plan,
            done,
            splits,
        })
    }
}

/// A planned batch as saved in Redis; `c` (the URLs covered) is left out when they are `p` (the paths sent), as they
/// are unless directory variants, query wildcards or a collapse are in play.
#[derive(serde::Serialize)]
struct WireOut<'a> {
    p: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    c: Option<&'a [String]>,
}

#[derive(serde::Deserialize)]
struct WireIn {
    p: Vec<String>,
    #[serde(default)]
    c: Option<Vec<String>>,
}

fn encode_batch(batch: &PlannedBatch) -> Result<String> {
    let wire = WireOut {
        p: &batch.paths,
        c: batch.covers.as_deref(),
    };
    serde_json::to_string(&wire).map_err(|e| Error::Internal(format!("cannot encode a plan: {e}")))
}

fn decode_plan(raw: &[String]) -> Result<Vec<PlannedBatch>> {
    raw.iter()
        .map(|s| {
            let wire: WireIn = serde_json::from_str(s).map_err(|e| {
                Error::Internal(format!("a saved plan in Redis is unreadable: {e}"))
            })?;
            Ok(PlannedBatch {
                paths: wire.p,
                covers: wire.c,
            })
        })
        .collect()
}

fn score(expires_at: Option<u64>) -> String {
    expires_at.map_or_else(|| "+inf".to_owned(), |ms| ms.to_string())
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn put(&self, entries: &[Entry], max_tracked: usize) -> Result<PutOutcome> {
        self.located(async {
            // URLs this store wrote without expiry in the current generation are in Redis still: only the others travel,
            // with the generation for Redis to check. Where it changed, nothing was written, and the skipped URLs go too.
            let (expected, fresh, skipped) = {
                let known = self.lock_known();
                let (fresh, skipped): (Vec<&Entry>, Vec<&Entry>) = match &known.generation {
                    Some(_) => entries
                        .iter()
                        .partition(|e| e.expires_at.is_some() || !known.contains(&e.path)),
                    None => (entries.iter().collect(), Vec::new()),
                };
                (known.generation.clone(), fresh, skipped)
            };
            let expected = match expected {
                Some(g) if !skipped.is_empty() => g,
                _ => {
                    let written = self.put_chunks(&fresh, max_tracked, "").await?;
                    return self.finish_put(&fresh, written).await;
                }
            };
            let mut written = self.put_chunks(&fresh, max_tracked, &expected).await?;
            if !written.stale.iter().any(|&s| s) {
                return self.finish_put(&fresh, written).await;
            }
            let mut again = skipped;
            for (chunk, stale) in fresh.chunks(PUT_CHUNK).zip(&written.stale) {
                if *stale {
                    again.extend_from_slice(chunk);
                }
            }
            let retried = self.put_chunks(&again, max_tracked, "").await?;
            // What the first try wrote is not remembered: only what was written without a check.
            written.generations = retried.generations;
            written.over.extend(retried.over);
            self.finish_put(&again, written).await
        })
        .await
    }

    async fn put_overflow(&self, wildcards: &[String]) -> Result<()> {
        self.located(async {
            let mut con = self.conn().await?;
            for chunk in wildcards.chunks(PUT_CHUNK) {
                let mut inv = PUT_OVERFLOW.prepare_invoke();
                inv.key(&self.keys.overflow).arg(MAX_OVERFLOW_WILDCARDS);
                for w in chunk {
                    inv.arg(w);
                }
                inv.invoke_async::<i64>(&mut con).await?;
            }
            Ok(())
        })
        .await
    }

    async fn set_expiries(&self, changes: &[Entry]) -> Result<()> {
        self.located(async {
            let mut con = self.conn().await?;
            // Claims are few and short-lived: when one was made or dropped between reading them and the change, they
            // are read again and the change tried again; the last try changes the claims read, unchecked.
            let mut ids: Vec<String> = con.zrange(&self.keys.claims, 0, -1).await?;
            for chunk in changes.chunks(PUT_CHUNK) {
                for attempt in 1..=SET_EXPIRY_TRIES {
                    let check = if attempt < SET_EXPIRY_TRIES { "1" } else { "0" };
                    let mut inv = SET_EXPIRIES.prepare_invoke();
                    inv.key(&self.keys.urls)
                        .key(&self.keys.gen)
                        .key(&self.keys.claims)
                        .arg(check);
                    for id in &ids {
                        inv.key(self.keys.claim(id, "urls")).arg(id);
                    }
                    for e in chunk {
                        inv.arg(score(e.expires_at)).arg(&e.path);
                    }
                    if inv.invoke_async::<i64>(&mut con).await? >= 0 {
                        break;
                    }
                    ids = con.zrange(&self.keys.claims, 0, -1).await?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn remove(&self, paths: &[String]) -> Result<()> {
        self.located(async {
            if paths.is_empty() {
                return Ok(());
            }
            let mut con = self.conn().await?;
            for chunk in paths.chunks(PUT_CHUNK) {
                REMOVE
                    .key(&self.keys.urls)
                    .key(&self.keys.gen)
                    .arg(chunk)
                    .invoke_async::<i64>(&mut con)
                    .await?;
            }
            Ok(())
        })
        .await
    }

    async fn list(&self) -> Result<Listing> {
        self.located(async {
            let mut con = self.conn().await?;
            let now = now_ms();
            let tracked: Vec<String> = con
                .zrangebyscore(&self.keys.urls, format!("({now}"), "+inf")
                .await?;
            let mut urls: BTreeSet<String> = tracked.into_iter().collect();
            let waiting: Vec<String> = con.smembers(&self.keys.overflow).await?;
            let mut overflow: BTreeSet<String> = waiting.into_iter().collect();
            let ids: Vec<String> = con.zrange(&self.keys.claims, 0, -1).await?;
            for id in ids {
                urls.extend(
                    self.read_zset(&mut con, &self.keys.claim(&id, "urls"))
                        .await?,
                );
                let claimed: Vec<String> = con.smembers(self.keys.claim(&id, "overflow")).await?;
                overflow.extend(claimed);
            }
            Ok(Listing {
                urls: urls.into_iter().collect(),
                overflow: overflow.into_iter().collect(),
            })
        })
        .await
    }

    async fn claim(&self, lease_ms: u64) -> Result<Vec<Claim>> {
        self.located(async {
            let mut con = self.conn().await?;
            let id = new_claim_id();
            let now = now_ms();
            let (stale, made): (Vec<String>, i64) = CLAIM
                .key(&self.keys.urls)
                .key(&self.keys.overflow)
                .key(&self.keys.claims)
                .key(self.keys.claim(&id, "urls"))
                .key(self.keys.claim(&id, "overflow"))
                .key(&self.keys.gen)
                .key(&self.keys.holders)
                .arg(now)
                .arg(lease_ms)
                .arg(&id)
                .arg(&self.holder)
                .invoke_async(&mut con)
                .await?;
            let mut claims = Vec::with_capacity(stale.len() + 1);
            for old in stale {
                claims.push(self.read_claim(&mut con, &old, true).await?);
            }
            if made == 1 {
                claims.push(self.read_claim(&mut con, &id, false).await?);
            }
            Ok(claims)
        })
        .await
    }

    async fn save_plan(
        &self,
        claim_id: &str,
        plan: Vec<PlannedBatch>,
    ) -> Result<Vec<PlannedBatch>> {
        self.located(async {
            let mut con = self.conn().await?;
            // Written in chunks under a draft key of our own, then made the plan in one step: a large plan never travels
            // as one command, and of two senders saving a plan for one claim the first wins.
            let draft = self
                .keys
                .claim(claim_id, &format!("plan-draft:{}", new_claim_id()));
            for chunk in plan.chunks(PLAN_CHUNK) {
                let encoded = chunk.iter().map(encode_batch).collect::<Result<Vec<_>>>()?;
                redis::pipe()
                    .rpush(&draft, encoded)
                    .ignore()
                    .expire(&draft, BILL_TTL_SECS)
                    .ignore()
                    .query_async::<()>(&mut con)
                    .await?;
            }
            let saved: i64 = SAVE_PLAN
                .key(&self.keys.claims)
                .key(self.keys.claim(claim_id, "plan"))
                .key(&draft)
                .arg(claim_id)
                .invoke_async(&mut con)
                .await?;
            match saved {
                1 => Ok(plan),
                // The claim is gone: another sender finished it.
                -1 => Ok(Vec::new()),
                _ => self.read_plan(&mut con, claim_id).await,
            }
        })
        .await
    }

    async fn batch_split(&self, claim_id: &str, label: &str) -> Result<()> {
        self.located(async {
            let mut con = self.conn().await?;
            BATCH_SPLIT
                .key(&self.keys.claims)
                .key(self.keys.claim(claim_id, "done"))
                .arg(claim_id)
                .arg(format!("{SPLIT_MARK}{label}"))
                .invoke_async::<i64>(&mut con)
                .await?;
            Ok(())
        })
        .await
    }

    async fn batch_done(
        &self,
        claim_id: &str,
        index: usize,
        batch: &PlannedBatch,
        billed: usize,
    ) -> Result<()> {
        self.located(async {
            let mut con = self.conn().await?;
            let mut inv = BATCH_DONE.prepare_invoke();
            inv.key(&self.keys.claims)
                .key(self.keys.claim(claim_id, "done"))
                .key(self.keys.claim(claim_id, "urls"))
                .key(self.keys.billed(&month_key(now_ms())))
                .arg(claim_id)
                .arg(index)
                .arg(billed)
                .arg(BILL_TTL_SECS);
            for url in batch.covered() {
                inv.arg(url);
            }
            inv.invoke_async::<i64>(&mut con).await?;
            Ok(())
        })
        .await
    }

    async fn renew(&self, claim_id: &str, lease_ms: u64) -> Result<()> {
        self.set_lease(claim_id, now_ms() + lease_ms).await
    }

    async fn release(&self, claim_id: &str) -> Result<()> {
        // Lease 0: it has run out, the next send resumes the claim.
        self.set_lease(claim_id, 0).await
    }

    async fn give_back(&self, claim_id: &str) -> Result<()> {
        self.located(async {
            let mut con = self.conn().await?;
            GIVE_BACK
                .key(&self.keys.claims)
                .key(&self.keys.urls)
                .key(&self.keys.overflow)
                .key(self.keys.claim(claim_id, "urls"))
                .key(self.keys.claim(claim_id, "overflow"))
                .key(self.keys.claim(claim_id, "plan"))
                .key(self.keys.claim(claim_id, "done"))
                .key(&self.keys.holders)
                .arg(claim_id)
                .arg(MAX_OVERFLOW_WILDCARDS)
                .arg(&self.holder)
                .invoke_async::<i64>(&mut con)
                .await?;
            Ok(())
        })
        .await
    }

    async fn finish(&self, claim_id: &str) -> Result<()> {
        self.located(async {
            let mut con = self.conn().await?;
            redis::pipe()
                .atomic()
                .zrem(&self.keys.claims, claim_id)
                .unlink(&[
                    self.keys.claim(claim_id, "urls"),
                    self.keys.claim(claim_id, "overflow"),
                    self.keys.claim(claim_id, "plan"),
                    self.keys.claim(claim_id, "done"),
                ])
                .hdel(&self.keys.holders, claim_id)
                .query_async::<()>(&mut con)
                .await?;
            Ok(())
        })
        .await
    }

    async fn billed_this_month(&self) -> Result<u64> {
        self.located(async {
            let mut con = self.conn().await?;
            let n: Option<u64> = con.get(self.keys.billed(&month_key(now_ms()))).await?;
            Ok(n.unwrap_or(0))
        })
        .await
    }

    async fn disconnect(&self) -> Result<()> {
        self.lock_conn().take();
        // A Sentinel client keeps its connections to the Sentinels: a new one holds none.
        if let Client::Sentinel(sentinel) = &self.client {
            if let Ok(Client::Sentinel(fresh)) = client_for(&self.config) {
                *sentinel.lock().await = fresh.into_inner();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_password_certificate_or_key() {
        let mut config = RedisConfig::new("rediss://user:s3cret@redis.internal:6380/2");
        config.tls = Some(RedisTls {
            ca: Some(b"CA-PEM-TEXT".to_vec()),
            client: Some((b"CERT-PEM-TEXT".to_vec(), b"KEY-PEM-TEXT".to_vec())),
        });
        let shown = format!("{config:?}");
        assert!(
            shown.contains("rediss://***@redis.internal:6380/2"),
            "{shown}"
        );
        for secret in ["s3cret", "user", "CA-PEM", "CERT-PEM", "KEY-PEM"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(format!("{:?}", RedisConfig::new("redis://127.0.0.1:6379"))
            .contains("redis://127.0.0.1:6379"));
    }

    #[test]
    fn certificates_need_a_tls_url() {
        let mut config = RedisConfig::new("redis://127.0.0.1:6379");
        config.tls = Some(RedisTls::default());
        let err = RedisStore::new(config).err().expect("refused");
        assert!(err.to_string().contains("rediss://"), "{err}");
    }

    #[test]
    fn keys_stay_under_the_hash_tagged_prefix() {
        let k = Keys::new("cfit");
        assert_eq!(k.urls, "{cfit}:urls");
        assert_eq!(k.claim("abc", "plan"), "{cfit}:claim:abc:plan");
        assert_eq!(k.billed("2026-11"), "{cfit}:billed:2026-11");
        assert_eq!(Keys::new("app:{t}").urls, "app:{t}:urls");
        // Not a tag Redis Cluster hashes by: wrapped, so that every key still shares one slot.
        assert_eq!(Keys::new("x{}y").urls, "{x{}y}:urls");
        assert_eq!(Keys::new("a}b{c").urls, "{a}b{c}:urls");
        assert_eq!(Keys::new("a{b").urls, "{a{b}:urls");
    }

    #[test]
    fn saved_plans_round_trip_and_leave_out_what_repeats() {
        let same = PlannedBatch::plain(vec!["/a".into(), "/b".into()]);
        let variants = PlannedBatch {
            paths: vec!["/d".into(), "/d/".into()],
            covers: Some(vec!["/d/".into()]),
        };
        let raw = vec![
            encode_batch(&same).unwrap(),
            encode_batch(&variants).unwrap(),
        ];
        assert_eq!(raw[0], r#"{"p":["/a","/b"]}"#);
        assert_eq!(decode_plan(&raw).unwrap(), vec![same, variants]);
    }

    #[test]
    fn bad_urls_are_refused_without_io() {
        assert!(RedisStore::new(RedisConfig::new("http://nope")).is_err());
        assert!(RedisStore::new(RedisConfig::new("redis://127.0.0.1:1/0")).is_ok());
    }
}
