//! A fault-injecting HTTP proxy on 127.0.0.1, put between nixbucket and the real S3 server.
//!
//! Each request is read whole, then a seeded RNG decides whether it meets a fault: the
//! connection dropped before the server sees the request, a delay, the server's answer cut
//! short (possibly to nothing, after the server acted on the request), a stall (no answer at
//! all), or an S3-style `500 InternalError` / `503 SlowDown` with an XML body and
//! `Retry-After`. One request per connection (`Connection: close` both ways) keeps the proxy
//! simple and is legal HTTP/1.1. Threads only; everything stops when the proxy is dropped.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What can happen to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Close the connection before the request reaches the server.
    Reset,
    /// Forward the request after [`FaultConfig::delay`].
    Delay,
    /// Forward the request, then send only a random prefix of the answer (maybe nothing).
    Truncate,
    /// Answer `500 InternalError` without asking the server.
    Error500,
    /// Answer `503 SlowDown` with `Retry-After` without asking the server.
    SlowDown,
    /// Read the request and never answer (until the client gives up or [`FaultConfig::stall`]).
    Stall,
    /// Answer `501 NotImplemented` without asking the server (a store without that call).
    NotImplemented,
    /// Answer `400 InvalidArgument` without asking the server (a store that does not know a
    /// header of the request).
    InvalidArgument,
    /// Answer a DeleteObjects with `200 OK` and an `InternalError` for every key in it, without
    /// asking the server: per-key errors, which come inside a success answer.
    KeyErrors,
    /// `400 InvalidArgument` to a listing that asks for more than [`FaultConfig::max_keys`].
    TooManyKeys,
    /// Forward the request twice at once and answer with the worse answer (an error if either
    /// was one): a retry that overlaps its own first attempt.
    Duplicate,
    /// Forward the request, then answer `409 ConditionalRequestConflict`: a concurrent
    /// conditional write of the same name landed its object while this one was refused.
    Conflict,
    /// Answer `404 Not Found` without asking the server (an object not visible yet).
    NotFound,
    /// Answer `404 NoSuchUpload` without asking the server: an upload that a lifecycle rule or
    /// another tool aborted.
    NoSuchUpload,
    /// Forward the request, then answer `404 NoSuchUpload` in place of the server's answer:
    /// what AWS may say to a CompleteMultipartUpload retried after the first one's answer was
    /// lost (the upload is gone because it became the object).
    CompletedThenNoSuchUpload,
    /// Answer `403 AccessDenied` without asking the server: a policy that does not let the
    /// credentials write this key.
    AccessDenied,
    /// Answer `301 PermanentRedirect` naming the bucket's region as [`WRONG_REGION_ANSWER`]
    /// (`x-amz-bucket-region`), without asking the server: what AWS answers a request signed
    /// for another region than the bucket's.
    WrongRegion,
    /// Forward the request, then answer with a `Date` an hour ahead: a server whose clock (or,
    /// seen from it, this machine's) is an hour off.
    SkewedClock,
}

/// The region [`Fault::WrongRegion`] says the bucket is in.
pub const WRONG_REGION_ANSWER: &str = "eu-west-3";

#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Share of requests that meet a fault, 0.0–1.0.
    pub share: f64,
    /// The faults to choose from, uniformly.
    pub faults: Vec<Fault>,
    pub seed: u64,
    pub delay: Duration,
    pub stall: Duration,
    /// The `Retry-After` value (seconds) sent with 503 SlowDown.
    pub retry_after: u32,
    /// This many requests, the first ones, meet a fault whatever the share: a test that must
    /// see a fault then sees one on every run, not only when the dice agree.
    pub fault_first: u64,
    /// Faults only for this S3 operation (as [`Stats::requests`] names it); others pass.
    pub only_on: Option<&'static str>,
    /// Refuse ListObjectsV2 with a larger `max-keys` (as a store enforcing S3's 1000 may).
    pub max_keys: Option<u32>,
    /// Faults only for requests whose target (path and query) contains this, e.g. "/nar/".
    pub only_target: Option<&'static str>,
    /// Faults in a set order, before any other: the first request of the first entry's
    /// operation meets its fault, then the first of the next entry's operation after that, and
    /// so on. For a race that must happen in one order every run.
    pub sequence: Vec<(&'static str, Fault)>,
    /// An outage: from the first request whose target contains `.0`, every request meets a
    /// fault for `.1`.
    pub outage: Option<(&'static str, Duration)>,
    /// This many requests, the first ones, pass untouched (the bucket check when a command
    /// opens the cache, which gives up after three attempts by design).
    pub pass_first: u64,
    /// Every HEAD of a bucket itself passes untouched: the check each command makes as it
    /// opens the cache, for tests that run many commands through one proxy.
    pub spare_bucket_checks: bool,
}

impl FaultConfig {
    /// Every `op` request held for `secs` seconds, then forwarded; nothing else happens. For
    /// tests that need something to land between two steps of the command under test.
    pub fn hold(op: &'static str, secs: u64) -> FaultConfig {
        FaultConfig {
            share: 1.0,
            faults: vec![Fault::Delay],
            delay: Duration::from_secs(secs),
            only_on: Some(op),
            ..FaultConfig::mixed(0.0, 1)
        }
    }

    /// `share` of requests fail, mixed: resets, truncated answers, 500 and 503 SlowDown.
    pub fn mixed(share: f64, seed: u64) -> FaultConfig {
        FaultConfig {
            share,
            faults: vec![
                Fault::Reset,
                Fault::Truncate,
                Fault::Error500,
                Fault::SlowDown,
            ],
            seed,
            delay: Duration::from_millis(300),
            stall: Duration::from_secs(60),
            retry_after: 1,
            fault_first: 0,
            only_on: None,
            max_keys: None,
            only_target: None,
            sequence: Vec::new(),
            outage: None,
            pass_first: 0,
            spare_bucket_checks: false,
        }
    }
}

/// What the proxy saw: requests per operation and faults per (fault, operation).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: BTreeMap<String, u64>,
    pub faults: BTreeMap<(Fault, String), u64>,
    /// When each request arrived (read whole), with its operation, in order.
    pub arrivals: Vec<(Instant, String)>,
    /// The most requests held by [`Fault::Delay`] at once: how many of the requests it picks
    /// the client has in flight together.
    pub peak_delayed: usize,
}

impl Stats {
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
    pub fn faults_of(&self, fault: Fault) -> u64 {
        self.faults
            .iter()
            .filter(|((f, _), _)| *f == fault)
            .map(|(_, n)| n)
            .sum()
    }
    /// Faults that hit requests of this operation (e.g. "UploadPart").
    pub fn faults_on(&self, op: &str) -> u64 {
        self.faults
            .iter()
            .filter(|((_, o), _)| o == op)
            .map(|(_, n)| n)
            .sum()
    }
}

/// At most this many connections are served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 128;

struct Shared {
    upstream: SocketAddr,
    config: FaultConfig,
    rng: Mutex<u64>,
    /// Set by [`FaultProxy::set_share`]; replaces `config.share`.
    share_override: Mutex<Option<f64>>,
    stats: Mutex<Stats>,
    stop: AtomicBool,
    active: AtomicUsize,
    /// Requests being held by [`Fault::Delay`] now, and the most at once.
    delayed: AtomicUsize,
    peak_delayed: AtomicUsize,
    /// Requests a fault was decided for so far.
    decided: AtomicU64,
    /// Entries of [`FaultConfig::sequence`] that have met their request.
    sequenced: AtomicUsize,
    /// When [`FaultConfig::outage`] began.
    outage_began: Mutex<Option<Instant>>,
    /// Requests seen, for [`FaultConfig::pass_first`].
    seen: AtomicU64,
}

pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (e.g. "http://127.0.0.1:9000").
    pub fn start(upstream: &str, config: FaultConfig) -> FaultProxy {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr = hostport.parse().expect("upstream is http://IP:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared {
            upstream,
            rng: Mutex::new(config.seed ^ 0x9e37_79b9_7f4a_7c15),
            share_override: Mutex::new(None),
            config,
            stats: Mutex::new(Stats::default()),
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            delayed: AtomicUsize::new(0),
            peak_delayed: AtomicUsize::new(0),
            decided: AtomicU64::new(0),
            sequenced: AtomicUsize::new(0),
            outage_began: Mutex::new(None),
            seen: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, s));
        FaultProxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.stats.lock().unwrap().clone();
        stats.peak_delayed = self.shared.peak_delayed.load(Ordering::SeqCst);
        stats
    }

    /// Changes the share of failing requests from now on (0.0 turns faults off).
    pub fn set_share(&self, share: f64) {
        *self.shared.share_override.lock().unwrap() = Some(share);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Connection threads notice `stop` within their poll interval or socket timeout.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match listener.accept() {
            Ok((client, _)) => {
                shared.active.fetch_add(1, Ordering::SeqCst);
                let s = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(client, &s);
                    s.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

impl Shared {
    /// splitmix64: small, seedable, good enough to pick faults.
    fn next(&self) -> u64 {
        let mut state = self.rng.lock().unwrap();
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick(&self, op: &str, target: &str) -> Option<Fault> {
        if self.seen.fetch_add(1, Ordering::SeqCst) < self.config.pass_first {
            return None;
        }
        if self.config.spare_bucket_checks && op == "Head" && names_a_bucket(target) {
            return None;
        }
        if let Some((trigger, lasts)) = self.config.outage {
            let mut began = self.outage_began.lock().unwrap();
            if began.is_none() && target.contains(trigger) {
                *began = Some(Instant::now());
            }
            if began.is_some_and(|at| at.elapsed() < lasts) && !self.config.faults.is_empty() {
                let i = (self.next() % self.config.faults.len() as u64) as usize;
                return Some(self.config.faults[i]);
            }
        }
        let next = self.sequenced.load(Ordering::SeqCst);
        if let Some(&(want, fault)) = self.config.sequence.get(next) {
            if want == op
                && self
                    .sequenced
                    .compare_exchange(next, next + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                return Some(fault);
            }
        }
        if self.config.only_on.is_some_and(|only| only != op)
            || self.config.only_target.is_some_and(|t| !target.contains(t))
        {
            return None;
        }
        let share = self
            .share_override
            .lock()
            .unwrap()
            .unwrap_or(self.config.share);
        let forced = self.decided.fetch_add(1, Ordering::Relaxed) < self.config.fault_first;
        if self.config.faults.is_empty() || (!forced && self.unit() >= share) {
            return None;
        }
        let i = (self.next() % self.config.faults.len() as u64) as usize;
        Some(self.config.faults[i])
    }
}

/// Whether a path-style target names a bucket itself (`/bucket`), not an object in it.
fn names_a_bucket(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    !path.trim_matches('/').contains('/')
}

/// S3's operation name for a request, for the statistics.
fn operation(method: &str, target: &str) -> String {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let has = |p: &str| {
        query
            .split('&')
            .any(|kv| kv == p || kv.starts_with(&format!("{p}=")))
    };
    let name = match method {
        "PUT" if has("partNumber") => "UploadPart",
        "PUT" => "PutObject",
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" if has("uploadId") => "CompleteMultipartUpload",
        "POST" if has("delete") => "DeleteObjects",
        "DELETE" if has("uploadId") => "AbortMultipartUpload",
        "DELETE" => "DeleteObject",
        "HEAD" => "Head",
        "GET" if has("list-type") => "ListObjectsV2",
        "GET" => "GetObject",
        _ => "Other",
    };
    name.to_owned()
}

/// A listing asking for more keys per page than `limit`.
fn too_many_keys(op: &str, target: &str, limit: Option<u32>) -> bool {
    let Some(limit) = limit.filter(|_| op == "ListObjectsV2") else {
        return false;
    };
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("max-keys="))
        .any(|n| n.parse::<u32>().is_ok_and(|n| n > limit))
}

struct Request {
    method: String,
    target: String,
    /// The head as it goes upstream: `Connection: close`, no `Expect`.
    head: Vec<u8>,
    body: Vec<u8>,
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_request(r: &mut BufReader<TcpStream>, client: &mut TcpStream) -> std::io::Result<Request> {
    let start = read_line(r)?;
    let mut parts = start.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut head = start.clone().into_bytes();
    let (mut length, mut chunked, mut expect) = (0usize, false, false);
    loop {
        let line = read_line(r)?;
        if line == "\r\n" || line == "\n" {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "expect" => {
                expect = true;
                continue;
            }
            "connection" => continue,
            _ => {}
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    if expect {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let size_line = read_line(r)?;
            body.extend_from_slice(size_line.as_bytes());
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                loop {
                    let trailer = read_line(r)?;
                    body.extend_from_slice(trailer.as_bytes());
                    if trailer == "\r\n" {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
        }
    } else {
        body.resize(length, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Request {
        method,
        target,
        head,
        body,
    })
}

fn forward(shared: &Shared, req: &Request) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(10))?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    up.write_all(&req.head)?;
    up.write_all(&req.body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    Ok(answer)
}

fn s3_error(status: &str, code: &str, message: &str, retry_after: Option<u32>) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(s) = retry_after {
        out.push_str(&format!("Retry-After: {s}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// AWS's answer for an upload id it does not know (any more).
fn no_such_upload() -> Vec<u8> {
    s3_error(
        "404 Not Found",
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        None,
    )
}

/// A DeleteObjects answer with an `InternalError` for each `<Key>` of the request body.
fn delete_errors(request_body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(request_body);
    let errors: String = text
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>"))
        .map(|(key, _)| {
            format!("<Error><Key>{key}</Key><Code>InternalError</Code><Message>injected</Message></Error>")
        })
        .collect();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult>{errors}</DeleteResult>"
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `answer` with its `Date` header (added if missing) an hour ahead of now.
fn with_date_an_hour_ahead(answer: &[u8]) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer.to_vec();
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let ahead = std::time::SystemTime::now() + Duration::from_secs(3600);
    let date = aws_smithy_types::DateTime::from(ahead)
        .fmt(aws_smithy_types::date_time::Format::HttpDate)
        .expect("a date S3 can write");
    let mut lines: Vec<String> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .map(str::to_owned)
        .collect();
    lines.push(format!("Date: {date}"));
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(&answer[end..]);
    out
}

/// Sleeps up to `d`, returning early when the proxy stops.
fn pause(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let req = read_request(&mut reader, &mut client)?;
    let op = operation(&req.method, &req.target);
    let fault = if too_many_keys(&op, &req.target, shared.config.max_keys) {
        Some(Fault::TooManyKeys)
    } else {
        shared.pick(&op, &req.target)
    };
    {
        let mut stats = shared.stats.lock().unwrap();
        *stats.requests.entry(op.clone()).or_default() += 1;
        stats.arrivals.push((Instant::now(), op.clone()));
        if let Some(f) = fault {
            *stats.faults.entry((f, op.clone())).or_default() += 1;
        }
    }
    let answer = match fault {
        Some(Fault::Reset) => {
            let _ = client.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        Some(Fault::Error500) => s3_error(
            "500 Internal Server Error",
            "InternalError",
            "injected by the fault proxy",
            None,
        ),
        Some(Fault::SlowDown) => s3_error(
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
            Some(shared.config.retry_after),
        ),
        Some(Fault::AccessDenied) => s3_error(
            "403 Forbidden",
            "AccessDenied",
            "Access Denied (injected by the fault proxy)",
            None,
        ),
        Some(Fault::WrongRegion) => {
            let mut answer = s3_error(
                "301 Moved Permanently",
                "PermanentRedirect",
                "The bucket you are attempting to access must be addressed using the specified endpoint.",
                None,
            );
            let at = answer
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(0);
            let header = format!("\r\nx-amz-bucket-region: {WRONG_REGION_ANSWER}");
            answer.splice(at..at, header.into_bytes());
            answer
        }
        Some(Fault::SkewedClock) => with_date_an_hour_ahead(&forward(shared, &req)?),
        Some(Fault::NotImplemented) => s3_error(
            "501 Not Implemented",
            "NotImplemented",
            "not implemented by this store",
            None,
        ),
        Some(Fault::KeyErrors) => delete_errors(&req.body),
        Some(Fault::InvalidArgument) => s3_error(
            "400 Bad Request",
            "InvalidArgument",
            "unsupported header",
            None,
        ),
        Some(Fault::TooManyKeys) => s3_error(
            "400 Bad Request",
            "InvalidArgument",
            "max-keys is above the limit",
            None,
        ),
        Some(Fault::Duplicate) => {
            let (a, b) = std::thread::scope(|scope| {
                let first = scope.spawn(|| forward(shared, &req));
                let second = forward(shared, &req);
                (first.join().expect("forwarding thread"), second)
            });
            let ok = |answer: &std::io::Result<Vec<u8>>| {
                answer
                    .as_ref()
                    .is_ok_and(|a| a.starts_with(b"HTTP/1.1 2") || a.starts_with(b"HTTP/1.0 2"))
            };
            match (ok(&a), ok(&b)) {
                (true, false) => b?,
                _ => a?,
            }
        }
        Some(Fault::Conflict) => {
            forward(shared, &req)?;
            s3_error(
                "409 Conflict",
                "ConditionalRequestConflict",
                "a conflicting conditional operation is in progress",
                None,
            )
        }
        Some(Fault::NotFound) => s3_error("404 Not Found", "NoSuchKey", "not there yet", None),
        Some(Fault::NoSuchUpload) => no_such_upload(),
        Some(Fault::CompletedThenNoSuchUpload) => {
            forward(shared, &req)?;
            no_such_upload()
        }
        Some(Fault::Stall) => {
            pause(shared, shared.config.stall);
            let _ = client.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        Some(Fault::Delay) => {
            let held = shared.delayed.fetch_add(1, Ordering::SeqCst) + 1;
            shared.peak_delayed.fetch_max(held, Ordering::SeqCst);
            pause(shared, shared.config.delay);
            shared.delayed.fetch_sub(1, Ordering::SeqCst);
            forward(shared, &req)?
        }
        Some(Fault::Truncate) => {
            let full = forward(shared, &req)?;
            let cut = if full.is_empty() {
                0
            } else {
                (shared.next() % full.len() as u64) as usize
            };
            full[..cut].to_vec()
        }
        None => forward(shared, &req)?,
    };
    client.write_all(&answer)?;
    let _ = client.shutdown(std::net::Shutdown::Both);
    Ok(())
}
