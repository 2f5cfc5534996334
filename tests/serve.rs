//! `nixbucket serve` with the real Nix and the real S3 server: Nix substitutes through it (also
//! a nix-daemon without credentials), a dead server or a broken hook never fails a build, and
//! the post-build hook uploads during the build. Some tests diff the shared /nix/store through
//! `setup`/`push`, so the test script runs this binary on its own, one test at a time.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::nix::{
    NixConfig, build_closure, derivation, nix_command, nonce, query_closure, start_daemon,
};
use common::s3::S3Server;
use common::store::S3Store;
use common::{assert_ok, assert_refused_unsigned, keygen, nixbucket, run, stderr, stdout};
use nixbucket::serve::client;

/// A `nixbucket serve` started by the test, stopped on drop.
struct Served {
    child: Child,
    url: String,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(cache_url: &str, env: &[(String, String)], extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("addr");
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = nixbucket()
            .args(["serve", "--cache", cache_url, "--ready-file"])
            .arg(&ready)
            .args(extra)
            .envs(env.iter().cloned())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nixbucket serve");
        let mut served = Served {
            child,
            url: String::new(),
            addr: "127.0.0.1:1".parse().unwrap(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("nixbucket serve exited: {status}: {}", served.log());
            }
            if let Ok(url) = std::fs::read_to_string(&ready) {
                served.addr = client::parse_addr(url.trim()).unwrap();
                served.url = url.trim().to_owned();
                return served;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("nixbucket serve did not start: {}", served.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    fn stats(&self) -> nixbucket::serve::StatsSnapshot {
        client::stats(self.addr, Duration::from_secs(5)).expect("stats")
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (status, body) =
            client::request(self.addr, "GET", path, b"", Duration::from_secs(10)).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::log_file(&self._dir.path().join("log"));
    }
}

fn s3_env(s3: &S3Server) -> Vec<(String, String)> {
    s3.env()
}

fn push_to(s3: &S3Server, secret: &Path, path: &str) {
    let out = run(nixbucket()
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(secret)
        .arg(path)
        .envs(s3_env(s3)));
    assert_ok(&out);
}

fn delete_from_store(paths: &[String]) {
    assert_ok(&run(nix_command("nix-store").arg("--delete").args(paths)));
    for p in paths {
        assert!(!Path::new(p).exists(), "{p} still in the store");
    }
}

fn write_expr(dir: &Path, expr: &str) -> PathBuf {
    let file = dir.join(format!("{}.nix", nonce()));
    std::fs::write(&file, expr).unwrap();
    file
}

#[test]
fn a_fresh_store_substitutes_from_serve_with_our_signatures_and_refuses_the_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let (secret, public) = keygen(tmp.path(), "ours-1");
    let (_, other) = keygen(tmp.path(), "other-1");
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    push_to(&s3, &secret, &app);
    let served = Served::start(&s3.cache_url(), &s3_env(&s3), &[]);

    let fresh = tmp.path().join("fresh");
    let out = common::nix::copy_into_fresh_store(&served.url, &public, &fresh, &app);
    assert_ok(&out);
    for p in [&app, &lib, &data] {
        let copied = fresh.join(p.trim_start_matches('/'));
        assert!(
            copied.exists(),
            "{} missing: {}",
            copied.display(),
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read_to_string(fresh.join(lib.trim_start_matches('/')).join("lib/ref"))
            .unwrap()
            .trim(),
        data
    );
    let stats = served.stats();
    assert_eq!(
        (stats.narinfo_hits, stats.narinfo_misses),
        (3, 0),
        "{stats:?}"
    );
    assert_eq!(stats.nar_requests, 3, "{stats:?}");
    let nar_files: u64 = std::fs::read_dir(s3.object_path("nar"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(stats.nar_bytes, nar_files, "{stats:?}");

    let wrong =
        common::nix::copy_into_fresh_store(&served.url, &other, &tmp.path().join("f2"), &app);
    assert_refused_unsigned(&wrong);
}

#[test]
fn answers_misses_with_404_and_failures_without_details() {
    let mut s3 = S3Server::start();
    let served = Served::start(&s3.cache_url(), &s3_env(&s3), &[]);
    // An empty bucket still says where its store is, so Nix accepts it as a cache.
    let (status, body) = served.get("/nix-cache-info");
    assert_eq!(status, 200);
    assert!(body.contains("StoreDir: /nix/store"), "{body}");
    assert_eq!(
        served.get("/1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h.narinfo").0,
        404
    );
    assert_eq!(served.get("/not-a-hash.narinfo").0, 404);
    assert_eq!(served.get("/nar/../../etc/passwd").0, 404);
    assert_eq!(served.get("/nar/missing.nar.zst").0, 404);
    assert_eq!(served.get("/anything-else").0, 404);
    // A page whose name an attacker points at 127.0.0.1 (DNS rebinding) is refused, whatever
    // it asks for; curl names the address, as Nix does.
    let with_host = |host: &str| {
        let out = run(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Host: {host}"),
            &format!("{}/nix-cache-info", served.url),
        ]));
        stdout(&out)
    };
    assert_eq!(with_host("attacker.example:80"), "403");
    assert_eq!(
        with_host(&format!("localhost:{}", served.addr.port())),
        "200"
    );
    let stats = served.stats();
    assert_eq!((stats.narinfo_hits, stats.narinfo_misses), (0, 1));

    s3.kill();
    let (status, body) = served.get("/1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h.narinfo");
    assert_eq!(status, 500, "{body}");
    for secret in [s3.secret_key(), s3.access_key(), s3.bucket(), "127.0.0.1"] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    assert!(
        served
            .log()
            .contains("1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h.narinfo")
    );
    assert!(!served.log().contains(s3.secret_key()));
    assert_eq!(served.stats().errors, 1);
}

#[test]
fn a_daemon_without_aws_credentials_substitutes_through_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let (secret, public) = keygen(tmp.path(), "ours-1");
    let tag = nonce();
    let expr = write_expr(
        tmp.path(),
        &format!(
            "let dep = {}; in {}",
            derivation(&format!("dep-{tag}"), "echo dep > $out"),
            derivation(&format!("top-{tag}"), "echo ${dep} > $out")
        ),
    );
    let first = run(nix_command("nix-build").arg("--no-out-link").arg(&expr));
    assert_ok(&first);
    let top = stdout(&first).trim().to_owned();
    let closure = query_closure(&top);
    push_to(&s3, &secret, &top);
    delete_from_store(&closure);

    let served = Served::start(&s3.cache_url(), &s3_env(&s3), &[]);
    let conf_dir = tmp.path().join("etc");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("nix.conf"),
        format!(
            "substituters = {}\ntrusted-public-keys = {public}\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group =\n",
            served.url
        ),
    )
    .unwrap();
    let daemon = start_daemon(&conf_dir, tmp.path());
    let built = run(Command::new("nix-build")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", tmp.path())
        .env("NIX_CONF_DIR", &conf_dir)
        .env("NIX_REMOTE", "daemon")
        .env("NIX_DAEMON_SOCKET_PATH", &daemon.socket)
        .arg("--no-out-link")
        .arg(&expr));
    assert_ok(&built);
    let log = stderr(&built);
    assert!(
        log.contains(&format!("copying path '{top}' from '{}'", served.url)),
        "{log}"
    );
    assert!(!log.contains("building '"), "built instead:\n{log}");
    assert_eq!(served.stats().nar_requests, 2);
}

const BASE_CONF: &str = common::NIX_CONFIG;

/// What `setup --serve` recorded; stops the server on drop if `push` did not.
struct SetupServe {
    state: PathBuf,
}

impl SetupServe {
    fn served(&self) -> (u32, u16) {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap();
        let serve = &v["serve"];
        (
            serve["pid"].as_u64().expect("serve.pid in the state") as u32,
            serve["port"].as_u64().expect("serve.port in the state") as u16,
        )
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.served().1)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.served().1))
    }

    fn kill_server(&self) {
        let (pid, _) = self.served();
        if alive(pid) {
            assert_ok(&run(Command::new("kill").args(["-KILL", &pid.to_string()])));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_idle(&self) -> nixbucket::serve::StatsSnapshot {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stats = client::stats(self.addr(), Duration::from_secs(5)).unwrap();
            if stats.upload.pending == 0 || Instant::now() > deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SetupServe {
    fn drop(&mut self) {
        // What the background server and the hook wrote, beside the state file.
        for log in ["nixbucket-serve.log", "nixbucket-hook.log"] {
            common::log_file(&self.state.with_file_name(log));
        }
        if let Ok(text) = std::fs::read_to_string(&self.state) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(pid) = v["serve"]["pid"].as_u64() {
                    if alive(pid as u32) {
                        let _ = Command::new("kill").arg(pid.to_string()).status();
                    }
                }
            }
        }
    }
}

/// The pid runs `nixbucket serve` (not a zombie, not a reused pid).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    running && String::from_utf8_lossy(&cmdline).contains("serve")
}

fn setup_serve(
    conf: &NixConfig,
    s3: &S3Server,
    secret: &Path,
    state: &Path,
    push_during_build: bool,
) -> SetupServe {
    setup_serve_url(conf, s3, &s3.cache_url(), secret, state, push_during_build)
}

/// [`setup_serve`] with a cache URL of the test's own (`s3`'s bucket, with more settings).
fn setup_serve_url(
    conf: &NixConfig,
    s3: &S3Server,
    url: &str,
    secret: &Path,
    state: &Path,
    push_during_build: bool,
) -> SetupServe {
    let mut cmd = conf.nixbucket();
    // These tests are about what Nix gets through the server: no mirror in front of it (the
    // restore has tests of its own).
    cmd.args([
        "setup",
        "--serve",
        "--no-restore",
        "--cache",
        url,
        "--signing-key-file",
    ])
    .arg(secret)
    .arg("--state-file")
    .arg(state)
    .envs(s3_env(s3));
    if push_during_build {
        cmd.arg("--push-during-build");
    }
    let out = run(&mut cmd);
    let guard = SetupServe {
        state: state.to_owned(),
    };
    assert_ok(&out);
    guard
}

fn push_job_end(conf: &NixConfig, s3: &S3Server, secret: &Path, state: &Path) -> String {
    let out = run(conf
        .nixbucket()
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(secret)
        .arg("--state-file")
        .arg(state)
        .envs(s3_env(s3)));
    assert_ok(&out);
    stderr(&out)
}

#[test]
fn setup_serve_substitutes_and_push_reports_the_hit_rate_and_stops_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let (secret, public) = keygen(tmp.path(), "ours-1");
    let tag = nonce();
    let cached_expr = derivation(&format!("cached-{tag}"), &format!("echo {tag} > $out"));
    let cached = common::nix::build(tmp.path(), &cached_expr);
    push_to(&s3, &secret, &cached);
    delete_from_store(std::slice::from_ref(&cached));

    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let state = tmp.path().join("state.json");
    let setup = setup_serve(&conf, &s3, &secret, &state, false);
    let (pid, _) = setup.served();
    assert!(alive(pid), "the server did not outlive setup");
    let user_conf = std::fs::read_to_string(conf.user_conf()).unwrap();
    assert!(
        user_conf.contains(&format!("extra-substituters = {}", setup.url())),
        "{user_conf}"
    );
    assert!(
        user_conf.contains(&format!("extra-trusted-public-keys = {public}")),
        "{user_conf}"
    );
    assert!(user_conf.contains("fallback = true"), "{user_conf}");
    assert!(!user_conf.contains("s3://"), "{user_conf}");
    assert!(!user_conf.contains("post-build-hook"), "{user_conf}");

    let expr = write_expr(
        tmp.path(),
        &format!(
            "let cached = {cached_expr}; in {}",
            derivation(&format!("new-{tag}"), "echo ${cached} > $out")
        ),
    );
    // Nix itself has no credentials: only the server reads the bucket.
    let built = run(conf.nix("nix-build").arg("--no-out-link").arg(&expr));
    assert_ok(&built);
    let log = stderr(&built);
    assert!(
        log.contains(&format!("copying path '{cached}' from '{}'", setup.url())),
        "{log}"
    );
    let new = stdout(&built).trim().to_owned();

    let summary = push_job_end(&conf, &s3, &secret, &state);
    // Nix asked for `new` (miss) and `cached` (hit). (Other builds on this machine may add to
    // the store meanwhile, so the push's own counts are not checked here.)
    assert!(
        summary.contains("cache: 1 of 2 paths Nix asked for were in the cache (50% hit rate)"),
        "{summary}"
    );
    assert!(!alive(pid), "push did not stop the server");
    let hash = &new["/nix/store/".len()..][..32];
    assert!(s3.object_path(&format!("{hash}.narinfo")).exists());
}

#[test]
fn push_during_build_uploads_as_paths_are_built_and_the_final_push_does_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let (secret, _) = keygen(tmp.path(), "ours-1");
    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let state = tmp.path().join("state.json");
    // The cache asks for NAR listings: the uploads during the build write them too.
    let url = format!("{}&write-nar-listing=true", s3.cache_url());
    let setup = setup_serve_url(&conf, &s3, &url, &secret, &state, true);
    let user_conf = std::fs::read_to_string(conf.user_conf()).unwrap();
    assert!(user_conf.contains("post-build-hook = "), "{user_conf}");
    // Only the hook may hand paths over: anyone else on the machine is refused.
    let stranger = client::post_paths(setup.addr(), "/nix/store/x", None, Duration::from_secs(5));
    assert!(
        matches!(
            stranger,
            Err(client::ClientError::Status { status: 401, .. })
        ),
        "{stranger:?}"
    );
    let script = tmp.path().join("nixbucket-post-build-hook");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&script).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let tag = nonce();
    let data = derivation(&format!("data-{tag}"), &format!("echo {tag} > $out"));
    let app = format!(
        "let data = {data}; in {}",
        derivation(&format!("app-{tag}"), "echo ${data} > $out")
    );
    let built = run(conf
        .nix("nix-build")
        .arg("--no-out-link")
        .arg(write_expr(tmp.path(), &app)));
    assert_ok(&built);
    let app_path = stdout(&built).trim().to_owned();
    let closure = query_closure(&app_path);
    assert_eq!(closure.len(), 2);

    // Before any push: the server has uploaded both outputs.
    let stats = setup.wait_idle();
    // Nix 2.8 hands over the two derivations (its $OUT_PATHS is empty); newer Nix their outputs too.
    assert!(stats.upload.received >= 2, "{stats:?}");
    assert_eq!(stats.upload.pushed, 2, "{stats:?}");
    for p in &closure {
        let hash = &p["/nix/store/".len()..][..32];
        let narinfo = std::fs::read_to_string(s3.object_path(&format!("{hash}.narinfo")))
            .unwrap_or_else(|_| panic!("{p} not uploaded during the build"));
        assert!(narinfo.contains("Sig: ours-1:"), "{narinfo}");
        let listing = std::fs::read_to_string(s3.object_path(&format!("{hash}.ls")))
            .unwrap_or_else(|_| panic!("{p}: no listing written during the build"));
        assert!(listing.contains(r#""type":"regular""#), "{listing}");
    }

    // A path the hook never sees (added, not built): a source no build vouches for, which the
    // job-end push leaves out too.
    let file = tmp.path().join(format!("added-{tag}"));
    std::fs::write(&file, &tag).unwrap();
    let added = run(conf.nix("nix-store").arg("--add").arg(&file));
    assert_ok(&added);
    let modified = |p: &String| {
        let hash = &p["/nix/store/".len()..][..32];
        std::fs::metadata(s3.object_path(&format!("{hash}.narinfo")))
            .and_then(|m| m.modified())
            .unwrap()
    };
    let before: Vec<_> = closure.iter().map(modified).collect();
    std::thread::sleep(Duration::from_millis(20));
    let summary = push_job_end(&conf, &s3, &secret, &state);
    let after: Vec<_> = closure.iter().map(modified).collect();
    assert_eq!(
        before, after,
        "the job-end push wrote them again:\n{summary}"
    );
    assert!(
        summary.contains("2 paths") && summary.contains("uploaded during the build"),
        "{summary}"
    );
    let added_path = stdout(&added).trim().to_owned();
    let added_hash = &added_path["/nix/store/".len()..][..32];
    assert!(!s3.object_path(&format!("{added_hash}.narinfo")).exists());
}

#[test]
fn killing_the_server_mid_build_falls_back_to_building() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let (secret, _) = keygen(tmp.path(), "ours-1");
    let tag = nonce();
    let expr_text = derivation(&format!("gone-{tag}"), &format!("echo {tag} > $out"));
    let out_path = common::nix::build(tmp.path(), &expr_text);
    push_to(&s3, &secret, &out_path);
    delete_from_store(std::slice::from_ref(&out_path));

    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let state = tmp.path().join("state.json");
    let setup = setup_serve(&conf, &s3, &secret, &state, true);
    // Nix looks the path up (and remembers the answer) while the server is up...
    let looked = run(conf
        .nix("nix")
        .args(["path-info", "--store", &setup.url(), &out_path]));
    assert_ok(&looked);
    assert_eq!(setup.wait_idle().narinfo_hits, 1);
    // ...and the server is gone when it fetches the NAR (the hook finds it gone too).
    setup.kill_server();
    let built = run(conf
        .nix("nix-build")
        .arg("--no-out-link")
        .arg(write_expr(tmp.path(), &expr_text)));
    assert_ok(&built);
    let log = stderr(&built);
    assert!(log.contains("building '"), "did not fall back:\n{log}");
    assert_eq!(stdout(&built).trim(), out_path);
    let hook_log =
        std::fs::read_to_string(tmp.path().join("nixbucket-hook.log")).unwrap_or_default();
    assert!(hook_log.contains("could not connect"), "{hook_log}");

    // The job-end push copes with the dead server and uploads what the build made.
    let summary = push_job_end(&conf, &s3, &secret, &state);
    assert!(
        summary.contains("no counters from nixbucket serve"),
        "{summary}"
    );
}

#[test]
fn a_server_without_a_hand_over_token_takes_no_hand_overs() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "ours-1");
    let cache = format!("file://{}", tmp.path().join("cache").display());
    let served = Served::start(
        &cache,
        &[],
        &["--signing-key-file", secret.to_str().unwrap()],
    );
    // The line is printed just after the address file is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served.log().contains("nixbucket serve: serving") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        served.log().contains("read-only: no hand-over token"),
        "{}",
        served.log()
    );
    for token in [None, Some(""), Some("guessed")] {
        let refused = client::post_paths(
            served.addr,
            "/nix/store/00000000000000000000000000000000-gone",
            token,
            Duration::from_secs(5),
        );
        assert!(
            matches!(
                refused,
                Err(client::ClientError::Status { status: 503, .. })
            ),
            "{token:?}: {refused:?}"
        );
    }
    assert_eq!(served.stats().upload.received, 0);
}

#[test]
fn a_misbehaving_hook_never_fails_or_stalls_a_build() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "ours-1");
    let cache = format!("file://{}", tmp.path().join("cache").display());
    let token = nonce();
    let token_env = [(nixbucket::serve::TOKEN_ENV.to_owned(), token.clone())];
    let served = Served::start(
        &cache,
        &token_env,
        &["--signing-key-file", secret.to_str().unwrap()],
    );
    let hook = |server: &str, out_paths: Option<&str>| {
        let mut cmd = nixbucket();
        cmd.args(["hook", "--server", server])
            .envs(token_env.clone());
        cmd.env_remove("DRV_PATH");
        match out_paths {
            Some(p) => cmd.env("OUT_PATHS", p),
            None => cmd.env_remove("OUT_PATHS"),
        };
        let started = Instant::now();
        let out = run(&mut cmd);
        assert_ok(&out);
        assert!(started.elapsed() < Duration::from_secs(8), "hook stalled");
        stderr(&out)
    };
    assert_eq!(hook(&served.url, None), "");
    let garbage = hook(&served.url, Some("../etc/passwd \u{1b}[2J"));
    assert!(garbage.contains("answered 400"), "{garbage}");
    assert!(
        hook(
            &served.url,
            Some("/nix/store/00000000000000000000000000000000-gone")
        )
        .is_empty(),
        "a valid-looking hand-over is accepted"
    );
    let closed = common::s3::free_port();
    let down = hook(&format!("http://127.0.0.1:{closed}"), Some("/nix/store/x"));
    assert!(down.contains("could not connect"), "{down}");
    assert!(hook("not a url", Some("/nix/store/x")).contains("not a server address"));
    // A server that accepts and never answers costs at most the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let stalled = hook(&silent_url, Some("/nix/store/x"));
    assert!(stalled.contains("did not answer in time"), "{stalled}");
    assert_eq!(served.stats().upload.received, 1);

    // Nix runs a hook whose server is gone, and the build still succeeds.
    let conf_dir = tmp.path().join("etc");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let script = tmp.path().join("hook.sh");
    let hook_log = tmp.path().join("hook.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n'{}' hook --server http://127.0.0.1:{closed} 2>>'{}' || true\nexit 0\n",
            env!("CARGO_BIN_EXE_nixbucket"),
            hook_log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        conf_dir.join("nix.conf"),
        format!("{BASE_CONF}post-build-hook = {}\n", script.display()),
    )
    .unwrap();
    let built = run(Command::new("nix-build")
        .env_remove("NIX_CONFIG")
        .env("NIX_CONF_DIR", &conf_dir)
        .arg("--no-out-link")
        .arg(write_expr(
            tmp.path(),
            &derivation(&format!("hooked-{}", nonce()), "echo x > $out"),
        )));
    assert_ok(&built);
    // Nix 2.8 says "running post-build-hook" and 2.34 says nothing: the hook's own log shows it ran.
    common::log_file(&hook_log);
    let logged = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(logged.contains("nixbucket hook: not uploaded"), "{logged}");
}

/// A client that opens connections and sends nothing cannot hold the server: past the
/// connection limit others wait to be accepted, and a connection with no whole request header
/// in time is closed, which frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_cannot_hold_every_place() {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use nixbucket::serve::{Limits, Server};
    let tmp = tempfile::tempdir().unwrap();
    let url: nixbucket::cache::CacheUrl =
        format!("file://{}", tmp.path().display()).parse().unwrap();
    let cache = nixbucket::cache::Cache::open(&url).await.unwrap();
    let limits = Limits {
        connections: 2,
        header_read: Duration::from_secs(1),
    };
    let server = Arc::new(Server::new(cache, None).with_limits(limits));
    let listener = nixbucket::serve::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(nixbucket::serve::run(listener, server, async {
        let _ = stopped.await;
    }));

    let outcome = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        // Two places taken: one sends half a request header, one sends nothing at all.
        let mut half = std::net::TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        // A real request waits for a place, then is answered.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client
            .write_all(
                b"GET /nix-cache-info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        let answered = started.elapsed();
        // Both silent connections were closed by the server.
        let closed = |s: &mut std::net::TcpStream| {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).is_ok()
        };
        (answer, answered, closed(&mut half), closed(&mut silent))
    })
    .await
    .unwrap();
    let _ = stop.send(());
    running.await.unwrap();
    let (answer, answered, half_closed, silent_closed) = outcome;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("StoreDir: /nix/store"), "{answer}");
    assert!(
        answered >= Duration::from_millis(900) && answered < Duration::from_secs(10),
        "answered after {answered:?}: it should wait for a silent connection's timeout"
    );
    assert!(half_closed, "the half-sent request was not closed");
    assert!(silent_closed, "the silent connection was not closed");
}

/// Nix runs one post-build-hook. One that the user or another tool set (magic-nix-cache writes
/// its own) is never silently replaced: --push-during-build is refused, naming it, no server
/// is left running, and nix.conf keeps the other hook. Setup without the flag still works.
#[test]
fn push_during_build_refuses_to_replace_another_tool_s_post_build_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let (secret, _) = keygen(tmp.path(), "ours-1");
    let other = "/usr/local/bin/another-tools-hook";
    let conf = NixConfig::new(
        tmp.path(),
        &format!("{BASE_CONF}post-build-hook = {other}\n"),
    );
    let state = tmp.path().join("state.json");
    let setup = |push_during_build: bool| {
        let mut cmd = conf.nixbucket();
        cmd.args(["setup", "--no-restore", "--cache", &s3.cache_url()])
            .arg("--signing-key-file")
            .arg(&secret)
            .arg("--state-file")
            .arg(&state)
            .envs(s3_env(&s3));
        if push_during_build {
            cmd.arg("--push-during-build");
        }
        run(&mut cmd)
    };
    let out = setup(true);
    let err = common::assert_fails(&out);
    assert!(
        err.contains(&format!(
            "would replace the post-build-hook Nix already runs ({other})"
        )),
        "{err}"
    );
    let user_conf = std::fs::read_to_string(conf.user_conf()).unwrap_or_default();
    assert!(!user_conf.contains("post-build-hook"), "{user_conf}");
    let log = std::fs::read_to_string(tmp.path().join("nixbucket-serve.log")).unwrap_or_default();
    let servers = run(Command::new("pgrep").args([
        "-f",
        &format!(
            "serve .*{}",
            tmp.path().join("nixbucket-serve.addr").display()
        ),
    ]));
    assert!(
        stdout(&servers).trim().is_empty(),
        "a server is left: {log}"
    );
    let out = setup(false);
    assert_ok(&out);
    let _guard = SetupServe {
        state: state.clone(),
    };
}

/// Another team's cache that fails (500 on every read) behind the server: a miss in ours and
/// an error in theirs is a 404, not a 500 after which Nix would stop asking our cache too. After
/// its error budget the server asks that cache no more, and our own answers go on.
#[test]
fn a_failing_extra_cache_is_a_miss_and_is_asked_no_more_after_its_budget() {
    use common::fault_proxy::{Fault, FaultConfig, FaultProxy};
    let s3 = S3Server::start();
    s3.create_bucket("theirs");
    let proxy = FaultProxy::start(
        &s3.endpoint(),
        FaultConfig {
            share: 1.0,
            faults: vec![Fault::Error500],
            spare_bucket_checks: true,
            ..FaultConfig::mixed(0.0, 3)
        },
    );
    let theirs = s3
        .cache_url_for("theirs")
        .replace(&s3.endpoint(), &proxy.endpoint());
    let served = Served::start(&s3.cache_url(), &s3_env(&s3), &["--extra-cache", &theirs]);
    let miss = "/1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h.narinfo";
    for _ in 0..5 {
        let (status, body) = served.get(miss);
        assert_eq!(status, 404, "{body}\n{}", served.log());
    }
    let log = served.log();
    assert!(
        log.contains("the extra cache 1 failed (1 of 5), answered as a miss")
            && log.contains("it is asked no more in this job"),
        "{log}"
    );
    let asked = proxy.stats().total_requests();
    assert_eq!(served.get(miss).0, 404);
    assert_eq!(served.get("/nix-cache-info").0, 200);
    assert_eq!(
        proxy.stats().total_requests(),
        asked,
        "the failing cache was asked again after its budget"
    );
}
