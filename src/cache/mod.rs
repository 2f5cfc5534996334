//! Where a binary cache lives: a local directory (`file://`) or an S3 bucket (`s3://`).
//!
//! [`Cache`] is the one handle the rest of nixbucket uses: small objects go through
//! `get`/`put`, NARs through [`Cache::get_stream`] and [`ObjectWriter`], both in constant memory.
//! Writes are all-or-nothing: an object is either absent or complete, never half written, so
//! an interrupted push cannot leave a corrupt cache behind.

pub mod file;
pub mod meter;
pub mod s3;
pub mod url;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

pub use url::{CacheUrl, CacheUrlError, same_store_url};

/// The largest object [`Cache::get`] reads whole. A narinfo is a few KiB (under 1 MiB even
/// with thousands of references); the cap keeps a broken or hostile bucket from making a
/// command hold gigabytes in memory.
pub const SMALL_OBJECT_MAX: u64 = 1 << 20;

/// Name prefix of in-progress uploads in a `file://` cache; never listed, never a valid key.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Default size of one multipart part (S3 wants at least 5 MiB for all but the last).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

/// One object in a cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

/// Which version of an object was read: S3's ETag, or a file's inode, mtime and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(String);

/// Settings for [`Cache::open_with`]. `Default` is what [`Cache::open`] uses.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Fixed S3 credentials instead of the default chain (env, profile, web identity, IMDS).
    /// `Credentials`' Debug print redacts the secret.
    pub credentials: Option<aws_credential_types::Credentials>,
    /// Size of one multipart part; clamped to at least 5 MiB (S3's minimum).
    pub part_size: usize,
    /// How many parts of one object may be uploading at once.
    pub parts_in_flight: usize,
    /// How many full parts, over all the objects uploading at once, may be waiting or
    /// uploading; a writer with one more waits. With the part each writer fills, this bounds
    /// upload memory at `(writers + parts_queued) * part_size`.
    pub parts_queued: usize,
    /// Keys asked for per ListObjectsV2 page. AWS S3 answers at most 1000 whatever is asked;
    /// self-hosted stores may answer more (fewer pages, and s3s-fs walks its whole directory
    /// for each page). A store that refuses a page over 1000 is asked again with 1000.
    pub list_page_size: i32,
    /// Attempts per S3 request, the first included; None is the default (10, or
    /// `AWS_MAX_ATTEMPTS`). A server answering Nix wants few: Nix is waiting.
    pub max_attempts: Option<u32>,
    /// The largest object a touch copies onto itself: S3's CopyObject limit, 5 GiB.
    pub copy_max: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            credentials: None,
            part_size: DEFAULT_PART_SIZE,
            parts_in_flight: 3,
            parts_queued: 8,
            list_page_size: s3::ASKED_PAGE_SIZE,
            max_attempts: None,
            copy_max: 5 << 30,
        }
    }
}

/// Fixed credentials as the text [`credentials_from_json`] reads: how `setup` hands a role's
/// credentials to the server it starts, on a pipe.
pub fn credentials_json(creds: &aws_credential_types::Credentials) -> String {
    let expiry = creds.expiry().and_then(|t| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    });
    serde_json::json!({
        "access_key_id": creds.access_key_id(),
        "secret_access_key": creds.secret_access_key(),
        "session_token": creds.session_token(),
        "expiry": expiry,
    })
    .to_string()
}

/// The credentials [`credentials_json`] wrote; the error never quotes the text.
pub fn credentials_from_json(text: &str) -> Result<aws_credential_types::Credentials, String> {
    #[derive(serde::Deserialize)]
    struct Fixed {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        expiry: Option<u64>,
    }
    let fixed: Fixed = serde_json::from_str(text).map_err(|e| {
        format!(
            "not the credentials setup hands over (at column {})",
            e.column()
        )
    })?;
    let expiry = fixed
        .expiry
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    Ok(aws_credential_types::Credentials::new(
        fixed.access_key_id,
        fixed.secret_access_key,
        fixed.session_token,
        expiry,
        "nixbucket-setup",
    ))
}

impl OpenOptions {
    /// Use this access key pair instead of the default credential chain.
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(aws_credential_types::Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "nixbucket-static",
        ));
        self
    }
}

/// Why a cache operation failed. Messages name the bucket, endpoint, key or path involved,
/// and never include secret keys.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot {action} '{}': {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cache key '{key}': {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("bucket '{bucket}' does not exist at {endpoint}")]
    BucketNotFound { bucket: String, endpoint: String },
    #[error("cannot reach the S3 endpoint {endpoint}: {detail}")]
    EndpointUnreachable { endpoint: String, detail: String },
    #[error(
        "no AWS credentials found for bucket '{bucket}': set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, name a profile (?profile=NAME in the cache URL, or AWS_PROFILE), or run with a web identity or instance role"
    )]
    NoCredentials { bucket: String },
    #[error("could not load AWS credentials from {source_desc} for bucket '{bucket}': {detail}")]
    CredentialsUnavailable {
        bucket: String,
        source_desc: String,
        detail: String,
    },
    #[error(
        "S3 at {endpoint} refused the credentials from {source_desc} for bucket '{bucket}' ({operation}): {answer}"
    )]
    CredentialsRefused {
        operation: &'static str,
        bucket: String,
        endpoint: String,
        source_desc: String,
        /// The store's error code and message, `Code: message`.
        answer: String,
    },
    /// The store knows the credentials and does not let them do this (AWS's `AccessDenied`): a
    /// policy is missing, not a key.
    #[error(
        "S3 at {endpoint} denied {operation} in bucket '{bucket}' to the credentials from {source_desc}: {answer} (the credentials are valid; a policy of their user or role, or of the bucket, does not allow this)"
    )]
    PermissionDenied {
        operation: &'static str,
        bucket: String,
        endpoint: String,
        source_desc: String,
        /// The store's error code and message, `Code: message`.
        answer: String,
    },
    #[error("S3 {operation} of s3://{bucket}/{key} failed: {code}: {message}")]
    S3 {
        operation: &'static str,
        bucket: String,
        key: String,
        code: String,
        message: String,
    },
    #[error("upload of '{key}' was interrupted: {detail}")]
    UploadInterrupted { key: String, detail: String },
    #[error("'{key}' is {size} bytes, more than the {limit} such an object can be; not reading it")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error(
        "'{key}' leads through a symbolic link; a file:// cache is read only inside its directory"
    )]
    Symlink { key: String },
}

impl CacheError {
    /// Whether the store could not be reached or was briefly unable to answer (unreachable,
    /// an interrupted upload, a 5xx or SlowDown), as opposed to an answer that will not change
    /// by asking again later.
    pub fn is_outage(&self) -> bool {
        match self {
            CacheError::EndpointUnreachable { .. } | CacheError::UploadInterrupted { .. } => true,
            CacheError::S3 { code, .. } => matches!(
                code.as_str(),
                "InternalError"
                    | "ServiceUnavailable"
                    | "SlowDown"
                    | "RequestTimeout"
                    | "UnknownError"
            ),
            _ => false,
        }
    }

    fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CacheError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Keys are relative `/`-separated paths (`abc.narinfo`, `nar/x.nar.zst`). Refusing `..`,
/// absolute and empty segments keeps a `file://` cache inside its directory, and both backends
/// agree on what a key is.
pub(crate) fn check_key(key: &str) -> Result<(), CacheError> {
    let bad = |reason| {
        Err(CacheError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') {
        return bad("must be relative");
    }
    for seg in key.split('/') {
        match seg {
            "" => return bad("empty path segment"),
            "." | ".." => return bad("'.' and '..' are not allowed"),
            s if s.starts_with(TEMP_PREFIX) => {
                return bad("names starting with .tmp- are reserved");
            }
            s if s.contains('\0') => return bad("contains a NUL byte"),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Clone)]
enum Backend {
    File(Arc<file::FileCache>),
    S3(Arc<s3::S3Cache>),
}

/// An opened binary cache. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct Cache {
    url: Arc<CacheUrl>,
    backend: Backend,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("url", &self.url.to_string())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Opens the cache with the default credential chain and checks that it is usable:
    /// S3: the bucket answers (HeadBucket), so a wrong name or key fails here, clearly.
    /// file: the directory (and `nar/`) exist, created if missing.
    pub async fn open(url: &CacheUrl) -> Result<Cache, CacheError> {
        Self::open_with(url, OpenOptions::default()).await
    }

    pub async fn open_with(url: &CacheUrl, opts: OpenOptions) -> Result<Cache, CacheError> {
        let backend = match url {
            CacheUrl::File { root, .. } => {
                Backend::File(Arc::new(file::FileCache::open(root.clone()).await?))
            }
            CacheUrl::S3 { .. } => Backend::S3(Arc::new(s3::S3Cache::open(url, opts).await?)),
        };
        Ok(Cache {
            url: Arc::new(url.clone()),
            backend,
        })
    }

    pub fn url(&self) -> &CacheUrl {
        &self.url
    }

    /// Size and age of an object; `None` if it is absent.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, CacheError> {
        check_key(key)?;
        match &self.backend {
            Backend::File(c) => c.head(key).await,
            Backend::S3(c) => c.head(key).await,
        }
    }

    /// Makes an object of `size` bytes look new, keeping its bytes: `false` if it is absent.
    /// A push that reuses a NAR already in the cache touches it, so that gc's grace period
    /// covers it from then on (see [`crate::gc`]). On S3 a touch is a copy onto itself, which
    /// S3 refuses above [`OpenOptions::copy_max`] (5 GiB): such an object is left as it is,
    /// and `true` returned when it is there; gc's last listing keeps the cache whole then.
    pub async fn touch(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
    ) -> Result<bool, CacheError> {
        check_key(key)?;
        match &self.backend {
            Backend::File(c) => c.touch(key).await,
            Backend::S3(c) => c.touch(key, content_type, size).await,
        }
    }

    /// A whole small object in memory (narinfo, nix-cache-info), at most [`SMALL_OBJECT_MAX`]
    /// bytes: a larger one is an error, not read.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        self.get_up_to(key, SMALL_OBJECT_MAX).await
    }

    /// A whole object in memory, refused without being read if it is over `limit` bytes.
    pub async fn get_up_to(&self, key: &str, limit: u64) -> Result<Option<Bytes>, CacheError> {
        Ok(self.read_whole(key, limit).await?.map(|(body, _)| body))
    }

    /// A small object with its version, for [`Cache::put_if_version`]; `None` if absent.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, Version)>, CacheError> {
        let got = self.read_whole(key, SMALL_OBJECT_MAX).await?;
        Ok(got.map(|(body, v)| (body, Version(v))))
    }

    async fn read_whole(
        &self,
        key: &str,
        limit: u64,
    ) -> Result<Option<(Bytes, String)>, CacheError> {
        check_key(key)?;
        match &self.backend {
            Backend::File(c) => c.get_versioned(key, limit).await,
            Backend::S3(c) => c.get_versioned(key, limit).await,
        }
    }

    /// Replaces an object only if it is still the `version` read: `false` if it changed or
    /// vanished since (S3's If-Match; a store without it gets a plain write).
    pub async fn put_if_version(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        version: &Version,
    ) -> Result<bool, CacheError> {
        check_key(key)?;
        match &self.backend {
            Backend::File(c) => c.put_if_version(key, body, &version.0).await,
            Backend::S3(c) => c.put_if_version(key, body, content_type, &version.0).await,
        }
    }

    /// Writes an object atomically, replacing any previous one.
    pub async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), CacheError> {
        check_key(key)?;
        match &self.backend {
            Backend::File(c) => c.put(key, body).await,
            Backend::S3(c) => c.put(key, body, content_type).await,
        }
    }

    /// Whether [`Cache::put_if_absent`] is one request (S3's `If-None-Match`, `link(2)`), as
    /// far as is known yet; false for a store that refused it, where it is a HEAD and a PUT.
    pub fn writes_if_absent(&self) -> bool {
        match &self.backend {
            Backend::File(_) => true,
            Backend::S3(c) => c.writes_if_absent(),
        }
    }

    /// Writes an object only if none exists under `key`. `true`: this call wrote it.
    pub async fn put_if_absent(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<bool, CacheError> {
        check_key(key)?;
        match &self.backend {
            Backend::File(c) => c.put_if_absent(key, body).await,
            Backend::S3(c) => c.put_if_absent(key, body, content_type).await,
        }
    }

    /// Removes objects, `jobs` requests at a time (S3: up to 1000 keys a request). Absent ones
    /// are no error. Returns the failures: one per key not removed, or one for a request of
    /// many keys that failed as a whole.
    pub async fn delete_many(&self, keys: &[String], jobs: usize) -> Vec<CacheError> {
        use futures::StreamExt;
        if let Some(bad) = keys.iter().find_map(|k| check_key(k).err()) {
            return vec![bad];
        }
        match &self.backend {
            Backend::File(c) => {
                let results: Vec<_> = futures::stream::iter(keys.iter().map(|k| c.delete(k)))
                    .buffer_unordered(jobs.max(1))
                    .collect()
                    .await;
                results.into_iter().filter_map(Result::err).collect()
            }
            Backend::S3(c) => c.delete_many(keys, jobs).await,
        }
    }

    /// Removes an object; removing an absent one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        check_key(key)?;
        match &self.backend {
            Backend::File(c) => c.delete(key).await,
            Backend::S3(c) => c.delete(key).await,
        }
    }

    /// All objects whose key starts with `prefix` (`""` for all), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, CacheError> {
        let mut v = match &self.backend {
            Backend::File(c) => c.list(prefix, false).await?,
            Backend::S3(c) => c.list(prefix, false).await?,
        };
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }

    /// The objects directly under each prefix's "directory" (S3's delimiter `/`: `nar/0` finds
    /// `nar/0….nar.zst` but nothing in `nar/0…/`), listed `jobs` prefixes at a time, sorted by
    /// key. With [`store_prefixes`], a listing that S3 serves in parallel instead of one page
    /// after another.
    pub async fn list_level(
        &self,
        prefixes: &[String],
        jobs: usize,
    ) -> Result<Vec<ObjectInfo>, CacheError> {
        use futures::{StreamExt, TryStreamExt};
        let pages: Vec<Vec<ObjectInfo>> = futures::stream::iter(prefixes)
            .map(|prefix| async move {
                match &self.backend {
                    Backend::File(c) => c.list(prefix, true).await,
                    Backend::S3(c) => c.list(prefix, true).await,
                }
            })
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await?;
        let mut v: Vec<ObjectInfo> = pages.into_iter().flatten().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v.dedup_by(|a, b| a.key == b.key);
        Ok(v)
    }

    /// An object as a stream with its size, for NARs of any size.
    #[allow(clippy::type_complexity)]
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<Option<(u64, Pin<Box<dyn tokio::io::AsyncRead + Send>>)>, CacheError> {
        check_key(key)?;
        match &self.backend {
            Backend::File(c) => c.get_stream(key).await,
            Backend::S3(c) => c.get_stream(key).await,
        }
    }

    /// A streaming upload, written from a blocking thread (the NAR pipeline runs in
    /// `spawn_blocking`). Nothing is visible in the cache until [`ObjectWriter::commit`];
    /// dropping the writer or calling [`ObjectWriter::abort`] leaves nothing behind.
    ///
    /// Must be called inside a tokio runtime: the S3 writer uploads on it.
    /// An invalid key is reported by the first `write` or by `commit`.
    pub fn writer(&self, key: &str, content_type: &str) -> ObjectWriter {
        let inner = match check_key(key) {
            Err(e) => WriterInner::Failed(Some(e)),
            Ok(()) => match &self.backend {
                Backend::File(c) => WriterInner::File(c.writer(key)),
                Backend::S3(c) => WriterInner::S3(c.writer(key, content_type)),
            },
        };
        ObjectWriter { inner }
    }
}

enum WriterInner {
    File(file::FileWriter),
    S3(s3::S3Writer),
    Failed(Option<CacheError>),
}

/// A streaming upload: `std::io::Write` on a blocking thread, then [`commit`](Self::commit).
/// Memory stays bounded whatever the object size.
pub struct ObjectWriter {
    inner: WriterInner,
}

impl std::io::Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.inner {
            WriterInner::File(w) => w.write(buf),
            WriterInner::S3(w) => w.write(buf),
            WriterInner::Failed(e) => Err(std::io::Error::other(
                e.as_ref()
                    .map_or_else(|| "writer failed".to_owned(), |e| e.to_string()),
            )),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Flushing makes nothing visible; only commit does. Data is pushed out as parts fill.
        Ok(())
    }
}

impl ObjectWriter {
    /// Makes the object visible, atomically, and returns its size. Blocking: call it from the
    /// thread that wrote, not from async code.
    pub fn commit(self) -> Result<u64, CacheError> {
        self.finish(false)
            .map(|size| size.expect("an unconditional commit lands"))
    }

    /// Like [`commit`](Self::commit), but only if no object is under the key by then (S3's
    /// `If-None-Match: *`, or a HEAD first where the store lacks it; `link(2)` on a
    /// directory). `None`: one was there, and it stays as it was; nothing of this one remains.
    pub fn commit_if_absent(self) -> Result<Option<u64>, CacheError> {
        self.finish(true)
    }

    fn finish(self, if_absent: bool) -> Result<Option<u64>, CacheError> {
        match self.inner {
            WriterInner::File(w) => w.commit(if_absent),
            WriterInner::S3(w) => w.commit(if_absent),
            WriterInner::Failed(mut e) => Err(e.take().unwrap_or(CacheError::UploadInterrupted {
                key: String::new(),
                detail: "writer failed".into(),
            })),
        }
    }

    /// Discards everything written. Blocking: for S3 it waits until the multipart upload is
    /// aborted, so no storage is left billed. (Dropping aborts too, in the background.)
    pub fn abort(self) {
        match self.inner {
            WriterInner::File(w) => w.abort(),
            WriterInner::S3(w) => w.abort(),
            WriterInner::Failed(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn open_options_debug_hides_the_secret() {
        let opts = OpenOptions::default().static_credentials("AKIDEXAMPLE", "s3cr3t-value");
        let shown = format!("{opts:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }

    #[test]
    fn fixed_credentials_cross_the_pipe_whole_and_a_bad_text_is_not_quoted() {
        let expiry = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
        let creds = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "s3cr3t-value",
            Some("session-token-value".into()),
            Some(expiry),
            "test",
        );
        let back = credentials_from_json(&credentials_json(&creds)).unwrap();
        assert_eq!(back.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(back.secret_access_key(), "s3cr3t-value");
        assert_eq!(back.session_token(), Some("session-token-value"));
        assert_eq!(back.expiry(), Some(expiry));
        let err = credentials_from_json("{\"access_key_id\": \"AKIDEXAMPLE\"").unwrap_err();
        assert!(!err.contains("AKIDEXAMPLE"), "{err}");
    }

    #[rstest]
    #[case::narinfo("abc.narinfo")]
    #[case::nar("nar/abc.nar.zst")]
    #[case::dotfile("log/.x")]
    fn good_keys(#[case] key: &str) {
        check_key(key).unwrap();
    }

    #[rstest]
    #[case::empty("", "empty")]
    #[case::absolute("/etc/passwd", "relative")]
    #[case::dotdot("nar/../../x", "'..'")]
    #[case::double_slash("nar//x", "empty path segment")]
    #[case::temp("nar/.tmp-123", "reserved")]
    fn bad_keys(#[case] key: &str, #[case] reason: &str) {
        let err = check_key(key).unwrap_err().to_string();
        assert!(err.contains(reason), "{key}: {err}");
        assert!(err.contains(&format!("'{key}'")), "{err}");
    }
}
