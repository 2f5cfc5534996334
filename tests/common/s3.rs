//! A real S3-compatible server for tests: `s3s-fs` on a free 127.0.0.1 port over a fresh temp
//! directory, one per test. A second, keyless instance over the same directory serves
//! anonymous GETs, the way Nix reads an `http://` substituter.
//!
//! A missing `s3s-fs` is a loud failure, never a skip: install it with scripts/install-deps.sh.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::store::{S3Kind, S3Store};

pub struct S3Server {
    root: tempfile::TempDir,
    logs: tempfile::TempDir,
    bucket: String,
    access_key: String,
    secret_key: String,
    port: u16,
    anon_port: u16,
    signed: Option<Child>,
    anon: Option<Child>,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/s3s-fs");
    if cargo_bin.is_file() {
        return cargo_bin;
    }
    panic!(
        "s3s-fs not found (not on PATH, not in ~/.cargo/bin, S3S_FS unset): the S3 tests need it. \
         Run scripts/install-deps.sh or `cargo install s3s-fs --version 0.14.1 --features binary --locked`"
    );
}

/// A port nobody listens on right now. The OS may hand it out again before the server binds
/// it; `spawn` notices (the server exits) and the caller retries with another.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// Records a secret in `$NIXBUCKET_TEST_LOG_DIR/secrets/` for scripts/check-secrets.sh.
pub fn register_secret(secret: &str) {
    let Some(dir) = std::env::var_os("NIXBUCKET_TEST_LOG_DIR") else {
        return;
    };
    // Short strings would match by chance.
    if secret.len() < 12 || secret.contains('\n') {
        return;
    }
    let dir = Path::new(&dir).join("secrets");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{}.txt", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        use std::io::Write;
        let _ = writeln!(f, "{secret}");
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("getrandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl S3Server {
    /// Starts both instances and creates the bucket. Panics with the server log on failure.
    pub fn start() -> S3Server {
        let mut s = S3Server {
            root: tempfile::tempdir().expect("temp dir for s3s-fs data"),
            logs: tempfile::tempdir().expect("temp dir for s3s-fs logs"),
            bucket: "nixbucket-test".to_owned(),
            access_key: format!("AKTEST{}", random_hex().to_uppercase()),
            secret_key: format!("secret-{}", random_hex()),
            port: 0,
            anon_port: 0,
            signed: None,
            anon: None,
        };
        register_secret(&s.secret_key);
        std::fs::create_dir(s.root.path().join(&s.bucket)).expect("create bucket directory");
        let (port, child) = s.spawn_on_free_port(true);
        s.port = port;
        s.signed = Some(child);
        let (anon_port, anon) = s.spawn_on_free_port(false);
        s.anon_port = anon_port;
        s.anon = Some(anon);
        s
    }

    fn spawn_on_free_port(&self, signed: bool) -> (u16, Child) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match self.spawn(port, signed) {
                Ok(child) => return (port, child),
                Err(e) => last = e,
            }
        }
        panic!("s3s-fs did not start: {last}");
    }

    fn log_path(&self, port: u16) -> PathBuf {
        self.logs.path().join(format!("s3s-fs-{port}.log"))
    }

    fn spawn(&self, port: u16, signed: bool) -> Result<Child, String> {
        let log_path = self.log_path(port);
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(binary());
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string());
        if signed {
            cmd.arg("--access-key")
                .arg(&self.access_key)
                .arg("--secret-key")
                .arg(&self.secret_key);
        }
        cmd.arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run s3s-fs ({}): {e}", binary().display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("s3s-fs on port {port} exited with {status}: {log}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "s3s-fs on port {port} did not answer within 20s: {log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The directory s3s-fs serves; the bucket's objects are files under `root()/bucket()`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The file holding an object's bytes, to check what really landed in the bucket.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }

    /// s3s-fs's own record of an object (JSON with its ETag), if it has one. A multipart
    /// object's ETag ends in `-<number of parts>`; a PutObject one has no dash.
    pub fn internal_info(&self, key: &str) -> Option<String> {
        use base64::Engine as _;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let name = format!(
            ".bucket-{}.object-{}.internal.json",
            enc(&self.bucket),
            enc(key)
        );
        std::fs::read_to_string(self.root.path().join(name)).ok()
    }

    fn root_files(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.path())
            .expect("read s3s-fs root")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }

    /// Stops the signed instance, as a crash would (the anonymous one keeps running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.signed.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the signed instance again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn(self.port, true) {
                Ok(c) => {
                    self.signed = Some(c);
                    return;
                }
                // The old socket may linger for a moment.
                Err(e) if Instant::now() > deadline => panic!("s3s-fs did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl S3Store for S3Server {
    fn kind(&self) -> S3Kind {
        S3Kind::S3sFs
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn access_key(&self) -> &str {
        &self.access_key
    }

    fn secret_key(&self) -> &str {
        &self.secret_key
    }

    fn anon_http_url_for(&self, bucket: &str) -> String {
        format!("http://127.0.0.1:{}/{bucket}", self.anon_port)
    }

    /// s3s-fs keeps a bucket as a directory.
    fn create_bucket(&self, name: &str) {
        std::fs::create_dir(self.root.path().join(name)).expect("create a bucket directory");
    }

    /// s3s-fs has no ListMultipartUploads; it keeps one `.upload-<id>.json` per open upload in
    /// its root.
    fn pending_uploads(&self) -> Vec<String> {
        self.root_files(".upload")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.port)).unwrap_or_default()
    }

    /// The signed instance only: the anonymous one keeps running.
    fn kill(&mut self) {
        S3Server::kill(self)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        for c in [self.signed.take(), self.anon.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
