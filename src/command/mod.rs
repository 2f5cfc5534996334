//! One module per subcommand, each with a clap `Args` struct and a `run` function.

pub mod gc;
pub mod github_action;
pub mod hook;
pub mod keygen;
pub mod push;
pub mod serve;
pub mod setup;
pub mod sign;
mod signing_key;
pub mod verify;
