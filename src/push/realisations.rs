//! Realisations of content-addressed derivations: which store path a derivation's output
//! became when it was built. A cache without them gives `ca-derivations` users no hits, since
//! their Nix cannot know the output's path before building. Nix keeps them in
//! `realisations/<id>.doi`, where the id is `sha256:<derivation hash modulo its inputs>!<output>`
//! (not the `.drv` file's hash): the local Nix is asked for them (`nix realisation info`)
//! rather than that hash computed here. They are uploaded as Nix prints them, unsigned as
//! `nix copy` uploads them: Nix checks the signature of the output's narinfo, which is ours.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use crate::cache::Cache;
use crate::nix::{StorePath, derivation};
use crate::store::{self, PathInfo, StoreError};

/// How many realisations go up at once.
const CONCURRENT: usize = 16;
pub const DIR: &str = "realisations/";
const TYPE: &str = "application/json";

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
}

/// The outputs whose path their derivation does not fix (content-addressed ones) among the
/// derivers of `closure`'s content-addressed paths, as (derivation, output name). Only those
/// derivations are read: a path without a `CA` cannot be such an output.
fn floating_outputs(closure: &[PathInfo]) -> Vec<(String, String)> {
    let drvs: BTreeSet<&StorePath> = closure
        .iter()
        .filter(|info| info.ca.is_some())
        .filter_map(|info| info.deriver.as_ref())
        .collect();
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

/// The realisations of the content-addressed outputs in `closure`. Asks Nix only when there
/// is such an output: a job without content-addressed derivations pays nothing.
pub fn find(closure: &[PathInfo]) -> Result<Vec<Realisation>, StoreError> {
    let outputs = floating_outputs(closure);
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

/// Uploads `realisations` whose output is among `landed` (in the cache now); an output that
/// did not land gets none, so the cache never names a path it lacks. Returns how many went up,
/// and what failed.
pub async fn push(
    cache: &Cache,
    realisations: Vec<Realisation>,
    landed: &BTreeSet<StorePath>,
) -> (usize, Vec<(String, String)>) {
    let uploads = futures::stream::iter(
        realisations
            .into_iter()
            .filter(|r| landed.contains(&r.out_path))
            .map(|r| {
                let cache = cache.clone();
                async move {
                    let body = Bytes::from(r.json.to_string());
                    let result = cache.put(&r.key(), body, TYPE).await;
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
            Ok(()) => done += 1,
            Err(e) => errors.push((id, e.to_string())),
        }
    }
    (done, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

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
