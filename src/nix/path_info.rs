//! What Nix knows about one valid store path, wherever it is read from: the local store's
//! `nix path-info --json` or a cache's narinfo, which adds where the NAR lies
//! ([`crate::nix::NarInfo`]). Signatures sign this part alone.

use std::collections::BTreeSet;

use super::hash::Sha256;
use super::signing::{PublicKey, SecretKey, Signature};
use super::store_path::StorePath;

/// A valid path's metadata, as Nix's `ValidPathInfo` holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    /// SHA-256 of the uncompressed NAR; Nix checks it on every download.
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub signatures: Vec<Signature>,
    /// Content address (`fixed:r:sha256:…`, `text:sha256:…`), kept verbatim.
    pub ca: Option<String>,
}

impl PathInfo {
    /// The text a signature signs:
    /// `1;<store path>;<NarHash>;<NarSize>;<references, sorted, comma-separated>`.
    pub fn fingerprint(&self) -> String {
        let references: BTreeSet<&StorePath> = self.references.iter().collect();
        let references: Vec<String> = references.iter().map(|r| r.to_absolute()).collect();
        format!(
            "1;{};{};{};{}",
            self.path,
            self.nar_hash,
            self.nar_size,
            references.join(",")
        )
    }

    /// Signs with `key`, replacing any signature by a key of the same name.
    pub fn sign(&mut self, key: &SecretKey) {
        let signature = key.sign(&self.fingerprint());
        self.remove_signatures(key.name());
        self.signatures.push(signature);
    }

    pub fn remove_signatures(&mut self, key_name: &str) {
        self.signatures.retain(|sig| sig.key_name != key_name);
    }

    /// True if some signature verifies with the key in `keys` that has its name, which is how
    /// Nix decides whether to trust a path.
    pub fn verify(&self, keys: &[PublicKey]) -> bool {
        let fingerprint = self.fingerprint();
        self.signatures.iter().any(|sig| {
            keys.iter()
                .any(|key| key.name() == sig.key_name && key.verify(&fingerprint, sig))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_sorts_references_like_nix() {
        let path = StorePath::from_base_name("rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top").unwrap();
        let refs: Vec<StorePath> = [
            "rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top",
            "g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep",
            "2lwd6mnnxpk6z4rpl70mqcrfvkg8rj6m-fmt-ca-dir",
        ]
        .iter()
        .map(|b| StorePath::from_base_name(b).unwrap())
        .collect();
        let hash = Sha256::digest(b"");
        let info = PathInfo {
            path,
            nar_hash: hash,
            nar_size: 8,
            references: refs,
            deriver: None,
            signatures: Vec::new(),
            ca: None,
        };
        assert_eq!(
            info.fingerprint(),
            format!(
                "1;/nix/store/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top;{hash};8;\
                 /nix/store/2lwd6mnnxpk6z4rpl70mqcrfvkg8rj6m-fmt-ca-dir,\
                 /nix/store/g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep,\
                 /nix/store/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top"
            )
        );
    }
}
