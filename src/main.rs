use std::process::ExitCode;

fn main() -> ExitCode {
    nixbucket::cli::main()
}
