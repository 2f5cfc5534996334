//! `nixbucket push`, judged by the real Nix. What every backend must do is written once on
//! [`TestCache`] and runs on each: a `file://` directory, s3s-fs and moto (AWS's own answers);
//! what only a directory shows (byte-for-byte narinfos, temp files) runs on `file://`. The
//! S3-only behaviours (parts, credentials, races between jobs) are in `push_s3.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::cache::{Backend, TestCache};
use common::nix::{build_closure, derivation, nix_command, nonce};
use common::{
    assert_fails, assert_ok, assert_refused_unsigned, hash_part, keygen, list_files, nixbucket,
    run, stderr, stdout,
};
use rstest::rstest;

fn narinfo_path(cache: &Path, store_path: &str) -> std::path::PathBuf {
    cache.join(format!("{}.narinfo", hash_part(store_path)))
}

/// What most tests start from: a freshly built three-path closure, a key pair and an empty
/// cache, all in one temporary directory.
struct Fixture {
    tmp: tempfile::TempDir,
    app: String,
    lib: String,
    data: String,
    secret: PathBuf,
    public: String,
    target: TestCache,
    url: String,
}

impl Fixture {
    /// The fixture with a `file://` cache.
    fn new() -> Self {
        Fixture::on(Backend::File)
    }

    fn on(backend: Backend) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let [app, lib, data] = build_closure(tmp.path(), &nonce());
        let (secret, public) = keygen(tmp.path(), "test-cache-1");
        let target = TestCache::new(backend, tmp.path());
        let url = target.url.clone();
        Fixture {
            tmp,
            app,
            lib,
            data,
            secret,
            public,
            target,
            url,
        }
    }

    /// The directory of the cache's objects.
    fn cache(&self) -> &Path {
        self.target.objects()
    }

    /// `nixbucket push --cache URL --signing-key-file KEY EXTRA… APP`.
    fn push(&self, extra: &[&str]) -> Output {
        run(self
            .target
            .cmd()
            .args(["push", "--cache", &self.url, "--signing-key-file"])
            .arg(&self.secret)
            .args(extra)
            .arg(&self.app))
    }

    /// Nix copies the app's closure from the cache into a new store, trusting `key`.
    fn copy_out(&self, key: &str) -> Output {
        let store = self.tmp.path().join(format!("fresh-{}", nonce()));
        self.target.copy_out(key, &store, &self.app)
    }
}

#[rstest]
#[case::file(Backend::File)]
#[case::s3s_fs(Backend::S3sFs)]
#[case::moto(Backend::Moto)]
fn a_pushed_closure_verifies_is_substituted_under_its_key_only_and_goes_up_once(
    #[case] backend: Backend,
) {
    let f = Fixture::on(backend);
    let out = f.push(&[]);
    assert_ok(&out);
    assert!(stderr(&out).contains("pushed 3 paths"), "{}", stderr(&out));
    for path in [&f.app, &f.lib, &f.data] {
        assert!(f.target.has_narinfo(path), "no narinfo for {path}");
    }
    let keys = f.target.keys();
    assert!(keys.contains(&"nix-cache-info".to_owned()), "{keys:?}");
    let nars = keys
        .iter()
        .filter(|k| k.starts_with("nar/") && k.ends_with(".nar.zst"));
    assert_eq!(nars.count(), 3, "{keys:?}");
    assert_eq!(
        f.target.leftovers(),
        Vec::<String>::new(),
        "unfinished writes left behind"
    );

    let verify = f.target.verify_deep(&f.public);
    assert_ok(&verify);
    assert!(
        stderr(&verify).contains("checked 3 narinfos and their NARs: 0 problems"),
        "{}",
        stderr(&verify)
    );

    let fresh = f.tmp.path().join("fresh");
    assert_ok(&f.target.copy_out(&f.public, &fresh, &f.app));
    assert!(
        fresh.join(&f.app[1..]).join("run").exists(),
        "the app's symlink did not arrive"
    );
    let big = std::fs::read(fresh.join(&f.lib[1..]).join("lib/big")).unwrap();
    assert_eq!(big.len(), 300_000);
    let (_, other_public) = keygen(f.tmp.path(), "other-cache-1");
    assert_refused_unsigned(&f.copy_out(&other_public));

    let again = f.push(&[]);
    assert_ok(&again);
    assert!(
        stderr(&again).contains("pushed 0 paths")
            && stderr(&again).contains("3 already in the cache"),
        "{}",
        stderr(&again)
    );
}

/// A pushed path's build log is read back by `nix log --store` from every backend (S3 over
/// anonymous HTTP, as a public or proxied cache is read), found through its narinfo's
/// Deriver; `--no-build-logs` pushes the path without it.
#[rstest]
#[case::file(Backend::File)]
#[case::s3s_fs(Backend::S3sFs)]
#[case::moto(Backend::Moto)]
fn a_pushed_paths_build_log_is_read_by_nix_log(#[case] backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::new(backend, tmp.path());
    let (secret, _) = keygen(tmp.path(), "logs-1");
    let build = |what: &str| {
        let tag = nonce();
        let expr = derivation(
            &format!("{what}-{tag}"),
            &format!("echo {what}-{tag}-says-hello; echo {tag} > $out"),
        );
        (
            common::nix::build(tmp.path(), &expr),
            format!("{what}-{tag}-says-hello"),
        )
    };
    let nix_log =
        |path: &str| run(nix_command("nix").args(["log", "--store", &target.nix_url, path]));

    let (logged, said) = build("logged");
    let out = target.push(&secret, &logged);
    assert!(stderr(&out).contains("1 build logs"), "{}", stderr(&out));
    let log = nix_log(&logged);
    assert_ok(&log);
    assert!(stdout(&log).contains(&said), "{}", stdout(&log));
    // Pushed again, the path is there, and so is its log: nothing goes up.
    let again = target.push(&secret, &logged);
    assert!(
        stderr(&again).contains("; 0 build logs"),
        "{}",
        stderr(&again)
    );

    let (quiet, _) = build("quiet");
    let out = run(target
        .cmd()
        .args([
            "push",
            "--no-build-logs",
            "--cache",
            &target.url,
            "--signing-key-file",
        ])
        .arg(&secret)
        .arg(&quiet));
    assert_ok(&out);
    assert!(!stderr(&out).contains("build logs"), "{}", stderr(&out));
    assert_fails(&nix_log(&quiet));
    let logs = target.keys().into_iter().filter(|k| k.starts_with("log/"));
    assert_eq!(logs.count(), 1);
}

/// Content-addressed derivations: push uploads the realisations of the outputs it pushed, and
/// a fresh store that may not build (`max-jobs = 0`) substitutes the closure from the cache
/// instead, as a `ca-derivations` user's next job would.
#[rstest]
#[case::file(Backend::File)]
#[case::s3s_fs(Backend::S3sFs)]
fn content_addressed_outputs_are_substituted_through_their_realisations(#[case] backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::new(backend, tmp.path());
    let (secret, public) = keygen(tmp.path(), "ca-1");
    let config = common::NIX_CONFIG.replace(
        "experimental-features = nix-command",
        "experimental-features = nix-command ca-derivations",
    );
    let tag = nonce();
    let ca = |name: &str, script: &str| {
        format!(
            r#"builtins.derivation {{ name = "{name}-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" ''{script}'']; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }}"#
        )
    };
    let expr = format!(
        "let dep = {}; in {}",
        ca("ca-dep", &format!("echo {tag} > $out")),
        ca("ca-top", "echo ${dep} > $out")
    );
    let file = tmp.path().join("ca.nix");
    std::fs::write(&file, expr).unwrap();
    let built = run(nix_command("nix-build")
        .env("NIX_CONFIG", &config)
        .arg("--no-out-link")
        .arg(&file));
    assert_ok(&built);
    let top = stdout(&built).trim().to_owned();

    let push = || {
        run(target
            .cmd()
            .env("NIX_CONFIG", &config)
            .args(["push", "--cache", &target.url, "--signing-key-file"])
            .arg(&secret)
            .arg(&top))
    };
    let out = push();
    assert_ok(&out);
    assert!(
        stderr(&out).contains("; 2 realisations"),
        "{}",
        stderr(&out)
    );
    // In the layout of the Nix that built them: `realisations/<id>.doi` up to 2.34,
    // `build-trace-v2/<derivation>/<output>.doi` from 2.35 on.
    let is_realisation = |k: &str| {
        (k.starts_with("realisations/sha256:") && k.ends_with("!out.doi"))
            || (k.starts_with("build-trace-v2/") && k.ends_with(".drv/out.doi"))
    };
    let realisations: Vec<String> = target
        .keys()
        .into_iter()
        .filter(|k| is_realisation(k))
        .collect();
    assert_eq!(realisations.len(), 2, "{realisations:?}");
    // Pushed again, the realisations are found where they are, with reads: the one write is
    // the push's usage record (`usage/…`), which every push leaves for gc.
    let again = push();
    assert_ok(&again);
    let requests = stderr(&again)
        .lines()
        .find(|l| l.starts_with("requests: "))
        .unwrap_or_default()
        .to_owned();
    if backend != Backend::File {
        assert!(
            requests.contains(" PUT 1)") || requests.contains(" PUT 1,"),
            "a second push wrote more than its usage record: {requests}\n{}",
            stderr(&again)
        );
    }

    let fresh = tmp.path().join("fresh");
    let substituted = run(nix_command("nix")
        .env("NIX_CONFIG", &config)
        .args(["build", "--no-link", "--max-jobs", "0", "--store"])
        .arg(&fresh)
        .args(["--option", "substituters", &target.nix_url])
        .args(["--option", "trusted-public-keys", &public, "-f"])
        .arg(&file));
    assert_ok(&substituted);
    assert!(
        fresh.join(&top[1..]).exists(),
        "{top} did not arrive:\n{}",
        stderr(&substituted)
    );

    // A named push knows the derivers the paths record, not the derivations as instantiated:
    // setup_push's content-addressed test copies back those too, with their signatures.
    let (other_secret, other) = keygen(tmp.path(), "other-1");
    // verify reads them and checks their signatures; gc deletes them with their paths, a
    // month on.
    let unknown = target.verify(&other);
    let problems = stdout(&unknown);
    assert_eq!(
        problems
            .matches("out.doi: no valid signature by a trusted key")
            .count(),
        2,
        "{problems}"
    );
    // `sign --all` adds a key's signature to the realisations as to the narinfos.
    let signed = run(target
        .cmd()
        .args([
            "sign",
            "--all",
            "--cache",
            &target.url,
            "--trusted-key",
            &public,
            "--signing-key-file",
        ])
        .arg(&other_secret));
    assert_ok(&signed);
    assert!(
        stderr(&signed).contains("signed 2 narinfos and 2 realisations with other-1"),
        "{}",
        stderr(&signed)
    );
    assert_ok(&target.verify(&other));
    // Pushing again leaves the realisations as they are, the other key's signatures with them.
    let again = push();
    assert_ok(&again);
    assert!(
        !stderr(&again).contains("realisations"),
        "{}",
        stderr(&again)
    );
    assert_ok(&target.verify(&other));
    let verify = target.verify(&public);
    assert_ok(&verify);
    assert!(
        stderr(&verify).contains("checked 2 narinfos and 2 realisations: 0 problems"),
        "{}",
        stderr(&verify)
    );
    let gc = target.gc_a_month_on();
    assert_ok(&gc);
    assert!(
        stderr(&gc).contains("deleted 2 of 2 paths and 2 NARs (and 2 build logs, 2 realisations)"),
        "{}",
        stderr(&gc)
    );
    assert!(
        !target.keys().iter().any(|k| is_realisation(k)),
        "{:?}",
        target.keys()
    );
}

#[test]
fn narinfo_is_byte_identical_to_what_nix_copy_writes() {
    // Uncompressed, Nix names the NAR by its hash just as we do, so every line must match,
    // including the deterministic ed25519 signature.
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, _] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    let out = run(nixbucket()
        .args([
            "push",
            "--compression",
            "none",
            "--cache",
            &format!("file://{}", ours.display()),
        ])
        .arg("--signing-key-file")
        .arg(&secret)
        .arg(&app));
    assert_ok(&out);
    let nix_url = format!(
        "file://{}?compression=none&secret-key={}",
        theirs.display(),
        secret.display()
    );
    assert_ok(&run(
        nix_command("nix").args(["copy", "--to", &nix_url, &app])
    ));
    for path in [&app, &lib] {
        let a = std::fs::read_to_string(narinfo_path(&ours, path)).unwrap();
        let b = std::fs::read_to_string(narinfo_path(&theirs, path)).unwrap();
        assert_eq!(a, b, "narinfo of {path} differs from Nix's");
    }
}

#[test]
fn xz_and_uncompressed_caches_are_accepted_by_nix() {
    for compression in ["xz", "none"] {
        let f = Fixture::new();
        assert_ok(&f.push(&["--compression", compression]));
        assert_ok(&f.copy_out(&f.public));
    }
}

#[test]
fn the_key_can_come_from_the_environment_and_the_path_from_a_result_link() {
    let f = Fixture::new();
    std::os::unix::fs::symlink(&f.app, f.tmp.path().join("result")).unwrap();
    let out = run(nixbucket()
        .current_dir(f.tmp.path())
        .env(
            "NIXBUCKET_SIGNING_KEY",
            std::fs::read_to_string(&f.secret).unwrap(),
        )
        .args(["push", "--cache", &f.url, "./result"]));
    assert_ok(&out);
    assert_ok(&f.copy_out(&f.public));
}

#[test]
fn a_key_file_others_can_read_is_warned_about_but_used() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    std::fs::set_permissions(&f.secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = f.push(&[]);
    assert_ok(&out);
    let warning = "can be read by other users (mode 644); `chmod 600` it";
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    assert_ok(&f.copy_out(&f.public));
}

#[test]
fn refuses_to_push_without_a_key_and_writes_nothing() {
    let f = Fixture::new();
    let out = run(nixbucket().args(["push", "--cache", &f.url, &f.app]));
    let err = assert_fails(&out);
    assert!(
        err.contains("no signing key") && err.contains("--signing-key-file"),
        "{err}"
    );
    assert!(
        list_files(f.cache())
            .iter()
            .all(|f| !f.ends_with(".narinfo"))
    );
}

#[test]
fn an_unsigned_push_is_refused_by_nix() {
    let f = Fixture::new();
    assert_ok(&run(nixbucket().args([
        "push",
        "--unsigned",
        "--cache",
        &f.url,
        &f.app,
    ])));
    let refused = f.copy_out(&f.public);
    assert_refused_unsigned(&refused);
}

#[test]
fn dry_run_lists_what_would_go_and_writes_nothing() {
    let f = Fixture::new();
    let out = f.push(&["--dry-run"]);
    assert_ok(&out);
    let listed = common::stdout(&out);
    for path in [&f.app, &f.lib, &f.data] {
        assert!(
            listed.contains(path.as_str()),
            "{path} missing from:\n{listed}"
        );
    }
    let files = list_files(f.cache());
    assert!(
        files
            .iter()
            .all(|f| !f.ends_with(".narinfo") && !f.starts_with("nar/")),
        "{files:?}"
    );
}

#[test]
fn bad_keys_get_one_clear_error_without_the_key_text() {
    let f = Fixture::new();
    let cases = [
        ("garbage", "not a key at all".to_owned()),
        ("public key given", f.public.clone()),
        ("truncated", "test-cache-1:AAAA".to_owned()),
    ];
    let push_with = |key_file: &Path| {
        run(nixbucket()
            .args(["push", "--cache", &f.url, "--signing-key-file"])
            .arg(key_file)
            .arg(&f.app))
    };
    for (case, text) in cases {
        let file = f.tmp.path().join(format!("{}.sk", nonce()));
        std::fs::write(&file, &text).unwrap();
        let err = assert_fails(&push_with(&file));
        assert!(err.contains("is not a Nix secret key"), "{case}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{case}: one line expected: {err}"
        );
        let secret_part = text.split(':').nth(1).unwrap_or(&text);
        assert!(
            secret_part.len() < 8 || !err.contains(secret_part),
            "{case}: key text leaked: {err}"
        );
    }
    let err = assert_fails(&push_with(Path::new("/nonexistent/key")));
    assert!(
        err.contains("could not read the signing key file /nonexistent/key"),
        "{err}"
    );
}

#[test]
fn a_path_outside_the_store_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let url = format!("file://{}", tmp.path().join("cache").display());
    let missing = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-not-built";
    let out = run(nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg(missing));
    let err = assert_fails(&out);
    assert!(
        err.contains(missing) && err.contains("not a valid path"),
        "{err}"
    );
    let out = run(nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg("/etc/hostname"));
    let err = assert_fails(&out);
    assert!(
        err.contains("/etc/hostname is not in the Nix store"),
        "{err}"
    );
}

#[test]
fn a_corrupt_store_path_is_reported_and_nothing_of_it_lands() {
    let f = Fixture::new();
    let (app, lib, data) = (&f.app, &f.lib, &f.data);
    // Tamper with lib behind Nix's back (as a broken disk or a stray `chmod +w` would).
    let victim = format!("{lib}/lib/big");
    run(std::process::Command::new("chmod").args(["u+w", lib, &format!("{lib}/lib"), &victim]));
    std::fs::write(&victim, b"tampered").unwrap();

    let err = assert_fails(&f.push(&[]));
    assert!(
        err.contains(lib.as_str()) && err.contains("corrupt"),
        "{err}"
    );
    assert!(
        !narinfo_path(f.cache(), lib).exists(),
        "narinfo of the corrupt path was written"
    );
    assert!(
        !narinfo_path(f.cache(), app).exists(),
        "narinfo of a path referencing it was written"
    );
    assert!(
        narinfo_path(f.cache(), data).exists(),
        "the independent path should still land"
    );
    let nars = list_files(f.cache())
        .into_iter()
        .filter(|f| f.starts_with("nar/"))
        .count();
    assert_eq!(nars, 2, "only the NARs of data and app may exist");
    let _ = run(nix_command("nix-store").args(["--repair-path", lib]));
}

/// `--zstd-long-window`: a 24 MiB path made of one 8 MiB random block three times over
/// compresses to about one block when zstd looks 32 MiB back (its default window at level 3 is
/// 2 MiB), and Nix unpacks it, the window included, into a fresh store.
#[rstest]
#[case::file(Backend::File)]
#[case::s3s_fs(Backend::S3sFs)]
fn a_long_distance_window_finds_repeats_far_apart_and_nix_unpacks_it(#[case] backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::new(backend, tmp.path());
    let (secret, public) = keygen(tmp.path(), "long-1");
    let path = common::nix::build(
        tmp.path(),
        &derivation(
            &format!("repeats-{}", nonce()),
            "head -c 8388608 /dev/urandom > block; cat block block block > $out",
        ),
    );
    assert_ok(&target.push_with(&secret, &path, &["--zstd-long-window", "25"]));
    let nar = target.nar_of(&path);
    let size = target.read(&nar).unwrap().len();
    assert!(size < 9 << 20, "{nar} is {size} bytes");
    let fresh = tmp.path().join("fresh");
    assert_ok(&target.copy_out(&public, &fresh, &path));
    assert!(fresh.join(&path[1..]).exists());

    // Beyond what Nix unpacks without being told, the option is refused.
    let refused = target.push_with(&secret, &path, &["--zstd-long-window", "28"]);
    assert_fails(&refused);
    assert!(
        stderr(&refused).contains("expected 0 (off) or 10 to 27"),
        "{}",
        stderr(&refused)
    );
}

/// `nix store ls --store CACHE` lists a pushed path's files: Nix fetches the NAR for that (it
/// reads no `.ls` listing, which push writes only with `--write-nar-listing`).
#[rstest]
#[case::file(Backend::File)]
#[case::s3s_fs(Backend::S3sFs)]
fn nix_store_ls_lists_a_pushed_path(#[case] backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::new(backend, tmp.path());
    let (secret, _) = keygen(tmp.path(), "ls-1");
    let path = common::nix::build(
        tmp.path(),
        &derivation(
            &format!("tree-{}", nonce()),
            "mkdir -p $out/sub; echo hi > $out/sub/file; ln -s sub/file $out/link",
        ),
    );
    assert_ok(&target.push(&secret, &path));
    let listed = run(nix_command("nix").args([
        "store",
        "ls",
        "--store",
        &target.nix_url,
        "-R",
        "-l",
        &path,
    ]));
    assert_ok(&listed);
    let text = stdout(&listed);
    assert!(text.contains("./sub/file"), "{text}");
    assert!(text.contains("./link -> sub/file"), "{text}");
}

/// `--write-nar-listing` writes `<hash>.ls` as `nix copy` does with write-nar-listing=true (the
/// same JSON; Nix 2.26 and later the same bytes), for a NAR streamed and a NAR sent whole; gc
/// deletes it with its path.
#[rstest]
#[case::file(Backend::File)]
#[case::s3s_fs(Backend::S3sFs)]
fn nar_listings_are_the_ones_nix_copy_writes_and_go_with_their_paths(#[case] backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::new(backend, tmp.path());
    let (secret, _) = keygen(tmp.path(), "ls-1");
    let tag = nonce();
    // A small tree (one request), and one over 1 MiB (streamed).
    let small = common::nix::build(
        tmp.path(),
        &derivation(
            &format!("listed-small-{tag}"),
            "mkdir -p $out/bin $out/empty; printf hi > $out/bin/run; chmod +x $out/bin/run; ln -s bin/run $out/link",
        ),
    );
    let large = common::nix::build(
        tmp.path(),
        &derivation(
            &format!("listed-large-{tag}"),
            "mkdir $out; head -c 2000000 /dev/urandom > $out/blob; echo x > $out/note",
        ),
    );
    for path in [&small, &large] {
        assert_ok(&target.push_with(&secret, path, &["--write-nar-listing"]));
        let theirs = tmp.path().join(format!("theirs-{}", hash_part(path)));
        assert_ok(&run(nix_command("nix").args([
            "copy",
            "--to",
            &format!("file://{}?write-nar-listing=true", theirs.display()),
            path,
        ])));
        let key = format!("{}.ls", hash_part(path));
        let ours: serde_json::Value =
            serde_json::from_slice(&target.read(&key).expect("no listing")).unwrap();
        let mut nix: serde_json::Value =
            serde_json::from_slice(&std::fs::read(theirs.join(&key)).unwrap()).unwrap();
        // Nix 2.35 also writes `"executable": false`, which earlier ones and we leave out.
        common::nix::without_executable_false(&mut nix);
        assert_eq!(ours, nix, "{path}");
    }
    let gc = target.gc_a_month_on();
    assert_ok(&gc);
    assert!(stderr(&gc).contains(", 2 NAR listings)"), "{}", stderr(&gc));
    let left: Vec<String> = target
        .keys()
        .into_iter()
        .filter(|k| k.ends_with(".ls"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
