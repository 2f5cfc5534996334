//! A cache in an S3 bucket (AWS or any S3-compatible store), read and written with the AWS SDK.
//! This module holds the single-object calls (HEAD, GET, PUT, touch, delete, list); `error`
//! translates the SDK's errors, once, into [`CacheError`]s a user can act on (which bucket,
//! which endpoint, which credential source, what S3 said); `retry` sets up how requests ride out
//! faults; `upload` streams objects of any size. Which optional features the store takes is
//! learnt from its refusals and kept on the one context every request shares.
//!
//! Streaming uploads ([`S3Writer`]) run in two halves: the blocking writer fills part buffers
//! and hands them over a channel of capacity 1 to one async task, which keeps at most
//! `parts_in_flight` UploadPart calls running. A full part is handed over only once it has a
//! place in the cache's part budget (`parts_queued` places, shared by all uploads), so memory is
//! bounded by `(writers + parts_queued) * part_size` however many objects upload at once.
//!
//! Faults are the SDK's job where it does it well: every request (bodies are `Bytes`, so
//! PutObject and UploadPart replay) is retried with jittered exponential backoff on throttling
//! (429, 503 SlowDown), 5xx, timeouts, resets and truncated answers; a `Retry-After` header sets
//! the delay instead; an attempt that takes longer than the attempt timeout
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use super::{CacheError, CacheUrl, ObjectInfo, OpenOptions};

mod error;
pub mod parameter;
pub mod probe;
mod retry;
mod upload;

use error::{credential_source, feature_refused, is_status, root_cause};
pub use retry::ATTEMPT_TIMEOUT_ENV;

/// Where [`Cache::open_with`](super::Cache::open_with) takes the credentials for `url` from,
/// in words for messages (never the credentials themselves); None for a cache that needs none.
pub fn credential_source_of(url: &CacheUrl, opts: &OpenOptions) -> Option<String> {
    match url {
        CacheUrl::S3 { profile, .. } => Some(credential_source(opts, profile.as_deref())),
        CacheUrl::File { .. } => None,
    }
}
use retry::{INITIAL_BACKOFF, fault_tolerance, open_retries};
pub(crate) use upload::S3Writer;

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

/// How long a failed or cancelled multipart upload waits for its parts in flight before it
/// aborts; short, because a cancelled CI job is killed a few seconds after SIGINT.
const PART_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole reads of a small object when its body is cut short after the headers.
const GET_ATTEMPTS: u32 = 4;
/// HEADs for the object of an upload the store no longer knows after its completion was sent:
/// 0.5 + 1 + 2 + 4 + 5 s of waiting in all before it counts as lost.
const VANISHED_UPLOAD_LOOKS: u32 = 6;

/// What every request needs to know to do its work and to explain its failures.
struct Ctx {
    client: Client,
    bucket: String,
    /// For messages: the custom endpoint URL, or AWS S3 with its region.
    endpoint: String,
    /// For messages: where the credentials came from (never the credentials themselves).
    cred_source: String,
    /// The URL's `storage-class`, for every object written.
    storage_class: Option<aws_sdk_s3::types::StorageClass>,
    /// What this store turned out to take, learnt from its refusals.
    features: Features,
}

/// Features an S3-compatible store may lack, each on until the store refuses it
/// ([`feature_refused`]), then off for the rest of the process.
struct Features {
    /// Lowered to [`S3_PAGE_SIZE`] when the store refuses a larger listing page.
    list_page_size: AtomicI32,
    /// `If-None-Match: *` on PutObject and CompleteMultipartUpload.
    conditional_writes: AtomicBool,
    /// `If-Match` on PutObject.
    if_match_writes: AtomicBool,
    /// DeleteObjects (not implemented, or wants what the SDK does not send).
    batch_deletes: AtomicBool,
}

pub(crate) struct S3Cache {
    ctx: Arc<Ctx>,
    part_size: usize,
    parts_in_flight: usize,
    /// Places for full parts waiting or uploading, over all objects: see
    /// [`OpenOptions::parts_queued`].
    part_budget: Arc<Semaphore>,
    /// See [`OpenOptions::copy_max`].
    copy_max: u64,
}

impl Ctx {
    /// Writes `key` only if no object is there (`If-None-Match: *`): `true` if this call wrote it.
    /// Where the store refuses the condition, that is remembered and a HEAD decides.
    async fn put_if_absent(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<bool, CacheError> {
        let ctx = self;
        let conditional = &self.features.conditional_writes;
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
        if ctx.head(key).await?.is_some() {
            return Ok(false);
        }
        ctx.put(key, body, content_type).await?;
        Ok(true)
    }

    /// HeadObject: the object's size and time, `None` if absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, CacheError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
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
            Err(e) => Err(self.error("HeadObject", key, e)),
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
            .set_storage_class(self.storage_class.clone())
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

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn to_size(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// The AWS SDK's configuration for `url`: the URL's region, else the default chain, else
/// us-east-1; the credentials given, else the URL's profile alone (as Nix does), else the
/// default chain. Every client that talks to the store's account starts from it.
pub(crate) async fn sdk_config(url: &CacheUrl, opts: &OpenOptions) -> aws_config::SdkConfig {
    let (region, profile) = match url {
        CacheUrl::S3 {
            region, profile, ..
        } => (region.clone(), profile.clone()),
        CacheUrl::File { .. } => (None, None),
    };
    let mut default_region = aws_config::default_provider::region::DefaultRegionChain::builder();
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(p) = &profile {
        default_region = default_region.profile_name(p);
        loader = loader.profile_name(p);
    }
    let region_chain = RegionProviderChain::first_try(region.map(Region::new))
        .or_else(default_region.build())
        .or_else(Region::new("us-east-1"));
    loader = loader.region(region_chain);
    if let Some(creds) = &opts.credentials {
        loader = loader.credentials_provider(creds.clone());
    } else if let Some(p) = &profile {
        // Like Nix: a profile named in the URL is the only source, even if env vars are set.
        loader = loader.credentials_provider(
            aws_config::profile::ProfileFileCredentialsProvider::builder()
                .profile_name(p)
                .build(),
        );
    }
    loader.load().await
}

/// The S3 client's configuration for `url` (its endpoint and addressing), and the endpoint
/// in words for messages: the custom endpoint's URL, or AWS S3 with its region.
pub(crate) fn s3_config(
    url: &CacheUrl,
    sdk: &aws_config::SdkConfig,
) -> (aws_sdk_s3::config::Builder, String) {
    let mut conf = aws_sdk_s3::config::Builder::from(sdk);
    let endpoint = match url.s3_endpoint_url() {
        Some(ep) => {
            // S3-compatible stores rarely have wildcard DNS for virtual-hosted buckets,
            // and many reject the SDK's default CRC checksum headers.
            conf = conf
                .endpoint_url(&ep)
                .force_path_style(url.path_style().unwrap_or(true))
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
            ep
        }
        None => {
            if let Some(path_style) = url.path_style() {
                conf = conf.force_path_style(path_style);
            }
            let r = sdk.region().map_or("us-east-1", |r| r.as_ref());
            format!("AWS S3 (region {r})")
        }
    };
    (conf, endpoint)
}

/// What a client of one bucket is made from: the SDK's settings (region and credential chain
/// as the URL names them), the S3 settings with nixbucket's retries and request meter, and the
/// words messages use for the endpoint and the credentials.
pub(crate) struct ClientParts {
    pub(crate) sdk: aws_config::SdkConfig,
    pub(crate) conf: aws_sdk_s3::config::Builder,
    pub(crate) bucket: String,
    pub(crate) endpoint: String,
    pub(crate) cred_source: String,
}

/// The settings [`S3Cache::open`] makes its client from; no request is sent.
pub(crate) async fn client_config(
    url: &CacheUrl,
    opts: &OpenOptions,
) -> Result<ClientParts, CacheError> {
    let CacheUrl::S3 {
        bucket, profile, ..
    } = url
    else {
        return Err(CacheError::InvalidKey {
            key: url.to_string(),
            reason: "not an s3:// URL",
        });
    };
    let cred_source = credential_source(opts, profile.as_deref());
    let sdk = sdk_config(url, opts).await;
    let (mut conf, endpoint) = s3_config(url, &sdk);
    conf = fault_tolerance(conf, opts.max_attempts).interceptor(super::meter::Counter);
    Ok(ClientParts {
        sdk,
        conf,
        bucket: bucket.clone(),
        endpoint,
        cred_source,
    })
}

impl S3Cache {
    pub(crate) async fn open(url: &CacheUrl, opts: OpenOptions) -> Result<S3Cache, CacheError> {
        let ClientParts {
            sdk: _,
            conf,
            bucket,
            endpoint,
            cred_source,
        } = client_config(url, &opts).await?;
        super::meter::opened(url);
        let ctx = Ctx {
            client: Client::from_conf(conf.build()),
            bucket,
            endpoint,
            cred_source,
            storage_class: url
                .param("storage-class")
                .map(aws_sdk_s3::types::StorageClass::from),
            features: Features {
                list_page_size: AtomicI32::new(opts.list_page_size.clamp(1, ASKED_PAGE_SIZE)),
                conditional_writes: AtomicBool::new(true),
                if_match_writes: AtomicBool::new(true),
                batch_deletes: AtomicBool::new(true),
            },
        };
        let cache = S3Cache {
            ctx: Arc::new(ctx),
            part_size: opts.part_size.max(MIN_PART_SIZE),
            parts_in_flight: opts.parts_in_flight.max(1),
            part_budget: Arc::new(Semaphore::new(opts.parts_queued.max(1))),
            copy_max: opts.copy_max,
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
        self.ctx.head(key).await
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
            return Ok(ctx.head(key).await?.is_some());
        }
        match ctx
            .client
            .copy_object()
            .bucket(&ctx.bucket)
            .key(key)
            .copy_source(format!("{}/{}", ctx.bucket, key))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .content_type(content_type)
            .set_storage_class(ctx.storage_class.clone())
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
        if etag.is_empty() || !self.ctx.features.if_match_writes.load(Ordering::Relaxed) {
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
                self.ctx
                    .features
                    .if_match_writes
                    .store(false, Ordering::Relaxed);
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
        self.ctx.put_if_absent(key, body, content_type).await
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
        if self.ctx.features.batch_deletes.load(Ordering::Relaxed) {
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
                self.ctx
                    .features
                    .batch_deletes
                    .store(false, Ordering::Relaxed);
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
            let page_size = self.ctx.features.list_page_size.load(Ordering::Relaxed);
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
                    self.ctx
                        .features
                        .list_page_size
                        .store(S3_PAGE_SIZE, Ordering::Relaxed);
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

    /// False once the store has refused a conditional write: then "only if absent" is a HEAD
    /// and a PUT.
    pub(crate) fn writes_if_absent(&self) -> bool {
        self.ctx.features.conditional_writes.load(Ordering::Relaxed)
    }

    pub(crate) fn writer(&self, key: &str, content_type: &str) -> S3Writer {
        S3Writer::start(
            self.ctx.clone(),
            key,
            content_type,
            (self.part_size, self.parts_in_flight),
            self.part_budget.clone(),
        )
    }
}
