//! The Travis snippet's lines run by bash the way Travis runs a job's phases: one after the
//! other in one shell. Its install entry downloads the static release binary from a release
//! server on 127.0.0.1 and checks it against NIXBUCKET_SHA256; after_success refuses to run it
//! once the build has changed it. Neither runs setup or push, so the store is not touched.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::release::{ReleaseServer, cargo_version, sha256_hex, static_binary};
use common::{run, stderr, stdout};

fn snippet() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ci-templates/travis/nixbucket.travis.yml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `- |` entries of a top-level key of the snippet, as the shell text Travis runs.
fn entries(phase: &str) -> Vec<String> {
    let text = snippet();
    let start = text
        .find(&format!("\n{phase}:\n"))
        .unwrap_or_else(|| panic!("the snippet has no {phase}"));
    let mut entries: Vec<String> = Vec::new();
    for line in text[start + phase.len() + 3..].lines() {
        if !line.is_empty() && !line.starts_with(' ') {
            break; // the next top-level key
        }
        if line == "  - |" {
            entries.push(String::new());
        } else if let (Some(entry), Some(body)) = (entries.last_mut(), line.strip_prefix("    ")) {
            entry.push_str(body);
            entry.push('\n');
        } else if let Some(entry) = entries.last_mut() {
            entry.push('\n');
        }
    }
    assert!(!entries.is_empty(), "{phase} has no `- |` entries");
    entries
}

/// Runs `script` in one bash, with a HOME of its own and the release on `server`.
fn bash(home: &Path, server: &ReleaseServer, sha256: &str, script: &str) -> Output {
    let mut cmd = Command::new("bash");
    for (key, _) in std::env::vars() {
        if key.starts_with("NIXBUCKET_") || key.starts_with("AWS_") || key.starts_with("TRAVIS") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["--noprofile", "--norc", "-c", script])
        .current_dir(home)
        .env("HOME", home)
        .env("TRAVIS_SECURE_ENV_VARS", "true")
        .env("NIXBUCKET_REPOSITORY", server.repository_url())
        .env("NIXBUCKET_SHA256", sha256);
    run(&mut cmd)
}

fn release_asset() -> String {
    format!("nixbucket-{}-unknown-linux-musl", std::env::consts::ARCH)
}

fn serve(bytes: Vec<u8>) -> ReleaseServer {
    ReleaseServer::start(
        "acme/nixbucket",
        &format!("v{}", cargo_version()),
        BTreeMap::from([(release_asset(), bytes)]),
    )
}

#[test]
fn before_install_downloads_the_pinned_release_binary_and_after_success_refuses_it_once_changed() {
    let binary = std::fs::read(static_binary()).unwrap();
    let server = serve(binary.clone());
    let tmp = tempfile::tempdir().unwrap();
    let mark: PathBuf = tmp.path().join("ran");
    let install = &entries("before_install")[0];
    let after_success = &entries("after_success")[0];
    let script = format!(
        "{install}\n\
         echo \"version: $(\"$NIXBUCKET\" --version)\"\n\
         # The build, as the same user, writes over the binary.\n\
         chmod u+w \"$NIXBUCKET\"\n\
         printf '#!/bin/sh\\ntouch {mark}\\n' > \"$NIXBUCKET\"\n\
         {after_success}",
        mark = mark.display()
    );

    let out = bash(tmp.path(), &server, &sha256_hex(&binary), &script);
    let log = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{log}");
    let url = format!(
        "{}/releases/download/v{}/{}",
        server.repository_url(),
        cargo_version(),
        release_asset()
    );
    assert!(
        log.contains(&format!(
            "nixbucket: downloaded {url} (its SHA-256 matches NIXBUCKET_SHA256)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("version: nixbucket {}\n", cargo_version())),
        "{log}"
    );
    assert!(
        log.contains("nixbucket: WARNING: NOT PUSHED: ")
            && log.contains("changed since before_install checked its SHA-256; it is not run"),
        "{log}"
    );
    assert!(
        !mark.exists(),
        "after_success ran the changed binary:\n{log}"
    );
}

#[test]
fn before_install_errors_on_a_release_binary_that_does_not_match_its_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let mark = tmp.path().join("ran");
    let planted = format!("#!/bin/sh\ntouch '{}'\n", mark.display()).into_bytes();
    let server = serve(planted.clone());
    let pin = sha256_hex(b"the binary release.yml built");

    let out = bash(tmp.path(), &server, &pin, &entries("before_install")[0]);
    let log = format!("{}\n{}", stdout(&out), stderr(&out));
    // Travis errors the build when a before_install entry ends non-zero.
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "its SHA-256 is {}, but NIXBUCKET_SHA256 is {pin}; it was not run",
            sha256_hex(&planted)
        )),
        "{log}"
    );
    assert!(log.contains("nixbucket: no binary (see above)"), "{log}");
    assert!(!log.contains("from source"), "{log}");
    assert!(!mark.exists(), "the refused binary ran:\n{log}");
}
