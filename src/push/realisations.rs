//! Realisations of content-addressed derivations: which store path a derivation's output
//! became when it was built. A cache without them gives `ca-derivations` users no hits, since
//! their Nix cannot know the output's path before building. The local Nix is asked for them
//! (`nix realisation info`) rather than their keys computed here, and they are stored in the
//! layout of the Nix that printed them ([`Layout`]), signed as that Nix signs them: `nix copy
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
/// Where Nix 2.8 to 2.34 keep realisations.
pub const DIR: &str = "realisations/";
/// Where Nix 2.35 and later keep them (its "build traces").
pub const BUILD_TRACE_DIR: &str = "build-trace-v2/";
pub const TYPE: &str = "application/json";

/// Whether `key` names a realisation, in either layout.
pub fn is_key(key: &str) -> bool {
    key.starts_with(DIR) || key.starts_with(BUILD_TRACE_DIR)
}

/// Where a realisation is stored and what its signature covers: the layout of the Nix that
/// built (and printed) it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Nix 2.8 to 2.34: `realisations/<id>.doi`, the id `sha256:<derivation hash modulo its
    /// inputs>!<output>`. The document is what `nix realisation info` prints; a signature
    /// covers it without `signatures`.
    Id(String),
    /// Nix 2.35 on: `build-trace-v2/<derivation>/<output>.doi`, keyed by the resolved
    /// derivation's base name. The document holds `outPath` and `signatures` as `{keyName,
    /// sig}`; a signature covers `{"key":{"drvPath","outputName"},"value":{"outPath"}}`.
    BuildTrace { drv: String, output: String },
}

/// One realisation, as the local Nix printed it or a cache holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Realisation {
    pub layout: Layout,
    pub out_path: StorePath,
    /// The document as stored in a cache.
    pub json: Value,
}

impl Realisation {
    pub fn key(&self) -> String {
        match &self.layout {
            Layout::Id(id) => format!("{DIR}{id}.doi"),
            Layout::BuildTrace { drv, output } => format!("{BUILD_TRACE_DIR}{drv}/{output}.doi"),
        }
    }

    /// How messages name it: its id, or `DRV^OUTPUT`.
    pub fn name(&self) -> String {
        match &self.layout {
            Layout::Id(id) => id.clone(),
            Layout::BuildTrace { drv, output } => format!("{drv}^{output}"),
        }
    }

    /// What a signature signs, compact JSON with sorted keys as Nix's JSON library writes it:
    /// the document without `signatures`, or from 2.35 on the keyed document without them.
    pub fn fingerprint(&self) -> String {
        let mut json = self.json.clone();
        if let Some(object) = json.as_object_mut() {
            object.remove("signatures");
        }
        match &self.layout {
            Layout::Id(_) => json.to_string(),
            Layout::BuildTrace { drv, output } => serde_json::json!({
                "key": {"drvPath": drv, "outputName": output},
                "value": json,
            })
            .to_string(),
        }
    }

    /// The signatures as `name:base64`, whichever way the document writes them.
    pub fn signatures(&self) -> Vec<String> {
        let Some(sigs) = self.json["signatures"].as_array() else {
            return Vec::new();
        };
        sigs.iter()
            .filter_map(|s| match s {
                Value::String(text) => Some(text.clone()),
                Value::Object(_) => Some(format!(
                    "{}:{}",
                    s.get("keyName")?.as_str()?,
                    s.get("sig")?.as_str()?
                )),
                _ => None,
            })
            .collect()
    }

    /// Nix keeps the signatures as a sorted set: `name:base64` strings, or from 2.35 on
    /// `{keyName, sig}` objects.
    fn set_signatures(&mut self, mut signatures: Vec<String>) {
        signatures.sort();
        signatures.dedup();
        self.json["signatures"] = match self.layout {
            Layout::Id(_) => Value::from(signatures),
            Layout::BuildTrace { .. } => signatures
                .iter()
                .filter_map(|s| s.split_once(':'))
                .map(|(name, sig)| serde_json::json!({"keyName": name, "sig": sig}))
                .collect(),
        };
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
        by_id.insert(realisation.key(), realisation);
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

/// A realisation as stored under `key` in a cache, in either layout: it parses, names the
/// realisation its key says (the id inside it, or the derivation and output of its path), and
/// names an output path.
pub fn read(key: &str, bytes: &[u8]) -> Result<Realisation, String> {
    if let Some(rest) = key.strip_prefix(BUILD_TRACE_DIR) {
        let (drv, file) = rest
            .split_once('/')
            .ok_or("not build-trace-v2/DRV/OUTPUT.doi")?;
        let output = file.strip_suffix(".doi").ok_or("not a .doi file")?;
        if !drv.ends_with(".drv")
            || StorePath::from_base_name(drv).is_err()
            || output.is_empty()
            || output.contains('/')
        {
            return Err(format!("{drv}/{output} is not a derivation and its output"));
        }
        let json: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let out = json["outPath"].as_str().ok_or("no outPath")?;
        let out_path = StorePath::from_base_name(out).map_err(|e| format!("{out}: {e}"))?;
        return Ok(Realisation {
            layout: Layout::BuildTrace {
                drv: drv.to_owned(),
                output: output.to_owned(),
            },
            out_path,
            json,
        });
    }
    let mut array = b"[".to_vec();
    array.extend_from_slice(bytes);
    array.push(b']');
    let found = parse(&array).map_err(|e| e.to_string())?;
    let Some(realisation) = found.into_iter().next() else {
        return Err("not a realisation (no id or outPath)".to_owned());
    };
    if realisation.key() != key {
        return Err(format!("its id is {}", realisation.name()));
    }
    Ok(realisation)
}

/// `nix realisation info --json`'s answer: an array of objects with an `id` and an `outPath`
/// (a base name on newer Nix, absolute on older), or from Nix 2.35 on of `{key: {drvPath,
/// outputName}, value: {outPath, signatures}}` beside `{opaquePath}` entries, which are no
/// realisations. Outputs not built are left out.
pub fn parse(json: &[u8]) -> Result<Vec<Realisation>, StoreError> {
    let bad = |why: &str| StoreError::BadJson(format!("nix realisation info: {why}"));
    let value: Value = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let items = value.as_array().ok_or_else(|| bad("not an array"))?;
    let mut found = Vec::new();
    for item in items {
        if let (Some(key), Some(value)) = (item.get("key"), item.get("value")) {
            found.push(build_trace(key, value).map_err(|why| bad(&why))?);
            continue;
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
            layout: Layout::Id(id.to_owned()),
            out_path,
            json: item.clone(),
        });
    }
    Ok(found)
}

/// One `{key, value}` entry Nix 2.35 prints, as the document it stores.
fn build_trace(key: &Value, value: &Value) -> Result<Realisation, String> {
    let drv = key["drvPath"].as_str().ok_or("a key without drvPath")?;
    let output = key["outputName"]
        .as_str()
        .ok_or("a key without outputName")?;
    let drv = drv
        .strip_prefix(crate::nix::STORE_DIR)
        .map_or(drv, |d| d.trim_start_matches('/'));
    if !drv.ends_with(".drv") || StorePath::from_base_name(drv).is_err() {
        return Err(format!("{drv:?} is not a derivation"));
    }
    if output.is_empty() || output.contains('/') {
        return Err(format!("{output:?} is not an output name"));
    }
    let out = value["outPath"].as_str().ok_or("a value without outPath")?;
    let out = out
        .strip_prefix(crate::nix::STORE_DIR)
        .map_or(out, |o| o.trim_start_matches('/'));
    let out_path = StorePath::from_base_name(out).map_err(|e| format!("{out}: {e}"))?;
    let signatures = value
        .get("signatures")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    Ok(Realisation {
        layout: Layout::BuildTrace {
            drv: drv.to_owned(),
            output: output.to_owned(),
        },
        json: serde_json::json!({"outPath": out_path.base_name(), "signatures": signatures}),
        out_path,
    })
}

/// Uploads `realisations` whose output is among `landed` (in the cache now), signed with `key`
/// when there is one; an output that did not land gets none, so the cache never names a path
/// it lacks. A realisation already in the cache (asked with a HEAD, not a billed write) stays
/// as it is, like a narinfo: the
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
                    // A HEAD is billed as a read, a conditional PUT as a write, which costs
                    // about ten times more: one already there is found with the HEAD.
                    let result = match cache.head(&r.key()).await {
                        Ok(Some(_)) => Ok(false),
                        Ok(None) => cache.put_if_absent(&r.key(), r.body(), TYPE).await,
                        Err(e) => Err(e),
                    };
                    (r.name(), result)
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
    #[case::nix_2_35(nix_fixture!("2.35.2", "realisation.json"), nix_fixture!("2.35.2", "public-key.txt"))]
    fn verifies_the_signature_nix_made(#[case] json: &str, #[case] public: &str) {
        let found = parse(json.as_bytes()).unwrap();
        assert_eq!(found.len(), 1, "{json}");
        let key = PublicKey::parse(public.trim()).unwrap();
        assert!(found[0].verify(std::slice::from_ref(&key)), "{json}");
        let mut moved = found[0].clone();
        moved.json["outPath"] = Value::from("00000000000000000000000000000000-elsewhere");
        assert!(!moved.verify(&[key]));
        if let Layout::Id(_) = found[0].layout {
            // Written back byte for byte, signatures included.
            assert_eq!(found[0].body(), json.trim().trim_matches(['[', ']']));
        }
    }

    /// Nix 2.35 prints `{key, value}` and stores the value under build-trace-v2/DRV/OUT.doi:
    /// from what it printed we store the bytes, under the key, that its own `nix copy` wrote
    /// (scripts/capture-nix-fixtures.sh), and read them back; a signature of ours on them
    /// verifies, and one moved to another derivation does not.
    #[test]
    fn nix_2_35_s_build_trace_is_stored_as_its_nix_copy_stores_it() {
        let printed = nix_fixture!("2.35.2", "realisation.json");
        let stored = nix_fixture!("2.35.2", "build-trace.doi");
        let stored_key = nix_fixture!("2.35.2", "build-trace-key.txt").trim();
        let public = PublicKey::parse(nix_fixture!("2.35.2", "public-key.txt").trim()).unwrap();
        let found = parse(printed.as_bytes()).unwrap().remove(0);
        assert_eq!(found.key(), stored_key);
        assert_eq!(found.body(), stored.as_bytes());
        let read_back = read(stored_key, stored.as_bytes()).unwrap();
        assert_eq!(read_back, found);
        assert!(read_back.verify(std::slice::from_ref(&public)));
        let ours = SecretKey::generate("team-1").unwrap();
        let mut signed = read_back.clone();
        signed.sign(&ours);
        assert!(signed.verify(&[ours.to_public()]));
        assert!(
            signed.verify(std::slice::from_ref(&public)),
            "Nix's signature was lost"
        );
        assert!(signed.body().starts_with(br#"{"outPath":"#));
        let elsewhere = Realisation {
            layout: Layout::BuildTrace {
                drv: "00000000000000000000000000000000-other.drv".into(),
                output: "out".into(),
            },
            ..signed
        };
        assert!(!elsewhere.verify(&[ours.to_public(), public]));
        assert!(read("build-trace-v2/not-a-drv/out.doi", stored.as_bytes()).is_err());
        let nested = stored_key.replace("/out.doi", "/out/more.doi");
        assert!(read(&nested, stored.as_bytes()).is_err(), "{nested}");
        assert!(read(&format!("{stored_key}.x"), stored.as_bytes()).is_err());
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
        let keyed = br#"[{"key":{"drvPath":"x.drv","outputName":"out"},"value":{"outPath":"y"}}]"#;
        assert!(
            parse(keyed)
                .unwrap_err()
                .to_string()
                .contains("not a derivation")
        );
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
