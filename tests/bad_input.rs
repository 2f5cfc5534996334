//! Hostile and broken input against a real S3 server: bad keys, bad URLs, refused credentials,
//! a missing bucket, garbage in the bucket, a corrupt store path. Each must end in one clear
//! message and a non-zero exit, with nothing half-written visible in the bucket.

mod common;

use common::hash_part;

use std::path::Path;
use std::process::{Command, Output};

use common::nix::{build_closure, copy_into_fresh_store, nix_command, nonce};
use common::s3::S3Server;
use common::store::S3Store;
use common::{
    assert_ok, assert_refused_unsigned, keygen, nixbucket, register_secret, run, stderr, stdout,
};

fn push(server: &S3Server, url: &str, key: Option<&Path>, paths: &[&str]) -> Command {
    let mut cmd = nixbucket();
    cmd.envs(server.env())
        .args(["push", "--progress", "none", "--cache", url]);
    if let Some(key) = key {
        cmd.arg("--signing-key-file").arg(key);
    }
    cmd.args(paths);
    cmd
}

/// A failure with exactly one `error:` line and no panic; returns stderr.
#[track_caller]
fn one_error(out: &Output) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected a failure\nstdout:\n{}\nstderr:\n{err}",
        stdout(out)
    );
    assert!(!err.contains("panicked"), "{err}");
    let errors = err.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 1, "one error line expected:\n{err}");
    err
}

/// Objects a reader could see: everything in the bucket directory.
fn objects(server: &S3Server) -> Vec<String> {
    common::list_files(&server.root().join(server.bucket()))
}

#[track_caller]
fn assert_nothing_pushed(server: &S3Server) {
    let objs = objects(server);
    assert!(
        objs.iter()
            .all(|o| !o.ends_with(".narinfo") && !o.starts_with("nar/")),
        "{objs:?}"
    );
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}

#[test]
fn malformed_truncated_and_wrong_keys_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "test-cache-1");
    let real = std::fs::read_to_string(&secret).unwrap();
    let (name, b64) = real.trim().split_once(':').unwrap();
    let server = S3Server::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"not a key at all".to_vec()),
        ("empty", Vec::new()),
        (
            "truncated",
            format!("{name}:{}", &b64[..b64.len() / 2]).into_bytes(),
        ),
        ("no name", b64.as_bytes().to_vec()),
        ("the public key", public.clone().into_bytes()),
        ("not UTF-8", vec![0xff, 0xfe, b':', 0x80]),
    ];
    for (case, bytes) in &cases {
        let file = tmp.path().join(format!("{}.sk", nonce()));
        std::fs::write(&file, bytes).unwrap();
        let out = run(&mut push(
            &server,
            &server.cache_url(),
            Some(&file),
            &[&app],
        ));
        let err = one_error(&out);
        assert!(
            err.contains("is not a Nix secret key")
                || err.contains("could not read the signing key"),
            "{case}: {err}"
        );
        assert!(err.contains(&file.display().to_string()), "{case}: {err}");
        assert!(!err.contains(&b64[..16]), "{case}: key text leaked: {err}");
        assert_nothing_pushed(&server);
    }
    // The same through the environment.
    let out = run(push(&server, &server.cache_url(), None, &[&app])
        .env("NIXBUCKET_SIGNING_KEY", format!("{name}:{}", &b64[..20])));
    let err = one_error(&out);
    assert!(
        err.contains("$NIXBUCKET_SIGNING_KEY does not hold a Nix secret key"),
        "{err}"
    );
    assert!(!err.contains(&b64[..16]), "{err}");
    assert_nothing_pushed(&server);
    // A valid key that readers do not trust: the push works, verify and Nix say why not.
    let (other, _) = keygen(tmp.path(), "other-cache-1");
    assert_ok(&run(&mut push(
        &server,
        &server.cache_url(),
        Some(&other),
        &[&app],
    )));
    let out = run(nixbucket().envs(server.env()).args([
        "verify",
        "--cache",
        &server.cache_url(),
        "--public-key",
        &public,
    ]));
    let err = one_error(&out);
    assert!(err.contains("is not whole"), "{err}");
    assert!(
        stdout(&out).contains(&format!("{app}: no valid signature by a trusted key")),
        "{}",
        stdout(&out)
    );
    let refused = copy_into_fresh_store(
        &server.anon_http_url(),
        &public,
        &tmp.path().join("f"),
        &app,
    );
    assert_refused_unsigned(&refused);
    // A malformed public key for verify.
    let out = run(nixbucket().envs(server.env()).args([
        "verify",
        "--cache",
        &server.cache_url(),
        "--public-key",
        "test-cache-1:AAAA",
    ]));
    assert!(one_error(&out).contains("is not a Nix public key"));
}

#[test]
fn a_key_file_others_can_read_is_warned_about_but_used() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "test-cache-1");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let server = S3Server::start();
    let out = run(&mut push(
        &server,
        &server.cache_url(),
        Some(&secret),
        &[&app],
    ));
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "warning: the signing key file {} can be read by other users (mode 640)",
            secret.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    assert_ok(&copy_into_fresh_store(
        &server.anon_http_url(),
        &public,
        &tmp.path().join("fresh"),
        &app,
    ));
}

/// Decision: a narinfo that does not parse (or describes another path) does not count as
/// present. `verify` reports it; `push` warns and pushes the path again, overwriting it, so
/// the next push repairs the cache instead of leaving the path broken for every reader.
#[test]
fn a_garbage_narinfo_is_reported_by_verify_and_replaced_by_push() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, _] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "test-cache-1");
    let server = S3Server::start();
    assert_ok(&run(&mut push(
        &server,
        &server.cache_url(),
        Some(&secret),
        &[&app],
    )));
    let key = format!("{}.narinfo", hash_part(&lib));
    std::fs::write(
        server.object_path(&key),
        b"StorePath: /nix/store/garbage\n\x00\xff",
    )
    .unwrap();

    let verify = || {
        run(nixbucket().envs(server.env()).args([
            "verify",
            "--cache",
            &server.cache_url(),
            "--public-key",
            &public,
        ]))
    };
    let out = verify();
    let err = one_error(&out);
    assert!(err.contains("1 problems"), "{err}");
    assert!(
        stdout(&out).contains(&format!("{key}: not a valid narinfo")),
        "{}",
        stdout(&out)
    );

    let out = run(&mut push(
        &server,
        &server.cache_url(),
        Some(&secret),
        &[&app],
    ));
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("warning: {key} is not a valid narinfo"))
            && err.contains(&format!("pushing {lib} again")),
        "{err}"
    );
    assert!(err.contains("pushed 1 path "), "{err}");
    assert_ok(&verify());
    assert_ok(&copy_into_fresh_store(
        &server.anon_http_url(),
        &public,
        &tmp.path().join("fresh"),
        &app,
    ));
}

#[test]
fn a_cache_url_with_an_unknown_parameter_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "test-cache-1");
    let server = S3Server::start();
    let url = format!(
        "s3://{}?endpoint={}&regoin=us-east-1",
        server.bucket(),
        server.endpoint()
    );
    let out = run(&mut push(&server, &url, Some(&secret), &[&app]));
    let err = one_error(&out);
    assert!(
        err.contains("unknown parameter 'regoin' (did you mean 'region'?)"),
        "{err}"
    );
    assert_nothing_pushed(&server);
    let out = run(nixbucket().envs(server.env()).args([
        "verify",
        "--cache",
        &url,
        "--public-key",
        &public,
    ]));
    assert!(one_error(&out).contains("unknown parameter 'regoin'"));
}

#[test]
fn refused_credentials_are_named_without_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let server = S3Server::start();
    let wrong = format!("wrong-secret-{}", nonce());
    register_secret(&wrong);
    let out = run(push(&server, &server.cache_url(), Some(&secret), &[&app])
        .env("AWS_SECRET_ACCESS_KEY", &wrong));
    let err = one_error(&out);
    assert!(
        err.contains("refused the credentials from environment variables")
            && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    assert!(
        !err.contains(&wrong) && !err.contains(server.secret_key()),
        "{err}"
    );
    assert_nothing_pushed(&server);
}

#[test]
fn a_missing_bucket_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let server = S3Server::start();
    let out = run(&mut push(
        &server,
        &server.cache_url_for("no-such-bucket"),
        Some(&secret),
        &[&app],
    ));
    let err = one_error(&out);
    assert!(
        err.contains(&format!(
            "bucket 'no-such-bucket' does not exist at {}",
            server.endpoint()
        )),
        "{err}"
    );
    assert!(!server.root().join("no-such-bucket").exists());
    assert_nothing_pushed(&server);
}

#[test]
fn a_corrupt_store_path_is_reported_and_nothing_of_it_lands_on_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "test-cache-1");
    let server = S3Server::start();
    let victim = format!("{lib}/lib/big");
    run(Command::new("chmod").args(["u+w", &lib, &format!("{lib}/lib"), &victim]));
    std::fs::write(&victim, b"tampered").unwrap();

    let out = run(&mut push(
        &server,
        &server.cache_url(),
        Some(&secret),
        &[&app],
    ));
    let _ = run(nix_command("nix-store").args(["--repair-path", &lib]));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    // One message about the corrupt path (app, which needs it, is only counted), then the count.
    assert_eq!(err.matches("corrupt").count(), 1, "{err}");
    assert!(
        err.contains(&format!("error: {lib}: {lib} does not match")),
        "{err}"
    );
    assert!(
        err.lines()
            .last()
            .unwrap_or("")
            .starts_with("error: 2 of 3 paths could not be pushed"),
        "{err}"
    );
    let objs = objects(&server);
    assert!(
        !objs.contains(&format!("{}.narinfo", hash_part(&lib))),
        "{objs:?}"
    );
    assert!(
        !objs.contains(&format!("{}.narinfo", hash_part(&app))),
        "{objs:?}"
    );
    assert!(
        objs.contains(&format!("{}.narinfo", hash_part(&data))),
        "{objs:?}"
    );
    assert_eq!(
        objs.iter().filter(|o| o.starts_with("nar/")).count(),
        2,
        "{objs:?}"
    );
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
    // What did land is whole.
    assert_ok(&common::verify_s3(&server, &public, true));
}

/// The suite's secrets check (scripts/check-secrets.sh, run by scripts/test.sh) must fail on a
/// leak and on an empty log, and must not print the secret it found.
#[test]
fn the_secrets_check_finds_a_planted_leak_and_refuses_an_empty_log() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = |dir: &Path| run(Command::new(repo.join("scripts/check-secrets.sh")).arg(dir));
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("planted{}", nonce());
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/1.txt"), format!("\n{secret}\n")).unwrap();

    let out = check(dir.path());
    assert!(
        !out.status.success(),
        "an empty log must fail: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no outputs recorded"),
        "{}",
        stderr(&out)
    );

    std::fs::write(dir.path().join("out/1.log"), "all fine\n").unwrap();
    assert_ok(&check(dir.path()));

    std::fs::write(
        dir.path().join("nextest.log"),
        format!("a\nb key={secret} c\n"),
    )
    .unwrap();
    let out = check(dir.path());
    assert!(!out.status.success(), "a leak must fail");
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert!(shown.contains("nextest.log:2"), "{shown}");
    assert!(
        !shown.contains(&secret),
        "the check printed the secret: {shown}"
    );
}

/// `nixbucket setup` of `url` with a Nix configuration of its own under `dir` (the machine's is
/// not touched), the key in `secret`, and the environment `env` alone for AWS.
fn setup_with(dir: &Path, url: &str, secret: &Path, env: &[(String, String)]) -> Output {
    let conf = common::nix::NixConfig::new(dir, common::NIX_CONFIG);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    run(conf
        .nixbucket()
        .env("HOME", &home)
        .envs(env.iter().cloned())
        .args(["setup", "--cache", url, "--signing-key-file"])
        .arg(secret)
        .arg("--state-file")
        .arg(dir.join("state.json")))
}

#[test]
fn setup_against_a_missing_bucket_fails_naming_bucket_endpoint_region_and_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let server = S3Server::start();
    let url = server.cache_url_for("no-such-bucket");
    let out = setup_with(tmp.path(), &url, &secret, &server.env());
    let err = one_error(&out);
    for part in [
        "bucket 'no-such-bucket' does not exist".to_owned(),
        server.endpoint(),
        "region ".to_owned(),
        "credentials from environment variables AWS_ACCESS_KEY_ID".to_owned(),
    ] {
        assert!(err.contains(&part), "{part:?} not named:\n{err}");
    }
    assert!(!err.contains(server.secret_key()), "{err}");
    assert!(
        !tmp.path().join("state.json").exists(),
        "setup recorded a store for a cache that cannot work"
    );
}

#[test]
fn setup_with_credentials_the_store_refuses_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let server = S3Server::start();
    let wrong = "wrong-secret-key-0123456789";
    register_secret(wrong);
    let mut env = server.env();
    env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY".into(), wrong.into()));
    let out = setup_with(tmp.path(), &server.cache_url(), &secret, &env);
    let err = one_error(&out);
    assert!(
        err.contains("refused the credentials") && err.contains(server.bucket()),
        "{err}"
    );
    assert!(!err.contains(wrong), "{err}");
}

#[test]
fn setup_without_any_credentials_says_the_job_gets_no_cache_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let server = S3Server::start();
    // A fork's pull request: no keys, no profile, no role; IMDS off so nothing waits on it.
    let nowhere = tmp.path().join("no-such-aws-file").display().to_string();
    let env: Vec<(String, String)> = [
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", nowhere.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", nowhere.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let out = setup_with(tmp.path(), &server.cache_url(), &secret, &env);
    assert_ok(&out);
    let log = stderr(&out);
    assert!(
        log.contains("no AWS credentials") && log.contains("This job gets no cache"),
        "{log}"
    );
    let user_conf = tmp.path().join("conf/user/nix.conf");
    let conf = std::fs::read_to_string(&user_conf).unwrap_or_default();
    assert!(
        !conf.contains("extra-substituters"),
        "Nix was pointed at a cache it cannot read:\n{conf}"
    );
    assert!(
        tmp.path().join("state.json").is_file(),
        "the store was not recorded"
    );
}

/// `NIXBUCKET_NO_SERVE=false` in a job's environment does not stand against `--serve`; `true`
/// does, in one clear error.
#[test]
fn no_serve_from_the_environment_conflicts_with_serve_only_when_true() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = keygen(tmp.path(), "test-cache-1");
    let setup = |no_serve: &str| {
        run(nixbucket()
            .env("NIXBUCKET_NO_SERVE", no_serve)
            .args(["setup", "--no-configure", "--serve", "--cache"])
            .arg(format!("file://{}", tmp.path().join("cache").display()))
            .args(["--public-key", &public, "--state-file"])
            .arg(tmp.path().join("state.json")))
    };
    assert_ok(&setup("false"));
    let err = one_error(&setup("true"));
    assert!(
        err.contains("--no-serve (or $NIXBUCKET_NO_SERVE) cannot go with --serve"),
        "{err}"
    );
}
