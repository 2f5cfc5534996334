//! What differs between Nix versions, seen from the outside: a `nix` that refuses `--json`
//! without `--json-format` (as Nix 2.33 on says a future release will) still serves every
//! command, an older one is never handed the flag, and no Nix child sees a secret.
//! Runs on every Nix version of the test script.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::nix::{NixConfig, build_closure, nonce};
use common::{assert_ok, keygen, register_secret, run, stderr, stdout};

/// Nix 2.33 added `--json-format`; this asks the real Nix for its version.
fn real_nix_knows_json_format() -> bool {
    let out = run(std::process::Command::new("/usr/bin/nix").arg("--version"));
    let text = stdout(&out);
    let version = text.trim().rsplit(' ').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    !text.contains("Lix") && (major, minor) >= (2, 33)
}

/// A `nix` and a `nix-store` first on PATH that log their arguments and environment, then run
/// the real one; the `nix` refuses `path-info --json` without `--json-format` where the real one
/// knows the flag.
fn wrappers(dir: &Path, log: &Path, strict: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for program in ["nix", "nix-store"] {
        let refuse = if strict && program == "nix" {
            r#"case " $* " in *" path-info "*" --json "*) case " $* " in *" --json-format "*) ;; *) echo "error: '--json' requires '--json-format'" >&2; exit 1;; esac;; esac"#
        } else {
            ""
        };
        let script = format!(
            "#!/bin/sh\n{{ echo \"=== {program} $*\"; env; }} >>'{}'\n{refuse}\nexec /usr/bin/{program} \"$@\"\n",
            log.display()
        );
        let path = dir.join(program);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn every_nix_command_is_spelled_for_the_version_and_sees_no_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let strict = real_nix_knows_json_format();
    let bin = tmp.path().join("bin");
    let log = tmp.path().join("calls.log");
    wrappers(&bin, &log, strict);
    let conf = NixConfig::new(tmp.path(), common::NIX_CONFIG);
    let (secret_file, _) = keygen(tmp.path(), "ours-1");
    let signing_key = std::fs::read_to_string(&secret_file).unwrap();
    let aws_secret = format!("aws-secret-{}", nonce());
    let aws_token = format!("aws-token-{}", nonce());
    register_secret(&aws_secret);
    register_secret(&aws_token);
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let with_secrets = |cmd: &mut std::process::Command| {
        cmd.env("PATH", &path)
            .env("NIXBUCKET_SIGNING_KEY", signing_key.trim())
            .env("INPUT_SIGNING-KEY", signing_key.trim())
            .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
            .env("AWS_SESSION_TOKEN", &aws_token);
    };
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    let state = tmp.path().join("state.json");

    let mut setup = conf.nixbucket();
    with_secrets(&mut setup);
    let out = run(setup
        .args(["setup", "--cache", &url, "--state-file"])
        .arg(&state));
    assert_ok(&out);
    let [app, ..] = build_closure(tmp.path(), &nonce());
    let mut push = conf.nixbucket();
    with_secrets(&mut push);
    let out = run(push.args(["push", "--cache", &url, &app]));
    assert_ok(&out);
    assert!(stderr(&out).contains("pushed 3 paths"), "{}", stderr(&out));

    let calls = std::fs::read_to_string(&log).unwrap();
    let commands: Vec<&str> = calls.lines().filter(|l| l.starts_with("=== ")).collect();
    let json: Vec<&&str> = commands.iter().filter(|c| c.contains(" --json")).collect();
    assert!(
        json.iter().any(|c| c.contains("path-info")),
        "no path-info call: {commands:#?}"
    );
    for call in &json {
        let has_format = call.contains("--json-format");
        if call.contains("path-info") {
            assert_eq!(has_format, strict, "{call}");
        }
    }
    for secret in [signing_key.trim(), &aws_secret, &aws_token] {
        let (_, secret_part) = secret.split_once(':').unwrap_or(("", secret));
        assert!(
            !calls.contains(secret_part),
            "a secret reached a Nix child (calls: {commands:#?})"
        );
    }
    for name in [
        "NIXBUCKET_SIGNING_KEY=",
        "INPUT_SIGNING-KEY=",
        "AWS_SECRET_ACCESS_KEY=",
        "AWS_SESSION_TOKEN=",
    ] {
        assert!(
            !calls.lines().any(|l| l.starts_with(name)),
            "{name} reached a Nix child"
        );
    }
}
