//! Building small closures with the real Nix, and checking what Nix accepts from a cache.

use std::path::Path;
use std::process::{Command, Output};

use super::{NIX_CONFIG, assert_ok, run, stdout};

pub fn nix_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("NIX_CONFIG", NIX_CONFIG);
    cmd
}

/// A unique tag so each test builds store paths no other test has built.
pub fn nonce() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a Nix expression file's default output and returns the store path.
pub fn build(dir: &Path, expr: &str) -> String {
    let file = dir.join(format!("{}.nix", nonce()));
    std::fs::write(&file, expr).unwrap();
    let out = run(nix_command("nix-build").arg("--no-out-link").arg(&file));
    assert_ok(&out);
    stdout(&out).trim().to_owned()
}

/// Nix for a derivation of `/bin/sh` doing `script`, with the given extra attributes.
pub fn derivation(name: &str, script: &str) -> String {
    format!(
        r#"builtins.derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = ["-c" ''{script}'']; }}"#
    )
}

/// A three-path closure: app → lib → data, with a directory, an executable, a symlink, an empty
/// file and a reference in each. Returns the store paths [app, lib, data].
pub fn build_closure(dir: &Path, tag: &str) -> [String; 3] {
    let data = derivation(&format!("data-{tag}"), &format!("echo {tag} > $out"));
    let lib = format!(
        r#"let data = {data}; in {}"#,
        derivation(
            &format!("lib-{tag}"),
            "mkdir -p $out/lib $out/empty; echo ${data} > $out/lib/ref; : > $out/lib/zero; printf '#!/bin/sh\\necho hi\\n' > $out/lib/run; chmod +x $out/lib/run; ln -s lib/ref $out/link; head -c 300000 /dev/zero | tr '\\0' x > $out/lib/big"
        )
    );
    let app = format!(
        r#"let lib = {lib}; in {}"#,
        derivation(
            &format!("app-{tag}"),
            "mkdir $out; ln -s ${lib}/lib/run $out/run; echo ${lib} > $out/deps"
        )
    );
    let app_path = build(dir, &app);
    let closure = query_closure(&app_path);
    let find = |prefix: &str| {
        closure
            .iter()
            .find(|p| p.contains(&format!("-{prefix}-{tag}")))
            .cloned()
            .expect("path in closure")
    };
    [app_path.clone(), find("lib"), find("data")]
}

/// `nix-store -qR`.
pub fn query_closure(path: &str) -> Vec<String> {
    let out = run(nix_command("nix-store").args(["-qR", path]));
    assert_ok(&out);
    stdout(&out).lines().map(str::to_owned).collect()
}

/// Copies `path` from `cache_url` into a fresh store under `store_root`, trusting only
/// `public_key`: the proof that Nix accepts what we wrote.
pub fn copy_into_fresh_store(
    cache_url: &str,
    public_key: &str,
    store_root: &Path,
    path: &str,
) -> Output {
    run(nix_command("nix")
        .args(["copy", "--from", cache_url, "--to"])
        .arg(store_root)
        .args(["--option", "trusted-public-keys", public_key, path]))
}
