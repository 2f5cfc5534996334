//! One module per subcommand, each with a clap `Args` struct and a `run` function.

pub mod keygen;
pub mod push;
pub mod setup;
pub mod sign;
pub mod verify;
mod signing_key;
