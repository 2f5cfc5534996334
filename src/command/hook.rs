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

/// Never returns an error: problems are one line in the build log, and `push` uploads at the
/// end whatever did not get through.
pub fn run(args: Args) -> ExitCode {
    // Nix 2.8 leaves $OUT_PATHS empty; then the derivation stands for its outputs and the
    // server looks them up.
    let paths = ["OUT_PATHS", "DRV_PATH"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .collect::<Vec<_>>()
        .join(" ");
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
