//! One module per subcommand, each with a clap `Args` struct and a `run` function.

pub mod keygen;
pub mod push;
pub mod setup;
pub mod sign;
mod signing_key;
pub mod verify;
