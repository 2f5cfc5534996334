//! What this process asked of S3: every request attempt by operation (retries too, since each
//! is billed), and the bytes each way, counted where the SDK sends them. Read by the cost
//! report ([`crate::cost`]). One meter for the whole process: a command may open a cache more
//! than once, and the bill counts them all.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

use super::CacheUrl;

static OPERATIONS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static STORES: Mutex<Vec<CacheUrl>> = Mutex::new(Vec::new());
static BYTES_UP: AtomicU64 = AtomicU64::new(0);
static BYTES_DOWN: AtomicU64 = AtomicU64::new(0);

/// Requests sent so far, by S3 operation (`PutObject`, `UploadPart`, …), and bytes sent and
/// received in their bodies.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Requests {
    pub operations: BTreeMap<String, u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.operations.values().sum()
    }
}

/// Notes a bucket this process opened, for the price table that fits it.
pub(crate) fn opened(url: &CacheUrl) {
    if let Ok(mut stores) = STORES.lock() {
        if !stores.contains(url) {
            stores.push(url.clone());
        }
    }
}

/// The buckets this process opened, first first.
pub fn stores() -> Vec<CacheUrl> {
    STORES.lock().map(|s| s.clone()).unwrap_or_default()
}

/// What the process has sent so far.
pub fn requests() -> Requests {
    Requests {
        operations: OPERATIONS.lock().map(|o| o.clone()).unwrap_or_default(),
        bytes_up: BYTES_UP.load(Ordering::Relaxed),
        bytes_down: BYTES_DOWN.load(Ordering::Relaxed),
    }
}

/// The SDK interceptor that counts: one per client.
#[derive(Debug)]
pub(crate) struct Counter;

fn operation(cfg: &ConfigBag) -> &str {
    cfg.load::<Metadata>().map_or("Unknown", Metadata::name)
}

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "nixbucket request counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Ok(mut ops) = OPERATIONS.lock() {
            *ops.entry(operation(cfg).to_owned()).or_default() += 1;
        }
        let sent = context.request().body().content_length().unwrap_or(0);
        BYTES_UP.fetch_add(sent, Ordering::Relaxed);
        Ok(())
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // A HEAD answer names the object's length and carries no body.
        if operation(cfg) == "HeadObject" {
            return Ok(());
        }
        let received = context
            .response()
            .headers()
            .get("content-length")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        BYTES_DOWN.fetch_add(received, Ordering::Relaxed);
        Ok(())
    }
}
