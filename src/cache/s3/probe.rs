//! Single requests to a bucket for `nixbucket doctor`, each answer kept as the store gave it
//! (status, error code, the bucket's region, the store's clock) instead of being turned into a
//! [`CacheError`]: the doctor tells a 403 from a 404 and a redirect from a refusal, which the
//! cache's own calls rightly fold into one error. No call retries: the doctor reports what one
//! request met.

use std::sync::Mutex;

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;

use super::error::{find_credentials_error, service_details};
use super::*;

/// What the store answered to one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status; `None` when no answer came (unreachable, no credentials to sign with).
    pub status: Option<u16>,
    /// S3's error code (`AccessDenied`, `NoSuchKey`, `PermanentRedirect`…) of an error answer.
    pub code: Option<String>,
    /// S3's message, or why no answer came.
    pub message: String,
    /// `x-amz-bucket-region`, which AWS sends with HeadBucket answers and redirects.
    pub bucket_region: Option<String>,
    /// The store's clock, from its `Date` header.
    pub date: Option<SystemTime>,
    /// No request went out: the credential chain found no credentials, or could not load them.
    pub no_credentials: bool,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// `403 AccessDenied`, `404 NoSuchKey`, or why no answer came: for messages.
    pub fn summary(&self) -> String {
        match (self.status, &self.code) {
            (Some(status), Some(code))
                if self.message.is_empty() || self.message.starts_with("HTTP status") =>
            {
                format!("{status} {code}")
            }
            (Some(status), Some(code)) => format!("{status} {code}: {}", self.message),
            (Some(status), None) => format!("{status}"),
            (None, _) => format!("no answer: {}", self.message),
        }
    }
}

/// Who the credentials belong to, as far as the store says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The access key id (not a secret, but shown shortened all the same).
    pub access_key_id: Option<String>,
    /// When temporary credentials expire.
    pub expiry: Option<SystemTime>,
    /// The ARN STS names, or why it could not be asked.
    pub arn: Result<String, String>,
}

impl Identity {
    fn unknown(why: String) -> Identity {
        Identity {
            access_key_id: None,
            expiry: None,
            arn: Err(why),
        }
    }
}

/// The status, `x-amz-bucket-region` and `Date` of an answer.
type Heard = (u16, Option<String>, Option<String>);

/// The status and headers of the last answer one request got, read as it arrives.
#[derive(Clone, Debug, Default)]
struct Seen(Arc<Mutex<Option<Heard>>>);

impl Intercept for Seen {
    fn name(&self) -> &'static str {
        "nixbucket doctor's probe"
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        let header = |name: &str| response.headers().get(name).map(str::to_owned);
        if let Ok(mut seen) = self.0.lock() {
            *seen = Some((
                response.status().as_u16(),
                header("x-amz-bucket-region"),
                header("date"),
            ));
        }
        Ok(())
    }
}

impl Seen {
    fn answer<T, E>(&self, result: &Result<T, SdkError<E, HttpResponse>>) -> Answer
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let seen = self.0.lock().ok().and_then(|s| s.clone());
        let (status, bucket_region, date) = match seen {
            Some((status, region, date)) => (Some(status), region, date),
            None => (None, None, None),
        };
        let date = date.and_then(|d| {
            aws_smithy_types::DateTime::from_str(&d, aws_smithy_types::date_time::Format::HttpDate)
                .ok()
                .and_then(|t| SystemTime::try_from(t).ok())
        });
        let mut answer = Answer {
            status,
            bucket_region,
            date,
            ..Answer::default()
        };
        let Err(err) = result else {
            return answer;
        };
        if let Some(creds) = find_credentials_error(err) {
            answer.no_credentials = true;
            answer.message = format!("{creds}: {}", root_cause(creds));
            return answer;
        }
        if let Some((status, code, message)) = service_details(err) {
            answer.status = Some(status);
            answer.code = Some(code);
            answer.message = message;
        } else {
            answer.message = root_cause(err);
        }
        answer
    }
}

/// A bucket, asked one request at a time with the credentials a cache would use, and without
/// any.
pub struct Probe {
    client: Client,
    anonymous: Client,
    sdk: aws_config::SdkConfig,
    custom_endpoint: Option<String>,
    bucket: String,
    endpoint: String,
    cred_source: String,
}

impl Probe {
    /// The clients; no request is sent yet.
    pub async fn new(url: &CacheUrl, opts: OpenOptions) -> Result<Probe, CacheError> {
        let opts = OpenOptions {
            max_attempts: Some(1),
            ..opts
        };
        let parts = client_config(url, &opts).await?;
        super::super::meter::opened(url);
        let custom_endpoint = url.s3_endpoint_url();
        let anonymous_sdk = aws_config::defaults(BehaviorVersion::latest())
            .no_credentials()
            .region(parts.sdk.region().cloned())
            .load()
            .await;
        let mut anonymous = aws_sdk_s3::config::Builder::from(&anonymous_sdk);
        if let Some(ep) = &custom_endpoint {
            anonymous = anonymous
                .endpoint_url(ep)
                .force_path_style(url.path_style().unwrap_or(true));
        } else if let Some(path_style) = url.path_style() {
            anonymous = anonymous.force_path_style(path_style);
        }
        anonymous = fault_tolerance(anonymous, Some(1));
        Ok(Probe {
            client: Client::from_conf(parts.conf.build()),
            anonymous: Client::from_conf(anonymous.build()),
            sdk: parts.sdk,
            custom_endpoint,
            bucket: parts.bucket,
            endpoint: parts.endpoint,
            cred_source: parts.cred_source,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The endpoint in words: its URL, or AWS S3 with the region.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the bucket is on AWS itself (no custom endpoint).
    pub fn is_aws(&self) -> bool {
        self.custom_endpoint.is_none()
    }

    /// The region requests are signed for.
    pub fn region(&self) -> String {
        self.sdk
            .region()
            .map_or_else(|| "us-east-1".to_owned(), |r| r.as_ref().to_owned())
    }

    /// Where the credentials come from, in words.
    pub fn credential_source(&self) -> &str {
        &self.cred_source
    }

    /// The credentials' access key id and, from STS's GetCallerIdentity (at the custom
    /// endpoint if there is one: moto answers there, most other stores do not), their ARN.
    pub async fn identity(&self) -> Identity {
        use aws_credential_types::provider::ProvideCredentials;
        let Some(provider) = self.sdk.credentials_provider() else {
            return Identity::unknown("no credential provider".into());
        };
        let creds = match provider.provide_credentials().await {
            Ok(creds) => creds,
            Err(err) => {
                return Identity::unknown(format!("{err}: {}", root_cause(&err)));
            }
        };
        let mut sts = aws_sdk_sts::config::Builder::from(&self.sdk)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .build(),
            );
        if let Some(ep) = &self.custom_endpoint {
            sts = sts.endpoint_url(ep);
        }
        let arn = match aws_sdk_sts::Client::from_conf(sts.build())
            .get_caller_identity()
            .send()
            .await
        {
            Ok(out) => out.arn().map(str::to_owned).ok_or_else(|| "no ARN".into()),
            Err(err) => Err(match err.code() {
                Some(code) => format!("{code}: {}", err.message().unwrap_or_default()),
                None => root_cause(&err),
            }),
        };
        Identity {
            access_key_id: Some(creds.access_key_id().to_owned()),
            expiry: creds.expiry(),
            arn,
        }
    }

    /// HeadBucket: on AWS the answer names the bucket's region, whatever its status.
    pub async fn head_bucket(&self) -> Answer {
        let seen = Seen::default();
        let result = self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .interceptor(seen.clone())
            .send()
            .await;
        seen.answer(&result)
    }

    /// A listing of at most `max_keys` keys directly under the bucket's root (narinfos and
    /// `nix-cache-info`), after `start_after` if given.
    pub async fn list_top(
        &self,
        max_keys: i32,
        start_after: Option<&str>,
    ) -> (Answer, Vec<String>) {
        let seen = Seen::default();
        let result = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .delimiter("/")
            .max_keys(max_keys)
            .set_start_after(start_after.map(str::to_owned))
            .customize()
            .interceptor(seen.clone())
            .send()
            .await;
        let answer = seen.answer(&result);
        let keys = result
            .map(|out| {
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (answer, keys)
    }

    /// GetObject of a small object, signed or not; its body if it came whole and is at most
    /// [`super::super::SMALL_OBJECT_MAX`] bytes.
    pub async fn get(&self, key: &str) -> (Answer, Option<Bytes>) {
        self.get_with(&self.client, key).await
    }

    /// GetObject with no credentials at all, as anyone on the internet would ask.
    pub async fn get_anonymously(&self, key: &str) -> Answer {
        self.get_with(&self.anonymous, key).await.0
    }

    async fn get_with(&self, client: &Client, key: &str) -> (Answer, Option<Bytes>) {
        let seen = Seen::default();
        let result = client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .customize()
            .interceptor(seen.clone())
            .send()
            .await;
        let answer = seen.answer(&result);
        let body = match result {
            Ok(out) if to_size(out.content_length()) <= super::super::SMALL_OBJECT_MAX => {
                out.body.collect().await.ok().map(|b| b.into_bytes())
            }
            _ => None,
        };
        (answer, body)
    }

    /// PutObject of a small text object.
    pub async fn put(&self, key: &str, body: &'static str) -> Answer {
        let seen = Seen::default();
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("text/plain")
            .body(ByteStream::from_static(body.as_bytes()))
            .customize()
            .interceptor(seen.clone())
            .send()
            .await;
        seen.answer(&result)
    }

    pub async fn delete(&self, key: &str) -> Answer {
        let seen = Seen::default();
        let result = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .customize()
            .interceptor(seen.clone())
            .send()
            .await;
        seen.answer(&result)
    }

    /// The bucket's lifecycle rules: for each enabled one that aborts incomplete multipart
    /// uploads, after how many days.
    pub async fn abort_upload_rules(&self) -> (Answer, Vec<i32>) {
        let seen = Seen::default();
        let result = self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .customize()
            .interceptor(seen.clone())
            .send()
            .await;
        let answer = seen.answer(&result);
        let days = result
            .map(|out| {
                out.rules()
                    .iter()
                    .filter(|r| r.status() == &aws_sdk_s3::types::ExpirationStatus::Enabled)
                    .filter_map(|r| r.abort_incomplete_multipart_upload())
                    .map(|a| a.days_after_initiation().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        (answer, days)
    }
}
