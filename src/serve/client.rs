//! The small blocking HTTP/1.1 client that `nixbucket hook`, `setup` and `push` use to talk
//! to a `nixbucket serve` on loopback: one request per connection, every step under a
//! deadline, so a hung or absent server costs a build at most the timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::StatsSnapshot;

/// Answers larger than this are not ours (stats and push answers are a few hundred bytes).
const MAX_RESPONSE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a server address: expected http://127.0.0.1:PORT")]
    BadUrl { url: String },
    #[error("could not connect to nixbucket serve at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("nixbucket serve at {addr} did not answer in time: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("nixbucket serve at {addr} sent a malformed answer: {reason}")]
    Malformed { addr: SocketAddr, reason: String },
    #[error("nixbucket serve at {addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
}

/// `http://127.0.0.1:PORT` (with or without the scheme or a trailing slash) as an address.
pub fn parse_addr(url: &str) -> Result<SocketAddr, ClientError> {
    let bare = url.strip_prefix("http://").unwrap_or(url);
    bare.trim_end_matches('/')
        .parse()
        .map_err(|_| ClientError::BadUrl {
            url: url.to_owned(),
        })
}

/// Sends one request and returns the status and body. The whole exchange, connect included,
/// takes at most about `timeout`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    request_with(addr, method, path, body, None, timeout)
}

fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let io = |source| ClientError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| ClientError::Connect { addr, source })?;
    stream.set_write_timeout(Some(left())).map_err(io)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = zeroize::Zeroizing::new(format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{auth}Connection: close\r\n\r\n",
        body.len()
    ));
    drop(zeroize::Zeroizing::new(auth));
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        stream.set_read_timeout(Some(left())).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() as u64 > MAX_RESPONSE {
                    return Err(ClientError::Malformed {
                        addr,
                        reason: "answer too large".into(),
                    });
                }
                if complete(&answer) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
        if Instant::now() >= deadline {
            return Err(io(std::io::ErrorKind::TimedOut.into()));
        }
    }
    parse_response(addr, &answer)
}

/// Whether `answer` holds the whole response as announced by its Content-Length.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = find_head_end(answer) else {
        return false;
    };
    match content_length(&answer[..end]) {
        Some(len) => answer.len() - (end + 4) >= len,
        None => false,
    }
}

fn find_head_end(answer: &[u8]) -> Option<usize> {
    answer.windows(4).position(|w| w == b"\r\n\r\n")
}

fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn parse_response(addr: SocketAddr, answer: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let malformed = |reason: &str| ClientError::Malformed {
        addr,
        reason: reason.to_owned(),
    };
    let end = find_head_end(answer).ok_or_else(|| malformed("no end of headers"))?;
    let head = &answer[..end];
    let status_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| malformed("no status code"))?;
    let mut body = answer[end + 4..].to_vec();
    if let Some(len) = content_length(head) {
        if body.len() < len {
            return Err(malformed("body shorter than its Content-Length"));
        }
        body.truncate(len);
    }
    Ok((status, body))
}

fn expect_success(
    addr: SocketAddr,
    (status, body): (u16, Vec<u8>),
) -> Result<Vec<u8>, ClientError> {
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(ClientError::Status {
            addr,
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        })
    }
}

/// Hands store paths (whitespace-separated, as Nix puts them in $OUT_PATHS) to the server's
/// upload queue, with the token the server was started with, if any.
pub fn post_paths(
    addr: SocketAddr,
    paths: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(), ClientError> {
    let answer = request_with(
        addr,
        "POST",
        super::PUSH_PATH,
        paths.as_bytes(),
        token,
        timeout,
    )?;
    expect_success(addr, answer).map(drop)
}

/// The server's counters.
pub fn stats(addr: SocketAddr, timeout: Duration) -> Result<StatsSnapshot, ClientError> {
    let answer = request(addr, "GET", super::STATS_PATH, b"", timeout)?;
    let body = expect_success(addr, answer)?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
        addr,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn parses_status_and_cuts_the_body_at_its_length() {
        let raw = b"HTTP/1.1 202 Accepted\r\ncontent-length: 3\r\n\r\nok\nextra";
        assert!(complete(raw));
        assert_eq!(
            parse_response(addr(), raw).unwrap(),
            (202, b"ok\n".to_vec())
        );
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"
        ));
        assert!(parse_response(addr(), b"garbage").is_err());
        assert!(parse_response(addr(), b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nx").is_err());
    }

    #[test]
    fn addresses_with_and_without_scheme() {
        assert_eq!(
            parse_addr("http://127.0.0.1:8080/").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_addr("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(parse_addr("https://example.com").is_err());
    }

    #[test]
    fn a_closed_port_fails_fast() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let started = Instant::now();
        let err = post_paths(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "/nix/store/x",
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
