//! `nixbucket push` to an S3 bucket (the real s3s-fs server on loopback), judged by the real Nix
//! reading the bucket over anonymous HTTP, as a public or proxied cache would be read.

mod common;

use common::nix::{build, build_closure, copy_into_fresh_store, derivation, nonce};
use common::s3::S3Server;
use common::store::S3Store;
use common::{
    assert_fails, assert_ok, assert_refused_unsigned, keygen, nixbucket, run, stderr, stdout,
};

fn push_cmd(s3: &S3Server) -> std::process::Command {
    let mut cmd = nixbucket();
    cmd.envs(s3.env());
    cmd
}

#[test]
fn a_closure_pushed_to_s3_is_substituted_by_nix_and_verifies_deeply() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "s3-cache-1");
    let url = s3.cache_url();

    let out = run(push_cmd(&s3)
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    assert_ok(&out);
    assert!(stderr(&out).contains("pushed 3 paths"), "{}", stderr(&out));
    for path in [&app, &lib, &data] {
        let key = format!("{}.narinfo", &path[11..43]);
        assert!(s3.object_path(&key).exists(), "no {key} in the bucket");
    }
    assert!(
        s3.pending_uploads().is_empty(),
        "multipart uploads left open: {:?}",
        s3.pending_uploads()
    );

    let verify = common::verify_s3(&s3, &public, true);
    assert_ok(&verify);
    assert!(
        stderr(&verify).contains("checked 3 narinfos and their NARs: 0 problems"),
        "{}",
        stderr(&verify)
    );

    assert_ok(&copy_into_fresh_store(
        &s3.anon_http_url(),
        &public,
        &tmp.path().join("fresh"),
        &app,
    ));
    let (_, other) = keygen(tmp.path(), "other-1");
    let refused = copy_into_fresh_store(
        &s3.anon_http_url(),
        &other,
        &tmp.path().join("fresh2"),
        &app,
    );
    assert_refused_unsigned(&refused);

    let again = run(push_cmd(&s3)
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    assert_ok(&again);
    assert!(
        stderr(&again).contains("pushed 0 paths")
            && stderr(&again).contains("3 already in the cache"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_large_path_goes_up_in_parts_and_nix_accepts_it() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    // 40 MiB of poorly compressible bytes: several 8 MiB parts even after zstd.
    let big = build(
        tmp.path(),
        &derivation(
            &format!("big-{}", nonce()),
            "mkdir $out; head -c 41943040 /dev/urandom > $out/blob",
        ),
    );
    let (secret, public) = keygen(tmp.path(), "s3-cache-1");
    let out = run(push_cmd(&s3)
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(&secret)
        .arg(&big));
    assert_ok(&out);
    assert!(s3.pending_uploads().is_empty());
    let nar_key = std::fs::read_dir(s3.object_path("nar"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let info = s3
        .internal_info(&format!("nar/{}", nar_key.to_string_lossy()))
        .unwrap_or_default();
    assert!(
        info.contains("-5\"") || info.contains("-6\""),
        "expected a 5- or 6-part upload, got {info}"
    );
    assert_ok(&copy_into_fresh_store(
        &s3.anon_http_url(),
        &public,
        &tmp.path().join("fresh"),
        &big,
    ));
}

#[test]
fn a_missing_bucket_and_refused_credentials_are_named_and_nothing_is_written() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "s3-cache-1");

    let out = run(push_cmd(&s3)
        .args([
            "push",
            "--cache",
            &s3.cache_url_for("no-such-bucket"),
            "--signing-key-file",
        ])
        .arg(&secret)
        .arg(&app));
    let err = assert_fails(&out);
    assert!(
        err.contains("bucket 'no-such-bucket' does not exist"),
        "{err}"
    );

    let out = run(push_cmd(&s3)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    let err = assert_fails(&out);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(
        err.contains("AWS_ACCESS_KEY_ID"),
        "the credential source should be named: {err}"
    );
    assert!(
        !err.contains("wrong-secret-value-123") && !stdout(&out).contains("wrong-secret-value-123")
    );
    assert!(
        !s3.object_path("nix-cache-info").exists(),
        "something was written"
    );
}

/// Two jobs push the same path at once: the one whose narinfo lands second keeps the first
/// one's (a conditional write), so a reader never sees the narinfo swap under it. Here the
/// other job's push, with another compression, lands between this push's plan and its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narinfo_another_job_wrote_since_the_plan_is_kept() {
    use nixbucket::cache::{Cache, CacheUrl, OpenOptions};
    use nixbucket::nix::{SecretKey, StorePath};
    use nixbucket::push::{self, PushOptions};
    let server = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path(), "race-1");
    let tag = nonce();
    let path = build(
        tmp.path(),
        &derivation(&format!("raced-{tag}"), &format!("echo {tag} > $out")),
    );
    let url: CacheUrl = server.cache_url().parse().unwrap();
    let opts = OpenOptions::default().static_credentials(server.access_key(), server.secret_key());
    let cache = Cache::open_with(&url, opts).await.unwrap();
    let sp = StorePath::from_absolute(&path).unwrap();
    let infos = nixbucket::store::query_path_info(std::slice::from_ref(&sp), false).unwrap();
    let plan = push::plan(&cache, infos).await.unwrap();
    assert_eq!(plan.missing.len(), 1);

    let other = run(nixbucket()
        .envs(server.env())
        .args([
            "push",
            "--compression",
            "none",
            "--cache",
            &server.cache_url(),
        ])
        .arg("--signing-key-file")
        .arg(&secret)
        .arg(&path));
    assert_ok(&other);
    let key = push::narinfo_key(&sp);
    let theirs = cache.get(&key).await.unwrap().unwrap();

    let signing_key = SecretKey::parse(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    let opts = PushOptions {
        compression: nixbucket::nix::Compression::Zstd,
        level: None,
        jobs: 2,
        signing_key: Some(std::sync::Arc::new(signing_key)),
        progress: push::progress::ProgressMode::None,
        cancel: Default::default(),
    };
    let report = push::execute(&cache, plan, &opts).await.unwrap();
    assert_eq!(report.pushed.len(), 1, "{:?}", report.failed);
    assert_eq!(cache.get(&key).await.unwrap().unwrap(), theirs);
    let text = String::from_utf8(theirs.to_vec()).unwrap();
    assert!(text.contains("Compression: none"), "{text}");
    assert_ok(&common::verify_s3(&server, &public, false));
}

/// Two jobs push one path at once with different compression levels, so the same NAR name
/// holds different bytes from each. The second job's NAR upload is held until the first job
/// has pushed everything; then it must leave the first NAR in place (a conditional commit)
/// and keep the first narinfo, which describes that NAR. Otherwise the cache would hold a
/// narinfo whose FileSize and FileHash describe bytes that are gone.
#[test]
fn a_nar_another_push_landed_first_stays_and_the_narinfo_describes_it() {
    use common::fault_proxy::{Fault, FaultConfig, FaultProxy};
    use std::time::{Duration, Instant};
    let server = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path(), "levels-1");
    let tag = nonce();
    let path = build(
        tmp.path(),
        &derivation(
            &format!("levels-{tag}"),
            &format!("seq 1 20000 > $out; echo {tag} >> $out"),
        ),
    );
    let proxy = FaultProxy::start(
        &server.endpoint(),
        FaultConfig {
            only_target: Some("/nar/"),
            ..FaultConfig::hold("PutObject", 5)
        },
    );
    let push = |url: &str, level: &str| {
        let mut cmd = push_cmd(&server);
        cmd.args(["push", "--progress", "none", "--compression-level", level])
            .args(["--cache", url, "--signing-key-file"])
            .arg(&secret)
            .arg(&path);
        cmd
    };
    let slow_url = server
        .cache_url()
        .replace(&server.endpoint(), &proxy.endpoint());
    let slow = push(&slow_url, "19")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The NAR, after its HEAD found nothing, held at the proxy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.stats().faults_of(Fault::Delay) < 1 {
        assert!(Instant::now() < deadline, "{:?}", proxy.stats().requests);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ok(&run(&mut push(&server.cache_url(), "1")));
    let bucket = server.root().join(server.bucket());
    let first_nar: Vec<(String, Vec<u8>)> = common::list_files(&bucket)
        .into_iter()
        .filter(|k| k.starts_with("nar/"))
        .map(|k| (k.clone(), std::fs::read(bucket.join(&k)).unwrap()))
        .collect();
    assert_eq!(first_nar.len(), 1);
    let narinfo = std::fs::read_to_string(bucket.join(format!(
        "{}.narinfo",
        &path["/nix/store/".len().."/nix/store/".len() + 32]
    )))
    .unwrap();

    let out = slow.wait_with_output().unwrap();
    assert_ok(&out);
    let (key, bytes) = &first_nar[0];
    let now_nar = std::fs::read(bucket.join(key)).unwrap();
    assert!(
        &now_nar == bytes,
        "the first NAR ({} bytes) was replaced by another ({} bytes)",
        bytes.len(),
        now_nar.len()
    );
    let now = std::fs::read_to_string(bucket.join(format!(
        "{}.narinfo",
        &path["/nix/store/".len().."/nix/store/".len() + 32]
    )))
    .unwrap();
    assert_eq!(now, narinfo);
    assert!(
        now.contains(&format!("FileSize: {}\n", bytes.len())),
        "{now}"
    );
    assert_ok(&common::verify_s3(&server, &public, true));
}
