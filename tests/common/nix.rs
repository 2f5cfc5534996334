//! Building small closures with the real Nix, and checking what Nix accepts from a cache.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{NIX_CONFIG, assert_ok, nixbucket, run, stdout};

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

/// A Nix configuration of a test's own: a "system" nix.conf under NIX_CONF_DIR, a user one, and
/// a private narinfo disk cache, so a test sees exactly what `setup` writes, never touches
/// /etc/nix, and never reads another test's cached lookups.
pub struct NixConfig {
    pub dir: PathBuf,
}

impl NixConfig {
    pub fn new(root: &Path, system_conf: &str) -> Self {
        let dir = root.join("conf");
        for sub in ["etc", "user", "xdg-cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("etc/nix.conf"), system_conf).unwrap();
        NixConfig { dir }
    }

    pub fn system_conf_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }

    pub fn user_conf(&self) -> PathBuf {
        self.dir.join("user/nix.conf")
    }

    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env_remove("NIX_CONFIG")
            .env("NIX_CONF_DIR", self.system_conf_dir())
            .env("NIX_USER_CONF_FILES", self.user_conf())
            .env("XDG_CACHE_HOME", self.dir.join("xdg-cache"))
    }

    pub fn nix(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        self.apply(&mut cmd);
        cmd
    }

    pub fn nixbucket(&self) -> Command {
        let mut cmd = nixbucket();
        self.apply(&mut cmd);
        cmd
    }
}

/// A nix-daemon of a test's own on a private socket, with an environment that has no AWS
/// variables, reading `conf_dir/nix.conf`; stopped on drop.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_daemon(conf_dir: &Path, dir: &Path) -> Daemon {
    let socket = dir.join("daemon.sock");
    let home = dir.join("daemon-home");
    std::fs::create_dir_all(&home).unwrap();
    let child = Command::new("nix-daemon")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("NIX_CONF_DIR", conf_dir)
        .env("NIX_DAEMON_SOCKET_PATH", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nix-daemon");
    let daemon = Daemon { child, socket };
    for _ in 0..200 {
        if daemon.socket.exists() {
            return daemon;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nix-daemon did not create {}", daemon.socket.display());
}

/// A NAR listing without `"executable": false`, which Nix 2.35 writes of every plain file and
/// earlier versions (and nixbucket) leave out: readers take a missing one as false.
pub fn without_executable_false(listing: &mut serde_json::Value) {
    match listing {
        serde_json::Value::Object(map) => {
            if map.get("executable") == Some(&serde_json::Value::Bool(false)) {
                map.remove("executable");
            }
            map.values_mut().for_each(without_executable_false);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_executable_false),
        _ => {}
    }
}
