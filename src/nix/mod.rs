//! The formats of a Nix binary cache, as Nix 2.x reads them: nixbase32, hashes, store paths,
//! NAR serialisation, narinfo text and ed25519 signing keys. No I/O beyond reading the path
//! being serialised, and no async.

pub mod base32;
pub mod conf;
pub mod derivation;
pub mod hash;
pub mod layout;
pub mod nar;
pub mod narinfo;
pub mod path_info;
pub mod signing;
pub mod store_path;

pub use hash::{AnyHash, Sha256};
pub use layout::HashPart;
pub use narinfo::{Compression, NarInfo};
pub use path_info::PathInfo;
pub use signing::{PublicKey, SecretKey, Signature};
pub use store_path::{STORE_DIR, StorePath};
