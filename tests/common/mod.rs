//! Test environment helpers: the real Nix, the real nixbucket binary, a throwaway directory.
#![allow(dead_code)] // each test binary uses a different subset

pub mod cache;
pub mod fault_proxy;
pub mod machine;
pub mod moto;
pub mod nix;
pub mod release;
pub mod s3;
pub mod store;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Nix settings every test runs with: no substituters, no sandbox, builds as root (a fresh
/// machine has no `nixbld` group). Given as `NIX_CONFIG`, or as the nix.conf of a test's own.
pub const NIX_CONFIG: &str =
    "substituters =\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group =\n";

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

/// `nixbucket verify [--deep]` of the server's test bucket, trusting `public`.
pub fn verify_s3(server: &dyn store::S3Store, public: &str, deep: bool) -> Output {
    let mut cmd = nixbucket();
    cmd.envs(server.env()).args([
        "verify",
        "--cache",
        &server.cache_url(),
        "--public-key",
        public,
    ]);
    if deep {
        cmd.arg("--deep");
    }
    run(&mut cmd)
}

/// The 32-character hash part of an absolute store path: its narinfo is `<hash part>.narinfo`.
pub fn hash_part(store_path: &str) -> &str {
    &store_path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// Deterministic bytes (xorshift) that differ at every offset: a lost, reordered or misplaced
/// byte shows. Each `seed` gives another sequence.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a command, returning its output; panics only if it could not be started.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not start {:?}: {e}", cmd.get_program()));
    log_output(cmd.get_program(), &out);
    out
}

/// Appends a child's stdout and stderr to `$NIXBUCKET_TEST_LOG_DIR/out/`, where
/// scripts/check-secrets.sh looks for registered secrets after the suite.
pub fn log_output(program: &std::ffi::OsStr, out: &Output) {
    let Some(dir) = std::env::var_os("NIXBUCKET_TEST_LOG_DIR") else {
        return;
    };
    let dir = Path::new(&dir).join("out");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{}.log", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        use std::io::Write;
        let _ = writeln!(f, "=== {}", program.to_string_lossy());
        let _ = f.write_all(&out.stdout);
        let _ = f.write_all(&out.stderr);
    }
}

/// Waits for a child started with piped output and logs what it printed (see [`log_output`]).
pub fn finish(child: std::process::Child) -> Output {
    let out = child.wait_with_output().expect("wait for a child");
    log_output(std::ffi::OsStr::new("(spawned)"), &out);
    out
}

/// Appends a log a child wrote to a file of its own (a background server's, a hook's) to the
/// same place as [`log_output`], so the secrets check reads it too. A missing file is skipped.
pub fn log_file(path: &Path) {
    if let Ok(bytes) = std::fs::read(path) {
        let out = Output {
            status: std::process::ExitStatus::default(),
            stdout: bytes,
            stderr: Vec::new(),
        };
        log_output(path.as_os_str(), &out);
    }
}

/// Records a secret that must never appear in any output (see [`log_output`]).
pub fn register_secret(secret: &str) {
    s3::register_secret(secret);
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

/// Asserts that Nix refused a path for want of a trusted signature, in any version's words:
/// "lacks a valid signature" (2.8–2.26), "lacks a signature by a trusted key" (2.34).
#[track_caller]
pub fn assert_refused_unsigned(out: &Output) {
    let err = stderr(out);
    assert!(
        !out.status.success()
            && (err.contains("lacks a valid signature")
                || err.contains("lacks a signature by a trusted key")),
        "expected Nix to refuse an unsigned path\nstdout:\n{}\nstderr:\n{err}",
        stdout(out)
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
    if let Ok(text) = std::fs::read_to_string(&secret) {
        register_secret(text.trim().split_once(':').map_or("", |(_, k)| k));
    }
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

/// `name=value` and `name<<DELIM … DELIM` entries of a runner step file, as the runner reads them.
pub fn parse_step_file(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            for l in lines.by_ref() {
                if l == delimiter {
                    break;
                }
                value.push(l);
            }
            map.insert(name.to_owned(), value.join("\n"));
        } else if let Some((name, value)) = line.split_once('=') {
            map.insert(name.to_owned(), value.to_owned());
        }
    }
    map
}

/// Whether the server `setup` recorded in `state_file` still runs: its process is there and
/// not a zombie (an orphan's parent here may not reap it). False when none was recorded.
pub fn recorded_server_running(state_file: &Path) -> bool {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state_file).unwrap()).unwrap();
    let Some(pid) = state["serve"]["pid"].as_u64() else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}
