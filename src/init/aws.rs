//! The account side of `init`: look first ([`Setup::inspect`]), say what would change
//! ([`Found::plan`]), then change only that ([`Setup::apply`]). Each step reads what is there
//! and keeps it where it can (the bucket's other lifecycle rules, an existing key), so a
//! second run finds everything done and changes nothing.

use std::path::{Path, PathBuf};

use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    CreateBucketConfiguration, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
    PublicAccessBlockConfiguration,
};
use aws_sdk_ssm::types::ParameterType;
use aws_smithy_types::error::display::DisplayErrorContext;
use zeroize::Zeroizing;

use super::{
    ABORT_AFTER_DAYS, AUDIENCE, GITHUB_OIDC_HOST, GithubRepo, LIFECYCLE_RULE_ID, Plan, State,
    key_parameter_name, oidc_provider_arn, parameter_arn, permissions_policy, role_policy_name,
    same_policy, trust_policy,
};
use crate::cache::{CacheUrl, OpenOptions};
use crate::nix::{PublicKey, SecretKey};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("init sets up s3:// caches; {url} is a directory, which needs no setting up")]
    NotS3 { url: String },
    #[error("could not {doing}: {message}")]
    Aws { doing: String, message: String },
    #[error(
        "the bucket {bucket} exists but these credentials may not use it (HTTP {status}): \
         bucket names are global, so another account may own it; pick another name"
    )]
    BucketOfAnother { bucket: String, status: u16 },
    #[error(
        "the bucket {bucket} is in region {region}, not {asked}: write ?region={region} in the \
         cache URL (if the bucket is yours)"
    )]
    OtherRegion {
        bucket: String,
        region: String,
        asked: String,
    },
    #[error("the SSM parameter {name} does not hold a Nix secret key, so init leaves it alone")]
    BadKeyParameter { name: String },
    #[error("the key parameter {name} changed while init ran")]
    KeyVanished { name: String },
    #[error("{path}: {message}")]
    LocalKey { path: PathBuf, message: String },
}

type SdkError<E> = aws_smithy_runtime_api::client::result::SdkError<
    E,
    aws_smithy_runtime_api::client::orchestrator::HttpResponse,
>;

/// An SDK error as one line: the service's code and message when it answered with them (the
/// whole response otherwise, for a failure that never reached the service).
fn aws_error<E>(doing: impl Into<String>) -> impl FnOnce(SdkError<E>) -> InitError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let doing = doing.into();
    move |err| {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let message = match (err.as_service_error().and_then(|e| e.code()), status) {
            (Some(code), Some(status)) => format!(
                "{code}: {} (HTTP {status})",
                err.as_service_error()
                    .and_then(|e| e.message())
                    .unwrap_or("no message")
            ),
            _ => DisplayErrorContext(&err).to_string(),
        };
        InitError::Aws { doing, message }
    }
}

/// The error code S3 or IAM answered with, if any.
fn code_of<E, R>(err: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    err.as_service_error().and_then(|e| e.code())
}

/// Whether the store's account can be set up through IAM, STS and SSM: AWS itself, or a
/// place the user pointed the AWS SDK's services at (`AWS_ENDPOINT_URL`, as for LocalStack).
/// R2, B2, Garage and MinIO speak S3 only.
pub fn has_iam(url: &CacheUrl) -> bool {
    let configured = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    match url.s3_endpoint_url() {
        None => true,
        Some(endpoint) => {
            configured
                || url::Url::parse(&endpoint)
                    .ok()
                    .and_then(|u| u.host_str().map(|h| h.ends_with(".amazonaws.com")))
                    .unwrap_or(false)
        }
    }
}

/// The clients of one run, for the store's account and region.
pub struct Setup {
    bucket: String,
    region: String,
    s3: aws_sdk_s3::Client,
    /// None for a store without IAM.
    iam: Option<IamClients>,
}

struct IamClients {
    iam: aws_sdk_iam::Client,
    sts: aws_sdk_sts::Client,
    ssm: aws_sdk_ssm::Client,
}

/// GitHub's OIDC provider in the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OidcProvider {
    Missing,
    /// There, with the audience the Action asks its token for.
    Ready,
    /// There (this ARN), without that audience: STS refuses the Action's tokens.
    WithoutAudience(String),
}

/// What the account holds now, as far as init cares.
pub struct Found {
    pub bucket: String,
    pub region: String,
    /// The identity the credentials belong to (an ARN), on AWS.
    pub identity: Option<String>,
    pub account: Option<String>,
    pub bucket_exists: bool,
    /// None: the store does not do public access blocks.
    pub public_access_blocked: Option<bool>,
    pub lifecycle_rules: Vec<LifecycleRule>,
    /// None: the store does not do lifecycle rules.
    pub lifecycle_supported: bool,
    pub oidc_provider: OidcProvider,
    /// The role's ARN, when it exists, and whether its trust policy is ours.
    pub role: Option<(String, bool)>,
    pub role_policy_current: bool,
    /// The public half of the key in the parameter, when there is one.
    pub key: Option<PublicKey>,
}

/// What the repository and the names are: the same on every run, so the run finds its own.
pub struct Names {
    pub repo: GithubRepo,
    pub role: String,
    pub key_parameter: String,
    pub key_name: String,
    /// Where the signing key goes for a store without IAM (AWS keeps it in SSM).
    pub local_key: PathBuf,
}

impl Names {
    /// The names of `repo`'s cache in `bucket`; `config_dir` holds a key kept on this machine.
    pub fn new(repo: GithubRepo, bucket: &str, config_dir: &Path) -> Names {
        let key_name = format!("{bucket}-1");
        Names {
            role: repo.role_name(),
            key_parameter: key_parameter_name(bucket),
            local_key: config_dir.join(format!("{key_name}.sec")),
            key_name,
            repo,
        }
    }
}

/// What a run leaves for the workflow.
pub struct Outcome {
    pub role_arn: Option<String>,
    pub public_key: PublicKey,
    /// What the store turned out not to do, for the user to see to.
    pub notes: Vec<String>,
}

const NO_PUBLIC_ACCESS_BLOCK: &str =
    "this store has no public access block; check in its console that the bucket is private";
const NO_LIFECYCLE: &str =
    "this store has no lifecycle rules; abort stale multipart uploads yourself";

fn abort_rule_present(rules: &[LifecycleRule]) -> bool {
    rules.iter().any(|rule| {
        let whole_bucket = rule.filter().is_none_or(|f| {
            f.prefix().unwrap_or("").is_empty()
                && f.tag().is_none()
                && f.and().is_none()
                && f.object_size_greater_than().is_none()
                && f.object_size_less_than().is_none()
        });
        #[allow(deprecated)]
        let no_old_prefix = rule.prefix().unwrap_or("").is_empty();
        rule.status() == &ExpirationStatus::Enabled
            && whole_bucket
            && no_old_prefix
            && rule
                .abort_incomplete_multipart_upload()
                .and_then(|a| a.days_after_initiation())
                .is_some()
    })
}

impl Setup {
    pub async fn connect(url: &CacheUrl) -> Result<Setup, InitError> {
        let CacheUrl::S3 { bucket, .. } = url else {
            return Err(InitError::NotS3 {
                url: url.to_string(),
            });
        };
        let sdk = crate::cache::s3::sdk_config(url, &OpenOptions::default()).await;
        let region = sdk
            .region()
            .map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
        let (conf, _) = crate::cache::s3::s3_config(url, &sdk);
        let iam = has_iam(url).then(|| IamClients {
            iam: aws_sdk_iam::Client::new(&sdk),
            sts: aws_sdk_sts::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
        });
        Ok(Setup {
            bucket: bucket.clone(),
            region,
            s3: aws_sdk_s3::Client::from_conf(conf.build()),
            iam,
        })
    }

    pub fn has_iam(&self) -> bool {
        self.iam.is_some()
    }

    /// Looks, changing nothing.
    pub async fn inspect(&self, names: &Names) -> Result<Found, InitError> {
        let mut found = Found {
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            identity: None,
            account: None,
            bucket_exists: false,
            public_access_blocked: None,
            lifecycle_rules: Vec::new(),
            lifecycle_supported: true,
            oidc_provider: OidcProvider::Missing,
            role: None,
            role_policy_current: false,
            key: None,
        };
        if let Some(c) = &self.iam {
            let me = c.sts.get_caller_identity().send().await.map_err(aws_error(
                "read who these AWS credentials belong to (STS GetCallerIdentity)",
            ))?;
            found.identity = me.arn().map(str::to_owned);
            found.account = me.account().map(str::to_owned);
        }
        self.inspect_bucket(&mut found).await?;
        if let (Some(c), Some(account)) = (&self.iam, found.account.clone()) {
            let providers = c
                .iam
                .list_open_id_connect_providers()
                .send()
                .await
                .map_err(aws_error("list the account's OIDC providers"))?;
            let want = oidc_provider_arn(&account);
            let listed = providers
                .open_id_connect_provider_list()
                .iter()
                .any(|p| p.arn() == Some(want.as_str()));
            if listed {
                let provider = c
                    .iam
                    .get_open_id_connect_provider()
                    .open_id_connect_provider_arn(&want)
                    .send()
                    .await
                    .map_err(aws_error("read GitHub's OIDC provider in IAM"))?;
                found.oidc_provider = if provider.client_id_list().iter().any(|id| id == AUDIENCE) {
                    OidcProvider::Ready
                } else {
                    OidcProvider::WithoutAudience(want)
                };
            }
            found.role = match c.iam.get_role().role_name(&names.role).send().await {
                Ok(out) => out.role().map(|role| {
                    let trust = trust_policy(&account, &names.repo);
                    let current = role
                        .assume_role_policy_document()
                        .is_some_and(|doc| same_policy(doc, &trust));
                    (role.arn().to_owned(), current)
                }),
                Err(err) if code_of(&err) == Some("NoSuchEntity") => None,
                Err(err) => return Err(aws_error(format!("read the role {}", names.role))(err)),
            };
            if found.role.is_some() {
                let want = self.role_policy(&account, names);
                found.role_policy_current = match c
                    .iam
                    .get_role_policy()
                    .role_name(&names.role)
                    .policy_name(role_policy_name(&self.bucket))
                    .send()
                    .await
                {
                    Ok(out) => same_policy(out.policy_document(), &want),
                    Err(err) if code_of(&err) == Some("NoSuchEntity") => false,
                    Err(err) => {
                        return Err(aws_error(format!(
                            "read the policy of the role {}",
                            names.role
                        ))(err));
                    }
                };
            }
            found.key = self.stored_key(names).await?;
        } else {
            found.key = local_key(&names.local_key)?;
        }
        Ok(found)
    }

    async fn inspect_bucket(&self, found: &mut Found) -> Result<(), InitError> {
        let bucket = &self.bucket;
        match self.s3.head_bucket().bucket(bucket).send().await {
            Ok(_) => found.bucket_exists = true,
            Err(err) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let actual_region = err
                    .raw_response()
                    .and_then(|r| r.headers().get("x-amz-bucket-region"))
                    .map(str::to_owned);
                match status {
                    Some(404) => return Ok(()),
                    Some(301) if actual_region.is_some() => {
                        return Err(InitError::OtherRegion {
                            bucket: bucket.clone(),
                            region: actual_region.unwrap_or_default(),
                            asked: self.region.clone(),
                        });
                    }
                    Some(status @ (301 | 403)) => {
                        return Err(InitError::BucketOfAnother {
                            bucket: bucket.clone(),
                            status,
                        });
                    }
                    _ => return Err(aws_error(format!("look for the bucket {bucket}"))(err)),
                }
            }
        }
        found.public_access_blocked = match self
            .s3
            .get_public_access_block()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => Some(out.public_access_block_configuration().is_some_and(|c| {
                c.block_public_acls() == Some(true)
                    && c.ignore_public_acls() == Some(true)
                    && c.block_public_policy() == Some(true)
                    && c.restrict_public_buckets() == Some(true)
            })),
            Err(err) if code_of(&err) == Some("NoSuchPublicAccessBlockConfiguration") => {
                Some(false)
            }
            Err(err)
                if unsupported(
                    code_of(&err),
                    err.raw_response().map(|r| r.status().as_u16()),
                ) =>
            {
                None
            }
            Err(err) => {
                return Err(aws_error(format!(
                    "read the public access block of {bucket}"
                ))(err));
            }
        };
        match self
            .s3
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => found.lifecycle_rules = out.rules().to_vec(),
            Err(err) if code_of(&err) == Some("NoSuchLifecycleConfiguration") => {}
            Err(err)
                if unsupported(
                    code_of(&err),
                    err.raw_response().map(|r| r.status().as_u16()),
                ) =>
            {
                found.lifecycle_supported = false;
            }
            Err(err) => {
                return Err(aws_error(format!("read the lifecycle rules of {bucket}"))(
                    err,
                ));
            }
        }
        Ok(())
    }

    fn role_policy(&self, account: &str, names: &Names) -> serde_json::Value {
        let arn = parameter_arn(&self.region, account, &names.key_parameter);
        permissions_policy(&self.bucket, Some(&arn))
    }

    async fn stored_key(&self, names: &Names) -> Result<Option<PublicKey>, InitError> {
        let Some(c) = &self.iam else { return Ok(None) };
        match c
            .ssm
            .get_parameter()
            .name(&names.key_parameter)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(out) => {
                let text = Zeroizing::new(
                    out.parameter()
                        .and_then(|p| p.value())
                        .unwrap_or_default()
                        .to_owned(),
                );
                let key = SecretKey::parse(&text).map_err(|_| InitError::BadKeyParameter {
                    name: names.key_parameter.clone(),
                })?;
                Ok(Some(key.to_public()))
            }
            Err(err) if code_of(&err) == Some("ParameterNotFound") => Ok(None),
            Err(err) => Err(aws_error(format!(
                "read the SSM parameter {}",
                names.key_parameter
            ))(err)),
        }
    }

    /// Performs the changes `found` calls for, in the plan's order.
    pub async fn apply(&self, found: &Found, names: &Names) -> Result<Outcome, InitError> {
        let bucket = &self.bucket;
        let mut notes = Vec::new();
        if !found.bucket_exists {
            let mut create = self.s3.create_bucket().bucket(bucket);
            if self.region != "us-east-1" {
                create = create.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                        .build(),
                );
            }
            create.send().await.map_err(aws_error(format!(
                "create the bucket {bucket} in {}",
                self.region
            )))?;
        }
        let block_supported = found.public_access_blocked.is_some() || !found.bucket_exists;
        if block_supported && found.public_access_blocked != Some(true) {
            let result = self
                .s3
                .put_public_access_block()
                .bucket(bucket)
                .public_access_block_configuration(
                    PublicAccessBlockConfiguration::builder()
                        .block_public_acls(true)
                        .ignore_public_acls(true)
                        .block_public_policy(true)
                        .restrict_public_buckets(true)
                        .build(),
                )
                .send()
                .await;
            let doing = format!("block public access to {bucket}");
            lacking(
                result,
                !found.bucket_exists,
                NO_PUBLIC_ACCESS_BLOCK,
                &mut notes,
                doing,
            )?;
        }
        if found.lifecycle_supported && !abort_rule_present(&found.lifecycle_rules) {
            let mut rules = found.lifecycle_rules.clone();
            rules.push(abort_rule());
            let conf = BucketLifecycleConfiguration::builder()
                .set_rules(Some(rules))
                .build()
                .map_err(|e| InitError::Aws {
                    doing: "describe the lifecycle rules".into(),
                    message: e.to_string(),
                })?;
            let result = self
                .s3
                .put_bucket_lifecycle_configuration()
                .bucket(bucket)
                .lifecycle_configuration(conf)
                .send()
                .await;
            let doing = format!("add a lifecycle rule to {bucket}");
            lacking(
                result,
                !found.bucket_exists,
                NO_LIFECYCLE,
                &mut notes,
                doing,
            )?;
        }
        let (Some(c), Some(account)) = (&self.iam, found.account.as_deref()) else {
            let public_key = match &found.key {
                Some(key) => key.clone(),
                None => new_local_key(&names.local_key, &names.key_name)?,
            };
            return Ok(Outcome {
                role_arn: None,
                public_key,
                notes,
            });
        };
        if found.oidc_provider == OidcProvider::Missing {
            c.iam
                .create_open_id_connect_provider()
                .url(format!("https://{GITHUB_OIDC_HOST}"))
                .client_id_list(AUDIENCE)
                .send()
                .await
                .map_err(aws_error("create GitHub's OIDC provider in IAM"))?;
        }
        let trust = trust_policy(account, &names.repo).to_string();
        let role_arn = match &found.role {
            None => c
                .iam
                .create_role()
                .role_name(&names.role)
                .assume_role_policy_document(&trust)
                .send()
                .await
                .map_err(aws_error(format!("create the role {}", names.role)))?
                .role()
                .map(|r| r.arn().to_owned())
                .unwrap_or_default(),
            Some((arn, current)) => {
                if !current {
                    c.iam
                        .update_assume_role_policy()
                        .role_name(&names.role)
                        .policy_document(&trust)
                        .send()
                        .await
                        .map_err(aws_error(format!(
                            "update the trust policy of the role {}",
                            names.role
                        )))?;
                }
                arn.clone()
            }
        };
        if !found.role_policy_current {
            c.iam
                .put_role_policy()
                .role_name(&names.role)
                .policy_name(role_policy_name(&self.bucket))
                .policy_document(self.role_policy(account, names).to_string())
                .send()
                .await
                .map_err(aws_error(format!(
                    "set the policy of the role {}",
                    names.role
                )))?;
        }
        let public_key = match &found.key {
            Some(key) => key.clone(),
            None => self.store_new_key(c, names).await?,
        };
        Ok(Outcome {
            role_arn: Some(role_arn),
            public_key,
            notes,
        })
    }

    /// A new key pair, its secret half straight into the parameter: it is never printed or
    /// written to disk. `overwrite(false)`: a key another run stored first wins, and is read.
    async fn store_new_key(&self, c: &IamClients, names: &Names) -> Result<PublicKey, InitError> {
        let key = SecretKey::generate(&names.key_name).map_err(|e| InitError::Aws {
            doing: "create a signing key".into(),
            message: e.to_string(),
        })?;
        let put = c
            .ssm
            .put_parameter()
            .name(&names.key_parameter)
            .value(key.to_nix_string().as_str())
            .r#type(ParameterType::SecureString)
            .description(format!(
                "nixbucket: the key that signs what CI pushes to s3://{}",
                self.bucket
            ))
            .overwrite(false)
            .send()
            .await;
        match put {
            Ok(_) => Ok(key.to_public()),
            Err(err) if code_of(&err) == Some("ParameterAlreadyExists") => self
                .stored_key(names)
                .await?
                .ok_or_else(|| InitError::KeyVanished {
                    name: names.key_parameter.clone(),
                }),
            Err(err) => Err(aws_error(format!(
                "store the signing key in the SSM parameter {}",
                names.key_parameter
            ))(err)),
        }
    }
}

/// The public half of the key kept in `path`, if the file exists.
fn local_key(path: &Path) -> Result<Option<PublicKey>, InitError> {
    let fail = |message: String| InitError::LocalKey {
        path: path.to_owned(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let key = SecretKey::parse(&text)
                .map_err(|_| fail("does not hold a Nix secret key; init leaves it alone".into()))?;
            Ok(Some(key.to_public()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(format!("could not read it: {e}"))),
    }
}

/// A new key pair, the secret half into `path` (mode 0600 from the start, never replacing a
/// file), never printed.
fn new_local_key(path: &Path, name: &str) -> Result<PublicKey, InitError> {
    let fail = |message: String| InitError::LocalKey {
        path: path.to_owned(),
        message,
    };
    let key = SecretKey::generate(name).map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("could not create its directory: {e}")))?;
    }
    crate::atomic_file::write_new(path, key.to_nix_string().as_bytes(), 0o600)
        .map_err(|e| fail(format!("could not create it: {e}")))?;
    Ok(key.to_public())
}

/// A bucket setting's change: done; or refused by a store that does not have the feature, for
/// a bucket init just created there (`new_bucket`), which leaves `note` for the user; or the
/// error, saying what was being done.
fn lacking<T, E>(
    result: Result<T, SdkError<E>>,
    new_bucket: bool,
    note: &str,
    notes: &mut Vec<String>,
    doing: String,
) -> Result<(), InitError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(_) => Ok(()),
        Err(err)
            if new_bucket
                && unsupported(
                    code_of(&err),
                    err.raw_response().map(|r| r.status().as_u16()),
                ) =>
        {
            notes.push(note.to_owned());
            Ok(())
        }
        Err(err) => Err(aws_error(doing)(err)),
    }
}

/// Whether a store answered that it does not do a bucket feature at all.
fn unsupported(code: Option<&str>, status: Option<u16>) -> bool {
    matches!(code, Some("NotImplemented" | "MethodNotAllowed")) || matches!(status, Some(501 | 405))
}

fn abort_rule() -> LifecycleRule {
    LifecycleRule::builder()
        .id(LIFECYCLE_RULE_ID)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(ABORT_AFTER_DAYS)
                .build(),
        )
        .build()
        .expect("a lifecycle rule with its status set")
}

impl Found {
    /// What [`Setup::apply`] would do, a line each, then what is left to the user.
    pub fn plan(&self, names: &Names, iam: bool) -> Plan {
        let mut plan = Plan::default();
        let bucket = &self.bucket;
        plan.push(
            format!("bucket {bucket}"),
            if self.bucket_exists {
                State::Done
            } else {
                State::Change(format!("create it in {}", self.region))
            },
        );
        plan.push(
            "public access blocked",
            match self.public_access_blocked {
                Some(true) => State::Done,
                None if self.bucket_exists => State::Manual(NO_PUBLIC_ACCESS_BLOCK.into()),
                _ if !iam => State::Change(
                    "block all four kinds, if the store has public access blocks".into(),
                ),
                _ => State::Change("block all four kinds".into()),
            },
        );
        plan.push(
            format!("lifecycle rule aborting uploads left incomplete for {ABORT_AFTER_DAYS} day"),
            if !self.lifecycle_supported {
                State::Manual(
                    "this store has no lifecycle rules; abort stale multipart uploads yourself"
                        .into(),
                )
            } else if abort_rule_present(&self.lifecycle_rules) {
                State::Done
            } else if self.lifecycle_rules.is_empty() {
                State::Change(format!("add {LIFECYCLE_RULE_ID}"))
            } else {
                State::Change(format!(
                    "add {LIFECYCLE_RULE_ID}, keeping the {} rule(s) there",
                    self.lifecycle_rules.len()
                ))
            },
        );
        if !iam {
            self.plan_without_iam(&mut plan, names);
            return plan;
        }
        plan.push(
            "GitHub's OIDC provider in IAM",
            match &self.oidc_provider {
                OidcProvider::Ready => State::Done,
                OidcProvider::Missing => {
                    State::Change(format!("create https://{GITHUB_OIDC_HOST} for {AUDIENCE}"))
                }
                // Changing another tool's provider is the account owner's call: named, not done.
                OidcProvider::WithoutAudience(arn) => State::Manual(format!(
                    "it does not list the audience {AUDIENCE}, so STS refuses the Action's \
                     tokens: `aws iam add-client-id-to-open-id-connect-provider \
                     --open-id-connect-provider-arn {arn} --client-id {AUDIENCE}`"
                )),
            },
        );
        plan.push(
            format!("role {} trusting repo:{}:*", names.role, names.repo),
            match &self.role {
                Some((_, true)) => State::Done,
                Some((_, false)) => State::Change("replace its trust policy".into()),
                None => State::Change("create it".into()),
            },
        );
        plan.push(
            format!(
                "the role's policy {}: this bucket and the key parameter, nothing else",
                role_policy_name(&self.bucket)
            ),
            if self.role_policy_current {
                State::Done
            } else {
                State::Change("set it".into())
            },
        );
        plan.push(
            format!(
                "signing key in the SSM parameter {} (SecureString)",
                names.key_parameter
            ),
            match &self.key {
                Some(_) => State::Done,
                None => State::Change(format!("create the key {} there", names.key_name)),
            },
        );
        plan
    }

    fn plan_without_iam(&self, plan: &mut Plan, names: &Names) {
        plan.push(
            "credentials for CI",
            State::Manual(format!(
                "this store has no IAM for init to use: create an access key that may read and write s3://{} only, then `gh secret set NIXBUCKET_AWS_ACCESS_KEY_ID` and `gh secret set NIXBUCKET_AWS_SECRET_ACCESS_KEY` in {}",
                self.bucket, names.repo
            )),
        );
        let file = names.local_key.display();
        plan.push(
            format!("signing key {} in {file} (mode 0600)", names.key_name),
            match &self.key {
                Some(_) => State::Done,
                None => State::Change("create it".into()),
            },
        );
        plan.push(
            "the signing key in CI",
            State::Manual(format!(
                "`gh secret set NIXBUCKET_SIGNING_KEY --repo {} < {file}`; keep the file somewhere safe, or delete it once stored",
                names.repo
            )),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, enabled: bool, abort: bool) -> LifecycleRule {
        let mut b = LifecycleRule::builder()
            .id("r")
            .status(if enabled {
                ExpirationStatus::Enabled
            } else {
                ExpirationStatus::Disabled
            })
            .filter(LifecycleRuleFilter::builder().prefix(prefix).build());
        if abort {
            b = b.abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(7)
                    .build(),
            );
        }
        b.build().unwrap()
    }

    #[test]
    fn an_abort_rule_counts_only_when_enabled_and_for_the_whole_bucket() {
        assert!(abort_rule_present(&[abort_rule()]));
        assert!(abort_rule_present(&[
            rule("", false, false),
            rule("", true, true)
        ]));
        assert!(!abort_rule_present(&[]));
        assert!(!abort_rule_present(&[rule("", false, true)]));
        assert!(!abort_rule_present(&[rule("nar/", true, true)]));
        assert!(!abort_rule_present(&[rule("", true, false)]));
    }

    #[test]
    fn only_aws_or_a_configured_aws_endpoint_has_iam() {
        let aws: CacheUrl = "s3://b?region=eu-west-1".parse().unwrap();
        let regional: CacheUrl = "s3://b?endpoint=https://s3.eu-west-1.amazonaws.com"
            .parse()
            .unwrap();
        let r2: CacheUrl = "s3://b?endpoint=https://acct.r2.cloudflarestorage.com&region=auto"
            .parse()
            .unwrap();
        assert!(has_iam(&aws));
        assert!(has_iam(&regional));
        if std::env::var_os("AWS_ENDPOINT_URL").is_none()
            && std::env::var_os("AWS_ENDPOINT_URL_IAM").is_none()
        {
            assert!(!has_iam(&r2));
        }
    }
}
