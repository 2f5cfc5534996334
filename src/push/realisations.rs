//! Realisations of content-addressed derivations: which store path a derivation's output
//! became when it was built. A cache without them gives `ca-derivations` users no hits, since
//! their Nix cannot know the output's path before building. Nix keeps them in
//! `realisations/<id>.doi`, where the id is `sha256:<derivation hash modulo its inputs>!<output>`
//! (not the `.drv` file's hash): the local Nix is asked for them (`nix realisation info`)
//! rather than that hash computed here. They are uploaded as Nix prints them, with our
//! signature added as Nix signs them (over the JSON without its `signatures`): `nix copy
//! --from` the cache into a store that requires signatures refuses a realisation without one.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use crate::cache::Cache;
use crate::nix::{PublicKey, SecretKey, Signature, StorePath, derivation};
use crate::store::{self, PathInfo, StoreError};

/// How many realisations go up at once.
const CONCURRENT: usize = 16;
pub const DIR: &str = "realisations/";
pub const TYPE: &str = "application/json";

/// One realisation, as the local Nix printed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Realisation {
    /// `sha256:<hex>!<output>`.
    pub id: String,
    pub out_path: StorePath,
    pub json: Value,
}

impl Realisation {
    pub fn key(&self) -> String {
        format!("{DIR}{}.doi", self.id)
    }

    /// What a signature signs: the JSON without `signatures`, keys sorted and no spaces, which
    /// is how Nix's JSON library writes it.
    pub fn fingerprint(&self) -> String {
        let mut json = self.json.clone();
        if let Some(object) = json.as_object_mut() {
            object.remove("signatures");
        }
        json.to_string()
    }

    pub fn signatures(&self) -> Vec<String> {
        self.json["signatures"]
            .as_array()
            .map(|sigs| {
                sigs.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nix keeps the signatures as a sorted set of `name:base64` strings.
    fn set_signatures(&mut self, mut signatures: Vec<String>) {
        signatures.sort();
        signatures.dedup();
        self.json["signatures"] = Value::from(signatures);
    }

    /// Drops the signatures by keys named `key_name`.
    pub fn remove_signatures(&mut self, key_name: &str) {
        let prefix = format!("{key_name}:");
        let kept = self
            .signatures()
            .into_iter()
            .filter(|s| !s.starts_with(&prefix))
            .collect();
        self.set_signatures(kept);
    }

    /// Signs with `key`, replacing any signature by a key of the same name.
    pub fn sign(&mut self, key: &SecretKey) {
        let signature = key.sign(&self.fingerprint()).to_string();
        self.remove_signatures(key.name());
        let mut signatures = self.signatures();
        signatures.push(signature);
        self.set_signatures(signatures);
    }

    /// True if some signature verifies with the key in `keys` that has its name.
    pub fn verify(&self, keys: &[PublicKey]) -> bool {
        let fingerprint = self.fingerprint();
        self.signatures()
            .iter()
            .filter_map(|s| Signature::parse(s).ok())
            .any(|sig| keys.iter().any(|key| key.verify(&fingerprint, &sig)))
    }

    /// The object's body, as Nix writes it.
    pub fn body(&self) -> Bytes {
        Bytes::from(self.json.to_string())
    }
}

/// The outputs whose path their derivation does not fix (content-addressed ones) of `drvs`,
/// as (derivation, output name).
fn floating_outputs<'a>(drvs: impl IntoIterator<Item = &'a StorePath>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for drv in drvs {
        let Ok(text) = std::fs::read_to_string(drv.to_absolute()) else {
            continue;
        };
        let Ok(outputs) = derivation::outputs(&text) else {
            continue;
        };
        for output in outputs.into_iter().filter(|o| o.path.is_none()) {
            found.push((drv.to_absolute(), output.name));
        }
    }
    found
}

/// The realisations of the content-addressed outputs in `closure`, by id. Two derivations
/// can name one output, and both are looked for:
/// - the deriver a path records, which is the derivation *resolved* after its inputs were
///   built (their paths written in). Only the derivers of paths with a `CA` are read, so a
///   job without content-addressed derivations pays nothing;
/// - the derivation as instantiated, which is what another job evaluating the same
///   expression asks the cache about first. Those are among `new_derivations` (the ones new
///   since setup), which are read only when the closure has a floating output.
pub fn find(
    closure: &[PathInfo],
    new_derivations: &[StorePath],
) -> Result<Vec<Realisation>, StoreError> {
    let derivers: BTreeSet<&StorePath> = closure
        .iter()
        .filter(|info| info.ca.is_some())
        .filter_map(|info| info.deriver.as_ref())
        .collect();
    let outputs = floating_outputs(derivers.iter().copied());
    if outputs.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = ask_nix(&outputs)?;
    let instantiated = floating_outputs(new_derivations.iter().filter(|d| !derivers.contains(d)));
    // One unbuilt output (a failed build) fails Nix's whole answer: then each is asked alone.
    match ask_nix(&instantiated) {
        Ok(more) => found.extend(more),
        Err(_) => {
            for output in &instantiated {
                found.extend(ask_nix(std::slice::from_ref(output)).unwrap_or_default());
            }
        }
    }
    let paths: BTreeSet<&StorePath> = closure.iter().map(|info| &info.path).collect();
    let mut by_id = std::collections::BTreeMap::new();
    for realisation in found.into_iter().filter(|r| paths.contains(&r.out_path)) {
        by_id.insert(realisation.id.clone(), realisation);
    }
    Ok(by_id.into_values().collect())
}

/// `nix realisation info` of the (derivation, output) pairs given; none asks nothing.
fn ask_nix(outputs: &[(String, String)]) -> Result<Vec<Realisation>, StoreError> {
    if outputs.is_empty() {
        return Ok(Vec::new());
    }
    let version = store::nix_version()?;
    let installables: BTreeSet<String> = outputs
        .iter()
        .map(|(drv, out)| version.output_installable(drv, out))
        .collect();
    let out = store::nix_command()
        .args(["--extra-experimental-features", "ca-derivations"])
        .args(["realisation", "info", "--json"])
        .args(&installables)
        .output()
        .map_err(StoreError::Spawn)?;
    if !out.status.success() {
        return Err(StoreError::Realisations {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    parse(&out.stdout)
}

/// A realisation as stored under `key` in a cache: it parses, its id is the one its name
/// says, and it names an output path.
pub fn read(key: &str, bytes: &[u8]) -> Result<Realisation, String> {
    let mut array = b"[".to_vec();
    array.extend_from_slice(bytes);
    array.push(b']');
    let found = parse(&array).map_err(|e| e.to_string())?;
    let Some(realisation) = found.into_iter().next() else {
        return Err("not a realisation (no id or outPath)".to_owned());
    };
    if realisation.key() != key {
        return Err(format!("its id is {}", realisation.id));
    }
    Ok(realisation)
}

/// `nix realisation info --json`'s answer: an array of objects with an `id` and an `outPath`
/// (a base name on newer Nix, absolute on older); outputs not built are left out.
pub fn parse(json: &[u8]) -> Result<Vec<Realisation>, StoreError> {
    let bad = |why: &str| StoreError::BadJson(format!("nix realisation info: {why}"));
    let value: Value = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let items = value.as_array().ok_or_else(|| bad("not an array"))?;
    let mut found = Vec::new();
    for item in items {
        if item.get("key").is_some() && item.get("value").is_some() {
            return Err(bad(
                "it prints realisations as {key, value}, the layout of Nix 2.35 and later, \
                 which this nixbucket does not write yet",
            ));
        }
        let (Some(id), Some(out)) = (item["id"].as_str(), item["outPath"].as_str()) else {
            continue;
        };
        let out_path = if out.starts_with('/') {
            StorePath::from_absolute(out)
        } else {
            StorePath::from_base_name(out)
        }
        .map_err(|e| bad(&format!("{out}: {e}")))?;
        if !id.starts_with("sha256:") || !id.contains('!') || id.contains('/') {
            return Err(bad(&format!("{id:?} is not a realisation id")));
        }
        found.push(Realisation {
            id: id.to_owned(),
            out_path,
            json: item.clone(),
        });
    }
    Ok(found)
}

/// Uploads `realisations` whose output is among `landed` (in the cache now), signed with `key`
/// when there is one; an output that did not land gets none, so the cache never names a path
/// it lacks. A realisation already in the cache stays as it is, like a narinfo: the
/// signatures `sign` added to it are kept, and the output it names stays the first one
/// pushed. Returns how many went up, and what failed.
pub async fn push(
    cache: &Cache,
    realisations: Vec<Realisation>,
    landed: &BTreeSet<StorePath>,
    key: Option<&SecretKey>,
) -> (usize, Vec<(String, String)>) {
    let uploads = futures::stream::iter(
        realisations
            .into_iter()
            .filter(|r| landed.contains(&r.out_path))
            .map(|mut r| {
                if let Some(key) = key {
                    r.sign(key);
                }
                let cache = cache.clone();
                async move {
                    let result = cache.put_if_absent(&r.key(), r.body(), TYPE).await;
                    (r.id, result)
                }
            }),
    )
    .buffer_unordered(CONCURRENT)
    .collect::<Vec<_>>()
    .await;
    let mut done = 0;
    let mut errors = Vec::new();
    for (id, result) in uploads {
        match result {
            Ok(wrote) => done += usize::from(wrote),
            Err(e) => errors.push((id, e.to_string())),
        }
    }
    (done, errors)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    /// Each Nix signed its realisation itself (`secret-key-files`, see
    /// scripts/capture-nix-fixtures.sh): our fingerprint must be the text it signed.
    #[rstest]
    #[case::nix_2_8(nix_fixture!("2.8.0", "realisation.json"), nix_fixture!("2.8.0", "public-key.txt"))]
    #[case::nix_2_26(nix_fixture!("2.26.3", "realisation.json"), nix_fixture!("2.26.3", "public-key.txt"))]
    #[case::nix_2_34(nix_fixture!("2.34.8", "realisation.json"), nix_fixture!("2.34.8", "public-key.txt"))]
    fn verifies_the_signature_nix_made(#[case] json: &str, #[case] public: &str) {
        let found = parse(json.as_bytes()).unwrap();
        assert_eq!(found.len(), 1, "{json}");
        let key = PublicKey::parse(public.trim()).unwrap();
        assert!(found[0].verify(std::slice::from_ref(&key)), "{json}");
        let mut moved = found[0].clone();
        moved.json["outPath"] = Value::from("00000000000000000000000000000000-elsewhere");
        assert!(!moved.verify(&[key]));
        // Written back byte for byte, signatures included.
        assert_eq!(found[0].body(), json.trim().trim_matches(['[', ']']));
    }

    #[test]
    fn signing_replaces_our_signature_and_keeps_the_others() {
        let json = nix_fixture!("2.34.8", "realisation.json");
        let mut r = parse(json.as_bytes()).unwrap().remove(0);
        let nix = r.signatures();
        let ours = SecretKey::generate("team-1").unwrap();
        r.sign(&ours);
        r.sign(&ours);
        assert_eq!(r.signatures().len(), 2, "{:?}", r.signatures());
        assert!(r.verify(&[ours.to_public()]));
        let mut sorted = r.signatures();
        sorted.sort();
        assert_eq!(r.signatures(), sorted);
        r.remove_signatures("team-1");
        assert_eq!(r.signatures(), nix);
        assert!(!r.verify(&[ours.to_public()]));
        // Nix 2.35 prints another layout, which is refused by name rather than skipped.
        let keyed = br#"[{"key":{"drvPath":"x.drv","outputName":"out"},"value":{"outPath":"y"}}]"#;
        assert!(parse(keyed).unwrap_err().to_string().contains("2.35"));
    }

    #[test]
    fn reads_what_each_nix_prints() {
        // Nix 2.34 (`nix realisation info --json DRV^*`), with the output's base name.
        let new = br#"[{"dependentRealisations":{},"id":"sha256:78880e3ea0b09865e85a286da32411efd6e08036cec64754610c2c6be423579a!out","outPath":"m9ir3xdnqgvpw90ccrfka4lp9p916588-ca-top-7","signatures":[]}]"#;
        let found = parse(new).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].out_path.name(), "ca-top-7");
        assert_eq!(
            found[0].key(),
            "realisations/sha256:78880e3ea0b09865e85a286da32411efd6e08036cec64754610c2c6be423579a!out.doi"
        );
        // Written back as Nix wrote it: the same keys, sorted.
        assert_eq!(found[0].json.to_string().as_bytes(), &new[1..new.len() - 1]);
        let old = br#"[{"id":"sha256:aa!out","outPath":"/nix/store/m9ir3xdnqgvpw90ccrfka4lp9p916588-ca-top-7"}]"#;
        assert_eq!(parse(old).unwrap()[0].out_path, found[0].out_path);
        assert!(
            parse(
                br#"[{"id":"../x!out","outPath":"/nix/store/m9ir3xdnqgvpw90ccrfka4lp9p916588-x"}]"#
            )
            .is_err()
        );
        assert!(parse(b"{}").is_err());

        let key = found[0].key();
        let stored = found[0].json.to_string();
        assert_eq!(read(&key, stored.as_bytes()).unwrap(), found[0]);
        assert!(read("realisations/sha256:bb!out.doi", stored.as_bytes()).is_err());
        assert!(read(&key, b"{}").is_err());
        assert!(read(&key, b"garbage").is_err());
    }
}
