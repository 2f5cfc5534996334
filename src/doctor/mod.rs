//! `nixbucket doctor`: why a cache does not work on this machine, one [`Check`] at a time, each
//! failure with the line that fixes it. The Nix side first (its version, the daemon, whether
//! the substituter is listed and taken, who fetches with which credentials), then the bucket
//! (credentials, region, clock, permissions, public reads, the lifecycle rule), the keys
//! against a sample of narinfos, Nix's remembered misses, and a real fetch through Nix.
//!
//! Facts are gathered first (Nix's answers, the daemon's process, the bucket's answers) and
//! judged by pure functions, so each verdict and its fix line is unit-tested without Nix or S3.

pub mod bucket;
pub mod fetch;
pub mod keys;
pub mod local;

use std::fmt;

use crate::cache::CacheUrl;
use crate::nix::PublicKey;

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but something is likely to bite.
    Warn,
    /// Stops the cache from working here.
    Fail,
    /// Not checked, and why is in the detail.
    Skipped,
}

/// One line of the doctor's report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about a warning or failure: a command or a line to add, never a secret.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skipped(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skipped,
            detail: detail.into(),
            fix: None,
        }
    }
}

impl fmt::Display for Check {
    /// `ok    name: detail`, and a failure's or warning's `      fix: …` on the next line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        };
        write!(f, "{status:<5} {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// What the doctor is asked to look at.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The cache; without it only Nix is checked.
    pub url: Option<CacheUrl>,
    /// The URL Nix reads the cache from when it is not `url` nor a server of setup's (a
    /// public endpoint in front of the bucket).
    pub substituter: Option<String>,
    /// Keys the cache's narinfos should verify with; empty: the keys Nix trusts.
    pub keys: Vec<PublicKey>,
    /// The public half of the key push signs with, when the doctor was given it.
    pub signer: Option<PublicKey>,
    /// The cache is meant to be readable by anyone.
    pub public: bool,
    /// Leave the bucket unwritten (no probe object).
    pub no_write: bool,
    /// Do not fetch a path through Nix.
    pub no_fetch: bool,
    /// The port of the `nixbucket serve` that setup recorded, if any.
    pub served_port: Option<u16>,
}

impl Options {
    /// The cache's public key as a fix line can name it: given, or the signing key's half.
    pub fn key_text(&self) -> String {
        (self.keys.first().or(self.signer.as_ref()))
            .map_or_else(|| "NAME:PUBLIC-KEY".to_owned(), ToString::to_string)
    }

    /// The `nixbucket setup` that points Nix at the cache, for fix lines.
    pub fn setup_command(&self) -> String {
        let url = self
            .url
            .as_ref()
            .map_or_else(|| "URL".to_owned(), ToString::to_string);
        format!(
            "nixbucket setup --cache {url} --public-key {}",
            self.key_text()
        )
    }
}

/// Every check, in the order a user reads them.
pub async fn run(opts: &Options) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut facts = local::Facts::gather(opts);
    let mut found = None;
    if opts.url.is_none() {
        found = facts.s3_substituter().map(|url| Options {
            url: Some(url),
            ..opts.clone()
        });
        if let Some(found) = &found {
            facts.locate(found);
        }
    }
    let opts = found.as_ref().unwrap_or(opts);
    checks.extend(facts.checks(opts));
    let mut probe = None;
    let sample = match &opts.url {
        Some(url @ CacheUrl::S3 { .. }) => {
            let found = bucket::run(url, opts).await;
            checks.extend(found.checks);
            probe = found.probe;
            found.sample
        }
        Some(url @ CacheUrl::File { .. }) => keys::sample_directory(url).await,
        None => {
            checks.push(Check::skipped(
                "cache",
                "no cache given, none recorded by setup, and no s3:// among Nix's \
                 substituters: pass --cache URL to check the bucket",
            ));
            Vec::new()
        }
    };
    if opts.url.is_some() {
        checks.push(keys::check(
            &sample,
            &facts.trusted_keys(opts),
            opts.signer.as_ref(),
            &facts.key_conf(),
        ));
        checks.push(fetch::stale_misses(&facts, opts, probe.as_ref()).await);
        checks.push(fetch::end_to_end(&facts, opts, &sample));
    }
    if std::env::var_os("GITHUB_ACTIONS").is_some_and(|v| v == "true") {
        checks.push(Check::skipped(
            "github-oidc",
            "the OIDC token's `sub` against the role's trust policy is not checked (it needs \
             iam:GetRole on the role)",
        ));
    }
    checks
}

/// Whether any check failed: the command then exits non-zero.
pub fn any_failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_prints_its_fix_on_the_next_line() {
        let check = Check::fail("list", "denied", "allow s3:ListBucket");
        assert_eq!(
            check.to_string(),
            "FAIL  list: denied\n      fix: allow s3:ListBucket"
        );
        assert_eq!(Check::ok("nix", "2.8").to_string(), "ok    nix: 2.8");
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["status"], "fail");
        assert_eq!(json["fix"], "allow s3:ListBucket");
        assert!(any_failed(&[Check::ok("a", ""), check]));
        assert!(!any_failed(&[Check::warn("a", "", "")]));
    }
}
