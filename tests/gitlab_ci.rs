//! The GitLab CI template run by `gitlab-ci-local` with the shell executor, in a throwaway git
//! repository: a job that extends `.nixbucket` builds with the real Nix, and its after_script
//! pushes to a real S3 server. The push diffs the shared /nix/store, so the test script runs
//! this binary with the serial group (see scripts/test.sh).
//!
//! Without NIXBUCKET_BINARY, the job downloads the release binary from a release server on
//! 127.0.0.1 that serves the static binary `scripts/build-release.sh` builds, as release.yml
//! does, and checks it against its pinned SHA-256.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::nix::{derivation, nonce};
use common::release::{ReleaseServer, cargo_version, sha256_hex, static_binary};
use common::s3::S3Server;
use common::store::S3Store;
use common::{keygen, list_files, run, stderr, stdout};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn git(dir: &Path, args: &[&str]) {
    let out = run(Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@nixbucket.invalid",
        ])
        .args(args)
        .current_dir(dir));
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
}

/// A project that includes the template and has one job extending it; `job_yaml` is extra YAML
/// for the job (indented by two spaces), `script` extra lines of its script (indented by four).
fn project(dir: &Path, tag: &str, job_yaml: &str, script: &str) {
    std::fs::copy(
        repo().join("ci-templates/gitlab/nixbucket.gitlab-ci.yml"),
        dir.join("nixbucket.gitlab-ci.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("app.nix"),
        derivation(&format!("gitlab-app-{tag}"), &format!("echo {tag} > $out")),
    )
    .unwrap();
    // Debian's Nix cannot read s3:// stores itself, so the build turns substituters off; what
    // the test is about is the push.
    std::fs::write(
        dir.join(".gitlab-ci.yml"),
        format!(
            "include:\n  - local: nixbucket.gitlab-ci.yml\n\n\
             build:\n  extends: .nixbucket\n{job_yaml}  script:\n    \
             - nix-build --no-out-link --option substituters '' app.nix > built-path\n{script}"
        ),
    )
    .unwrap();
    git(dir, &["init", "-q", "-b", "main", "."]);
    git(
        dir,
        &[
            "remote",
            "add",
            "origin",
            "https://gitlab.example/group/app.git",
        ],
    );
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "init"]);
}

/// How the job gets its binary.
enum Binary {
    /// NIXBUCKET_BINARY names the binary cargo built for the tests.
    Given,
    /// None is given: the template downloads it from the releases of `repository` (a URL),
    /// pinned by NIXBUCKET_SHA256.
    Release { repository: String, sha256: String },
}

fn gitlab_ci_local(dir: &Path, s3: &S3Server, secret: &str, conf: &Path) -> Output {
    gitlab_ci_local_with(dir, s3, secret, conf, &Binary::Given)
}

fn gitlab_ci_local_with(
    dir: &Path,
    s3: &S3Server,
    secret: &str,
    conf: &Path,
    binary: &Binary,
) -> Output {
    let mut cmd = Command::new("gitlab-ci-local");
    for (key, _) in std::env::vars() {
        if key.starts_with("NIXBUCKET_") || key.starts_with("AWS_") || key.starts_with("CI_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["--shell-executor-no-image", "build"])
        .current_dir(dir)
        .env_remove("NIX_CONFIG")
        .env("NIX_CONF_DIR", conf.join("etc"))
        .env("NIX_USER_CONF_FILES", conf.join("user/nix.conf"))
        .env("NIXBUCKET_CACHE", s3.cache_url())
        .env("NIXBUCKET_SIGNING_KEY", secret);
    match binary {
        Binary::Given => {
            cmd.env("NIXBUCKET_BINARY", env!("CARGO_BIN_EXE_nixbucket"));
        }
        Binary::Release { repository, sha256 } => {
            cmd.env("NIXBUCKET_REPOSITORY", repository)
                .env("NIXBUCKET_SHA256", sha256);
        }
    }
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

fn nix_conf(root: &Path) -> PathBuf {
    let conf = root.join("conf");
    std::fs::create_dir_all(conf.join("etc")).unwrap();
    std::fs::create_dir_all(conf.join("user")).unwrap();
    std::fs::write(conf.join("etc/nix.conf"), common::NIX_CONFIG).unwrap();
    conf
}

fn narinfos(s3: &S3Server) -> Vec<String> {
    list_files(&s3.root().join(s3.bucket()))
        .into_iter()
        .filter(|f| f.ends_with(".narinfo"))
        .collect()
}

#[test]
fn a_job_extending_the_template_builds_and_its_after_script_pushes() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret_file, _) = keygen(tmp.path(), "gitlab-test-1");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let dir = tmp.path().join("project");
    std::fs::create_dir(&dir).unwrap();
    let conf = nix_conf(tmp.path());
    project(
        &dir,
        &nonce(),
        "  variables:\n    NIXBUCKET_PUSH_UNPROTECTED: \"true\"\n",
        "",
    );

    let out = gitlab_ci_local(&dir, &s3, secret.trim(), &conf);
    let log = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{log}");
    let built = std::fs::read_to_string(dir.join("built-path")).unwrap();
    let built = built.trim();
    assert!(built.starts_with("/nix/store/"), "{built:?}\n{log}");
    let hash = &built["/nix/store/".len()..][..32];
    let key = format!("{hash}.narinfo");
    assert!(
        narinfos(&s3).contains(&key),
        "{built} was not pushed: {:?}\n{log}",
        narinfos(&s3)
    );
    let narinfo = std::fs::read_to_string(s3.object_path(&key)).unwrap();
    assert!(
        narinfo.contains(&format!("StorePath: {built}")),
        "{narinfo}"
    );
    assert!(narinfo.contains("Sig: gitlab-test-1:"), "{narinfo}");
    // before_script pointed Nix at the cache.
    let user_conf = std::fs::read_to_string(conf.join("user/nix.conf")).unwrap();
    // The bucket through a server of the job (the template's default): the CI user's Nix has
    // no S3 store with the job's credentials.
    assert!(
        user_conf
            .lines()
            .any(|l| l.starts_with("extra-substituters = ")
                && l.contains(" http://127.0.0.1:")
                && l.contains("/nixbucket-mirror-")),
        "not the mirror, then the server: {user_conf}"
    );
    assert!(
        log.contains("through a nixbucket serve of this job"),
        "{log}"
    );
    assert!(log.contains("pushed "), "{log}");
    // The server lived from before_script to after_script, where push asked it for the hit
    // rate and stopped it.
    assert!(
        log.contains("cache: "),
        "push found no server to stop:\n{log}"
    );
    assert!(
        !server_running(&dir),
        "after_script left the server running"
    );
    let base64 = secret.trim().split_once(':').unwrap().1;
    assert!(!log.contains(base64), "the signing key leaked:\n{log}");
}

#[test]
fn an_unprotected_ref_pulls_and_does_not_push() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret_file, _) = keygen(tmp.path(), "gitlab-unprot-1");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let dir = tmp.path().join("project");
    std::fs::create_dir(&dir).unwrap();
    let conf = nix_conf(tmp.path());
    project(&dir, &nonce(), "", "");

    let out = gitlab_ci_local(&dir, &s3, secret.trim(), &conf);
    let log = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{log}");
    assert!(dir.join("built-path").is_file(), "{log}");
    assert!(
        log.contains("not pushing: main is not a protected ref"),
        "{log}"
    );
    assert!(narinfos(&s3).is_empty(), "{:?}", narinfos(&s3));
    // A job that does not push still ends the server setup started (`nixbucket finish`).
    assert!(
        log.contains("cache: "),
        "finish found no server to stop:\n{log}"
    );
    assert!(
        !server_running(&dir),
        "after_script left the server running"
    );
}

/// The asset release.yml builds for this machine, as the template names it.
fn release_asset() -> String {
    format!("nixbucket-{}-unknown-linux-musl", std::env::consts::ARCH)
}

#[rstest::rstest]
#[case::after_script_runs_the_kept_copy(false)]
#[case::after_script_downloads_again_when_the_script_changed_the_kept_copy(true)]
fn a_job_without_a_binary_downloads_the_pinned_release_binary_and_pushes_with_it(
    #[case] script_changes_the_kept_copy: bool,
) {
    let binary = std::fs::read(static_binary()).unwrap();
    let asset = release_asset();
    let tag = format!("v{}", cargo_version());
    let release = ReleaseServer::start(
        "acme/nixbucket",
        &tag,
        BTreeMap::from([(asset.clone(), binary.clone())]),
    );
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret_file, _) = keygen(tmp.path(), "gitlab-release-1");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let dir = tmp.path().join("project");
    std::fs::create_dir(&dir).unwrap();
    let conf = nix_conf(tmp.path());
    let kept = dir.join(format!(".nixbucket/release/{}/{asset}", cargo_version()));
    // The job's script, as the same user, puts something else where the download was kept.
    let change = format!("    - rm -f {0} && echo planted > {0}\n", kept.display());
    project(
        &dir,
        &nonce(),
        "  variables:\n    NIXBUCKET_PUSH_UNPROTECTED: \"true\"\n",
        if script_changes_the_kept_copy {
            &change
        } else {
            ""
        },
    );

    let pinned = Binary::Release {
        repository: release.repository_url(),
        sha256: sha256_hex(&binary),
    };
    let out = gitlab_ci_local_with(&dir, &s3, secret.trim(), &conf, &pinned);
    let log = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{log}");
    let url = format!(
        "{}/releases/download/{tag}/{asset}",
        release.repository_url()
    );
    assert!(
        log.contains(&format!(
            "nixbucket: downloaded {url} (its SHA-256 matches NIXBUCKET_SHA256)"
        )),
        "{log}"
    );
    // Downloaded following the redirect. after_script checks a copy of what before_script
    // kept against the pin: it runs that, or downloads again when the copy no longer matches.
    let download = [
        format!("/acme/nixbucket/releases/download/{tag}/{asset}"),
        format!("/storage/{asset}"),
    ];
    let times = if script_changes_the_kept_copy { 2 } else { 1 };
    let expected: Vec<String> = (0..times).flat_map(|_| download.clone()).collect();
    assert_eq!(release.requests(), expected, "{log}");
    assert_eq!(std::fs::read(&kept).unwrap(), binary, "{log}");
    // The downloaded binary set the cache up and pushed the build.
    let built = std::fs::read_to_string(dir.join("built-path")).unwrap();
    let key = format!("{}.narinfo", common::hash_part(built.trim()));
    assert!(narinfos(&s3).contains(&key), "{log}");
    assert!(log.contains("pushed "), "{log}");
    assert!(!log.contains("from source"), "{log}");
    assert!(
        !server_running(&dir),
        "after_script left the server running"
    );
}

#[test]
fn a_release_binary_that_does_not_match_its_pin_fails_the_job_and_never_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mark = tmp.path().join("ran");
    // What someone able to upload to the release might put there: it leaves a mark if run.
    let planted = format!("#!/bin/sh\ntouch '{}'\n", mark.display()).into_bytes();
    let asset = release_asset();
    let tag = format!("v{}", cargo_version());
    let release = ReleaseServer::start(
        "acme/nixbucket",
        &tag,
        BTreeMap::from([(asset.clone(), planted.clone())]),
    );
    let s3 = S3Server::start();
    let dir = tmp.path().join("project");
    std::fs::create_dir(&dir).unwrap();
    let conf = nix_conf(tmp.path());
    project(&dir, &nonce(), "", "");

    let pin = sha256_hex(b"the binary release.yml built");
    let pinned = Binary::Release {
        repository: release.repository_url(),
        sha256: pin.clone(),
    };
    let out = gitlab_ci_local_with(&dir, &s3, "", &conf, &pinned);
    let log = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{log}");
    let url = format!(
        "{}/releases/download/{tag}/{asset}",
        release.repository_url()
    );
    assert!(
        log.contains(&format!(
            "nixbucket: ERROR: REFUSED {url}: its SHA-256 is {}, but NIXBUCKET_SHA256 is {pin}; it was not run",
            sha256_hex(&planted)
        )),
        "{log}"
    );
    assert!(!mark.exists(), "the refused binary ran:\n{log}");
    // No build from source either: a mismatch is an attack or a mistake, not a missing asset.
    assert!(!log.contains("from source"), "{log}");
    assert!(!dir.join("built-path").exists(), "the script ran:\n{log}");
    assert!(
        !dir.join(format!(".nixbucket/release/{}/{asset}", cargo_version()))
            .exists(),
        "the refused binary was kept:\n{log}"
    );
}

/// Whether the server `setup` recorded in the template's state file is still running.
fn server_running(project: &std::path::Path) -> bool {
    common::recorded_server_running(&project.join(".nixbucket/state"))
}
