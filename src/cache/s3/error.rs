//! S3 errors as a user can act on them: translated once, from the SDK's error metadata, into
//! [`CacheError`]s that name the bucket, the endpoint, the credential source and what S3 said.

use super::*;

/// S3 error codes that mean "these credentials are not accepted here". `AccessDenied` is not
/// one: AWS sends it to credentials it accepted but whose policies do not allow the request.
pub(super) const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "NotSignedUp",
];

/// Describes which source of the default chain will provide credentials, in the chain's order.
pub(super) fn credential_source(opts: &OpenOptions, profile: Option<&str>) -> String {
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
pub(super) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

pub(super) fn find_credentials_error<'a>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a CredentialsError> {
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
pub(super) fn service_details<E: ProvideErrorMetadata>(
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
pub(super) fn code_hint(code: &str) -> &'static str {
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
    pub(super) fn error<E>(
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

    pub(super) fn missing(&self, operation: &'static str, key: &str, what: &str) -> CacheError {
        CacheError::S3 {
            operation,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            code: "InvalidResponse".to_owned(),
            message: format!("the response has no {what}"),
        }
    }
}

/// The store refuses a feature of the request as such (a conditional header, DeleteObjects, a
/// listing page over 1000 keys: not implemented or not understood), rather than this request:
/// the caller goes on without the feature, and remembers that.
pub(super) fn feature_refused<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
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

pub(super) fn is_status<E: ProvideErrorMetadata>(
    err: &SdkError<E, HttpResponse>,
    status: u16,
) -> bool {
    err.raw_response()
        .is_some_and(|r| r.status().as_u16() == status)
}
