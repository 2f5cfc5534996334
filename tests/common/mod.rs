//! Test environment helpers: the real Nix, the real nixbucket binary, a throwaway directory.
#![allow(dead_code)] // each test binary uses a different subset

pub mod nix;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const NIX_CONFIG: &str = "substituters =\nexperimental-features = nix-command\nsandbox = false";

/// The nixbucket binary with a clean environment: no NIXBUCKET_* or AWS_* from the outside.
pub fn nixbucket() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixbucket"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NIXBUCKET_") || key.starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NIX_CONFIG", NIX_CONFIG);
    cmd
}

/// Runs a command, returning its output; panics only if it could not be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and shows both streams when it was not.
#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

#[track_caller]
pub fn assert_fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure\nstdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    stderr(out)
}

/// A fresh key pair made by `nixbucket keygen`: (secret key file, public key text).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = dir.join(format!("{name}.sk"));
    let out = run(nixbucket()
        .args(["keygen", name, "--secret-file"])
        .arg(&secret));
    assert_ok(&out);
    (secret, stdout(&out).trim().to_owned())
}

/// Files below `root` (relative, sorted), for asserting what a cache holds.
pub fn list_files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
