//! A binary cache as an HTTP substituter on loopback (`nixbucket serve`).
//!
//! Nix, and the nix-daemon that does its fetching, then read the bucket through the job's own
//! credentials: the daemon needs none, and a Nix without S3 support works. The server answers
//! `nix-cache-info`, `<hash>.narinfo`, `nar/…` and `log/…` from [`Cache`], streams NARs in
//! constant memory, counts what Nix asked for, and (with an [`Uploader`]) accepts paths from
//! the post-build hook to upload while the build goes on.
//!
//! A failure reaches Nix only as a status code and a fixed text: the real error, which names
//! buckets and keys, goes to the server's log, and no error text ever goes to the client.

pub mod background;
pub mod client;
mod stats;
mod upload;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::cache::{Cache, CacheError};
use crate::nix::StorePath;
use crate::nix::layout::{self, HashPart};

pub use stats::{Stats, StatsSnapshot, UploadSnapshot};
pub use upload::{EnqueueError, UploadConfig, Uploader};

/// Where the server's own endpoints live; no cache key starts with `_`.
pub const STATS_PATH: &str = "/_nixbucket/stats";
pub const PUSH_PATH: &str = "/_nixbucket/push";

/// The largest hand-over the hook may send (a derivation with thousands of outputs fits).
const MAX_PUSH_BODY: usize = 1 << 20;

/// narinfos kept in memory once found: Nix asks for most paths twice (HEAD, then GET), and
/// a narinfo does not change while a job runs. Bounded, so memory stays flat (≈ 1 KiB each).
const NARINFO_MEMORY: usize = 16_384;

/// Read size of the NAR stream: big enough for throughput, small enough to keep memory flat.
const STREAM_CHUNK: usize = 256 * 1024;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The environment variable that hands the hand-over token to `serve` and `hook` (never a
/// command-line argument, which other users of the machine could read in `ps`).
pub const TOKEN_ENV: &str = "NIXBUCKET_SERVE_TOKEN";

/// How much of the machine one client can hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait to be accepted. Nix opens `http-connections`
    /// (25 by default) to a substituter.
    pub connections: usize,
    /// A connection that has not sent a whole request header in this time is closed, and so is
    /// an idle keep-alive connection: a client that opens connections and sends nothing cannot
    /// hold them all.
    pub header_read: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 128,
            header_read: Duration::from_secs(30),
        }
    }
}

/// What every connection shares.
pub struct Server {
    cache: Cache,
    /// Read-only caches served after ours, in this order: what ours lacks, they may have.
    extra: Vec<Cache>,
    /// Failures of each extra cache so far (see [`first_found`]).
    extra_failures: Vec<std::sync::atomic::AtomicU32>,
    limits: Limits,
    stats: Arc<Stats>,
    uploads: Option<Uploads>,
    /// Found narinfos by hash part. Misses are not kept: the uploader may add the path any time.
    narinfos: std::sync::Mutex<std::collections::HashMap<HashPart, Bytes>>,
}

/// Hand-overs from the hook, accepted only with the token: otherwise anyone on the machine
/// could have any store path signed with our key and uploaded. There is no way to take
/// hand-overs without one.
pub struct Uploads {
    pub uploader: Uploader,
    pub token: zeroize::Zeroizing<String>,
}

impl Server {
    /// `uploads`: `None` refuses hand-overs from the hook (no signing key or no token); `push`
    /// then uploads everything at the end.
    pub fn new(cache: Cache, uploads: Option<Uploads>) -> Server {
        Server {
            cache,
            extra: Vec::new(),
            extra_failures: Vec::new(),
            limits: Limits::default(),
            stats: Arc::default(),
            uploads,
            narinfos: Default::default(),
        }
    }

    /// Fronts `extra` too: a narinfo, NAR or log ours lacks is looked for in each, in order.
    pub fn with_extra(mut self, extra: Vec<Cache>) -> Server {
        self.extra_failures = extra.iter().map(|_| Default::default()).collect();
        self.extra = extra;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    fn uploader(&self) -> Option<&Uploader> {
        self.uploads.as_ref().map(|u| &u.uploader)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats
            .snapshot(self.uploader().map(Uploader::snapshot).unwrap_or_default())
    }

    /// Stops the uploader (cancelling uploads in flight), waiting at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        if let Some(uploader) = self.uploader() {
            uploader.shutdown(grace).await;
        }
    }
}

/// Accepts connections on `listener` until `shutdown` completes. Each connection runs on its
/// own task; a failing connection affects no other.
pub async fn run(
    listener: TcpListener,
    server: Arc<Server>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        server.limits.connections.max(1),
    ));
    loop {
        // A free slot first: past the limit, connections wait in the listen queue.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, usually: wait instead of spinning.
                eprintln!("nixbucket serve: could not accept a connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let header_read = server.limits.header_read;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(&server, req).await) }
            });
            // A client that goes away mid-answer is normal (Nix stops reading a NAR it no
            // longer needs); nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(header_read)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

/// Binds `addr`, refusing anything but loopback: the server hands out the bucket's contents
/// with the job's credentials to whoever asks.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    if !addr.ip().is_loopback() {
        return Err(BindError::NotLoopback { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError::Io { addr, source })
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "{addr} is not a loopback address: nixbucket serve only listens on 127.0.0.1 or ::1, since anyone who reaches it reads the cache with this job's credentials"
    )]
    NotLoopback { addr: SocketAddr },
    #[error("could not listen on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Whether a request's `Host` names this machine's loopback. A web page whose name an
/// attacker points at 127.0.0.1 (DNS rebinding) reaches the server with its own name in
/// `Host`: the private cache must not answer it. Nix, the hook and curl send the address.
fn loopback_host(req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get(hyper::header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    matches!(name, "127.0.0.1" | "localhost" | "::1")
}

async fn handle(server: &Server, req: Request<Incoming>) -> Response<Body> {
    if !loopback_host(&req) {
        return text(
            StatusCode::FORBIDDEN,
            "nixbucket serve answers requests for 127.0.0.1 or localhost only\n",
        );
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if path == PUSH_PATH {
        return match method {
            Method::POST => accept_push(server, req).await,
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        };
    }
    let head = match method {
        Method::GET => false,
        Method::HEAD => true,
        _ => return text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD\n"),
    };
    let mut response = if path == STATS_PATH {
        json(&server.snapshot())
    } else if path.strip_prefix('/') == Some(layout::CACHE_INFO_KEY) {
        cache_info(server).await
    } else if let Some(wanted) = path.strip_prefix('/').and_then(layout::narinfo_request) {
        match wanted {
            Some(hash) => narinfo(server, hash, head).await,
            None => not_found(),
        }
    } else if path.strip_prefix('/').is_some_and(layout::is_nar_key) || path.starts_with("/log/") {
        object(server, &path[1..], head).await
    } else {
        not_found()
    };
    if head {
        *response.body_mut() = empty();
    }
    response
}

async fn cache_info(server: &Server) -> Response<Body> {
    match server.cache.get(layout::CACHE_INFO_KEY).await {
        Ok(Some(bytes)) => small(bytes, layout::CACHE_INFO_TYPE),
        // A cache nothing was pushed to yet: Nix still needs to hear where its store is, and
        // would otherwise try (and fail) to write the file itself.
        Ok(None) => small(
            Bytes::from_static(layout::CACHE_INFO.as_bytes()),
            layout::CACHE_INFO_TYPE,
        ),
        Err(err) => failure(server, layout::CACHE_INFO_KEY, &err),
    }
}

async fn narinfo(server: &Server, hash: HashPart, head: bool) -> Response<Body> {
    let key = hash.narinfo_key();
    let remembered = server
        .narinfos
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&hash)
        .cloned();
    let found = match remembered {
        Some(bytes) => Ok(Some((bytes.len() as u64, Some(bytes)))),
        None => {
            first_found(server, |cache| {
                let key = key.clone();
                async move {
                    if head {
                        let found = cache.head(&key).await?;
                        Ok(found.map(|info| (info.size, None)))
                    } else {
                        let found = cache.get(&key).await?;
                        Ok(found.map(|b| (b.len() as u64, Some(b))))
                    }
                }
            })
            .await
        }
    };
    match found {
        Ok(Some((size, body))) => {
            server.stats.lookup(hash.as_str(), true);
            if let Some(bytes) = &body {
                let mut kept = server.narinfos.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() < NARINFO_MEMORY {
                    kept.insert(hash, bytes.clone());
                }
            }
            let mut resp = small(body.unwrap_or_default(), layout::NARINFO_TYPE);
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(size));
            resp
        }
        Ok(None) => {
            server.stats.lookup(hash.as_str(), false);
            not_found()
        }
        Err(err) => failure(server, &key, &err),
    }
}

/// What the first cache that has it answers, ours first. An error of ours stops the search
/// (a cache that could not answer may hold what a later one would answer differently). An
/// extra cache's error or silence is a miss: another team's outage must not turn our answers
/// into errors, after which Nix stops asking our cache too. Each extra cache gets
/// [`EXTRA_TIMEOUT`] an answer and [`EXTRA_ERROR_BUDGET`] failures, then is asked no more.
async fn first_found<'a, T, F, Fut>(server: &'a Server, ask: F) -> Result<Option<T>, CacheError>
where
    F: Fn(&'a Cache) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, CacheError>>,
{
    if let Some(found) = ask(&server.cache).await? {
        return Ok(Some(found));
    }
    for (i, cache) in server.extra.iter().enumerate() {
        let failures = &server.extra_failures[i];
        if failures.load(Ordering::Relaxed) >= EXTRA_ERROR_BUDGET {
            continue;
        }
        let why = match tokio::time::timeout(EXTRA_TIMEOUT, ask(cache)).await {
            Ok(Ok(Some(found))) => return Ok(Some(found)),
            Ok(Ok(None)) => continue,
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {} s", EXTRA_TIMEOUT.as_secs()),
        };
        let failed = failures.fetch_add(1, Ordering::Relaxed) + 1;
        Stats::add(&server.stats.errors, 1);
        eprintln!(
            "serve: the extra cache {} failed ({failed} of {EXTRA_ERROR_BUDGET}), answered as a \
             miss: {why}{}",
            i + 1,
            if failed == EXTRA_ERROR_BUDGET {
                "; it is asked no more in this job"
            } else {
                ""
            }
        );
    }
    Ok(None)
}

/// How long an extra cache has to answer before its silence counts as a miss.
const EXTRA_TIMEOUT: Duration = Duration::from_secs(10);
/// Failures of one extra cache after which the server stops asking it.
const EXTRA_ERROR_BUDGET: u32 = 5;

/// NARs and logs, streamed: a NAR of any size passes through in chunks.
async fn object(server: &Server, key: &str, head: bool) -> Response<Body> {
    let is_nar = layout::is_nar_key(key);
    let content_type = if is_nar {
        layout::NAR_TYPE
    } else {
        layout::LOG_TYPE
    };
    if head {
        return match first_found(server, |cache| cache.head(key)).await {
            Ok(Some(info)) => {
                let mut resp = small(Bytes::new(), content_type);
                resp.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(info.size));
                resp
            }
            Ok(None) => not_found(),
            Err(err) => failure(server, key, &err),
        };
    }
    let (size, reader) = match first_found(server, |cache| cache.get_stream(key)).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(err) => return failure(server, key, &err),
    };
    if is_nar {
        Stats::add(&server.stats.nar_requests, 1);
    }
    let nar_bytes = is_nar.then(|| server.stats.clone());
    let key_for_log = key.to_owned();
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, STREAM_CHUNK)
        .map_ok(move |chunk| {
            if let Some(stats) = &nar_bytes {
                Stats::add(&stats.nar_bytes, chunk.len() as u64);
            }
            Frame::data(chunk)
        })
        .map_err(move |err| {
            // The status line is out already; all we can do is cut the answer short, which
            // Nix notices (the size and hash no longer match).
            eprintln!("nixbucket serve: reading {key_for_log} failed mid-stream: {err}");
            err
        });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

async fn accept_push(server: &Server, req: Request<Incoming>) -> Response<Body> {
    let Some(Uploads { uploader, token }) = &server.uploads else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server does not upload (it has no signing key or no hand-over token); \
             `nixbucket push` uploads at the end\n",
        );
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same_secret(given.as_bytes(), token.as_bytes()) {
        return text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong hand-over token\n",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_PUSH_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "too many paths\n"),
    };
    let Ok(text_body) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "expected store paths as text\n");
    };
    let mut paths = Vec::new();
    for word in text_body.split_whitespace() {
        match StorePath::from_absolute(word) {
            Ok(p) => paths.push(p),
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "expected whitespace-separated /nix/store paths\n",
                );
            }
        }
    }
    if paths.is_empty() {
        return text(StatusCode::OK, "nothing to upload\n");
    }
    match uploader.enqueue(paths) {
        Ok(()) => text(StatusCode::ACCEPTED, "queued\n"),
        Err(err) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{err}\n")),
    }
}

/// Compares without stopping at the first difference, so timing says nothing about the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn failure(server: &Server, key: &str, err: &CacheError) -> Response<Body> {
    if matches!(err, CacheError::InvalidKey { .. }) {
        return not_found();
    }
    Stats::add(&server.stats.errors, 1);
    eprintln!("nixbucket serve: {key}: {err}");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "nixbucket serve could not read the cache; see its log\n",
    )
}

fn empty() -> Body {
    BodyExt::boxed_unsync(Empty::new().map_err(|never| match never {}))
}

fn small(bytes: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(BodyExt::boxed_unsync(
        Full::new(bytes).map_err(|never| match never {}),
    ));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = small(
        Bytes::copy_from_slice(body.as_bytes()),
        "text/plain; charset=utf-8",
    );
    *resp.status_mut() = status;
    resp
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not in this cache\n")
}

fn json(snapshot: &StatsSnapshot) -> Response<Body> {
    match serde_json::to_vec(snapshot) {
        Ok(body) => small(Bytes::from(body), "application/json"),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "could not encode\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a request for `/<s>.narinfo` reaches the cache.
    fn is_hash_part(s: &str) -> bool {
        layout::narinfo_request(&format!("{s}.narinfo"))
            .flatten()
            .is_some()
    }

    #[test]
    fn only_nixbase32_hash_parts_reach_the_cache() {
        assert!(is_hash_part("1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h"));
        assert!(
            is_hash_part("ybsipnncdhpmyqzbqcm6mdw06mjl96vg"),
            "m is nixbase32"
        );
        assert!(!is_hash_part("1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9e"), "no e");
        assert!(!is_hash_part("../../etc/passwd"));
        assert!(!is_hash_part("1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9"));
        // A narinfo name anywhere else is never streamed as an object.
        assert_eq!(layout::narinfo_request("nar/x.narinfo"), Some(None));
        assert_eq!(layout::narinfo_request("log/x.narinfo"), Some(None));
        assert_eq!(layout::narinfo_request("nar/x.nar.zst"), None);
    }
}
