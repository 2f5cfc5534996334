//! What only an S3 push does: parts, credentials, jobs racing on one bucket. Judged by the real
//! Nix reading the bucket over anonymous HTTP, as a public or proxied cache would be read. Each
//! test runs on both S3 servers of the suite (see `common/store.rs`): s3s-fs, and moto with
//! AWS's own answers. What every backend does is in `push.rs`.

mod common;

use common::hash_part;

use common::moto::MotoServer;
use common::nix::{build, build_closure, copy_into_fresh_store, derivation, nonce};
use common::s3::S3Server;
use common::store::{S3Kind, S3Store};
use common::{assert_fails, assert_ok, keygen, nixbucket, run, stdout};
use rstest::rstest;

fn push_cmd(s3: &dyn S3Store) -> std::process::Command {
    let mut cmd = nixbucket();
    cmd.envs(s3.env());
    cmd
}

#[rstest]
#[case::s3s_fs(S3Kind::S3sFs)]
#[case::moto(S3Kind::Moto)]
fn a_large_path_goes_up_in_parts_and_nix_accepts_it(#[case] kind: S3Kind) {
    let s3 = kind.start();
    let s3 = s3.as_ref();
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
    let out = run(push_cmd(s3)
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(&secret)
        .arg(&big));
    assert_ok(&out);
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    let admin = s3.admin();
    let nars = admin.keys(s3.bucket(), "nar/");
    assert_eq!(nars.len(), 1, "{nars:?}");
    // A multipart object's ETag ends in `-<number of parts>`; a PutObject one has no dash.
    let etag = admin.head(s3.bucket(), &nars[0]).unwrap().etag;
    assert!(
        etag.ends_with("-5\"") || etag.ends_with("-6\""),
        "expected a 5- or 6-part upload, got ETag {etag}"
    );
    assert_ok(&copy_into_fresh_store(
        &s3.anon_http_url(),
        &public,
        &tmp.path().join("fresh"),
        &big,
    ));
}

/// A URL copied from Nix's manual, with the parameters of Nix 2.33 to 2.35: the storage class
/// goes on every object, multipart ones too (AWS's own answers, on moto), the rest are named as
/// ignored, and Nix takes the cache back.
#[test]
fn on_moto_the_url_s_storage_class_goes_on_every_object_and_nix_s_tuning_is_named_as_ignored() {
    let s3 = S3Kind::Moto.start();
    let s3 = s3.as_ref();
    let tmp = tempfile::tempdir().unwrap();
    let big = build(
        tmp.path(),
        &derivation(
            &format!("big-{}", nonce()),
            "head -c 20000000 /dev/urandom > $out",
        ),
    );
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "s3-cache-1");
    let url = format!(
        "{}&storage-class=STANDARD_IA&addressing-style=path&retry-attempts=5&multipart-chunk-size=16777216",
        s3.cache_url()
    );
    let out = run(push_cmd(s3)
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .args([&big, &app]));
    assert_ok(&out);
    let log = common::stderr(&out);
    assert!(
        log.contains("ignores these parameters of the cache URL")
            && log.contains("retry-attempts, multipart-chunk-size"),
        "{log}"
    );
    let admin = s3.admin();
    let keys: Vec<String> = ["nar/", ""]
        .iter()
        .flat_map(|prefix| admin.keys(s3.bucket(), prefix))
        .filter(|k| k.ends_with(".narinfo") || k.starts_with("nar/"))
        .collect();
    assert!(keys.len() >= 8, "{keys:?}");
    for key in &keys {
        let head = admin.head(s3.bucket(), key).unwrap();
        assert_eq!(head.storage_class.as_deref(), Some("STANDARD_IA"), "{key}");
    }
    assert_ok(&copy_into_fresh_store(
        &s3.anon_http_url(),
        &public,
        &tmp.path().join("fresh"),
        &big,
    ));
}

/// A server that checks credentials: s3s-fs always does; moto only when told to, with keys its
/// IAM issued.
fn checking_server(kind: S3Kind) -> Box<dyn S3Store> {
    match kind {
        S3Kind::S3sFs => Box::new(S3Server::start()),
        S3Kind::Moto => Box::new(MotoServer::start_with_auth()),
    }
}

#[rstest]
#[case::s3s_fs(S3Kind::S3sFs)]
#[case::moto(S3Kind::Moto)]
fn a_missing_bucket_and_refused_credentials_are_named_and_nothing_is_written(#[case] kind: S3Kind) {
    let s3 = checking_server(kind);
    let s3 = s3.as_ref();
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "s3-cache-1");

    let out = run(push_cmd(s3)
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

    let out = run(push_cmd(s3)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    let err = assert_fails(&out);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(err.contains(": SignatureDoesNotMatch: "), "{err}");
    assert!(
        err.contains("AWS_ACCESS_KEY_ID"),
        "the credential source should be named: {err}"
    );
    assert!(
        !err.contains("wrong-secret-value-123") && !stdout(&out).contains("wrong-secret-value-123")
    );

    // AWS says InvalidAccessKeyId (so does moto); s3s-fs says NotSignedUp.
    let out = run(push_cmd(s3)
        .env("AWS_ACCESS_KEY_ID", "AKIANOBODYKNOWS00000")
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    let err = assert_fails(&out);
    let code = match kind {
        S3Kind::S3sFs => ": NotSignedUp: ",
        S3Kind::Moto => ": InvalidAccessKeyId: ",
    };
    assert!(
        err.contains("refused the credentials") && err.contains(code),
        "{err}"
    );
    assert_eq!(
        s3.admin().keys(s3.bucket(), ""),
        Vec::<String>::new(),
        "something was written"
    );
}

/// A key that may read the bucket but not write it (a pull-request job's, say) is accepted by
/// S3, which then denies each write: the user hears that the key lacks permission, not that it
/// was refused, and nothing is written. Only moto has permissions.
#[test]
fn a_read_only_key_on_moto_is_told_it_may_not_write() {
    let s3 = MotoServer::start_with_auth();
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "s3-cache-1");
    let (reader, reader_secret) = s3.reader();
    let out = run(push_cmd(&s3)
        .env("AWS_ACCESS_KEY_ID", reader)
        .env("AWS_SECRET_ACCESS_KEY", reader_secret)
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    let err = assert_fails(&out);
    assert!(
        err.contains(&format!(
            "S3 at {} denied PutObject in bucket 'nixbucket-test' to the credentials from \
             environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: AccessDenied: ",
            s3.endpoint()
        )),
        "{err}"
    );
    assert!(!err.contains("refused the credentials"), "{err}");
    assert!(!err.contains(reader_secret), "{err}");
    assert_eq!(
        s3.admin().keys(s3.bucket(), ""),
        Vec::<String>::new(),
        "something was written"
    );
}

/// Two jobs push the same path at once: the one whose narinfo lands second keeps the first
/// one's (a conditional write), so a reader never sees the narinfo swap under it. Here the
/// other job's push, with another compression, lands between this push's plan and its write.
#[rstest]
#[case::s3s_fs(S3Kind::S3sFs)]
#[case::moto(S3Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narinfo_another_job_wrote_since_the_plan_is_kept(#[case] kind: S3Kind) {
    use nixbucket::cache::{Cache, CacheUrl, OpenOptions};
    use nixbucket::nix::{SecretKey, StorePath};
    use nixbucket::push::{self, PushOptions};
    let server = kind.start();
    let server = server.as_ref();
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
    let key = nixbucket::nix::layout::narinfo_key(&sp);
    let theirs = cache.get(&key).await.unwrap().unwrap();

    let signing_key = SecretKey::parse(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    let opts = PushOptions {
        compression: nixbucket::nix::Compression::Zstd,
        tuning: Default::default(),
        // A listing describes one NAR: none goes up beside a narinfo naming another.
        nar_listing: true,
        jobs: 2,
        signing_key: Some(std::sync::Arc::new(signing_key)),
        progress: push::progress::ProgressMode::None,
        cancel: Default::default(),
    };
    let report = push::execute(&cache, plan, &opts).await.unwrap();
    assert_eq!(report.pushed.len(), 1, "{:?}", report.failed);
    assert_eq!(cache.get(&key).await.unwrap().unwrap(), theirs);
    let listing = nixbucket::nix::layout::listing_key(&sp);
    assert_eq!(
        cache.get(&listing).await.unwrap(),
        None,
        "a listing of our NAR"
    );
    let text = String::from_utf8(theirs.to_vec()).unwrap();
    assert!(text.contains("Compression: none"), "{text}");
    assert_ok(&common::verify_s3(server, &public, false));
}

/// Two jobs push one path at once with different compression levels, so the same NAR name
/// holds different bytes from each. The second job's NAR upload is held until the first job
/// has pushed everything; then it must leave the first NAR in place (a conditional commit)
/// and keep the first narinfo, which describes that NAR. Otherwise the cache would hold a
/// narinfo whose FileSize and FileHash describe bytes that are gone.
#[rstest]
#[case::s3s_fs(S3Kind::S3sFs)]
#[case::moto(S3Kind::Moto)]
fn a_nar_another_push_landed_first_stays_and_the_narinfo_describes_it(#[case] kind: S3Kind) {
    use common::fault_proxy::{Fault, FaultConfig, FaultProxy};
    use std::time::{Duration, Instant};
    let server = kind.start();
    let server = server.as_ref();
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
        let mut cmd = push_cmd(server);
        cmd.args(["push", "--progress", "none", "--compression-level", level])
            .args(["--cache", url, "--signing-key-file"])
            .arg(&secret)
            .arg(&path);
        cmd
    };
    let slow_url = server.cache_url_via(&proxy.endpoint(), server.bucket());
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
    let admin = server.admin();
    let bucket = server.bucket();
    let first_nar: Vec<(String, Vec<u8>)> = admin
        .keys(bucket, "nar/")
        .into_iter()
        .map(|k| (k.clone(), admin.get(bucket, &k).unwrap()))
        .collect();
    assert_eq!(first_nar.len(), 1);
    let narinfo_key = format!("{}.narinfo", hash_part(&path));
    let narinfo = admin.get(bucket, &narinfo_key).unwrap();

    let out = common::finish(slow);
    assert_ok(&out);
    let (key, bytes) = &first_nar[0];
    let now_nar = admin.get(bucket, key).unwrap();
    assert!(
        &now_nar == bytes,
        "the first NAR ({} bytes) was replaced by another ({} bytes)",
        bytes.len(),
        now_nar.len()
    );
    let now = String::from_utf8(admin.get(bucket, &narinfo_key).unwrap()).unwrap();
    assert_eq!(now.as_bytes(), narinfo);
    assert!(
        now.contains(&format!("FileSize: {}\n", bytes.len())),
        "{now}"
    );
    assert_ok(&common::verify_s3(server, &public, true));
}

/// The request report of a push, a dry-run gc and a verify agrees with what the S3 server
/// received, operation by operation (the proxy sees a CopyObject as the PUT it is, and names
/// every HEAD alike), and it prices them: by the table given, or none for a store it cannot
/// tell. A table that does not exist is one clear error, before anything is sent.
#[rstest]
#[case::s3s_fs(S3Kind::S3sFs)]
#[case::moto(S3Kind::Moto)]
fn the_request_report_matches_what_the_server_received(#[case] kind: S3Kind) {
    use common::fault_proxy::{FaultConfig, FaultProxy};
    let s3 = kind.start();
    let s3 = s3.as_ref();
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "cost-1");
    let json = tmp.path().join("report.json");
    let commands: [(&[&str], Option<&str>); 3] = [
        (
            &["push", "--signing-key-file", secret.to_str().unwrap(), &app],
            Some("aws"),
        ),
        (&["gc", "--older-than", "1d", "--dry-run"], None),
        (&["verify", "--public-key", &public], Some("r2")),
    ];
    for (args, pricing) in commands {
        let proxy = FaultProxy::start(&s3.endpoint(), FaultConfig::mixed(0.0, 1));
        let url = s3.cache_url_via(&proxy.endpoint(), s3.bucket());
        let mut cmd = push_cmd(s3);
        cmd.args(args)
            .args(["--cache", &url, "--report-json"])
            .arg(&json);
        if let Some(table) = pricing {
            cmd.args(["--pricing", table]);
        }
        let out = run(&mut cmd);
        assert_ok(&out);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let mut ours = std::collections::BTreeMap::<String, u64>::new();
        for (op, n) in report["requests"]["operations"].as_object().unwrap() {
            let seen_as = match op.as_str() {
                "HeadObject" | "HeadBucket" => "Head",
                "CopyObject" => "PutObject",
                other => other,
            };
            *ours.entry(seen_as.to_owned()).or_default() += n.as_u64().unwrap();
        }
        let theirs = proxy.stats().requests;
        assert_eq!(ours, theirs, "{args:?}\n{report:#}");
        assert_eq!(
            report["total_requests"].as_u64(),
            Some(theirs.values().sum::<u64>())
        );
        let err = common::stderr(&out);
        match pricing {
            Some(_) => {
                let cost = report["estimated_cost_usd"].as_f64().unwrap();
                assert!(cost > 0.0, "{report:#}");
                assert!(err.contains("requests: "), "{err}");
            }
            // A loopback endpoint is no store with a known price list.
            None => {
                assert!(report["estimated_cost_usd"].is_null(), "{report:#}");
                assert!(err.contains("no price table for this store"), "{err}");
                assert!(err.contains("storage: "), "{err}");
            }
        }
        if args[0] == "push" {
            // Every object in the bucket went up once, in this push.
            let admin = s3.admin();
            let stored: u64 = admin
                .keys(s3.bucket(), "")
                .iter()
                .map(|k| admin.head(s3.bucket(), k).unwrap().size)
                .sum();
            assert_eq!(report["requests"]["bytes_up"].as_u64(), Some(stored));
        }
    }

    let out = run(push_cmd(s3).args([
        "verify",
        "--cache",
        &s3.cache_url(),
        "--public-key",
        &public,
        "--pricing",
        "azure",
    ]));
    let err = assert_fails(&out);
    assert!(err.contains("neither aws, r2 nor b2"), "{err}");
    assert!(!err.contains("checked"), "{err}");
}
