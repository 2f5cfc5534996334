//! One test cache on any backend: a `file://` directory, or a bucket on s3s-fs or moto. The
//! same calls push to it, verify, gc and sign it, read and change its objects behind its back,
//! and copy paths out of it with the real Nix, so a behaviour is written once and run on each.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nixbucket::cache::{Cache, CacheUrl, OpenOptions};
use nixbucket::nix::StorePath;
use nixbucket::push::usage::{self, Usage};

use super::moto::MotoServer;
use super::nix::copy_into_fresh_store;
use super::s3::S3Server;
use super::store::{S3Kind, S3Store};
use super::{assert_ok, hash_part, list_files, nixbucket, run};

/// Where a [`TestCache`] keeps its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    File,
    S3sFs,
    Moto,
}

/// A cache under test: a directory, or a bucket on a local S3 server (s3s-fs or moto).
pub struct TestCache {
    pub url: String,
    /// Where Nix substitutes from (the anonymous HTTP face of the bucket, or the directory).
    pub nix_url: String,
    /// The directory whose files are the cache's objects, key = relative path: a file://
    /// cache's, or s3s-fs's bucket. moto keeps objects in memory: `None`.
    pub dir: Option<PathBuf>,
    pub server: Option<Box<dyn S3Store>>,
}

impl TestCache {
    pub fn file(tmp: &Path) -> TestCache {
        let dir = tmp.join("cache");
        let url = format!("file://{}", dir.display());
        TestCache {
            nix_url: url.clone(),
            url,
            dir: Some(dir),
            server: None,
        }
    }

    pub fn s3() -> TestCache {
        let server = S3Server::start();
        TestCache {
            url: server.cache_url(),
            nix_url: server.anon_http_url(),
            dir: Some(server.root().join(server.bucket())),
            server: Some(Box::new(server)),
        }
    }

    pub fn moto() -> TestCache {
        let server = MotoServer::start();
        TestCache {
            url: server.cache_url(),
            nix_url: server.anon_http_url(),
            dir: None,
            server: Some(Box::new(server)),
        }
    }

    pub fn of(kind: S3Kind) -> TestCache {
        match kind {
            S3Kind::S3sFs => TestCache::s3(),
            S3Kind::Moto => TestCache::moto(),
        }
    }

    /// A fresh, empty cache on `backend`; a `file://` one lives in `tmp`.
    pub fn new(backend: Backend, tmp: &Path) -> TestCache {
        match backend {
            Backend::File => TestCache::file(tmp),
            Backend::S3sFs => TestCache::s3(),
            Backend::Moto => TestCache::moto(),
        }
    }

    /// Nix copies `path`'s closure from the cache into a new store at `store`, trusting only
    /// `public`, as the next job would.
    pub fn copy_out(&self, public: &str, store: &Path, path: &str) -> Output {
        copy_into_fresh_store(&self.nix_url, public, store, path)
    }

    /// Writes left unfinished: open multipart uploads, or temporary files in the directory.
    pub fn leftovers(&self) -> Vec<String> {
        match (&self.server, &self.dir) {
            (Some(s), _) => s.pending_uploads(),
            (None, Some(dir)) => list_files(dir)
                .into_iter()
                .filter(|f| f.rsplit('/').next().is_some_and(|n| n.starts_with(".tmp")))
                .collect(),
            (None, None) => unreachable!(),
        }
    }

    /// The directory of the objects, for the tests that change files behind the cache's back.
    pub fn objects(&self) -> &Path {
        self.dir
            .as_deref()
            .expect("a test that changes objects behind the cache's back needs a directory")
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = nixbucket();
        if let Some(s) = &self.server {
            cmd.envs(s.env());
        }
        cmd
    }

    pub fn push(&self, secret: &Path, path: &str) -> Output {
        let out = self.push_with(secret, path, &[]);
        assert_ok(&out);
        out
    }

    /// `push` with more options, whatever it answers.
    pub fn push_with(&self, secret: &Path, path: &str, options: &[&str]) -> Output {
        run(self
            .cmd()
            .args(["push", "--cache", &self.url])
            .args(options)
            .arg("--signing-key-file")
            .arg(secret)
            .arg(path))
    }

    pub fn gc(&self, args: &[&str]) -> Output {
        run(self.cmd().args(["gc", "--cache", &self.url]).args(args))
    }

    /// gc as it would run a month from now, of what went unused for a week: every path this
    /// test pushed goes.
    pub fn gc_a_month_on(&self) -> Output {
        let month = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30 * 86_400;
        self.gc(&["--older-than", "7d", "--now", &month.to_string()])
    }

    pub fn verify(&self, public: &str) -> Output {
        run(self
            .cmd()
            .args(["verify", "--cache", &self.url, "--public-key", public]))
    }

    /// `verify --deep`: every NAR is read back and hashed too.
    pub fn verify_deep(&self, public: &str) -> Output {
        run(self.cmd().args([
            "verify",
            "--deep",
            "--cache",
            &self.url,
            "--public-key",
            public,
        ]))
    }

    /// Object keys, sorted (s3s-fs keeps its own bookkeeping outside the bucket directory).
    pub fn keys(&self) -> Vec<String> {
        match (&self.dir, &self.server) {
            (Some(dir), _) => list_files(dir),
            (None, Some(s)) => s.admin().keys(s.bucket(), ""),
            (None, None) => unreachable!(),
        }
    }

    pub fn read(&self, key: &str) -> Option<Vec<u8>> {
        match (&self.dir, &self.server) {
            (Some(dir), _) => std::fs::read(dir.join(key)).ok(),
            (None, Some(s)) => s.admin().get(s.bucket(), key),
            (None, None) => unreachable!(),
        }
    }

    pub fn remove(&self, key: &str) {
        match (&self.dir, &self.server) {
            (Some(dir), _) => std::fs::remove_file(dir.join(key)).unwrap(),
            (None, Some(s)) => s.admin().delete(s.bucket(), key),
            (None, None) => unreachable!(),
        }
    }

    /// When an object was last written, as the cache reports it (a file's mtime on both
    /// directory backends, LastModified on moto).
    pub fn modified(&self, key: &str) -> SystemTime {
        match (&self.dir, &self.server) {
            (Some(dir), _) => std::fs::metadata(dir.join(key))
                .unwrap()
                .modified()
                .unwrap(),
            (None, Some(s)) => {
                let head = s.admin().head(s.bucket(), key).expect(key);
                head.last_modified.expect("LastModified")
            }
            (None, None) => unreachable!(),
        }
    }

    pub fn has_narinfo(&self, store_path: &str) -> bool {
        self.read(&format!("{}.narinfo", hash_part(store_path)))
            .is_some()
    }

    /// The build log object of the derivation a path's narinfo names as its `Deriver:`.
    pub fn log_of(&self, store_path: &str) -> String {
        let text = self
            .read(&format!("{}.narinfo", hash_part(store_path)))
            .unwrap();
        let deriver = String::from_utf8(text)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Deriver: ").map(str::to_owned))
            .expect("a Deriver line");
        format!("log/{deriver}")
    }

    /// The NAR object a path's narinfo names.
    pub fn nar_of(&self, store_path: &str) -> String {
        let text = self
            .read(&format!("{}.narinfo", hash_part(store_path)))
            .unwrap();
        String::from_utf8(text)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .unwrap()
            .to_owned()
    }

    pub async fn open(&self) -> Cache {
        let url: CacheUrl = self.url.parse().unwrap();
        let opts = match &self.server {
            Some(s) => OpenOptions::default().static_credentials(s.access_key(), s.secret_key()),
            None => OpenOptions::default(),
        };
        Cache::open_with(&url, opts).await.unwrap()
    }

    /// Writes a usage record, as a job would, saying `paths` were used at `secs`.
    pub fn record_use(&self, secs: u64, paths: &[&str]) {
        self.record_use_on(secs, paths, None);
    }

    /// [`TestCache::record_use`] by a job on `branch`.
    pub fn record_use_on(&self, secs: u64, paths: &[&str], branch: Option<&str>) {
        let paths: Vec<StorePath> = paths
            .iter()
            .map(|p| StorePath::from_absolute(p).unwrap())
            .collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let cache = self.open().await;
            usage::record(
                &cache,
                UNIX_EPOCH + Duration::from_secs(secs),
                &paths,
                branch,
            )
            .await
            .unwrap()
            .expect("a record was written");
        });
    }

    pub fn usage_records(&self) -> Vec<(String, Usage)> {
        self.keys()
            .into_iter()
            .filter(|k| usage::is_record_key(k))
            .map(|k| {
                let bytes = self.read(&k).unwrap();
                let u = Usage::decode(&k, &bytes).unwrap();
                (k, u)
            })
            .collect()
    }

    /// `gc --older-than 1d` on `url`, started and left running, its output piped.
    pub fn spawn_gc(&self, url: &str) -> std::process::Child {
        self.cmd()
            .args(["gc", "--older-than", "1d", "--cache", url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Removes the usage records, so that only age and references decide.
    pub fn forget_usage(&self) {
        for (key, _) in self.usage_records() {
            self.remove(&key);
        }
    }

    /// A fault proxy in front of the S3 server that meets every `op` request with `fault`
    /// (a [`Fault::Delay`] lasts 5 s), and the cache URL through it.
    pub fn proxy(
        &self,
        op: &'static str,
        fault: super::fault_proxy::Fault,
    ) -> (super::fault_proxy::FaultProxy, String) {
        use super::fault_proxy::{FaultConfig, FaultProxy};
        let server = self.server.as_ref().expect("an S3 target");
        let proxy = FaultProxy::start(
            &server.endpoint(),
            FaultConfig {
                faults: vec![fault],
                ..FaultConfig::hold(op, 5)
            },
        );
        let url = self.url.replace(&server.endpoint(), &proxy.endpoint());
        (proxy, url)
    }

    /// Makes objects look `secs` old (both backends report a file's mtime as LastModified).
    pub fn age(&self, keys: &[String], secs: u64) {
        let when = SystemTime::now() - Duration::from_secs(secs);
        for key in keys {
            let f = std::fs::File::options()
                .write(true)
                .open(self.objects().join(key))
                .unwrap();
            f.set_modified(when).unwrap();
        }
    }

    /// Key → (bytes, last written) of every object: to prove that nothing changed.
    pub fn snapshot(&self) -> Vec<(String, Vec<u8>, SystemTime)> {
        self.keys()
            .into_iter()
            .map(|k| (k.clone(), self.read(&k).unwrap(), self.modified(&k)))
            .collect()
    }
}
