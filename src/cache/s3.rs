//! A cache in an S3 bucket (AWS or any S3-compatible store), read and written with the AWS SDK.
//!
//! Errors are translated here, once, from the SDK's error metadata into [`CacheError`]s a user
//! can act on: which bucket, which endpoint, which credential source, what S3 said.
//!
//! Streaming uploads ([`S3Writer`]) run in two halves: the blocking writer fills part buffers
//! and hands them over a channel of capacity 1 to one async task, which keeps at most
//! `parts_in_flight` UploadPart calls running. Memory is bounded by
//! `(parts_in_flight + 2) * part_size` whatever the object size.
//!
//! Faults are the SDK's job where it does it well: every request (bodies are `Bytes`, so
//! PutObject and UploadPart replay) is retried with jittered exponential backoff on throttling
//! (429, 503 SlowDown), 5xx, timeouts, resets and truncated answers; a `Retry-After` header sets
//! the delay instead ([`RetryAfter`]); an attempt that takes longer than the attempt timeout
//! (a stalled upload, a server that never answers) is abandoned and retried. What the SDK cannot
//! see is handled here: a GET body cut short is fetched again, and a CompleteMultipartUpload
//! whose success answer was lost is recognised by the object it left behind.
//! `AWS_MAX_ATTEMPTS` and `NIXBUCKET_S3_ATTEMPT_TIMEOUT` (seconds) override the defaults.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::InterceptorContext;
use aws_sdk_s3::config::retry::{ClassifyRetry, RetryAction, RetryConfig};
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_smithy_runtime::client::retries::{RetryPartition, TokenBucket};
use aws_smithy_runtime_api::client::retries::classifiers::RetryClassifierPriority;
use aws_smithy_types::retry::ErrorKind;
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{CacheError, CacheUrl, ObjectInfo, OpenOptions};

/// S3's smallest allowed part (all parts but the last).
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// S3's largest part number.
const MAX_PARTS: i32 = 10_000;
/// Keys asked for per listing page (see `OpenOptions::list_page_size`).
pub(crate) const ASKED_PAGE_SIZE: i32 = 10_000;
/// The most keys S3 documents for one listing page, and for one DeleteObjects.
const S3_PAGE_SIZE: i32 = 1000;

/// What became of one DeleteObjects.
enum Batch<'k> {
    Done,
    /// The store does not take DeleteObjects: these keys go one at a time.
    Refused(&'k [String]),
    /// These keys had errors of their own: tried again one at a time.
    Retry(Vec<&'k str>),
    Failed(CacheError),
}

/// Attempts per request (the first one included) unless `AWS_MAX_ATTEMPTS` says otherwise.
/// Ten attempts with backoff capped at [`MAX_BACKOFF`] ride out about a minute of outage.
const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// The retry budget's size: 10,000 retries at the SDK's cost of 5 tokens each.
const RETRY_BUDGET_TOKENS: usize = 50_000;
/// Attempts of the bucket check at open (see [`open_retries`]).
const OPEN_MAX_ATTEMPTS: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Also the cap on a server's `Retry-After`, so a hostile value cannot park the job.
const MAX_BACKOFF: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One attempt, request body included: generous enough for a full part on a slow link, short
/// enough that a stalled connection costs a retry instead of the CI job's time limit.
const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
pub const ATTEMPT_TIMEOUT_ENV: &str = "NIXBUCKET_S3_ATTEMPT_TIMEOUT";
/// How long a failed or cancelled multipart upload waits for its parts in flight before it
/// aborts; short, because a cancelled CI job is killed a few seconds after SIGINT.
const PART_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole reads of a small object when its body is cut short after the headers.
const GET_ATTEMPTS: u32 = 4;
/// HEADs for the object of an upload the store no longer knows after its completion was sent:
/// 0.5 + 1 + 2 + 4 + 5 s of waiting in all before it counts as lost.
const VANISHED_UPLOAD_LOOKS: u32 = 6;

/// S3 error codes that mean "these credentials are not accepted here". `AccessDenied` is not
/// one: AWS sends it to credentials it accepted but whose policies do not allow the request.
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "NotSignedUp",
];

/// What every request needs to know to do its work and to explain its failures.
struct Ctx {
    client: Client,
    bucket: String,
    /// For messages: the custom endpoint URL, or AWS S3 with its region.
    endpoint: String,
    /// For messages: where the credentials came from (never the credentials themselves).
    cred_source: String,
}

pub(crate) struct S3Cache {
    ctx: Arc<Ctx>,
    part_size: usize,
    parts_in_flight: usize,
    /// Lowered to [`S3_PAGE_SIZE`] when the store refuses a larger page.
    list_page_size: AtomicI32,
    /// Cleared when the store refuses `If-None-Match: *` ([`feature_refused`]); shared with
    /// streaming uploads, which commit with it too.
    conditional_writes: Arc<AtomicBool>,
    /// Cleared when the store refuses `If-Match` ([`feature_refused`]).
    if_match_writes: AtomicBool,
    /// Cleared when the store refuses DeleteObjects (not implemented, or wants what the SDK
    /// does not send).
    batch_deletes: AtomicBool,
    /// See [`OpenOptions::copy_max`].
    copy_max: u64,
}

/// Describes which source of the default chain will provide credentials, in the chain's order.
fn credential_source(opts: &OpenOptions, profile: Option<&str>) -> String {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if opts.credentials.is_some() {
        "the static credentials given to nixbucket".to_owned()
    } else if let Some(p) = profile {
        format!("profile '{p}' (named in the cache URL)")
    } else if env("AWS_ACCESS_KEY_ID").is_some() {
        "environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".to_owned()
    } else if let Some(p) = env("AWS_PROFILE") {
        format!("profile '{p}' (from AWS_PROFILE)")
    } else if env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
        "web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN)".to_owned()
    } else {
        "the default chain (profile 'default' in ~/.aws, then container or instance role)"
            .to_owned()
    }
}

/// The innermost message of an error chain: usually the one that says what really happened
/// ("Connection refused"), where outer layers only say "dispatch failure".
fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn find_credentials_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a CredentialsError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// Code, message and HTTP status of a service error. HEAD responses carry no body, so the
/// code is then derived from the status.
fn service_details<E: ProvideErrorMetadata>(
    err: &SdkError<E, HttpResponse>,
) -> Option<(u16, String, String)> {
    let SdkError::ServiceError(ctx) = err else {
        return None;
    };
    let status = ctx.raw().status().as_u16();
    let e = ctx.err();
    let (code, message) = match (e.code(), e.message()) {
        (Some(c), m) => (c.to_owned(), m.unwrap_or("").to_owned()),
        (None, _) => {
            let code = match status {
                301 => "PermanentRedirect",
                403 => "AccessDenied",
                404 => "NotFound",
                412 => "PreconditionFailed",
                501 => "NotImplemented",
                _ => "UnknownError",
            };
            (code.to_owned(), format!("HTTP status {status}"))
        }
    };
    let message = match ctx.raw().headers().get("x-amz-bucket-region") {
        Some(r) if status == 301 || code == "PermanentRedirect" => {
            format!("the bucket is in region {r}; add region={r} to the cache URL")
        }
        _ => message,
    };
    Some((status, code, message))
}

/// What a bare error code means, for stores that send no message with it.
fn code_hint(code: &str) -> &'static str {
    match code {
        "SignatureDoesNotMatch" => "the secret access key does not belong to this access key id",
        "InvalidAccessKeyId" => "this access key id is unknown to the store",
        "AccessDenied" => "the credentials lack permission for this bucket or operation",
        "ExpiredToken" | "TokenRefreshRequired" => "the session token has expired",
        "InvalidToken" => "the session token is malformed or invalid",
        _ => "(no message from the store)",
    }
}

impl Ctx {
    fn error<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> CacheError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        if let Some(c) = find_credentials_error(&err) {
            return match c {
                CredentialsError::CredentialsNotLoaded(_) => CacheError::NoCredentials {
                    bucket: self.bucket.clone(),
                },
                other => CacheError::CredentialsUnavailable {
                    bucket: self.bucket.clone(),
                    source_desc: self.cred_source.clone(),
                    detail: format!("{other}: {}", root_cause(other)),
                },
            };
        }
        if let Some((_, code, message)) = service_details(&err) {
            let message = if message.is_empty() {
                code_hint(&code).to_owned()
            } else {
                message
            };
            if code == "NoSuchBucket" {
                return CacheError::BucketNotFound {
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                };
            }
            if code == "AccessDenied" {
                return CacheError::PermissionDenied {
                    operation,
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                    source_desc: self.cred_source.clone(),
                    answer: format!("{code}: {message}"),
                };
            }
            if CREDENTIAL_CODES.contains(&code.as_str()) {
                return CacheError::CredentialsRefused {
                    operation,
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                    source_desc: self.cred_source.clone(),
                    answer: format!("{code}: {message}"),
                };
            }
            return CacheError::S3 {
                operation,
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                code,
                message,
            };
        }
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                CacheError::EndpointUnreachable {
                    endpoint: self.endpoint.clone(),
                    detail: root_cause(&err),
                }
            }
            _ => CacheError::S3 {
                operation,
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                code: "ClientError".to_owned(),
                message: format!("{err}: {}", root_cause(&err)),
            },
        }
    }

    fn missing(&self, operation: &'static str, key: &str, what: &str) -> CacheError {
        CacheError::S3 {
            operation,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            code: "InvalidResponse".to_owned(),
            message: format!("the response has no {what}"),
        }
    }

    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), CacheError> {
        self.put_object(key, body, content_type, Condition::None)
            .await
            .map_err(|e| self.error("PutObject", key, e))?;
        Ok(())
    }

    /// One PutObject, written only under `condition`; the store's answer as the SDK gives it.
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        condition: Condition<'_>,
    ) -> Result<PutObjectOutput, SdkError<PutObjectError, HttpResponse>> {
        let (if_match, if_none_match) = match condition {
            Condition::None => (None, None),
            Condition::Absent => (None, Some("*".to_owned())),
            Condition::Matches(etag) => (Some(etag.to_owned()), None),
        };
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_if_match(if_match)
            .set_if_none_match(if_none_match)
            .body(ByteStream::from(body))
            .send()
            .await
    }
}

/// When a PutObject may write.
enum Condition<'a> {
    None,
    /// Only if no object is under the key (`If-None-Match: *`).
    Absent,
    /// Only if the object there has this ETag (`If-Match`).
    Matches(&'a str),
}

/// The store refuses a feature of the request as such (a conditional header, DeleteObjects, a
/// listing page over 1000 keys: not implemented or not understood), rather than this request:
/// the caller goes on without the feature, and remembers that.
fn feature_refused<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    is_status(err, 501)
        || is_status(err, 405)
        || matches!(
            err.code(),
            Some(
                "NotImplemented"
                    | "NotSupported"
                    | "MethodNotAllowed"
                    | "InvalidArgument"
                    | "InvalidRequest"
                    | "MalformedXML"
                    | "MissingContentMD5"
            )
        )
}

fn is_status<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>, status: u16) -> bool {
    err.raw_response()
        .is_some_and(|r| r.status().as_u16() == status)
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn to_size(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// Honours a `Retry-After: <seconds>` header on a retryable status: the SDK only reads AWS's
/// own `x-amz-retry-after`, but S3-compatible stores and proxies send the standard one.
#[derive(Debug)]
struct RetryAfter;

impl ClassifyRetry for RetryAfter {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        if !matches!(ctx.output_or_error(), Some(Err(_))) {
            return RetryAction::NoActionIndicated;
        }
        let Some(response) = ctx.response() else {
            return RetryAction::NoActionIndicated;
        };
        let kind = match response.status().as_u16() {
            429 | 503 => ErrorKind::ThrottlingError,
            500 | 502 | 504 => ErrorKind::ServerError,
            _ => return RetryAction::NoActionIndicated,
        };
        match retry_after_delay(response.headers().get("retry-after")) {
            Some(delay) => RetryAction::retryable_error_with_explicit_delay(kind, delay),
            None => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "Retry-After header"
    }

    fn priority(&self) -> RetryClassifierPriority {
        // Last, so that its delay wins over the status and error-code classifiers' verdicts.
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// The delta-seconds form only (what S3-compatible stores send), capped at [`MAX_BACKOFF`].
fn retry_after_delay(value: Option<&str>) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_BACKOFF))
}

/// Fewer attempts for the first request: failing there is mostly a wrong endpoint, bucket or
/// key, and the user should hear so in seconds, not after a minute of backoff.
fn open_retries() -> aws_sdk_s3::config::Builder {
    let attempts = max_attempts().min(OPEN_MAX_ATTEMPTS);
    aws_sdk_s3::config::Builder::new().retry_config(
        RetryConfig::standard()
            .with_max_attempts(attempts)
            .with_initial_backoff(INITIAL_BACKOFF)
            .with_max_backoff(MAX_BACKOFF),
    )
}

fn env_number(name: &str) -> Option<u32> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
}

fn max_attempts() -> u32 {
    env_number("AWS_MAX_ATTEMPTS").unwrap_or(DEFAULT_MAX_ATTEMPTS)
}

/// Retries, timeouts and stall detection for every request of one client.
fn fault_tolerance(
    conf: aws_sdk_s3::config::Builder,
    attempts: Option<u32>,
) -> aws_sdk_s3::config::Builder {
    let attempts = attempts.unwrap_or_else(max_attempts).max(1);
    let attempt_timeout = env_number(ATTEMPT_TIMEOUT_ENV)
        .map_or(DEFAULT_ATTEMPT_TIMEOUT, |s| Duration::from_secs(s.into()));
    conf.retry_config(
        RetryConfig::standard()
            .with_max_attempts(attempts)
            .with_initial_backoff(INITIAL_BACKOFF)
            .with_max_backoff(MAX_BACKOFF),
    )
    .timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(attempt_timeout)
            .build(),
    )
    // A body that stops flowing for the grace period fails its attempt, which is then retried.
    .stalled_stream_protection(
        StalledStreamProtectionConfig::enabled()
            .grace_period(Duration::from_secs(10))
            .build(),
    )
    .retry_classifier(RetryAfter)
    .retry_partition(retry_budget())
}

/// Retries that may be spent, shared by every request of this process: the SDK's default
/// budget (500 tokens, 5 a retry, so about 100 retries for the whole process, refilled one
/// token a success) runs dry within seconds of an outage with dozens of requests in flight,
/// and then no request retries at all. A push of thousands of paths needs thousands.
fn retry_budget() -> RetryPartition {
    static BUDGET: std::sync::OnceLock<RetryPartition> = std::sync::OnceLock::new();
    BUDGET
        .get_or_init(|| {
            RetryPartition::custom("nixbucket")
                .token_bucket(TokenBucket::builder().capacity(RETRY_BUDGET_TOKENS).build())
                .build()
        })
        .clone()
}

impl S3Cache {
    pub(crate) async fn open(url: &CacheUrl, opts: OpenOptions) -> Result<S3Cache, CacheError> {
        let CacheUrl::S3 {
            bucket,
            region,
            profile,
            ..
        } = url
        else {
            return Err(CacheError::InvalidKey {
                key: url.to_string(),
                reason: "not an s3:// URL",
            });
        };
        let cred_source = credential_source(&opts, profile.as_deref());

        let mut default_region =
            aws_config::default_provider::region::DefaultRegionChain::builder();
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(p) = profile {
            default_region = default_region.profile_name(p);
            loader = loader.profile_name(p);
        }
        let region_chain = RegionProviderChain::first_try(region.clone().map(Region::new))
            .or_else(default_region.build())
            .or_else(Region::new("us-east-1"));
        loader = loader.region(region_chain);
        if let Some(creds) = &opts.credentials {
            loader = loader.credentials_provider(creds.clone());
        } else if let Some(p) = profile {
            // Like Nix: a profile named in the URL is the only source, even if env vars are set.
            loader = loader.credentials_provider(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_name(p)
                    .build(),
            );
        }
        let sdk = loader.load().await;

        let mut conf = aws_sdk_s3::config::Builder::from(&sdk);
        let endpoint = match url.s3_endpoint_url() {
            Some(ep) => {
                // S3-compatible stores rarely have wildcard DNS for virtual-hosted buckets,
                // and many reject the SDK's default CRC checksum headers.
                conf = conf
                    .endpoint_url(&ep)
                    .force_path_style(true)
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                    .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
                ep
            }
            None => {
                let r = sdk.region().map_or("us-east-1", |r| r.as_ref());
                format!("AWS S3 (region {r})")
            }
        };
        conf = fault_tolerance(conf, opts.max_attempts);
        let ctx = Ctx {
            client: Client::from_conf(conf.build()),
            bucket: bucket.clone(),
            endpoint,
            cred_source,
        };
        let cache = S3Cache {
            ctx: Arc::new(ctx),
            part_size: opts.part_size.max(MIN_PART_SIZE),
            parts_in_flight: opts.parts_in_flight.max(1),
            list_page_size: AtomicI32::new(opts.list_page_size.clamp(1, ASKED_PAGE_SIZE)),
            copy_max: opts.copy_max,
            conditional_writes: Arc::new(AtomicBool::new(true)),
            if_match_writes: AtomicBool::new(true),
            batch_deletes: AtomicBool::new(true),
        };
        cache.check_bucket().await?;
        Ok(cache)
    }

    /// HeadBucket, so that a wrong bucket, endpoint or key fails at open. A HEAD answer has no
    /// body to say *why* it was refused; then a one-key listing asks again to get S3's code.
    async fn check_bucket(&self) -> Result<(), CacheError> {
        let ctx = &self.ctx;
        let err = match ctx
            .client
            .head_bucket()
            .bucket(&ctx.bucket)
            .customize()
            .config_override(open_retries())
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if is_status(&err, 404) {
            return Err(CacheError::BucketNotFound {
                bucket: ctx.bucket.clone(),
                endpoint: ctx.endpoint.clone(),
            });
        }
        let err = ctx.error("HeadBucket", "", err);
        let body_less = matches!(
            &err,
            CacheError::S3 { .. }
                | CacheError::CredentialsRefused { .. }
                | CacheError::PermissionDenied { .. }
        );
        if !body_less {
            return Err(err);
        }
        match ctx
            .client
            .list_objects_v2()
            .bucket(&ctx.bucket)
            .max_keys(1)
            .customize()
            .config_override(open_retries())
            .send()
            .await
        {
            // Listing works but HEAD does not: report the HEAD failure as it was.
            Ok(_) => Err(err),
            Err(e) => Err(ctx.error("ListObjectsV2", "", e)),
        }
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, CacheError> {
        let ctx = &self.ctx;
        match ctx
            .client
            .head_object()
            .bucket(&ctx.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: to_size(out.content_length()),
                last_modified: to_system_time(out.last_modified()),
            })),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(ctx.error("HeadObject", key, e)),
        }
    }

    /// CopyObject onto itself, which S3 allows only when something changes: the metadata is
    /// replaced by the same content type.
    pub(crate) async fn touch(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
    ) -> Result<bool, CacheError> {
        let ctx = &self.ctx;
        if size > self.copy_max {
            return Ok(ctx_head(ctx, key).await?.is_some());
        }
        match ctx
            .client
            .copy_object()
            .bucket(&ctx.bucket)
            .key(key)
            .copy_source(format!("{}/{}", ctx.bucket, key))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .content_type(content_type)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("NoSuchKey") => Ok(false),
            Err(e) => Err(ctx.error("CopyObject", key, e)),
        }
    }

    /// GetObject, with a missing key (but not a missing bucket) as `None`.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, CacheError> {
        let ctx = &self.ctx;
        match ctx
            .client
            .get_object()
            .bucket(&ctx.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if is_status(&e, 404) && e.code() != Some("NoSuchBucket") => Ok(None),
            Err(e) => Err(ctx.error("GetObject", key, e)),
        }
    }

    /// The object and its ETag (empty if the store sent none); over `limit` bytes, an error
    /// before the body is read.
    pub(crate) async fn get_versioned(
        &self,
        key: &str,
        limit: u64,
    ) -> Result<Option<(Bytes, String)>, CacheError> {
        let ctx = &self.ctx;
        let mut attempt = 1;
        loop {
            let Some(out) = self.get_object(key).await? else {
                return Ok(None);
            };
            let size = to_size(out.content_length());
            if size > limit {
                return Err(CacheError::TooLarge {
                    key: key.to_owned(),
                    size,
                    limit,
                });
            }
            let etag = out.e_tag().unwrap_or_default().to_owned();
            // The SDK's retries end with the headers; a body cut short is ours to fetch again.
            match out.body.collect().await {
                Ok(body) => return Ok(Some((body.into_bytes(), etag))),
                Err(_) if attempt < GET_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(INITIAL_BACKOFF * attempt).await;
                }
                Err(e) => {
                    return Err(CacheError::S3 {
                        operation: "GetObject",
                        bucket: ctx.bucket.clone(),
                        key: key.to_owned(),
                        code: "ReadError".to_owned(),
                        message: format!("{e}: {}", root_cause(&e)),
                    });
                }
            }
        }
    }

    pub(crate) async fn put(&self, key: &str, body: Bytes, ct: &str) -> Result<(), CacheError> {
        self.ctx.put(key, body, ct).await
    }

    /// Replaces the object only if its ETag is still `etag` (If-Match): `false` if it changed
    /// or vanished since. A store that does not implement If-Match gets a plain write.
    pub(crate) async fn put_if_version(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        etag: &str,
    ) -> Result<bool, CacheError> {
        let ctx = &self.ctx;
        if etag.is_empty() || !self.if_match_writes.load(Ordering::Relaxed) {
            ctx.put(key, body, content_type).await?;
            return Ok(true);
        }
        let res = ctx
            .put_object(key, body.clone(), content_type, Condition::Matches(etag))
            .await;
        match res {
            Ok(_) => Ok(true),
            // Changed (412), gone (404), or being written right now (409).
            Err(e) if [412, 404, 409].iter().any(|&s| is_status(&e, s)) => {
                if e.code() == Some("NoSuchBucket") {
                    return Err(ctx.error("PutObject", key, e));
                }
                Ok(false)
            }
            Err(e) if feature_refused(&e) => {
                self.if_match_writes.store(false, Ordering::Relaxed);
                ctx.put(key, body, content_type).await?;
                Ok(true)
            }
            Err(e) => Err(ctx.error("PutObject", key, e)),
        }
    }

    pub(crate) async fn put_if_absent(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<bool, CacheError> {
        put_if_absent(&self.ctx, &self.conditional_writes, key, body, content_type).await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let ctx = &self.ctx;
        match ctx
            .client
            .delete_object()
            .bucket(&ctx.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) && e.code() != Some("NoSuchBucket") => Ok(()),
            Err(e) => Err(ctx.error("DeleteObject", key, e)),
        }
    }

    /// Deletes `keys`, `jobs` requests at a time: a DeleteObjects per 1000 keys, or one
    /// DeleteObject per key where the store refuses DeleteObjects. A key that a DeleteObjects
    /// answered with an error of its own is tried again alone (such errors come inside a
    /// success answer, which nothing retries). The failures: one per key, or one for a whole
    /// DeleteObjects request that failed.
    pub(crate) async fn delete_many(&self, keys: &[String], jobs: usize) -> Vec<CacheError> {
        use futures::StreamExt;
        let mut singly: Vec<&str> = Vec::new();
        let mut failures = Vec::new();
        if self.batch_deletes.load(Ordering::Relaxed) {
            let batches = keys.chunks(S3_PAGE_SIZE as usize);
            let results: Vec<_> = futures::stream::iter(batches.map(|b| self.delete_batch(b)))
                .buffer_unordered(jobs.max(1))
                .collect()
                .await;
            for result in results {
                match result {
                    Batch::Done => {}
                    Batch::Refused(batch) => singly.extend(batch.iter().map(String::as_str)),
                    Batch::Retry(some) => singly.extend(some),
                    Batch::Failed(e) => failures.push(e),
                }
            }
        } else {
            singly.extend(keys.iter().map(String::as_str));
        }
        let results: Vec<_> = futures::stream::iter(singly.into_iter().map(|k| self.delete(k)))
            .buffer_unordered(jobs.max(1))
            .collect()
            .await;
        failures.extend(results.into_iter().filter_map(Result::err));
        failures
    }

    /// One DeleteObjects of `keys`.
    async fn delete_batch<'k>(&self, keys: &'k [String]) -> Batch<'k> {
        let ctx = &self.ctx;
        let ids = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>();
        let delete =
            ids.and_then(|ids| Delete::builder().set_objects(Some(ids)).quiet(true).build());
        let Ok(delete) = delete else {
            return Batch::Refused(keys);
        };
        let res = ctx
            .client
            .delete_objects()
            .bucket(&ctx.bucket)
            .delete(delete)
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            // The call itself is what the store refuses (not implemented, or it wants a
            // Content-MD5 the SDK does not send): one DELETE per key from now on.
            Err(e) if feature_refused(&e) => {
                self.batch_deletes.store(false, Ordering::Relaxed);
                return Batch::Refused(keys);
            }
            Err(e) => return Batch::Failed(ctx.error("DeleteObjects", &keys[0], e)),
        };
        let again: Vec<&str> = out
            .errors()
            .iter()
            .filter(|e| e.code() != Some("NoSuchKey"))
            .filter_map(|e| {
                let key = e.key()?;
                keys.iter().find(|k| *k == key).map(String::as_str)
            })
            .collect();
        if again.is_empty() {
            Batch::Done
        } else {
            Batch::Retry(again)
        }
    }

    /// `one_level`: only keys without a `/` after the prefix (delimiter `/`).
    pub(crate) async fn list(
        &self,
        prefix: &str,
        one_level: bool,
    ) -> Result<Vec<ObjectInfo>, CacheError> {
        let ctx = &self.ctx;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page_size = self.list_page_size.load(Ordering::Relaxed);
            let res = ctx
                .client
                .list_objects_v2()
                .bucket(&ctx.bucket)
                .prefix(prefix)
                .set_delimiter(one_level.then(|| "/".to_owned()))
                .max_keys(page_size)
                .set_continuation_token(token.clone())
                .send()
                .await;
            let page = match res {
                Ok(page) => page,
                // S3 documents 1000 as the most a page holds; a store may refuse to be asked
                // for more instead of answering fewer. Ask that page again within the limit.
                Err(e) if page_size > S3_PAGE_SIZE && feature_refused(&e) => {
                    self.list_page_size.store(S3_PAGE_SIZE, Ordering::Relaxed);
                    continue;
                }
                Err(e) => return Err(ctx.error("ListObjectsV2", prefix, e)),
            };
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    size: to_size(obj.size()),
                    last_modified: to_system_time(obj.last_modified()),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    pub(crate) async fn get_stream(
        &self,
        key: &str,
    ) -> Result<Option<(u64, Pin<Box<dyn tokio::io::AsyncRead + Send>>)>, CacheError> {
        let Some(out) = self.get_object(key).await? else {
            return Ok(None);
        };
        let size = to_size(out.content_length());
        Ok(Some((size, Box::pin(out.body.into_async_read()))))
    }

    pub(crate) fn writer(&self, key: &str, content_type: &str) -> S3Writer {
        let handle = match Handle::try_current() {
            Ok(h) => h,
            Err(_) => {
                return S3Writer::failed(CacheError::UploadInterrupted {
                    key: key.to_owned(),
                    detail: "Cache::writer was called outside a tokio runtime".into(),
                });
            }
        };
        let (tx, rx) = mpsc::channel(1);
        let (done_tx, done_rx) = oneshot::channel();
        let upload = Upload {
            ctx: self.ctx.clone(),
            key: key.to_owned(),
            content_type: content_type.to_owned(),
            parts_in_flight: self.parts_in_flight,
            conditional: self.conditional_writes.clone(),
        };
        handle.spawn(async move {
            let _ = done_tx.send(upload.run(rx).await);
        });
        S3Writer {
            key: key.to_owned(),
            buf: Vec::new(),
            part_size: self.part_size,
            size: 0,
            tx: Some(tx),
            done: Some(done_rx),
            failed: None,
        }
    }
}

enum Chunk {
    /// A full part; more follow.
    Part(Bytes),
    /// The end of the object (possibly empty): commit; with `true`, only if no object is
    /// under the key by then.
    Last(Bytes, bool),
}

/// The async half of a streaming upload.
struct Upload {
    ctx: Arc<Ctx>,
    key: String,
    content_type: String,
    parts_in_flight: usize,
    /// The store takes `If-None-Match: *` (shared with [`S3Cache`]).
    conditional: Arc<AtomicBool>,
}

impl Upload {
    fn interrupted(&self, detail: &str) -> CacheError {
        CacheError::UploadInterrupted {
            key: self.key.clone(),
            detail: detail.to_owned(),
        }
    }

    /// The object's size once committed, or `None` if committing only if absent found an
    /// object under the key (then nothing of this upload remains).
    async fn run(self, mut rx: mpsc::Receiver<Chunk>) -> Result<Option<u64>, CacheError> {
        let first = match rx.recv().await {
            None => return Err(self.interrupted("aborted before commit")),
            Some(Chunk::Last(body, if_absent)) => {
                // The whole object fit in one part: a single PutObject, no multipart state.
                let size = body.len() as u64;
                if if_absent {
                    let (ctx, key, ct) = (&self.ctx, &self.key, &self.content_type);
                    let wrote = put_if_absent(ctx, &self.conditional, key, body, ct).await?;
                    return Ok(wrote.then_some(size));
                }
                self.ctx.put(&self.key, body, &self.content_type).await?;
                return Ok(Some(size));
            }
            Some(Chunk::Part(body)) => body,
        };
        let ctx = &self.ctx;
        let created = ctx
            .client
            .create_multipart_upload()
            .bucket(&ctx.bucket)
            .key(&self.key)
            .content_type(&self.content_type)
            .send()
            .await
            .map_err(|e| ctx.error("CreateMultipartUpload", &self.key, e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(ctx.missing("CreateMultipartUpload", &self.key, "upload id"));
        };
        let mut inflight = JoinSet::new();
        let result = match self.parts(upload_id, first, &mut rx, &mut inflight).await {
            Ok((parts, size, if_absent)) => {
                let done = self.complete(upload_id, parts, size, if_absent).await;
                done.map(|landed| landed.then_some(size))
            }
            Err(e) => Err(e),
        };
        // Parts of an upload that did not become the object are billed until aborted.
        if !matches!(result, Ok(Some(_))) {
            // No part may land after the abort, or it would linger as billed storage. A part
            // request merely dropped may still be written by the store after the abort (S3
            // documents this), so parts in flight get a moment to finish first.
            let drain = async { while inflight.join_next().await.is_some() {} };
            if tokio::time::timeout(PART_DRAIN_TIMEOUT, drain)
                .await
                .is_err()
            {
                inflight.shutdown().await;
            }
            let _ = ctx
                .client
                .abort_multipart_upload()
                .bucket(&ctx.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .send()
                .await;
        }
        result
    }

    /// Uploads parts as they arrive, at most `parts_in_flight` at a time, until `Last`.
    async fn parts(
        &self,
        upload_id: &str,
        first: Bytes,
        rx: &mut mpsc::Receiver<Chunk>,
        inflight: &mut JoinSet<Result<CompletedPart, CacheError>>,
    ) -> Result<(Vec<CompletedPart>, u64, bool), CacheError> {
        let mut done = Vec::new();
        let mut number = 0i32;
        let mut size = 0u64;
        let mut next = Some(Chunk::Part(first));
        let joined = |r: Option<
            Result<Result<CompletedPart, CacheError>, tokio::task::JoinError>,
        >| {
            match r {
                Some(Ok(r)) => r.map(Some),
                Some(Err(e)) => Err(self.interrupted(&format!("part upload task failed: {e}"))),
                None => Ok(None),
            }
        };
        loop {
            let chunk = match next.take() {
                Some(c) => Some(c),
                None if inflight.len() >= self.parts_in_flight => {
                    done.extend(joined(inflight.join_next().await)?);
                    continue;
                }
                None => tokio::select! {
                    // Notice a failed part at once rather than after the next one is read.
                    Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                        done.extend(joined(Some(r))?);
                        continue;
                    }
                    c = rx.recv() => c,
                },
            };
            let (body, last) = match chunk {
                None => return Err(self.interrupted("aborted before commit")),
                Some(Chunk::Part(b)) => (b, None),
                Some(Chunk::Last(b, if_absent)) => (b, Some(if_absent)),
            };
            if !body.is_empty() {
                number += 1;
                if number > MAX_PARTS {
                    return Err(self.interrupted(&format!(
                        "the object needs more than {MAX_PARTS} parts; use a larger part size"
                    )));
                }
                size += body.len() as u64;
                inflight.spawn(upload_part(
                    self.ctx.clone(),
                    self.key.clone(),
                    upload_id.to_owned(),
                    number,
                    body,
                ));
            }
            if let Some(if_absent) = last {
                while let Some(r) = joined(inflight.join_next().await)? {
                    done.push(r);
                }
                done.sort_by_key(|p| p.part_number());
                return Ok((done, size, if_absent));
            }
        }
    }

    /// `true`: the upload became the object; `false`: `if_absent`, and an object was there.
    async fn complete(
        &self,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        size: u64,
        if_absent: bool,
    ) -> Result<bool, CacheError> {
        let ctx = &self.ctx;
        let mut conditional = if_absent && self.conditional.load(Ordering::Relaxed);
        let send = |condition: Option<&str>| {
            ctx.client
                .complete_multipart_upload()
                .bucket(&ctx.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .set_if_none_match(condition.map(str::to_owned))
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts.clone()))
                        .build(),
                )
                .send()
        };
        let res = loop {
            if if_absent && !conditional && ctx_head(ctx, &self.key).await?.is_some() {
                // The store cannot complete-if-absent; the HEAD is racy but never replaces an
                // object that was there before.
                return Ok(false);
            }
            match send(conditional.then_some("*")).await {
                Err(e) if conditional && feature_refused(&e) => {
                    self.conditional.store(false, Ordering::Relaxed);
                    conditional = false;
                }
                res => break res,
            }
        };
        match res {
            Ok(_) => Ok(true),
            // An object was there, or is being written by another conditional write (409); or
            // this upload's own completion landed and its answer was lost. Either way the
            // object there describes itself (HEAD).
            Err(e) if conditional && (is_status(&e, 412) || is_status(&e, 409)) => Ok(false),
            // A retry after an attempt that did complete but whose answer was lost, or that is
            // still completing: the upload is gone because it became the object. S3 says
            // NoSuchUpload; s3s-fs says AccessDenied for an upload id it no longer knows.
            Err(e) if matches!(e.code(), Some("NoSuchUpload" | "AccessDenied")) => {
                self.after_vanished_upload(size, if_absent, e.code().unwrap_or_default())
                    .await
            }
            Err(e) => Err(ctx.error("CompleteMultipartUpload", &self.key, e)),
        }
    }

    /// The store no longer knows an upload whose completion we sent. An object of the right
    /// size is taken to be this upload (another push's bytes for the same NAR name almost never
    /// have the same size); of another size, and committing only if absent, it is another's.
    /// An attempt still completing may not show its object yet, so it is looked for again
    /// with backoff. Never a credentials error: the credentials just did the upload.
    async fn after_vanished_upload(
        &self,
        size: u64,
        if_absent: bool,
        code: &str,
    ) -> Result<bool, CacheError> {
        let ctx = &self.ctx;
        let mut wait = INITIAL_BACKOFF;
        for look in 0..VANISHED_UPLOAD_LOOKS {
            if look > 0 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            match ctx_head(ctx, &self.key).await? {
                Some(found) if found == size => return Ok(true),
                Some(_) if if_absent => return Ok(false),
                _ => {}
            }
        }
        Err(CacheError::S3 {
            operation: "CompleteMultipartUpload",
            bucket: ctx.bucket.clone(),
            key: self.key.clone(),
            code: code.to_owned(),
            message: "the store no longer knows this upload, and no object of its size \
                      appeared under its name"
                .to_owned(),
        })
    }
}

/// Writes `key` only if no object is there (`If-None-Match: *`): `true` if this call wrote it.
/// Where the store answers NotImplemented, `conditional` is cleared and a HEAD decides.
async fn put_if_absent(
    ctx: &Ctx,
    conditional: &AtomicBool,
    key: &str,
    body: Bytes,
    content_type: &str,
) -> Result<bool, CacheError> {
    if conditional.load(Ordering::Relaxed) {
        let mut attempt = 0;
        loop {
            let res = ctx
                .put_object(key, body.clone(), content_type, Condition::Absent)
                .await;
            match res {
                Ok(_) => return Ok(true),
                Err(e) if is_status(&e, 412) => return Ok(false),
                // A concurrent conditional write to the same key is in progress; its
                // outcome decides, so ask again.
                Err(e) if is_status(&e, 409) && attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) if feature_refused(&e) => {
                    conditional.store(false, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(ctx.error("PutObject", key, e)),
            }
        }
    }
    // The store cannot create-if-absent; check first (racy, but never loses a present object
    // to a single writer).
    if ctx_head(ctx, key).await?.is_some() {
        return Ok(false);
    }
    ctx.put(key, body, content_type).await?;
    Ok(true)
}

/// The size of an object, `None` if absent.
async fn ctx_head(ctx: &Ctx, key: &str) -> Result<Option<u64>, CacheError> {
    match ctx
        .client
        .head_object()
        .bucket(&ctx.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(out) => Ok(Some(to_size(out.content_length()))),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(ctx.error("HeadObject", key, e)),
    }
}

async fn upload_part(
    ctx: Arc<Ctx>,
    key: String,
    upload_id: String,
    number: i32,
    body: Bytes,
) -> Result<CompletedPart, CacheError> {
    let out = ctx
        .client
        .upload_part()
        .bucket(&ctx.bucket)
        .key(&key)
        .upload_id(upload_id)
        .part_number(number)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| ctx.error("UploadPart", &key, e))?;
    let Some(etag) = out.e_tag() else {
        return Err(ctx.missing("UploadPart", &key, "ETag"));
    };
    Ok(CompletedPart::builder()
        .part_number(number)
        .e_tag(etag)
        .build())
}

/// The blocking half of a streaming upload: fills one part buffer at a time.
pub(crate) struct S3Writer {
    key: String,
    buf: Vec<u8>,
    part_size: usize,
    size: u64,
    tx: Option<mpsc::Sender<Chunk>>,
    done: Option<oneshot::Receiver<Result<Option<u64>, CacheError>>>,
    /// The upload's own error once it failed; `commit` returns it.
    failed: Option<CacheError>,
}

impl S3Writer {
    fn failed(err: CacheError) -> S3Writer {
        S3Writer {
            key: String::new(),
            buf: Vec::new(),
            part_size: MIN_PART_SIZE,
            size: 0,
            tx: None,
            done: None,
            failed: Some(err),
        }
    }

    /// Waits for the async half to finish and returns its verdict.
    fn wait(&mut self) -> Result<Option<u64>, CacheError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let interrupted = |detail: &str| CacheError::UploadInterrupted {
            key: self.key.clone(),
            detail: detail.to_owned(),
        };
        match self.done.take() {
            Some(rx) => match rx.blocking_recv() {
                Ok(r) => r,
                Err(_) => Err(interrupted("the runtime shut down during the upload")),
            },
            None => Err(interrupted("upload already finished")),
        }
    }

    /// Hands a chunk to the async half. `false`: it has stopped, and `self.failed` says why.
    fn send(&mut self, chunk: Chunk) -> bool {
        if let Some(tx) = &self.tx
            && tx.blocking_send(chunk).is_ok()
        {
            return true;
        }
        self.tx = None;
        if self.failed.is_none() {
            self.failed = Some(match self.wait() {
                Err(e) => e,
                Ok(_) => CacheError::UploadInterrupted {
                    key: self.key.clone(),
                    detail: "the upload ended before all data was written".into(),
                },
            });
        }
        false
    }

    fn failure(&mut self) -> CacheError {
        self.failed
            .take()
            .unwrap_or_else(|| CacheError::UploadInterrupted {
                key: self.key.clone(),
                detail: "the upload failed".into(),
            })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.to_string()));
        }
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sent only once more data arrives, so an object of exactly one
        // part still goes up as a single PutObject.
        if self.buf.len() >= self.part_size {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
            if !self.send(Chunk::Part(Bytes::from(full))) {
                let text = self.failed.as_ref().map(ToString::to_string);
                return Err(std::io::Error::other(text.unwrap_or_default()));
            }
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.part_size);
        }
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        Ok(n)
    }

    /// Makes the object visible: its size, or `None` when `if_absent` found one there.
    pub(crate) fn commit(mut self, if_absent: bool) -> Result<Option<u64>, CacheError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let last = Bytes::from(std::mem::take(&mut self.buf));
        if !self.send(Chunk::Last(last, if_absent)) {
            return Err(self.failure());
        }
        self.tx = None;
        let size = self.wait()?;
        debug_assert!(size.is_none_or(|s| s == self.size));
        Ok(size)
    }

    pub(crate) fn abort(mut self) {
        self.tx = None;
        if self.done.is_some() {
            let _ = self.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_is_capped() {
        assert_eq!(retry_after_delay(Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(retry_after_delay(Some(" 0 ")), Some(Duration::ZERO));
        assert_eq!(retry_after_delay(Some("86400")), Some(MAX_BACKOFF));
        // The HTTP-date form and junk fall back to the SDK's own backoff.
        assert_eq!(
            retry_after_delay(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(retry_after_delay(Some("-1")), None);
        assert_eq!(retry_after_delay(None), None);
    }
}
