//! How requests ride out faults: the SDK's retries with jittered exponential backoff, a
//! `Retry-After` the server sends, per-attempt timeouts, and one retry budget for the process
//! sized for a push of thousands of paths.

use super::*;

/// Attempts per request (the first one included) unless `AWS_MAX_ATTEMPTS` says otherwise.
/// Ten attempts with backoff capped at [`MAX_BACKOFF`] ride out about a minute of outage.
pub(super) const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// The retry budget's size: 10,000 retries at the SDK's cost of 5 tokens each.
pub(super) const RETRY_BUDGET_TOKENS: usize = 50_000;
/// Attempts of the bucket check at open (see [`open_retries`]).
pub(super) const OPEN_MAX_ATTEMPTS: u32 = 3;
pub(super) const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Also the cap on a server's `Retry-After`, so a hostile value cannot park the job.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(20);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One attempt, request body included: generous enough for a full part on a slow link, short
/// enough that a stalled connection costs a retry instead of the CI job's time limit.
pub(super) const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
pub const ATTEMPT_TIMEOUT_ENV: &str = "NIXBUCKET_S3_ATTEMPT_TIMEOUT";

/// Honours a `Retry-After: <seconds>` header on a retryable status: the SDK only reads AWS's
/// own `x-amz-retry-after`, but S3-compatible stores and proxies send the standard one.
#[derive(Debug)]
pub(super) struct RetryAfter;

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
pub(super) fn retry_after_delay(value: Option<&str>) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_BACKOFF))
}

/// Fewer attempts for the first request: failing there is mostly a wrong endpoint, bucket or
/// key, and the user should hear so in seconds, not after a minute of backoff.
pub(super) fn open_retries() -> aws_sdk_s3::config::Builder {
    let attempts = max_attempts().min(OPEN_MAX_ATTEMPTS);
    aws_sdk_s3::config::Builder::new().retry_config(
        RetryConfig::standard()
            .with_max_attempts(attempts)
            .with_initial_backoff(INITIAL_BACKOFF)
            .with_max_backoff(MAX_BACKOFF),
    )
}

pub(super) fn env_number(name: &str) -> Option<u32> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
}

pub(super) fn max_attempts() -> u32 {
    env_number("AWS_MAX_ATTEMPTS").unwrap_or(DEFAULT_MAX_ATTEMPTS)
}

/// Retries, timeouts and stall detection for every request of one client.
pub(super) fn fault_tolerance(
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
pub(super) fn retry_budget() -> RetryPartition {
    static BUDGET: std::sync::OnceLock<RetryPartition> = std::sync::OnceLock::new();
    BUDGET
        .get_or_init(|| {
            RetryPartition::custom("nixbucket")
                .token_bucket(TokenBucket::builder().capacity(RETRY_BUDGET_TOKENS).build())
                .build()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn retry_after_takes_seconds_and_is_capped() {
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
