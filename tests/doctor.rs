//! `nixbucket doctor`: each failure made real (a public bucket, no ListBucket, a wrong region, a
//! skewed clock, a wrong key, a daemon without credentials, an untrusted user), then the fix
//! line checked for what fixes it. The bucket tests run on moto (AWS's answers, IAM enforced
//! where it matters) behind the fault proxy where the fault is the network's; the daemon tests
//! run a real root nix-daemon with no AWS credentials, and a job as `nobody`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::fault_proxy::{Fault, FaultConfig, FaultProxy, WRONG_REGION_ANSWER};
use common::machine::Machine;
use common::moto::MotoServer;
use common::nix::{derivation, nonce};
use common::s3::S3Server;
use common::store::S3Store;
use common::{assert_ok, keygen, nixbucket, run, stderr, stdout};
use serde_json::Value;

const NIX_CACHE_INFO: &[u8] = b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";

/// The checks of a `doctor --json` run.
fn checks(out: &Output) -> Vec<Value> {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e})\nstdout:\n{}\nstderr:\n{}",
            stdout(out),
            stderr(out)
        )
    })
}

/// The check `name` of `checks`, asserted to have `status` and a fix naming each of `fix`.
#[track_caller]
fn expect<'a>(checks: &'a [Value], name: &str, status: &str, fix: &[&str]) -> &'a Value {
    let all = serde_json::to_string_pretty(checks).unwrap();
    let check = checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}:\n{all}"));
    assert_eq!(check["status"], status, "{name}:\n{all}");
    let line = check["fix"].as_str().unwrap_or_default();
    for word in fix {
        assert!(
            line.contains(word),
            "the fix of {name} does not name {word:?}:\n{all}"
        );
    }
    check
}

/// `doctor --json` of `url` with `env`, not fetching through Nix (these tests' Nix does not
/// read the bucket).
fn doctor_s3(url: &str, env: Vec<(String, String)>, extra: &[&str]) -> Output {
    run(nixbucket()
        .envs(env)
        .args(["doctor", "--json", "--no-fetch", "--cache", url])
        .args(extra))
}

#[test]
fn a_bad_cache_url_is_one_clear_error() {
    let out = run(nixbucket().args(["doctor", "--cache", "bogus://x"]));
    let err = common::assert_fails(&out);
    assert!(err.contains("invalid cache URL \"bogus://x\""), "{err}");
    assert_eq!(
        stdout(&out),
        "",
        "checks were printed for a URL that is none"
    );
}

#[test]
fn a_public_bucket_fails_and_the_fix_blocks_public_access() {
    // moto's test bucket lets anyone read its objects (see common/moto.rs).
    let moto = MotoServer::start();
    moto.admin()
        .put(moto.bucket(), "nix-cache-info", NIX_CACHE_INFO);
    let out = doctor_s3(&moto.cache_url(), moto.env(), &[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    expect(
        &found,
        "public",
        "fail",
        &["put-public-access-block", moto.bucket()],
    );
    // The rest of the bucket works, and says so.
    for ok in ["credentials", "region", "clock", "list", "read", "write"] {
        expect(&found, ok, "ok", &[]);
    }
    // The probe object went again.
    let left = moto.admin().keys(moto.bucket(), "nixbucket-doctor");
    assert!(left.is_empty(), "{left:?}");
    // Read as a person would: the failure's line, then its fix under it.
    let text = stdout(&run(nixbucket().envs(moto.env()).args([
        "doctor",
        "--no-fetch",
        "--cache",
        &moto.cache_url(),
    ])));
    let at = text
        .find("FAIL  public: an anonymous GET")
        .unwrap_or_else(|| panic!("{text}"));
    let next = text[at..].lines().nth(1).unwrap_or_default();
    assert!(next.starts_with("      fix: block public access"), "{text}");
    // A cache meant to be public passes that check.
    let out = doctor_s3(&moto.cache_url(), moto.env(), &["--public"]);
    expect(&checks(&out), "public", "ok", &[]);
    // No secret is printed.
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!printed.contains(moto.secret_key()), "{printed}");
}

#[test]
fn credentials_without_list_bucket_fail_and_the_fix_allows_it() {
    const NO_LIST: &str = "nixbucket-no-list";
    let actions: &[&str] = &[
        "s3:GetObject",
        "s3:HeadObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:HeadBucket",
    ];
    let moto = MotoServer::start_with_auth_and(&[(NO_LIST, actions)]);
    moto.admin()
        .put(moto.bucket(), "nix-cache-info", NIX_CACHE_INFO);
    let (key, secret) = moto.keys_of(NO_LIST);
    let mut env = moto.env();
    for (name, value) in &mut env {
        match name.as_str() {
            "AWS_ACCESS_KEY_ID" => *value = key.to_owned(),
            "AWS_SECRET_ACCESS_KEY" => *value = secret.to_owned(),
            _ => {}
        }
    }
    let out = doctor_s3(&moto.cache_url(), env, &[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    let bucket = format!("arn:aws:s3:::{}", moto.bucket());
    let list = expect(&found, "list", "fail", &["s3:ListBucket", &bucket]);
    assert!(list["detail"].as_str().unwrap().contains("403"), "{list}");
    expect(&found, "read", "ok", &[]);
    // moto refuses anonymous requests here: the cache is private.
    expect(&found, "public", "ok", &[]);
    // The same bucket with keys that may list: no such failure.
    let out = doctor_s3(&moto.cache_url(), moto.env(), &[]);
    expect(&checks(&out), "list", "ok", &[]);
}

#[test]
fn no_credentials_fail_once_and_the_fix_says_how_to_give_them() {
    let moto = MotoServer::start_with_auth();
    let home = tempfile::tempdir().unwrap();
    // No keys, no ~/.aws, no instance role to wait for.
    let env = vec![
        ("HOME".to_owned(), home.path().display().to_string()),
        ("AWS_EC2_METADATA_DISABLED".to_owned(), "true".to_owned()),
    ];
    let out = doctor_s3(&moto.cache_url(), env, &[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    expect(
        &found,
        "credentials",
        "fail",
        &["aws configure", "AWS_PROFILE"],
    );
    // One failure, not one per request that could not be signed.
    expect(&found, "permissions", "skipped", &[]);
    assert!(!found.iter().any(|c| c["name"] == "list"), "{found:?}");
    // Nobody's credentials are needed to see that anonymous reads are refused.
    expect(&found, "public", "ok", &[]);
}

#[test]
fn a_wrong_region_fails_and_the_fix_names_the_bucket_s_region() {
    let moto = MotoServer::start();
    let proxy = FaultProxy::start(
        &moto.endpoint(),
        FaultConfig {
            share: 1.0,
            faults: vec![Fault::WrongRegion],
            ..FaultConfig::mixed(0.0, 1)
        },
    );
    let url = moto.cache_url_via(&proxy.endpoint(), moto.bucket());
    let out = doctor_s3(&url, moto.env(), &[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let fix = format!("region={WRONG_REGION_ANSWER}");
    let found = checks(&out);
    expect(&found, "region", "fail", &[&fix, moto.bucket()]);
    // A redirect says nothing of permissions: no fix asks for a policy the credentials have.
    expect(&found, "permissions", "skipped", &[]);
    assert!(
        !found
            .iter()
            .any(|c| c["fix"].as_str().is_some_and(|f| f.contains("allow s3:"))),
        "{found:?}"
    );
}

#[test]
fn a_skewed_clock_fails_and_the_fix_sets_the_clock() {
    let moto = MotoServer::start();
    let proxy = FaultProxy::start(
        &moto.endpoint(),
        FaultConfig {
            share: 1.0,
            faults: vec![Fault::SkewedClock],
            ..FaultConfig::mixed(0.0, 1)
        },
    );
    let url = moto.cache_url_via(&proxy.endpoint(), moto.bucket());
    let out = doctor_s3(&url, moto.env(), &[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    let clock = expect(&found, "clock", "fail", &["timedatectl set-ntp"]);
    assert!(
        clock["detail"].as_str().unwrap().contains("ahead of"),
        "{clock}"
    );
    // Only the clock is off: the bucket answers as it should.
    expect(&found, "list", "ok", &[]);
}

/// A path of its own built and pushed to `url` (as root, outside any daemon) signed by
/// `secret`, then removed from the store: the cache has it, the store does not.
fn pushed_and_gone(dir: &Path, url: &str, secret: &Path, env: &[(String, String)]) -> String {
    let tag = nonce();
    let path = common::nix::build(
        dir,
        &derivation(&format!("doctor-{tag}"), "echo doctor > $out"),
    );
    assert_ok(&run(nixbucket()
        .envs(env.iter().cloned())
        .args(["push", "--cache", url, "--signing-key-file"])
        .arg(secret)
        .arg(&path)));
    assert_ok(&run(common::nix::nix_command("nix-store")
        .arg("--delete")
        .arg(&path)));
    path
}

#[test]
fn a_wrong_public_key_fails_and_the_fix_names_the_signing_key_s() {
    let moto = MotoServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let (secret, public) = keygen(&ours, "cache-1");
    // A key of the same name, not the one push signs with: the classic paste of the wrong key.
    let (_, wrong) = keygen(&other, "cache-1");
    pushed_and_gone(tmp.path(), &moto.cache_url(), &secret, &moto.env());
    let secret_arg = secret.to_str().unwrap();
    let out = doctor_s3(
        &moto.cache_url(),
        moto.env(),
        &["--public-key", &wrong, "--signing-key-file", secret_arg],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    let keys = expect(&found, "keys", "fail", &[&public]);
    assert!(
        keys["detail"]
            .as_str()
            .unwrap()
            .contains("the public key is wrong"),
        "{keys}"
    );
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    let secret_text = std::fs::read_to_string(&secret).unwrap();
    let secret_b64 = secret_text.trim().split_once(':').unwrap().1;
    assert!(!printed.contains(secret_b64), "the signing key was printed");
    let out = doctor_s3(&moto.cache_url(), moto.env(), &["--public-key", &public]);
    expect(&checks(&out), "keys", "ok", &[]);
}

/// A `nixbucket serve` of a cache, started by the test: Nix keeps its narinfo cache for HTTP
/// substituters (not for `file://`). Stopped on drop.
struct Served {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(cache_url: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("addr");
        let child = nixbucket()
            .args(["serve", "--cache", cache_url, "--ready-file"])
            .arg(&ready)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nixbucket serve");
        let mut served = Served {
            child,
            url: String::new(),
            _dir: dir,
        };
        for _ in 0..1200 {
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("nixbucket serve exited: {status}");
            }
            if let Ok(url) = std::fs::read_to_string(&ready) {
                served.url = url.trim().to_owned();
                return served;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("nixbucket serve did not start");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A build ran before the cache had its output, so Nix remembers the miss; the path is pushed
/// since. The doctor finds the miss that hides the hit, and the fetch fails as the build would;
/// after the fix line's command, both pass.
#[test]
fn a_miss_nix_remembers_hides_a_hit_and_the_fix_makes_nix_forget_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path(), "cache-1");
    let url = format!("file://{}", tmp.path().join("cache").display());
    assert_ok(&run(nixbucket()
        .args(["setup", "--no-configure", "--cache", &url, "--state-file"])
        .arg(tmp.path().join("state.json"))));
    let served = Served::start(&url);
    let conf = common::nix::NixConfig::new(
        tmp.path(),
        &format!(
            "sandbox = false\nexperimental-features = nix-command\nbuild-users-group =\n\
             substituters = {}\ntrusted-public-keys = {public}\n",
            served.url
        ),
    );
    let expr = tmp.path().join("stale.nix");
    let tag = nonce();
    std::fs::write(
        &expr,
        derivation(&format!("stale-{tag}"), "echo stale > $out"),
    )
    .unwrap();
    // Nix asks the (empty) cache before it builds, and remembers the answer.
    let built = run(conf.nix("nix-build").arg("--no-out-link").arg(&expr));
    assert_ok(&built);
    let path = stdout(&built).trim().to_owned();
    assert_ok(&run(conf
        .nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg(&path)));
    assert_ok(&run(conf.nix("nix-store").arg("--delete").arg(&path)));

    let doctor = || run(conf.nixbucket().args(["doctor", "--json", "--cache", &url]));
    let out = doctor();
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    let stale = expect(
        &found,
        "stale-misses",
        "warn",
        &["DELETE FROM NARs WHERE present = 0"],
    );
    assert!(
        stale["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 of the 1 misses"),
        "{stale}"
    );
    expect(&found, "fetch", "fail", &[]);

    // The fix line's command, as the user would run it.
    let fix = stale["fix"].as_str().unwrap();
    let command = fix.split('`').nth(1).unwrap();
    assert_ok(&run(Command::new("sh").args(["-c", command])));
    let out = doctor();
    assert_ok(&out);
    let found = checks(&out);
    expect(&found, "stale-misses", "ok", &[]);
    expect(&found, "fetch", "ok", &[]);
}

/// The doctor's commands on a [`Machine`].
impl Machine {
    /// `nixbucket doctor --json ARGS` through the daemon, as `user` (`root` or `nobody`), with
    /// only `env` besides what Nix needs.
    fn doctor(&self, user: &str, env: &[(String, String)], args: &[&str]) -> Output {
        let args: Vec<&str> = ["doctor", "--json"].iter().chain(args).copied().collect();
        self.nixbucket(user, env, &args)
    }

    /// `nixbucket ARGS` through the daemon, as `user`, with only `env` besides what Nix needs.
    fn nixbucket(&self, user: &str, env: &[(String, String)], args: &[&str]) -> Output {
        run(self
            .command_as(user, &self.binary)
            .envs(env.iter().cloned())
            .args(args))
    }
}

const BASE_CONF: &str = common::NIX_CONFIG;

/// The daemon fetches from the bucket itself (nix.conf lists the s3:// URL) and its
/// environment has no AWS credentials, as under the standard installers; the job has some.
#[test]
fn through_a_daemon_without_credentials_on_moto_the_fetcher_fails_and_the_fix_names_the_server() {
    let moto = MotoServer::start_with_auth();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path(), "cache-1");
    let url = moto.cache_url();
    let machine = Machine::new(&format!(
        "{BASE_CONF}trusted-users = root\nextra-substituters = {url}\n\
         extra-trusted-public-keys = {public}\n"
    ));
    pushed_and_gone(tmp.path(), &url, &secret, &moto.env());
    // As root, who may read the daemon's environment.
    let out = machine.doctor(
        "root",
        &moto.env(),
        &["--cache", &url, "--public-key", &public],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    expect(&found, "substituter", "ok", &[]);
    let setup = format!("--public-key {public}` (without --no-serve)");
    let fetcher = expect(
        &found,
        "fetcher",
        "fail",
        &["`nixbucket setup --cache s3://", &setup],
    );
    assert!(
        fetcher["detail"]
            .as_str()
            .unwrap()
            .contains("no AWS credentials"),
        "{fetcher}"
    );
    // The daemon really cannot fetch the path the cache has.
    expect(&found, "fetch", "fail", &[]);
    // The job's own credentials reach the bucket.
    expect(&found, "list", "ok", &[]);
}

/// A job as `nobody`, whose own nix.conf lists a cache the daemon was not told of.
#[test]
fn through_a_daemon_an_untrusted_user_fails_and_the_fix_trusts_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path(), "cache-1");
    let machine = Machine::new(BASE_CONF);
    let cache = machine.tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    pushed_and_gone(tmp.path(), &url, &secret, &[]);
    assert_ok(&run(Command::new("chmod").args(["-R", "a+rX"]).arg(&cache)));
    let user_conf = machine.home.join("nix.conf");
    std::fs::write(
        &user_conf,
        format!("extra-substituters = {url}\nextra-trusted-public-keys = {public}\n"),
    )
    .unwrap();
    let out = machine.doctor("nobody", &[], &["--cache", &url]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    let nix = expect(&found, "nix", "ok", &[]);
    assert!(
        nix["detail"]
            .as_str()
            .unwrap()
            .contains("does not trust user \"nobody\""),
        "{nix}"
    );
    let conf = machine.conf_path().display().to_string();
    expect(
        &found,
        "substituter",
        "fail",
        &["trusted-users = nobody", &conf, "restart the nix-daemon"],
    );
    // The daemon ignores the key of the user's nix.conf too: it trusts only its own.
    expect(&found, "keys", "fail", &["extra-trusted-public-keys"]);
    expect(&found, "fetch", "fail", &[]);
}

/// The same job, trusted: every Nix check passes and the daemon fetches a path of the cache;
/// then the daemon's nix.conf changes under it, and the doctor asks for a restart.
#[test]
fn through_a_daemon_a_trusted_user_fetches_and_a_changed_conf_wants_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path(), "cache-1");
    let conf = format!("{BASE_CONF}trusted-users = root nobody\n");
    let machine = Machine::new(&conf);
    let cache = machine.tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    let path = pushed_and_gone(tmp.path(), &url, &secret, &[]);
    assert_ok(&run(Command::new("chmod").args(["-R", "a+rX"]).arg(&cache)));
    std::fs::write(
        machine.home.join("nix.conf"),
        format!("extra-substituters = {url}\nextra-trusted-public-keys = {public}\n"),
    )
    .unwrap();
    let out = machine.doctor("nobody", &[], &["--cache", &url]);
    assert_ok(&out);
    let found = checks(&out);
    for ok in ["nix", "substituter", "daemon-restart", "fetcher", "keys"] {
        expect(&found, ok, "ok", &[]);
    }
    let fetch = expect(&found, "fetch", "ok", &[]);
    assert!(fetch["detail"].as_str().unwrap().contains(&path), "{fetch}");
    // The fetched path was removed again.
    assert!(!Path::new(&path).exists(), "{path} is still in the store");

    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(machine.conf_path(), format!("{conf}# changed\n")).unwrap();
    let out = machine.doctor("nobody", &[], &["--cache", &url, "--no-fetch"]);
    expect(
        &checks(&out),
        "daemon-restart",
        "warn",
        &["systemctl restart nix-daemon"],
    );
}

/// The shape setup makes for a daemon: Nix reads the bucket through a nixbucket serve of the
/// job, which has the credentials. The doctor sees who fetches and the daemon fetches a path;
/// once the server has gone, the doctor says so and names setup as the fix.
#[test]
fn through_a_daemon_setup_s_server_fetches_and_a_stopped_one_fails() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path(), "cache-1");
    let machine = Machine::new(&format!("{BASE_CONF}trusted-users = root nobody\n"));
    let url = s3.cache_url();
    let path = pushed_and_gone(tmp.path(), &url, &secret, &s3.env());
    let state = machine.home.join("state.json").display().to_string();
    let setup = machine.nixbucket(
        "nobody",
        &s3.env(),
        &[
            "setup",
            "--cache",
            &url,
            "--public-key",
            &public,
            "--no-restore",
            "--state-file",
            &state,
        ],
    );
    assert_ok(&setup);
    let args = ["--cache", &url, "--state-file", &state];
    let out = machine.doctor("nobody", &s3.env(), &args);
    let found = checks(&out);
    expect(&found, "substituter", "ok", &[]);
    let fetcher = expect(&found, "fetcher", "ok", &[]);
    assert!(
        fetcher["detail"]
            .as_str()
            .unwrap()
            .contains("a nixbucket serve on 127.0.0.1:"),
        "{fetcher}"
    );
    let fetch = expect(&found, "fetch", "ok", &[]);
    let detail = fetch["detail"].as_str().unwrap();
    assert!(
        detail.contains(&path) && detail.contains("from http://127.0.0.1:"),
        "{fetch}"
    );

    assert_ok(&machine.nixbucket("nobody", &[], &["finish", "--state-file", &state]));
    let out = machine.doctor("nobody", &s3.env(), &args);
    assert!(!out.status.success(), "{}", stdout(&out));
    let found = checks(&out);
    let fetcher = expect(&found, "fetcher", "fail", &["nixbucket setup --cache"]);
    assert!(
        fetcher["detail"]
            .as_str()
            .unwrap()
            .contains("nothing answers there"),
        "{fetcher}"
    );
}
