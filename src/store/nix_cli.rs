//! The local Nix as this run finds it. Its `--version`, asked once per process, decides how
//! each command is spelled (`store info` or `store ping`, `config show` or `show-config`,
//! whether `path-info --json` takes `--json-format`), and every Nix child starts from
//! [`child_command`], which keeps nixbucket's secrets out of its environment.

use std::process::Command;
use std::sync::OnceLock;

use super::StoreError;

/// Environment variables that hold secrets and never reach a child process: a `nix` or `sudo`
/// earlier on PATH (another CI step may have put one there) must not see them.
pub const SECRET_VARS: &[&str] = &[
    "NIXBUCKET_SIGNING_KEY",
    "INPUT_SIGNING-KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    // The Action's token input, the hook's hand-over token and the runner's own tokens.
    "INPUT_GITHUB-TOKEN",
    "NIXBUCKET_SERVE_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
];

/// A command for an external program, with no secret in its environment.
pub fn child_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in SECRET_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// `nix …` with the `nix-command` feature on, which Nix 2.8 and later need for the new CLI.
pub fn nix_command() -> Command {
    let mut cmd = child_command("nix");
    cmd.args(["--extra-experimental-features", "nix-command"]);
    cmd
}

/// Which implementation of Nix: they share the CLI but not the version numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Nix,
    /// `nix (Lix, like Nix) 2.93.0`: forked from Nix 2.18, numbered on from 2.90.
    Lix,
    /// `nix (Determinate Nix 3.22.2) 2.35.2`: upstream Nix's version last, which is what counts.
    Determinate,
}

/// What `nix --version` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NixVersion {
    pub flavour: Flavour,
    /// Major, minor, patch of the trailing version number.
    pub version: (u32, u32, u32),
    /// The whole line, for messages.
    pub text: String,
}

impl NixVersion {
    /// Parses `nix (Nix) 2.34.8`, `nix (Lix, like Nix) 2.93.0`,
    /// `nix (Determinate Nix 3.22.2) 2.35.2`; a suffix such as `2.35.0pre20260101_abc` counts
    /// by its numbers.
    pub fn parse(text: &str) -> Option<NixVersion> {
        let line = text.lines().find(|l| !l.trim().is_empty())?.trim();
        let flavour = if line.contains("Lix") {
            Flavour::Lix
        } else if line.contains("Determinate") {
            Flavour::Determinate
        } else {
            Flavour::Nix
        };
        let last = line.rsplit(' ').next()?;
        let mut numbers = last.split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = numbers.next()??;
        let minor = numbers.next()??;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(NixVersion {
            flavour,
            version: (major, minor, patch),
            text: line.to_owned(),
        })
    }

    /// Upstream Nix's version (Determinate's trailing one); `None` for Lix.
    fn upstream(&self) -> Option<(u32, u32, u32)> {
        (self.flavour != Flavour::Lix).then_some(self.version)
    }

    /// The `--json-format` to ask `nix path-info --json` for: Nix 2.33 added the flag and
    /// warns without it ("will become an error"). Format 2 is the newest that 2.33 and 2.34
    /// know; 2.35's format 3 differs from it only in how signatures are written.
    pub fn path_info_json_format(&self) -> Option<u32> {
        self.upstream()
            .is_some_and(|v| v >= (2, 33, 0))
            .then_some(2)
    }

    /// Nix 2.33 on has an S3 store over curl in every build (its requests signed only where it
    /// was built with AWS authentication); before, and in Lix, only builds with the AWS SDK do.
    pub fn has_curl_s3(&self) -> bool {
        self.upstream().is_some_and(|v| v >= (2, 33, 0))
    }

    /// `nix store info` (Nix 2.19 on); before, and in Lix, `nix store ping`.
    pub fn store_info_args(&self) -> &'static [&'static str] {
        if self.upstream().is_some_and(|v| v >= (2, 19, 0)) {
            &["store", "info", "--json"]
        } else {
            &["store", "ping"]
        }
    }

    /// The installable for one output of a derivation: `DRV^OUT` (Nix 2.13 on, and Lix);
    /// before, the derivation itself, which means all its outputs (2.8's `nix` takes no
    /// `DRV!OUT`).
    pub fn output_installable(&self, drv: &str, output: &str) -> String {
        let caret = match self.flavour {
            Flavour::Lix => true,
            _ => self.version >= (2, 13, 0),
        };
        if caret {
            format!("{drv}^{output}")
        } else {
            drv.to_owned()
        }
    }

    /// `nix config show` (Nix 2.20 on, and Lix); before, `nix show-config`.
    pub fn config_show_args(&self) -> &'static [&'static str] {
        let new = match self.flavour {
            Flavour::Lix => true,
            _ => self.version >= (2, 20, 0),
        };
        if new {
            &["config", "show", "--json"]
        } else {
            &["show-config", "--json"]
        }
    }
}

/// The local Nix's version, asked once per process.
pub fn nix_version() -> Result<&'static NixVersion, StoreError> {
    static VERSION: OnceLock<Result<NixVersion, String>> = OnceLock::new();
    let found = VERSION.get_or_init(|| {
        let out = nix_command()
            .arg("--version")
            .output()
            .map_err(|e| StoreError::Spawn(e).to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "`nix --version` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        NixVersion::parse(&text)
            .ok_or_else(|| format!("`nix --version` printed {:?}, not a version", text.trim()))
    });
    found.as_ref().map_err(|e| StoreError::Version(e.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_line_of_each_flavour() {
        let v = NixVersion::parse("nix (Nix) 2.34.8\n").unwrap();
        assert_eq!((v.flavour, v.version), (Flavour::Nix, (2, 34, 8)));
        let v = NixVersion::parse("nix (Lix, like Nix) 2.93.0").unwrap();
        assert_eq!((v.flavour, v.version), (Flavour::Lix, (2, 93, 0)));
        let v = NixVersion::parse("nix (Determinate Nix 3.22.2) 2.35.2").unwrap();
        assert_eq!((v.flavour, v.version), (Flavour::Determinate, (2, 35, 2)));
        let v = NixVersion::parse("nix (Nix) 2.35.0pre20260101_abcdef").unwrap();
        assert_eq!(v.version, (2, 35, 0));
        assert_eq!(NixVersion::parse("nix (Nix) unknown"), None);
        assert_eq!(NixVersion::parse(""), None);
    }

    #[test]
    fn spells_each_command_as_the_version_knows_it() {
        let nix = |text| NixVersion::parse(text).unwrap();
        let old = nix("nix (Nix) 2.8.0");
        assert_eq!(old.path_info_json_format(), None);
        assert_eq!(old.store_info_args(), ["store", "ping"]);
        assert_eq!(old.config_show_args(), ["show-config", "--json"]);
        let mid = nix("nix (Nix) 2.26.3");
        assert_eq!(mid.path_info_json_format(), None);
        assert_eq!(mid.store_info_args(), ["store", "info", "--json"]);
        assert_eq!(mid.config_show_args(), ["config", "show", "--json"]);
        assert_eq!(nix("nix (Nix) 2.33.0").path_info_json_format(), Some(2));
        assert!(nix("nix (Nix) 2.33.0").has_curl_s3());
        assert!(!mid.has_curl_s3());
        let det = nix("nix (Determinate Nix 3.15.0) 2.33.0");
        assert_eq!(det.path_info_json_format(), Some(2));
        let lix = nix("nix (Lix, like Nix) 2.93.0");
        assert_eq!(lix.path_info_json_format(), None);
        assert_eq!(lix.store_info_args(), ["store", "ping"]);
        assert_eq!(lix.config_show_args(), ["config", "show", "--json"]);
    }

    #[test]
    fn an_output_is_named_as_each_version_takes_it() {
        let drv = "/nix/store/rqm0ccb4hz7pwkb0k688c9f9xzssq7v5-x.drv";
        let of = |line: &str| {
            NixVersion::parse(line)
                .unwrap()
                .output_installable(drv, "out")
        };
        assert_eq!(of("nix (Nix) 2.8.0"), drv);
        assert_eq!(of("nix (Nix) 2.13.0"), format!("{drv}^out"));
        assert_eq!(of("nix (Lix, like Nix) 2.93.0"), format!("{drv}^out"));
        assert_eq!(
            of("nix (Determinate Nix 3.22.2) 2.35.2"),
            format!("{drv}^out")
        );
    }

    #[test]
    fn every_captured_version_line_parses() {
        for (text, version) in [
            (
                include_str!("../../tests/fixtures/nix/2.8.0/version.txt"),
                (2, 8, 0),
            ),
            (
                include_str!("../../tests/fixtures/nix/2.26.3/version.txt"),
                (2, 26, 3),
            ),
            (
                include_str!("../../tests/fixtures/nix/2.34.8/version.txt"),
                (2, 34, 8),
            ),
        ] {
            assert_eq!(NixVersion::parse(text).unwrap().version, version, "{text}");
        }
    }

    #[test]
    fn children_get_no_secret() {
        let cmd = child_command("env");
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.to_string_lossy().into_owned())
            .collect();
        for var in SECRET_VARS {
            assert!(removed.iter().any(|r| r == var), "{var} reaches children");
        }
    }
}
