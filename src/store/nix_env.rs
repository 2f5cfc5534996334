//! How Nix runs on this machine, as far as `setup` must know: through a daemon or not, whether
//! the daemon trusts the current user, and which nix.conf files take effect.

use std::path::PathBuf;
use std::process::Command;

use super::StoreError;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NixEnv {
    /// Builds and substitutions go through a nix-daemon (multi-user Nix).
    pub daemon: bool,
    /// The daemon accepts substituters and keys from this user (root, or in `trusted-users`).
    pub trusted: bool,
    pub user: String,
    pub is_root: bool,
    pub substituters: Vec<String>,
    pub trusted_substituters: Vec<String>,
    pub trusted_public_keys: Vec<String>,
}

impl NixEnv {
    /// Asks Nix (`nix show-config`, `nix store ping`) and the system (`id`).
    pub fn detect() -> Result<NixEnv, StoreError> {
        let config = nix_output(&["show-config", "--json"])?.stdout;
        let config: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| StoreError::BadJson(e.to_string()))?;
        // Nix 2.8 prints the ping's answer on stderr, later versions on stdout.
        let ping = nix_output(&["store", "ping"])?;
        let ping = format!("{}\n{}", ping.stdout, ping.stderr);
        let user = id(&["-un"]).unwrap_or_default();
        let groups: Vec<String> = id(&["-Gn"])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let is_root = id(&["-u"]).as_deref() == Some("0");
        let daemon = ping
            .lines()
            .any(|l| l.trim() == "Store URL: daemon" || l.contains("Store URL: unix://"));
        // Newer Nix says outright whether the daemon trusts us; 2.8 does not, so we work it out.
        let trusted = match ping.lines().find_map(|l| l.strip_prefix("Trusted: ")) {
            Some(t) => t.trim() == "1",
            None => {
                is_root
                    || !daemon
                    || setting(&config, "trusted-users").iter().any(|entry| {
                        entry == "*"
                            || *entry == user
                            || entry
                                .strip_prefix('@')
                                .is_some_and(|g| groups.iter().any(|mine| mine == g))
                    })
            }
        };
        Ok(NixEnv {
            daemon,
            trusted,
            user,
            is_root,
            substituters: setting(&config, "substituters"),
            trusted_substituters: setting(&config, "trusted-substituters"),
            trusted_public_keys: setting(&config, "trusted-public-keys"),
        })
    }
}

/// The nix.conf of the current user: the first of `$NIX_USER_CONF_FILES`, else
/// `$XDG_CONFIG_HOME/nix/nix.conf`, else `~/.config/nix/nix.conf`.
pub fn user_conf_path() -> Option<PathBuf> {
    if let Some(files) = std::env::var_os("NIX_USER_CONF_FILES") {
        if let Some(first) = std::env::split_paths(&files).next() {
            return Some(first);
        }
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("nix/nix.conf"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/nix/nix.conf"))
}

/// The system-wide nix.conf, which the daemon reads: `$NIX_CONF_DIR/nix.conf`, else
/// `/etc/nix/nix.conf`.
pub fn system_conf_path() -> PathBuf {
    std::env::var_os("NIX_CONF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/nix"))
        .join("nix.conf")
}

struct NixOutput {
    stdout: String,
    stderr: String,
}

fn nix_output(args: &[&str]) -> Result<NixOutput, StoreError> {
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(args)
        .output()
        .map_err(StoreError::Spawn)?;
    if !out.status.success() {
        return Err(StoreError::Failed {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(NixOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn id(args: &[&str]) -> Option<String> {
    let out = Command::new("id").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A setting's value as a list of words; `nix show-config --json` wraps values in
/// `{"value": …}` (2.8 and later), older versions print them bare.
fn setting(config: &serde_json::Value, name: &str) -> Vec<String> {
    let value = &config[name];
    let value = value.get("value").unwrap_or(value);
    match value {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str())
            .map(str::to_owned)
            .collect(),
        serde_json::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrapped_and_bare_setting_values() {
        let config: serde_json::Value = serde_json::json!({
            "trusted-users": {"value": ["root", "@wheel"], "defaultValue": ["root"]},
            "substituters": "https://a https://b",
        });
        assert_eq!(setting(&config, "trusted-users"), ["root", "@wheel"]);
        assert_eq!(setting(&config, "substituters"), ["https://a", "https://b"]);
        assert!(setting(&config, "missing").is_empty());
    }
}
