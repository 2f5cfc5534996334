//! `nixbucket sign`: signatures added to (or dropped from) narinfos in place, judged by what
//! the real Nix accepts, with the NARs left untouched.

mod common;

use common::hash_part;

use std::path::Path;
use std::process::Command;

use common::nix::{build_closure, copy_into_fresh_store, nix_command, nonce};
use common::s3::S3Server;
use common::store::S3Store;
use common::{
    assert_fails, assert_ok, assert_refused_unsigned, keygen, list_files, nixbucket, run, stderr,
};

fn sig_names(narinfo: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(narinfo).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("Sig: "))
        .map(|s| s.split(':').next().unwrap().to_owned())
        .collect()
}

#[test]
fn sign_makes_an_unsigned_s3_cache_acceptable_to_nix_without_touching_nars() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start();
    let cmd = || {
        let mut c = nixbucket();
        c.envs(server.env());
        c
    };
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "sign-test-1");
    let url = server.cache_url();
    assert_ok(&run(cmd().args([
        "push",
        "--unsigned",
        "--cache",
        &url,
        &app,
    ])));
    let refused = copy_into_fresh_store(
        &server.anon_http_url(),
        &public,
        &tmp.path().join("fresh0"),
        &app,
    );
    assert_refused_unsigned(&refused);

    let bucket = server.root().join(server.bucket());
    let nars: Vec<String> = list_files(&bucket)
        .into_iter()
        .filter(|k| k.starts_with("nar/"))
        .collect();
    assert_eq!(nars.len(), 3, "{nars:?}");
    let nar_state = || -> Vec<_> {
        nars.iter()
            .map(|k| {
                let m = std::fs::metadata(bucket.join(k)).unwrap();
                (k.clone(), m.modified().unwrap(), server.internal_info(k))
            })
            .collect()
    };
    let before = nar_state();

    // Unsigned narinfos are what anyone with write access could have put in the bucket: by
    // default sign leaves them alone and says how to sign them.
    let out = run(cmd()
        .args(["sign", "--cache", &url, "--all", "--signing-key-file"])
        .arg(&secret));
    assert_ok(&out);
    let log = stderr(&out);
    assert!(
        log.contains("signed 0 narinfos with sign-test-1")
            && log.contains("3 narinfos or realisations were left unsigned")
            && log.contains("--sign-unverified"),
        "{log}"
    );
    for p in [&app, &lib, &data] {
        let names = sig_names(&bucket.join(format!("{}.narinfo", hash_part(p))));
        assert!(names.is_empty(), "{p} was signed: {names:?}");
    }
    let out = run(cmd()
        .args(["sign", "--cache", &url, "--all", "--sign-unverified"])
        .arg("--signing-key-file")
        .arg(&secret));
    assert_ok(&out);
    assert!(
        stderr(&out).contains("signed 3 narinfos with sign-test-1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(nar_state(), before, "sign touched a NAR (mtime or ETag)");
    for p in [&app, &lib, &data] {
        let names = sig_names(&bucket.join(format!("{}.narinfo", hash_part(p))));
        assert_eq!(names, ["sign-test-1"], "{p}");
    }
    // Nix remembers narinfos it fetched over HTTP (narinfo-cache-positive-ttl, 30 days by
    // default), so a client that already saw the unsigned one must be told to look again.
    let fresh = tmp.path().join("fresh");
    assert_ok(&run(nix_command("nix")
        .args(["copy", "--from", &server.anon_http_url(), "--to"])
        .arg(&fresh)
        .args(["--option", "trusted-public-keys", &public])
        .args(["--option", "narinfo-cache-positive-ttl", "0", &app])));
    assert!(fresh.join(&data[1..]).exists());
    assert_ok(&run(cmd().args([
        "verify",
        "--cache",
        &url,
        "--public-key",
        &public,
    ])));

    // Signing again changes nothing.
    let again = run(cmd()
        .args(["sign", "--cache", &url, "--all", "--signing-key-file"])
        .arg(&secret));
    assert_ok(&again);
    assert!(
        stderr(&again).contains("signed 0 narinfos with sign-test-1; 3 already were"),
        "{}",
        stderr(&again)
    );
}

/// Write access to the bucket must not become a trusted signature: a narinfo planted with a
/// NarHash other than the local store's, under a path the operator names, is refused, and a
/// realisation nobody trusted signed is left as it is by `sign --all`.
#[test]
fn sign_refuses_what_neither_a_trusted_key_nor_the_local_store_vouches_for() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, _] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "vouch-1");
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    assert_ok(&run(nixbucket().args([
        "push",
        "--unsigned",
        "--cache",
        &url,
        &app,
    ])));
    let narinfo = |p: &str| cache.join(format!("{}.narinfo", hash_part(p)));
    // The planted one: lib's narinfo with another NAR's hash (a writer's substitute).
    let planted = std::fs::read_to_string(narinfo(&lib)).unwrap();
    let app_hash = std::fs::read_to_string(narinfo(&app))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("NarHash: "))
        .unwrap()
        .to_owned();
    let planted: String = planted
        .lines()
        .map(|l| {
            if l.starts_with("NarHash: ") {
                app_hash.clone()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(narinfo(&lib), planted).unwrap();
    let realisation = cache.join("realisations/sha256:1111111111111111111111111111111111111111111111111111111111111111!out.doi");
    let planted_realisation = format!(
        r#"{{"dependentRealisations":{{}},"id":"sha256:1111111111111111111111111111111111111111111111111111111111111111!out","outPath":"{}","signatures":[]}}"#,
        &lib["/nix/store/".len()..]
    );
    std::fs::write(&realisation, &planted_realisation).unwrap();

    // Named: app matches the local store and is signed; lib does not, and is refused.
    let out = run(nixbucket()
        .args(["sign", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .args([&app, &lib]));
    let err = assert_fails(&out);
    assert!(
        err.contains(&format!(
            "{}.narinfo: not signed: it does not describe the path in the local store",
            hash_part(&lib)
        )),
        "{err}"
    );
    assert_eq!(sig_names(&narinfo(&app)), ["vouch-1"]);
    assert!(sig_names(&narinfo(&lib)).is_empty());

    // One in a form this nixbucket does not read (a later Nix's, or damaged) is left alone
    // with a warning, and does not stop the rest.
    let unknown = cache.join("build-trace-v2/not-a-derivation/out.doi");
    std::fs::create_dir_all(unknown.parent().unwrap()).unwrap();
    std::fs::write(&unknown, "{}").unwrap();

    // Listed: nothing trusted signed the planted realisation, so it stays unsigned.
    let out = run(nixbucket()
        .args(["sign", "--cache", &url, "--all", "--signing-key-file"])
        .arg(&secret));
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("warning: build-trace-v2/not-a-derivation/out.doi: left unsigned: not a valid realisation: not-a-derivation/out is not a derivation and its output"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&unknown).unwrap(), "{}");
    assert_eq!(
        std::fs::read_to_string(&realisation).unwrap(),
        planted_realisation
    );
    assert!(sig_names(&narinfo(&lib)).is_empty());
}

#[test]
fn key_rotation_adds_the_new_signature_and_removes_the_old() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    let (old_secret, old_public) = keygen(tmp.path(), "rotate-old-1");
    let (new_secret, new_public) = keygen(tmp.path(), "rotate-new-1");
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    assert_ok(&run(nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&old_secret)
        .arg(&app)));

    // Only the named paths: lib stays as it was.
    let out = run(nixbucket()
        .args(["sign", "--cache", &url, "--signing-key-file"])
        .arg(&new_secret)
        .args([&app, &data]));
    assert_ok(&out);
    let narinfo = |p: &str| cache.join(format!("{}.narinfo", hash_part(p)));
    let mut both = sig_names(&narinfo(&app));
    both.sort();
    assert_eq!(both, ["rotate-new-1", "rotate-old-1"]);
    assert_eq!(sig_names(&narinfo(&lib)), ["rotate-old-1"]);

    let rotate = |trusted: &[&str]| {
        run(nixbucket()
            .args([
                "sign",
                "--cache",
                &url,
                "--all",
                "--remove-key",
                "rotate-old-1",
            ])
            .args(trusted)
            .arg("--signing-key-file")
            .arg(&new_secret))
    };
    // lib carries only the old key's signature: unless the operator names that key as
    // trusted, nothing vouches for it, and it stays as it was.
    let out = rotate(&[]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("1 narinfos or realisations were left unsigned"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sig_names(&narinfo(&lib)), ["rotate-old-1"]);
    let out = rotate(&["--trusted-key", &old_public]);
    assert_ok(&out);
    for p in [&app, &lib, &data] {
        assert_eq!(sig_names(&narinfo(p)), ["rotate-new-1"], "{p}");
    }
    assert_ok(&copy_into_fresh_store(
        &url,
        &new_public,
        &tmp.path().join("fresh-new"),
        &app,
    ));
    let refused = copy_into_fresh_store(&url, &old_public, &tmp.path().join("fresh-old"), &app);
    assert_refused_unsigned(&refused);
}

#[test]
fn sign_errors_name_what_went_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, _] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "sign-err-1");
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    assert_ok(&run(nixbucket()
        .args(["push", "--unsigned", "--cache", &url])
        .arg(&lib)));
    let sign = |extra: &[&str]| -> Command {
        let mut c = nixbucket();
        c.args(["sign", "--cache", &url]).args(extra);
        c
    };

    let err = assert_fails(&run(&mut sign(&["--all"])));
    assert!(err.contains("no signing key"), "{err}");

    let bad_key = tmp.path().join("bad.sk");
    std::fs::write(&bad_key, &public).unwrap();
    let err = assert_fails(&run(sign(&["--all", "--signing-key-file"]).arg(&bad_key)));
    assert!(err.contains("is not a Nix secret key"), "{err}");
    assert!(!err.contains(public.split(':').nth(1).unwrap()), "{err}");

    let err = assert_fails(&run(sign(&["--all", "--signing-key-file"])
        .arg(&secret)
        .arg(&app)));
    assert!(err.contains("cannot be used with"), "{err}");

    // app was never pushed: its narinfo is named, and lib is still signed.
    let err = assert_fails(&run(sign(&["--signing-key-file"])
        .arg(&secret)
        .args([&app, &lib])));
    assert!(
        err.contains(&format!("{}.narinfo", hash_part(&app))) && err.contains("not in the cache"),
        "{err}"
    );
    assert!(
        err.contains("1 narinfos or realisations could not be signed"),
        "{err}"
    );
    assert_eq!(
        sig_names(&cache.join(format!("{}.narinfo", hash_part(&lib)))),
        ["sign-err-1"]
    );

    let not_store = tmp.path().join("elsewhere");
    std::fs::write(&not_store, "x").unwrap();
    let err = assert_fails(&run(sign(&["--signing-key-file"])
        .arg(&secret)
        .arg(&not_store)));
    assert!(err.contains("is not in the Nix store"), "{err}");

    let err = assert_fails(&run(sign(&["--signing-key-file"]).arg(&secret)));
    assert!(err.contains("--all") || err.contains("PATHS"), "{err}");
}

/// A gc running alongside deletes narinfos while sign holds them: sign must not write them
/// back (they would name NARs that gc deletes next), and a narinfo gone between the listing
/// and its read is no failure either. The proxy holds sign's PUTs (or its GETs) for seconds,
/// the test deletes the narinfos as gc would, and then the requests arrive.
#[rstest::rstest]
#[case::after_the_read("PutObject")]
#[case::after_the_listing("GetObject")]
fn sign_does_not_bring_back_a_narinfo_deleted_while_it_signed(#[case] held: &'static str) {
    use common::fault_proxy::{FaultConfig, FaultProxy};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "sign-race-1");
    let mut push = nixbucket();
    push.envs(server.env())
        .args(["push", "--unsigned", "--cache", &server.cache_url(), &app]);
    assert_ok(&run(&mut push));
    let bucket = server.root().join(server.bucket());
    let narinfos = || -> Vec<String> {
        list_files(&bucket)
            .into_iter()
            .filter(|k| k.ends_with(".narinfo"))
            .collect()
    };
    assert_eq!(narinfos().len(), 3);

    let proxy = FaultProxy::start(&server.endpoint(), FaultConfig::hold(held, 5));
    let url = server
        .cache_url()
        .replace(&server.endpoint(), &proxy.endpoint());
    let sign = nixbucket()
        .envs(server.env())
        .args(["sign", "--cache", &url, "--all", "--sign-unverified"])
        .arg("--signing-key-file")
        .arg(&secret)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.stats().requests.get(held).copied().unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "{:?}", proxy.stats().requests);
        std::thread::sleep(Duration::from_millis(20));
    }
    for k in narinfos() {
        std::fs::remove_file(bucket.join(k)).unwrap();
    }
    let out = common::finish(sign);
    assert_ok(&out);
    assert!(
        stderr(&out)
            .contains("signed 0 narinfos with sign-race-1; 0 already were; 3 deleted meanwhile"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        narinfos(),
        Vec::<String>::new(),
        "sign wrote back a deleted narinfo"
    );
}
