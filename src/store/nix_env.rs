//! How Nix runs on this machine, as far as `setup` must know: through a daemon or not, whether
//! the daemon trusts the current user, and which nix.conf files take effect.

use std::path::PathBuf;

use super::{StoreError, nix_cli};

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
    /// The `post-build-hook` Nix runs after each build, if one is set.
    pub post_build_hook: Option<String>,
}

impl NixEnv {
    /// Asks Nix (its configuration and the store's answer to `nix store info`/`ping`) and the
    /// system (`id`).
    pub fn detect() -> Result<NixEnv, StoreError> {
        let version = nix_cli::nix_version()?;
        let config = config_json()?;
        let store = StoreInfo::parse(&nix_output(version.store_info_args())?);
        let user = id(&["-un"]).unwrap_or_default();
        let groups: Vec<String> = id(&["-Gn"])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let is_root = id(&["-u"]).as_deref() == Some("0");
        let daemon = store.daemon;
        // Nix 2.15 and later say outright whether the daemon trusts us; 2.8 does not, so we
        // work it out from trusted-users.
        let trusted = match store.trusted {
            Some(trusted) => trusted,
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
            post_build_hook: Some(setting(&config, "post-build-hook").join(" "))
                .filter(|hook| !hook.is_empty()),
        })
    }
}

/// Nix's `trusted-public-keys`, from its configuration alone: what `push` needs, without the
/// store and user queries of [`NixEnv::detect`].
pub fn trusted_public_keys() -> Result<Vec<String>, StoreError> {
    Ok(setting(&config_json()?, "trusted-public-keys"))
}

fn config_json() -> Result<serde_json::Value, StoreError> {
    let config = nix_output(nix_cli::nix_version()?.config_show_args())?.stdout;
    serde_json::from_str(&config).map_err(|e| StoreError::BadJson(e.to_string()))
}

/// What the store says of itself: `nix store info --json` (`{"url", "trusted"}`, trusted a
/// number up to Nix 2.32 and a boolean since), or the lines of `nix store ping` (on stderr in
/// Nix 2.8, "Trusted:" only from 2.15).
#[derive(Debug, PartialEq, Eq)]
struct StoreInfo {
    daemon: bool,
    trusted: Option<bool>,
}

impl StoreInfo {
    fn parse(out: &NixOutput) -> StoreInfo {
        let is_daemon = |url: &str| url == "daemon" || url.starts_with("unix://");
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(out.stdout.trim()) {
            if let Some(url) = json.get("url").and_then(|u| u.as_str()) {
                let trusted = match json.get("trusted") {
                    Some(serde_json::Value::Bool(b)) => Some(*b),
                    Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n == 1),
                    _ => None,
                };
                return StoreInfo {
                    daemon: is_daemon(url),
                    trusted,
                };
            }
        }
        let text = format!("{}\n{}", out.stdout, out.stderr);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(str::trim)
        };
        StoreInfo {
            daemon: field("Store URL:").is_some_and(is_daemon),
            trusted: field("Trusted:").map(|t| t == "1"),
        }
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
/// The system nix.conf setup writes: `nix.custom.conf` beside it when nix.conf includes that
/// file (Determinate Nix's installer owns nix.conf and leaves `nix.custom.conf` to the user),
/// else nix.conf itself.
pub fn system_conf_path() -> PathBuf {
    let dir = std::env::var_os("NIX_CONF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/nix"));
    let main = dir.join("nix.conf");
    let text = std::fs::read_to_string(&main).unwrap_or_default();
    match includes_custom_conf(&text) {
        true => dir.join(CUSTOM_CONF),
        false => main,
    }
}

/// The file Determinate Nix's nix.conf includes for the user's own settings.
const CUSTOM_CONF: &str = "nix.custom.conf";

/// Whether a nix.conf includes `nix.custom.conf` (`include` or `!include`, relative or by the
/// absolute path of the same name).
fn includes_custom_conf(text: &str) -> bool {
    text.lines().any(|line| {
        let mut words = line.split_whitespace();
        matches!(words.next(), Some("include" | "!include"))
            && words
                .next()
                .is_some_and(|f| f == CUSTOM_CONF || f.ends_with(&format!("/{CUSTOM_CONF}")))
    })
}

struct NixOutput {
    stdout: String,
    stderr: String,
}

fn nix_output(args: &[&str]) -> Result<NixOutput, StoreError> {
    let out = nix_cli::nix_command()
        .args(args)
        .output()
        .map_err(StoreError::Spawn)?;
    if !out.status.success() {
        return Err(StoreError::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(NixOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn id(args: &[&str]) -> Option<String> {
    let out = nix_cli::child_command("id").args(args).output().ok()?;
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
    fn determinate_s_custom_conf_is_written_where_nix_conf_includes_it() {
        // What Determinate's installer writes (its nix.conf ends with this line).
        assert!(includes_custom_conf(
            "extra-x = y\n!include nix.custom.conf\n"
        ));
        assert!(includes_custom_conf("include /etc/nix/nix.custom.conf"));
        assert!(!includes_custom_conf("# !include nix.custom.conf\n"));
        assert!(!includes_custom_conf(
            "!include other.conf\nsubstituters = x\n"
        ));
    }

    #[test]
    fn a_failing_nix_command_is_named_as_it_ran() {
        let err = StoreError::Command {
            command: ["config", "show", "--json"].join(" "),
            stderr: "error: unknown setting".into(),
        };
        assert_eq!(
            err.to_string(),
            "`nix config show --json` failed: error: unknown setting"
        );
    }

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

    fn output(stdout: &str, stderr: &str) -> NixOutput {
        NixOutput {
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        }
    }

    #[test]
    fn reads_what_each_version_says_of_its_store() {
        let cases = [
            // Nix 2.8: `nix store ping` on stderr, no "Trusted:" line.
            (
                output("", nix_fixture!("2.8.0", "store-ping.txt.stderr")),
                StoreInfo {
                    daemon: false,
                    trusted: None,
                },
            ),
            (
                output(
                    "",
                    nix_fixture!("2.8.0", "daemon-store-ping-untrusted.txt.stderr"),
                ),
                StoreInfo {
                    daemon: true,
                    trusted: None,
                },
            ),
            // Nix 2.26: `nix store info --json`, trusted as a number.
            (
                output(nix_fixture!("2.26.3", "store-info.json"), ""),
                StoreInfo {
                    daemon: false,
                    trusted: Some(true),
                },
            ),
            (
                output(
                    nix_fixture!("2.26.3", "daemon-store-info-untrusted.json"),
                    "",
                ),
                StoreInfo {
                    daemon: true,
                    trusted: Some(false),
                },
            ),
            (
                output(nix_fixture!("2.26.3", "daemon-store-info-trusted.json"), ""),
                StoreInfo {
                    daemon: true,
                    trusted: Some(true),
                },
            ),
            // Nix 2.34: trusted as a boolean; the deprecated `ping` still answers in text.
            (
                output(
                    nix_fixture!("2.34.8", "daemon-store-info-untrusted.json"),
                    "",
                ),
                StoreInfo {
                    daemon: true,
                    trusted: Some(false),
                },
            ),
            (
                output(nix_fixture!("2.34.8", "daemon-store-info-trusted.json"), ""),
                StoreInfo {
                    daemon: true,
                    trusted: Some(true),
                },
            ),
            (
                output(
                    "",
                    nix_fixture!("2.34.8", "daemon-store-ping-untrusted.txt.stderr"),
                ),
                StoreInfo {
                    daemon: true,
                    trusted: Some(false),
                },
            ),
            // Nix 2.35: as 2.34.
            (
                output(
                    nix_fixture!("2.35.2", "daemon-store-info-untrusted.json"),
                    "",
                ),
                StoreInfo {
                    daemon: true,
                    trusted: Some(false),
                },
            ),
            (
                output(nix_fixture!("2.35.2", "daemon-store-info-trusted.json"), ""),
                StoreInfo {
                    daemon: true,
                    trusted: Some(true),
                },
            ),
        ];
        for (i, (out, expected)) in cases.into_iter().enumerate() {
            assert_eq!(StoreInfo::parse(&out), expected, "case {i}");
        }
    }

    #[test]
    fn reads_the_settings_of_every_version() {
        for text in [
            nix_fixture!("2.8.0", "config.json"),
            nix_fixture!("2.26.3", "config.json"),
            nix_fixture!("2.34.8", "config.json"),
            nix_fixture!("2.35.2", "config.json"),
        ] {
            let config: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(setting(&config, "trusted-users"), ["root"]);
            assert!(setting(&config, "substituters").is_empty());
            assert_eq!(
                setting(&config, "trusted-public-keys"),
                ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]
            );
        }
    }
}
