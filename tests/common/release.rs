//! The release binary as `scripts/build-release.sh` builds it (the script release.yml runs),
//! and a release server on 127.0.0.1 that hands out assets the way GitHub does: the asset's
//! URL redirects to where its bytes are stored.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// The static release binary: `$NIXBUCKET_RELEASE_BINARY` when the test script built it once
/// for the whole run (scripts/test.sh), else built here by the same script. A failed build
/// fails the test: it is what the test is about.
pub fn static_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("NIXBUCKET_RELEASE_BINARY") {
                let path = PathBuf::from(path);
                assert!(
                    path.is_file(),
                    "NIXBUCKET_RELEASE_BINARY names {}, which is not a file",
                    path.display()
                );
                return path;
            }
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out =
                super::run(Command::new(repo.join("scripts/build-release.sh")).current_dir(repo));
            assert!(
                out.status.success(),
                "scripts/build-release.sh failed:\n{}",
                super::stderr(&out)
            );
            let stdout = super::stdout(&out);
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("build-release.sh prints the path"),
            )
        })
        .clone()
}

/// The `version` of Cargo.toml, which the release tag and `--version` carry.
pub fn cargo_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The lower-case hex SHA-256 of a file, as its `.sha256` file carries it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An HTTP server serving `assets` under `/<repository>/releases/download/<tag>/<name>` with a
/// redirect to `/storage/<name>`, and 404 for anything else. It records the paths asked for.
pub struct ReleaseServer {
    port: u16,
    repository: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ReleaseServer {
    pub fn start(repository: &str, tag: &str, assets: BTreeMap<String, Vec<u8>>) -> ReleaseServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let mut routes = BTreeMap::new();
        for (name, bytes) in assets {
            routes.insert(
                format!("/{repository}/releases/download/{tag}/{name}"),
                Answer::Redirect(format!("/storage/{name}")),
            );
            routes.insert(format!("/storage/{name}"), Answer::Bytes(bytes));
        }
        let routes = Arc::new(routes);
        let seen = Arc::clone(&requests);
        // The thread lives as long as the test process; each test binary starts few servers.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let routes = Arc::clone(&routes);
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || answer(stream, &routes, &seen));
            }
        });
        ReleaseServer {
            port,
            repository: repository.to_owned(),
            requests,
        }
    }

    /// The repository's URL on this server, as a template's NIXBUCKET_REPOSITORY.
    pub fn repository_url(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, self.repository)
    }

    /// The server's root, as the action's GITHUB_SERVER_URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The paths asked for so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

enum Answer {
    Redirect(String),
    Bytes(Vec<u8>),
}

fn answer(mut stream: TcpStream, routes: &BTreeMap<String, Answer>, seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone a TCP stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The headers end at an empty line; none of them matters here.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header.trim_end() != "" {
        header.clear();
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    seen.lock().unwrap().push(path.clone());
    let head = |status: &str, extra: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let _ = match routes.get(&path) {
        Some(Answer::Redirect(to)) => {
            stream.write_all(head("302 Found", &format!("Location: {to}\r\n"), 0).as_bytes())
        }
        Some(Answer::Bytes(bytes)) => stream
            .write_all(
                head(
                    "200 OK",
                    "Content-Type: application/octet-stream\r\n",
                    bytes.len(),
                )
                .as_bytes(),
            )
            .and_then(|()| stream.write_all(bytes)),
        None => stream
            .write_all(head("404 Not Found", "", 9).as_bytes())
            .and_then(|()| stream.write_all(b"Not Found")),
    };
}
