//! The formats as the real Nix judges them, on whichever Nix is first on PATH (the host's, and
//! each Nix root's in CI): the NARs we serialise against `nix-store --dump` and `nix-hash`, and
//! the narinfos we sign against `nix store verify` and the signatures Nix makes itself. The
//! unit tests of `nixbucket::nix` run without Nix; these keep Nix as the judge.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::nix::{build, derivation, nix_command};
use common::{assert_ok, pseudo_random, register_secret, run, stderr};
use nixbucket::nix::hash::{Sha256, Sha256Writer};
use nixbucket::nix::nar::{BUFFER_SIZE, dump_path};
use nixbucket::nix::{NarInfo, SecretKey};
use rstest::rstest;

/// The output of a Nix command that must succeed.
fn nix_ok(cmd: &mut Command) -> Vec<u8> {
    let out = run(cmd);
    assert_ok(&out);
    out.stdout
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds a tree under `root` (which does not exist yet) and returns the path to archive.
type Build = fn(&Path) -> PathBuf;

#[rstest]
#[case::regular_file(|root: &Path| { write(root, b"hello\n", 0o644); root.into() })]
#[case::empty_file(|root: &Path| { write(root, b"", 0o644); root.into() })]
#[case::executable_file(|root: &Path| { write(root, b"#!/bin/sh\n", 0o755); root.into() })]
#[case::only_group_execute_is_not_executable(|root: &Path| { write(root, b"x", 0o654); root.into() })]
#[case::padding_lengths(|root: &Path| {
    fs::create_dir(root).unwrap();
    for len in [1usize, 7, 8, 9, 15, 16, 17] {
        write(&root.join(format!("len{len:02}")), &pseudo_random(len, len as u64), 0o644);
    }
    root.into()
})]
#[case::symlink_root(|root: &Path| { symlink("some/where", root).unwrap(); root.into() })]
#[case::symlinks_relative_absolute_dangling(|root: &Path| {
    fs::create_dir(root).unwrap();
    write(&root.join("target"), b"t", 0o644);
    symlink("target", root.join("rel")).unwrap();
    symlink("/nix/store/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top", root.join("abs")).unwrap();
    symlink("../nowhere/at/all", root.join("dangling")).unwrap();
    symlink("d", root.join("to-dir")).unwrap();
    fs::create_dir(root.join("d")).unwrap();
    root.into()
})]
#[case::nested_and_empty_dirs(|root: &Path| {
    fs::create_dir_all(root.join("a/b/c/d")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    write(&root.join("a/b/file"), b"deep\n", 0o644);
    write(&root.join("a/b/c/d/run"), b"exec", 0o755);
    write(&root.join("top"), b"top", 0o444);
    root.into()
})]
#[case::non_utf8_name(|root: &Path| {
    use std::os::unix::ffi::OsStrExt;
    fs::create_dir(root).unwrap();
    write(&root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1", 0o644);
    write(&root.join(OsStr::from_bytes(b"\xff\xfe")), b"", 0o644);
    write(&root.join("cafe"), b"ascii", 0o644);
    root.into()
})]
#[case::bytewise_order(|root: &Path| {
    fs::create_dir(root).unwrap();
    for name in ["a", "B", "_", "Z", "a.b", "a-b", "ab", "A", "é", "z", "~", "0", "a b"] {
        write(&root.join(name), name.as_bytes(), 0o644);
    }
    fs::create_dir(root.join("aa")).unwrap();
    write(&root.join("aa/x"), b"", 0o644);
    root.into()
})]
#[case::file_larger_than_buffer(|root: &Path| {
    fs::create_dir(root).unwrap();
    write(&root.join("big"), &pseudo_random(3 * BUFFER_SIZE + 12_345, 7), 0o755);
    write(&root.join("small"), b"after the big one", 0o644);
    root.into()
})]
#[case::many_small_files(|root: &Path| {
    fs::create_dir(root).unwrap();
    for i in 0..3000 {
        write(&root.join(format!("f{i}")), &pseudo_random(i % 200, i as u64), 0o644);
    }
    root.into()
})]
fn matches_nix_store_dump(#[case] build: Build) {
    let tmp = tempfile::tempdir().unwrap();
    let path = build(&tmp.path().join("root"));

    let mut ours = Vec::new();
    let len = dump_path(&path, &mut ours).unwrap();
    let theirs = nix_ok(nix_command("nix-store").arg("--dump").arg(&path));
    assert_eq!(len, ours.len() as u64);
    assert!(
        ours == theirs,
        "NAR of {} differs from nix-store --dump",
        path.display()
    );

    let mut hashing = Sha256Writer::new(io::sink());
    let hashed_len = dump_path(&path, &mut hashing).unwrap();
    let (_, hash, counted) = hashing.finish();
    assert_eq!((hashed_len, counted), (len, len));
    let nix_hash = nix_ok(
        nix_command("nix-hash")
            .args(["--type", "sha256", "--base32"])
            .arg(&path),
    );
    assert_eq!(
        hash.to_nix_base32(),
        String::from_utf8(nix_hash).unwrap().trim()
    );
    assert_eq!(hash, Sha256::digest(&theirs));
}

/// Builds a two-path closure (an output that references another) and returns the top path.
fn build_two_paths(dir: &Path, tag: &str) -> String {
    let dep = derivation(&format!("nixbucket-{tag}-dep"), "echo dep > $out");
    let top = derivation(&format!("nixbucket-{tag}-top"), "echo ${dep} > $out");
    build(dir, &format!("let dep = {dep}; in {top}"))
}

/// A fresh signing key, registered so that the suite's secrets check looks for it.
fn generate_key(name: &str) -> SecretKey {
    let key = SecretKey::generate(name).unwrap();
    register_secret(key.to_nix_string().as_str());
    key
}

fn narinfo_files(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .collect();
    files.sort();
    files
}

#[test]
fn nix_trusts_narinfos_we_sign_with_a_generated_key() {
    let tmp = tempfile::tempdir().unwrap();
    let top = build_two_paths(tmp.path(), "sign-ours");
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    nix_ok(nix_command("nix").args(["copy", "--to", &format!("{url}?compression=none"), &top]));

    let key = generate_key("nixbucket-test-1");
    let files = narinfo_files(&cache);
    assert_eq!(files.len(), 2);
    for file in &files {
        let mut info = NarInfo::parse(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert!(info.signatures.is_empty());
        info.sign(&key);
        std::fs::write(file, info.to_string()).unwrap();
    }
    let public = key.to_public().to_string();
    let verify = |trusted: &str| {
        run(nix_command("nix").args([
            "store",
            "verify",
            "--store",
            &url,
            "--trusted-public-keys",
            trusted,
            "--all",
        ]))
    };
    let accepted = verify(&public);
    assert_ok(&accepted);
    let other = generate_key("nixbucket-test-1").to_public().to_string();
    let rejected = verify(&other);
    assert!(!rejected.status.success());
    assert!(stderr(&rejected).contains("is untrusted"));
}

#[test]
fn nix_signs_with_a_generated_secret_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let top = build_two_paths(tmp.path(), "sign-nix");
    let key = generate_key("nixbucket-test-2");
    let key_file = tmp.path().join("sk");
    std::fs::write(&key_file, format!("{}\n", key.to_nix_string().as_str())).unwrap();
    let cache = tmp.path().join("cache");
    let to = format!(
        "file://{}?compression=none&secret-key={}",
        cache.display(),
        key_file.display()
    );
    nix_ok(nix_command("nix").args(["copy", "--to", &to, &top]));

    let public = [key.to_public()];
    let files = narinfo_files(&cache);
    assert_eq!(files.len(), 2);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.to_string(), text);
        assert!(info.verify(&public), "{text}");
        let mut ours = info.clone();
        ours.sign(&key);
        assert_eq!(ours, info, "our signature differs from Nix's");
    }
}
