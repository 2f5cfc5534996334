//! `nixbucket hook`: Nix's post-build-hook. Hands the paths Nix just built to the
//! `nixbucket serve` that `setup --serve --push-during-build` started, and exits 0 whatever
//! happens: the hook runs inside the build, and a cache problem must never fail or stall it.

use std::process::ExitCode;
use std::time::Duration;

use crate::serve::client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server to hand the paths to (`http://127.0.0.1:PORT`).
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// Give up after this many seconds; Nix waits for the hook before it goes on.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub timeout: u64,
}

/// The paths Nix hands the hook: `$OUT_PATHS` and `$DRV_PATH`. Nix 2.8 leaves `$OUT_PATHS`
/// empty; then the derivation stands for its outputs and the server looks them up.
fn hook_paths(var: impl Fn(&str) -> Option<String>) -> String {
    ["OUT_PATHS", "DRV_PATH"]
        .iter()
        .filter_map(|name| var(name))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Never returns an error: problems are one line in the build log, and `push` uploads at the
/// end whatever did not get through.
pub fn run(args: Args) -> ExitCode {
    let paths = hook_paths(|var| std::env::var(var).ok());
    if paths.trim().is_empty() {
        return ExitCode::SUCCESS;
    }
    let token = std::env::var(crate::serve::TOKEN_ENV).ok();
    let result = client::parse_addr(&args.server).and_then(|addr| {
        client::post_paths(
            addr,
            &paths,
            token.as_deref(),
            Duration::from_secs(args.timeout.clamp(1, 60)),
        )
    });
    if let Err(err) = result {
        eprintln!(
            "nixbucket hook: not uploaded during the build ({err}); `nixbucket push` will upload it at the end"
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each Nix version set, as captured by scripts/capture-nix-fixtures.sh.
    fn captured(env: &str) -> String {
        let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
        hook_paths(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn hands_over_what_every_version_sets() {
        let drv = "/nix/store/7rlvb9i0y45bdf658nw6pwrcrl16qybw-nixbucket-fixture-hooked.drv";
        let out = "/nix/store/pd4yps5ly57f7b0r8rqi383yky8gzw3k-nixbucket-fixture-hooked";
        let old = captured(include_str!(
            "../../tests/fixtures/nix/2.8.0/post-build-hook.env"
        ));
        assert_eq!(old.split_whitespace().collect::<Vec<_>>(), [drv]);
        for env in [
            include_str!("../../tests/fixtures/nix/2.26.3/post-build-hook.env"),
            include_str!("../../tests/fixtures/nix/2.34.8/post-build-hook.env"),
        ] {
            assert_eq!(
                captured(env).split_whitespace().collect::<Vec<_>>(),
                [out, drv]
            );
        }
    }
}
