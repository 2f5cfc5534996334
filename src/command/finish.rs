//! `nixbucket finish`: the end of a job that does not push (an unprotected branch, a fork's
//! pull request, a failed build a template does not push). It ends what `setup` started, the
//! background server and the restore mirror, as `push` does before it uploads.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::state;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file `setup` recorded the store in [default: $RUNNER_TEMP/nixbucket-state.json on
    /// GitHub Actions, else ~/.cache/nixbucket/state.json].
    #[arg(long, env = "NIXBUCKET_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = args.state_file.unwrap_or_else(state::default_path);
    let lines = crate::push::job::finish_unpushed(&path);
    if lines.is_empty() {
        eprintln!(
            "nothing to finish: setup started no server and made no mirror ({})",
            path.display()
        );
    }
    for line in lines {
        eprintln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
