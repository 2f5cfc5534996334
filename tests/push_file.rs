//! `nixbucket push` to a `file://` cache, judged by the real Nix.

mod common;

use std::path::Path;

use common::nix::{build_closure, copy_into_fresh_store, nix_command, nonce};
use common::{assert_fails, assert_ok, keygen, list_files, nixbucket, run, stderr};

fn hash_part(store_path: &str) -> &str {
    &store_path["/nix/store/".len().."/nix/store/".len() + 32]
}

fn narinfo_path(cache: &Path, store_path: &str) -> std::path::PathBuf {
    cache.join(format!("{}.narinfo", hash_part(store_path)))
}

#[test]
fn pushed_closure_is_accepted_by_nix_and_refused_under_another_key() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "test-cache-1");
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());

    let out = run(nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    assert_ok(&out);
    assert!(stderr(&out).contains("pushed 3 paths"), "{}", stderr(&out));
    for path in [&app, &lib, &data] {
        assert!(narinfo_path(&cache, path).exists(), "no narinfo for {path}");
    }
    let files = list_files(&cache);
    assert!(files.contains(&"nix-cache-info".to_owned()), "{files:?}");
    assert_eq!(
        files
            .iter()
            .filter(|f| f.starts_with("nar/") && f.ends_with(".nar.zst"))
            .count(),
        3,
        "{files:?}"
    );
    assert!(
        !files.iter().any(|f| f.contains(".tmp")),
        "temporary files left behind: {files:?}"
    );

    let fresh = tmp.path().join("fresh");
    let copied = copy_into_fresh_store(&url, &public, &fresh, &app);
    assert_ok(&copied);
    assert!(
        fresh.join(&app[1..]).join("run").exists(),
        "the app's symlink did not arrive"
    );
    let big = std::fs::read(fresh.join(&lib[1..]).join("lib/big")).unwrap();
    assert_eq!(big.len(), 300_000);

    let (_, other_public) = keygen(tmp.path(), "other-cache-1");
    let refused = copy_into_fresh_store(&url, &other_public, &tmp.path().join("fresh2"), &app);
    assert!(
        stderr(&refused).contains("lacks a valid signature"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn a_second_push_uploads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let url = format!("file://{}", tmp.path().join("cache").display());
    let push = || {
        run(nixbucket()
            .args(["push", "--cache", &url, "--signing-key-file"])
            .arg(&secret)
            .arg(&app))
    };
    assert_ok(&push());
    let again = push();
    assert_ok(&again);
    assert!(
        stderr(&again).contains("pushed 0 paths"),
        "{}",
        stderr(&again)
    );
    assert!(
        stderr(&again).contains("3 already in the cache"),
        "{}",
        stderr(&again)
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
        let tmp = tempfile::tempdir().unwrap();
        let [app, ..] = build_closure(tmp.path(), &nonce());
        let (secret, public) = keygen(tmp.path(), "test-cache-1");
        let url = format!("file://{}", tmp.path().join("cache").display());
        let out = run(nixbucket()
            .args([
                "push",
                "--compression",
                compression,
                "--cache",
                &url,
                "--signing-key-file",
            ])
            .arg(&secret)
            .arg(&app));
        assert_ok(&out);
        assert_ok(&copy_into_fresh_store(
            &url,
            &public,
            &tmp.path().join("fresh"),
            &app,
        ));
    }
}

#[test]
fn the_key_can_come_from_the_environment_and_the_path_from_a_result_link() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "test-cache-1");
    std::os::unix::fs::symlink(&app, tmp.path().join("result")).unwrap();
    let url = format!("file://{}", tmp.path().join("cache").display());
    let out = run(nixbucket()
        .current_dir(tmp.path())
        .env(
            "NIXBUCKET_SIGNING_KEY",
            std::fs::read_to_string(&secret).unwrap(),
        )
        .args(["push", "--cache", &url, "./result"]));
    assert_ok(&out);
    assert_ok(&copy_into_fresh_store(
        &url,
        &public,
        &tmp.path().join("fresh"),
        &app,
    ));
}

#[test]
fn a_key_file_others_can_read_is_warned_about_but_used() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "test-cache-1");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let url = format!("file://{}", tmp.path().join("cache").display());
    let out = run(nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    assert_ok(&out);
    assert!(
        stderr(&out).contains("can be read by other users (mode 644); `chmod 600` it"),
        "{}",
        stderr(&out)
    );
    assert_ok(&copy_into_fresh_store(
        &url,
        &public,
        &tmp.path().join("fresh"),
        &app,
    ));
}

#[test]
fn refuses_to_push_without_a_key_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let cache = tmp.path().join("cache");
    let out = run(nixbucket().args([
        "push",
        "--cache",
        &format!("file://{}", cache.display()),
        &app,
    ]));
    let err = assert_fails(&out);
    assert!(
        err.contains("no signing key") && err.contains("--signing-key-file"),
        "{err}"
    );
    assert!(list_files(&cache).iter().all(|f| !f.ends_with(".narinfo")));
}

#[test]
fn an_unsigned_push_is_refused_by_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (_, public) = keygen(tmp.path(), "test-cache-1");
    let url = format!("file://{}", tmp.path().join("cache").display());
    assert_ok(&run(nixbucket().args([
        "push",
        "--unsigned",
        "--cache",
        &url,
        &app,
    ])));
    let refused = copy_into_fresh_store(&url, &public, &tmp.path().join("fresh"), &app);
    assert!(
        stderr(&refused).contains("lacks a valid signature"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn dry_run_lists_what_would_go_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    let cache = tmp.path().join("cache");
    let out = run(nixbucket().args([
        "push",
        "--dry-run",
        "--cache",
        &format!("file://{}", cache.display()),
        &app,
    ]));
    assert_ok(&out);
    let listed = common::stdout(&out);
    for path in [&app, &lib, &data] {
        assert!(
            listed.contains(path.as_str()),
            "{path} missing from:\n{listed}"
        );
    }
    assert!(
        list_files(&cache)
            .iter()
            .all(|f| !f.ends_with(".narinfo") && !f.starts_with("nar/"))
    );
}

#[test]
fn bad_keys_get_one_clear_error_without_the_key_text() {
    let tmp = tempfile::tempdir().unwrap();
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let (_, public) = keygen(tmp.path(), "test-cache-1");
    let url = format!("file://{}", tmp.path().join("cache").display());
    let cases = [
        ("garbage", "not a key at all".to_owned()),
        ("public key given", public.clone()),
        ("truncated", "test-cache-1:AAAA".to_owned()),
    ];
    for (case, text) in cases {
        let file = tmp.path().join(format!("{}.sk", nonce()));
        std::fs::write(&file, &text).unwrap();
        let out = run(nixbucket()
            .args(["push", "--cache", &url, "--signing-key-file"])
            .arg(&file)
            .arg(&app));
        let err = assert_fails(&out);
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
    let out = run(nixbucket().args([
        "push",
        "--cache",
        &url,
        "--signing-key-file",
        "/nonexistent/key",
        &app,
    ]));
    let err = assert_fails(&out);
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
    let tmp = tempfile::tempdir().unwrap();
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    let (secret, _) = keygen(tmp.path(), "test-cache-1");
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    // Tamper with lib behind Nix's back (as a broken disk or a stray `chmod +w` would).
    let victim = format!("{lib}/lib/big");
    run(std::process::Command::new("chmod").args(["u+w", &lib, &format!("{lib}/lib"), &victim]));
    std::fs::write(&victim, b"tampered").unwrap();

    let out = run(nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg(&app));
    let err = assert_fails(&out);
    assert!(err.contains(&lib) && err.contains("corrupt"), "{err}");
    assert!(
        !narinfo_path(&cache, &lib).exists(),
        "narinfo of the corrupt path was written"
    );
    assert!(
        !narinfo_path(&cache, &app).exists(),
        "narinfo of a path referencing it was written"
    );
    assert!(
        narinfo_path(&cache, &data).exists(),
        "the independent path should still land"
    );
    let nars = list_files(&cache)
        .into_iter()
        .filter(|f| f.starts_with("nar/"))
        .count();
    assert_eq!(nars, 2, "only the NARs of data and app may exist");
    let _ = run(nix_command("nix-store").args(["--repair-path", &lib]));
}
