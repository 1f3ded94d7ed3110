//! CloudFront through aws-sdk-cloudfront: one lazily built client, typed outcomes for the sender to act on.

use crate::error::{Error, Result};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_cloudfront::config::http::HttpResponse;
use aws_sdk_cloudfront::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};
use aws_sdk_cloudfront::Client;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::OnceCell;

/// At most this many non-wildcard paths may be in progress at once on one distribution.
pub const MAX_IN_PROGRESS_PATHS: usize = 3000;
/// At most this many wildcard paths may be in progress at once on one distribution.
pub const MAX_IN_PROGRESS_WILDCARDS: usize = 15;

/// Where and as whom to reach CloudFront.
#[derive(Clone, Default)]
pub struct CfConfig {
    /// Distribution id.
    pub dist: String,
    /// Access key id; with `secret_key`, replaces the default credential chain.
    pub access_key: Option<String>,
    /// Secret access key.
    pub secret_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Signing region; CloudFront is global, `us-east-1` unless the environment says otherwise.
    pub region: Option<String>,
    /// A CloudFront-compatible endpoint URL (tests, proxies).
    pub endpoint: Option<String>,
}

impl fmt::Debug for CfConfig {
    // Credentials never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CfConfig")
            .field("dist", &self.dist)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Why a CloudFront call failed, as the sender needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CfFailure {
    /// Too many invalidations in progress: wait and try again.
    TooManyInProgress(String),
    /// Throttled, a 5xx, or the network: retry with backoff (a CreateInvalidation retried with the same
    /// CallerReference is safe).
    Transient {
        /// CloudFront's error code, or `NetworkError` when no answer came (refused, reset, timed out, garbled).
        code: String,
        /// What went wrong.
        message: String,
    },
    /// The batch is too large: split it.
    BatchTooLarge(String),
    /// Anything else (access denied, no such distribution, bad argument): give up for this send.
    Fatal {
        /// CloudFront's error code.
        code: String,
        /// CloudFront's message.
        message: String,
    },
}

impl CfFailure {
    /// No answer, or none that could be read: retried.
    pub fn network(message: String) -> Self {
        CfFailure::Transient {
            code: "NetworkError".into(),
            message,
        }
    }
}

impl From<CfFailure> for Error {
    fn from(f: CfFailure) -> Self {
        match f {
            CfFailure::TooManyInProgress(m) => Error::CloudFront {
                code: "TooManyInvalidationsInProgress".into(),
                message: m,
            },
            CfFailure::Transient { code, message } => Error::CloudFront { code, message },
            CfFailure::BatchTooLarge(m) => Error::CloudFront {
                code: "BatchTooLarge".into(),
                message: m,
            },
            CfFailure::Fatal { code, message } => Error::CloudFront { code, message },
        }
    }
}

/// An error and its causes, `: `-separated, each said once (the SDK's own rendering appends its debug form).
fn causes(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !out.contains(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        source = cause.source();
    }
    out
}

/// The code of a failure to sign the request that no retry mends: no credentials anywhere in the AWS chain, or
/// credentials configured wrongly. (A provider that timed out or failed on its own, like a slow instance metadata
/// service, may answer the next time.)
fn credentials_failure(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut source = Some(err);
    while let Some(e) = source {
        match e.downcast_ref::<CredentialsError>() {
            Some(CredentialsError::CredentialsNotLoaded(_)) => return Some("CredentialsNotLoaded"),
            Some(CredentialsError::InvalidConfiguration(_)) => return Some("InvalidConfiguration"),
            _ => source = e.source(),
        }
    }
    None
}

fn classify<E>(err: SdkError<E, HttpResponse>) -> CfFailure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::DispatchFailure(_) = &err {
        if let Some(code) = credentials_failure(&err) {
            return CfFailure::Fatal {
                code: code.into(),
                message: format!("no usable AWS credentials: {}", causes(&err)),
            };
        }
    }
    let code = err.code().unwrap_or_default().to_owned();
    let message = err
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| causes(&err));
    let status = match &err {
        SdkError::ServiceError(e) => Some(e.raw().status().as_u16()),
        _ => None,
    };
    match (&err, code.as_str()) {
        (_, "TooManyInvalidationsInProgress") => CfFailure::TooManyInProgress(message),
        (_, "BatchTooLarge") => CfFailure::BatchTooLarge(message),
        (
            _,
            "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "ServiceUnavailable",
        ) => CfFailure::Transient { code, message },
        (SdkError::ServiceError(_), _) if status.is_some_and(|s| s >= 500 || s == 429) => {
            CfFailure::Transient {
                code: if code.is_empty() {
                    "ServiceUnavailable".into()
                } else {
                    code
                },
                message,
            }
        }
        (SdkError::ServiceError(_), _) if status == Some(413) => CfFailure::BatchTooLarge(message),
        (SdkError::ServiceError(_), _) => CfFailure::Fatal {
            code: if code.is_empty() {
                "UnknownError".into()
            } else {
                code
            },
            message,
        },
        // Dispatch failures, timeouts and broken responses: the request may or may not have arrived.
        _ => CfFailure::network(message),
    }
}

/// An invalidation CloudFront accepted.
#[derive(Clone, Debug)]
pub struct Created {
    /// Invalidation id.
    pub id: String,
    /// CloudFront's status, e.g. `InProgress`.
    pub status: String,
    /// When CloudFront made it: earlier than the request when its CallerReference had made it already.
    pub create_time: Option<std::time::SystemTime>,
}

/// Paths of invalidations still in progress on the distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InProgress {
    /// Non-wildcard paths.
    pub paths: usize,
    /// Wildcard paths.
    pub wildcards: usize,
}

impl InProgress {
    /// The paths and wildcards of a list of invalidation paths.
    pub fn of<S: AsRef<str>>(paths: &[S]) -> Self {
        let wildcards = paths
            .iter()
            .filter(|p| crate::paths::is_wildcard(p.as_ref()))
            .count();
        Self {
            paths: paths.len() - wildcards,
            wildcards,
        }
    }

    /// True when `more` still fits within CloudFront's in-progress limits on top of this.
    pub fn has_room_for(&self, more: &InProgress) -> bool {
        self.paths + more.paths <= MAX_IN_PROGRESS_PATHS
            && self.wildcards + more.wildcards <= MAX_IN_PROGRESS_WILDCARDS
    }

    /// Counts `more` as in progress too.
    pub fn add(&mut self, more: &InProgress) {
        self.paths += more.paths;
        self.wildcards += more.wildcards;
    }
}

/// One distribution, as found by `list_distributions`.
#[derive(Clone, Debug)]
pub struct DistributionInfo {
    /// Distribution id.
    pub id: String,
    /// Its `*.cloudfront.net` domain.
    pub domain_name: String,
    /// Domain names of its origins.
    pub origins: Vec<String>,
    /// The origin path of each of `origins`, in order (`/production`; empty for none).
    pub origin_paths: Vec<String>,
    /// Deployment status.
    pub status: String,
}

/// A CloudFront client for one distribution. Builds the SDK client on first use: construction does no I/O.
pub struct CloudFront {
    config: CfConfig,
    client: OnceCell<Client>,
    /// The paths and wildcards of the invalidations last seen in progress, and of those this client created: an
    /// invalidation's paths never change, so a capacity check asks GetInvalidation only about new ones.
    sizes: Mutex<HashMap<String, InProgress>>,
}

impl CloudFront {
    /// A client for `config.dist`.
    pub fn new(config: CfConfig) -> Self {
        Self {
            config,
            client: OnceCell::new(),
            sizes: Mutex::new(HashMap::new()),
        }
    }

    /// The distribution id.
    pub fn dist(&self) -> &str {
        &self.config.dist
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                let region = self.config.region.clone().map(Region::new);
                loader = loader.region(
                    aws_config::meta::region::RegionProviderChain::first_try(region)
                        .or_default_provider()
                        .or_else(Region::from_static("us-east-1")),
                );
                if let (Some(access), Some(secret)) =
                    (&self.config.access_key, &self.config.secret_key)
                {
                    loader = loader.credentials_provider(Credentials::new(
                        access,
                        secret,
                        self.config.session_token.clone(),
                        None,
                        "cf-invalidation-tracker",
                    ));
                }
                if let Some(endpoint) = &self.config.endpoint {
                    loader = loader.endpoint_url(endpoint);
                }
                let sdk = loader.load().await;
                let conf = aws_sdk_cloudfront::config::Builder::from(&sdk)
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(5))
                            .operation_attempt_timeout(Duration::from_secs(30))
                            .build(),
                    )
                    .build();
                Client::from_conf(conf)
            })
            .await
    }

    /// Sends one CreateInvalidation request.
    pub async fn create_invalidation(
        &self,
        paths: &[String],
        caller_reference: &str,
    ) -> std::result::Result<Created, CfFailure> {
        let batch = Paths::builder()
            .quantity(paths.len() as i32)
            .set_items(Some(paths.to_vec()))
            .build()
            .and_then(|p| {
                InvalidationBatch::builder()
                    .paths(p)
                    .caller_reference(caller_reference)
                    .build()
            })
            .map_err(|e| CfFailure::Fatal {
                code: "InvalidArgument".into(),
                message: e.to_string(),
            })?;
        let out = self
            .client()
            .await
            .create_invalidation()
            .distribution_id(&self.config.dist)
            .invalidation_batch(batch)
            .send()
            .await
            .map_err(classify)?;
        let inv = out.invalidation().ok_or_else(|| {
            CfFailure::network("CloudFront answered without an invalidation".into())
        })?;
        self.sizes_lock()
            .insert(inv.id().to_owned(), InProgress::of(paths));
        Ok(Created {
            id: inv.id().to_owned(),
            status: inv.status().to_owned(),
            create_time: std::time::SystemTime::try_from(*inv.create_time()).ok(),
        })
    }

    /// The status of one invalidation (`InProgress`, `Completed`).
    pub async fn invalidation_status(&self, id: &str) -> std::result::Result<String, CfFailure> {
        let out = self
            .client()
            .await
            .get_invalidation()
            .distribution_id(&self.config.dist)
            .id(id)
            .send()
            .await
            .map_err(classify)?;
        Ok(out
            .invalidation()
            .map(|i| i.status().to_owned())
            .unwrap_or_default())
    }

    fn sizes_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, InProgress>> {
        // Plain counts: a panic elsewhere while it was held leaves nothing half-written.
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the paths of invalidations in progress on the distribution (the newest 100 invalidations): one
    /// ListInvalidations, and a GetInvalidation for each one in progress not counted before.
    pub async fn in_progress(&self) -> std::result::Result<InProgress, CfFailure> {
        let client = self.client().await;
        let list = client
            .list_invalidations()
            .distribution_id(&self.config.dist)
            .max_items(100)
            .send()
            .await
            .map_err(classify)?;
        let mut total = InProgress::default();
        let items = list
            .invalidation_list()
            .map(|l| l.items())
            .unwrap_or_default();
        let running: Vec<&str> = items
            .iter()
            .filter(|s| is_in_progress(s.status()))
            .map(|s| s.id())
            .collect();
        // Those no longer in progress will not be asked about again.
        self.sizes_lock()
            .retain(|id, _| running.contains(&id.as_str()));
        for id in running {
            let known = self.sizes_lock().get(id).copied();
            if let Some(size) = known {
                total.add(&size);
                continue;
            }
            let inv = client
                .get_invalidation()
                .distribution_id(&self.config.dist)
                .id(id)
                .send()
                .await
                .map_err(classify)?;
            let paths = inv
                .invalidation()
                .and_then(|i| i.invalidation_batch())
                .and_then(|b| b.paths())
                .map(|p| p.items())
                .unwrap_or_default();
            let size = InProgress::of(paths);
            self.sizes_lock().insert(id.to_owned(), size);
            total.add(&size);
        }
        Ok(total)
    }

    /// Every distribution of the account, following pagination.
    pub async fn list_distributions(&self) -> Result<Vec<DistributionInfo>> {
        let client = self.client().await;
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        // Bounded: CloudFront allows a few hundred distributions per account.
        for _ in 0..1000 {
            let page = client
                .list_distributions()
                .set_marker(marker.clone())
                .send()
                .await
                .map_err(|e| Error::from(classify(e)))?;
            let Some(list) = page.distribution_list() else {
                break;
            };
            for d in list.items() {
                let origins = d.origins().map(|o| o.items()).unwrap_or_default();
                out.push(DistributionInfo {
                    id: d.id().to_owned(),
                    domain_name: d.domain_name().to_owned(),
                    origins: origins.iter().map(|o| o.domain_name().to_owned()).collect(),
                    origin_paths: origins
                        .iter()
                        .map(|o| o.origin_path().unwrap_or_default().to_owned())
                        .collect(),
                    status: d.status().to_owned(),
                });
            }
            match (list.is_truncated(), list.next_marker()) {
                (true, Some(next)) if !next.is_empty() => marker = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// True for CloudFront's in-progress status (any case: test servers say `IN_PROGRESS` or `InProgress`).
pub fn is_in_progress(status: &str) -> bool {
    status.replace('_', "").eq_ignore_ascii_case("inprogress")
}

/// True for CloudFront's completed status (`Completed`; some test servers say `COMPLETED`).
pub fn is_completed(status: &str) -> bool {
    status.eq_ignore_ascii_case("completed")
}
