//! Path metadata from the local Nix, in one `nix path-info --json` process per batch of paths
//! rather than one process per path.

use std::collections::HashSet;

use serde_json::Value;

use super::nix_cli;
pub use crate::nix::PathInfo;
use crate::nix::store_path::StorePathError;
use crate::nix::{AnyHash, Signature, StorePath};

/// How many paths go on one `nix path-info` command line (far below ARG_MAX).
const BATCH: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not run `nix` (is Nix installed and on PATH?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("could not tell which Nix this is: {0}")]
    Version(String),
    #[error("`nix path-info` failed: {stderr}")]
    Failed { stderr: String },
    /// Another `nix` command: named as it ran.
    #[error("`nix {command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("`nix realisation info` failed: {stderr}")]
    Realisations { stderr: String },
    #[error(
        "{path} is not a valid path in the local Nix store (was it built or fetched on this machine?)"
    )]
    NotValid { path: String },
    #[error("could not read the output of `nix path-info`: {0}")]
    BadJson(String),
}

/// Metadata of `paths`, and with `closure` of everything they reference, transitively.
/// Every path must be valid in the local store.
pub fn query_path_info(paths: &[StorePath], closure: bool) -> Result<Vec<PathInfo>, StoreError> {
    query(paths, closure, false)
}

/// Metadata of those of `paths` that are valid; the rest (a build in progress, a failed build's
/// leftovers) are left out without an error.
pub fn query_valid_path_info(paths: &[StorePath]) -> Result<Vec<PathInfo>, StoreError> {
    query(paths, false, true)
}

fn query(
    paths: &[StorePath],
    closure: bool,
    skip_invalid: bool,
) -> Result<Vec<PathInfo>, StoreError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let json_format = nix_cli::nix_version()?.path_info_json_format();
    // Nix 2.8 reads a `.drv` argument as "the outputs of this derivation" unless told
    // `--derivation`, which in turn drops arguments that are not derivations: so two queries.
    let (drvs, others): (Vec<StorePath>, Vec<StorePath>) =
        paths.iter().cloned().partition(StorePath::is_derivation);
    let mut seen = HashSet::new();
    let mut infos = Vec::new();
    for (group, derivation) in [(others, false), (drvs, true)] {
        for batch in group.chunks(BATCH) {
            let mut cmd = nix_cli::nix_command();
            cmd.args(["path-info", "--json"]);
            if let Some(format) = json_format {
                cmd.args(["--json-format", &format.to_string()]);
            }
            if closure {
                cmd.arg("--recursive");
            }
            if derivation {
                cmd.arg("--derivation");
            }
            cmd.args(batch.iter().map(|p| p.to_absolute()));
            let out = cmd.output().map_err(StoreError::Spawn)?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if let Some(path) = not_valid_path(&stderr) {
                    return Err(StoreError::NotValid { path });
                }
                return Err(StoreError::Failed {
                    stderr: stderr.trim().to_owned(),
                });
            }
            for info in parse_path_info_json(&out.stdout, skip_invalid)? {
                if seen.insert(info.path.clone()) {
                    infos.push(info);
                }
            }
        }
    }
    Ok(infos)
}

/// Reads every shape `nix path-info --json` has had:
/// - Nix 2.8–2.18 and Lix: an array of objects with an absolute `path` (and `valid: false` for
///   a path the store lacks);
/// - Nix 2.19–2.32, and `--json-format 1`: an object keyed by absolute path, `null` for a
///   missing one;
/// - `--json-format 2` (2.33) and 3 (2.35): `{"version", "storeDir", "info": {…}}` keyed by base
///   name, with base-name references and deriver, `ca` as `{method, hash}`, and in format 3
///   signatures as `{keyName, sig}`. Hashes are read as SRI strings or `{algorithm, hash}`.
pub(crate) fn parse_path_info_json(
    bytes: &[u8],
    skip_invalid: bool,
) -> Result<Vec<PathInfo>, StoreError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| StoreError::BadJson(e.to_string()))?;
    let entries: Vec<(Option<String>, Value)> = match value {
        Value::Array(items) => items.into_iter().map(|v| (None, v)).collect(),
        // No store path is named `info`: an absolute path starts with '/'.
        Value::Object(mut map) => match map.remove("info") {
            Some(Value::Object(info)) => info.into_iter().map(|(k, v)| (Some(k), v)).collect(),
            Some(_) => return Err(StoreError::BadJson("`info` is not an object".into())),
            None => map.into_iter().map(|(k, v)| (Some(k), v)).collect(),
        },
        _ => {
            return Err(StoreError::BadJson(
                "expected a JSON array or object".into(),
            ));
        }
    };
    let mut infos = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let path_text = value
            .get("path")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(key)
            .ok_or_else(|| StoreError::BadJson("an entry has no path".into()))?;
        let valid = !value.is_null() && value.get("valid") != Some(&Value::Bool(false));
        if !valid {
            if skip_invalid {
                continue;
            }
            let path = store_path(&path_text)
                .map(|p| p.to_absolute())
                .unwrap_or(path_text);
            return Err(StoreError::NotValid { path });
        }
        infos.push(convert(&path_text, &value)?);
    }
    Ok(infos)
}

/// An absolute store path (format 1 and older) or a base name (format 2 on).
fn store_path(text: &str) -> Result<StorePath, StorePathError> {
    if text.starts_with('/') {
        StorePath::from_absolute(text)
    } else {
        StorePath::from_base_name(text)
    }
}

fn convert(path_text: &str, raw: &Value) -> Result<PathInfo, StoreError> {
    let bad = |what: &str| StoreError::BadJson(format!("{path_text}: {what}"));
    let path = store_path(path_text).map_err(|e| bad(&e.to_string()))?;
    let field = |name: &str| raw.get(name).filter(|v| !v.is_null());
    let nar_hash = hash_of(field("narHash").ok_or_else(|| bad("no narHash"))?)
        .map_err(|e| bad(&format!("narHash: {e}")))?
        .to_sha256()
        .ok_or_else(|| bad("narHash is not sha256"))?;
    let nar_size = field("narSize")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no narSize"))?;
    let references = match field("references") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|r| {
                let text = r
                    .as_str()
                    .ok_or_else(|| bad("a reference is not a string"))?;
                store_path(text).map_err(|e| bad(&e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad("references is not a list")),
    };
    let deriver = match field("deriver").and_then(Value::as_str) {
        None | Some("") => None,
        Some(d) => Some(store_path(d).map_err(|e| bad(&e.to_string()))?),
    };
    // A signature we cannot parse is not ours to judge; it is dropped rather than failing the push.
    let signatures = field("signatures")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| match s {
            Value::String(text) => Signature::parse(text).ok(),
            Value::Object(_) => {
                let name = s.get("keyName")?.as_str()?;
                let sig = s.get("sig")?.as_str()?;
                Signature::parse(&format!("{name}:{sig}")).ok()
            }
            _ => None,
        })
        .collect();
    let ca = match field("ca") {
        None => None,
        Some(Value::String(text)) if text.is_empty() => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(structured) => Some(narinfo_ca(structured).map_err(|e| bad(&format!("ca: {e}")))?),
    };
    Ok(PathInfo {
        path,
        nar_hash,
        nar_size,
        references,
        deriver,
        signatures,
        ca,
    })
}

/// Reads a hash as `nix path-info --json` prints it: SRI `sha256-<base64>`,
/// `sha256:<nix32|hex|base64>`, or an object `{"algorithm": "sha256", "hash": "…"}` whose hash is
/// in any of those encodings.
fn hash_of(value: &Value) -> Result<AnyHash, String> {
    match value {
        Value::String(text) => AnyHash::parse(text),
        Value::Object(map) => {
            let algorithm = map
                .get("algorithm")
                .and_then(Value::as_str)
                .ok_or("no algorithm")?;
            let hash = map.get("hash").and_then(Value::as_str).ok_or("no hash")?;
            let body = hash
                .strip_prefix(&format!("{algorithm}-"))
                .or_else(|| hash.strip_prefix(&format!("{algorithm}:")))
                .unwrap_or(hash);
            AnyHash::from_parts(algorithm, body)
        }
        _ => Err("neither a string nor an object".into()),
    }
}

/// A structured content address (`{"method": "nar", "hash": …}`) as a narinfo's `CA:` line
/// spells it: `text:sha256:<nix32>`, `fixed:sha256:…` (flat), `fixed:r:sha256:…` (nar),
/// `fixed:git:sha1:…`.
fn narinfo_ca(value: &Value) -> Result<String, String> {
    let method = value
        .get("method")
        .and_then(Value::as_str)
        .ok_or("no method")?;
    let hash = hash_of(value.get("hash").ok_or("no hash")?)?;
    let prefix = match method {
        "text" => "text:",
        "flat" => "fixed:",
        "nar" => "fixed:r:",
        "git" => "fixed:git:",
        other => return Err(format!("unknown method {other:?}")),
    };
    Ok(format!("{prefix}{}", hash.to_nix_base32()))
}

fn not_valid_path(stderr: &str) -> Option<String> {
    // Nix says "path '/nix/store/…' is not valid" for a path it does not have.
    let start = stderr.find("path '")? + "path '".len();
    let rest = &stderr[start..];
    let end = rest.find('\'')?;
    rest[end..]
        .starts_with("' is not valid")
        .then(|| rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::{NarInfo, PublicKey, Sha256};

    /// What one Nix version printed, captured by scripts/capture-nix-fixtures.sh.
    struct Captured {
        version: &'static str,
        public_key: &'static str,
        /// `path-info --json --recursive` of the fixture closure, in each shape the version has.
        closures: Vec<&'static str>,
        derivations: Vec<&'static str>,
        missing: Vec<&'static str>,
        narinfos: &'static [&'static str],
    }

    /// The narinfos `nix copy` wrote for the five paths of the fixture closure.
    macro_rules! narinfos {
        ($version:literal) => {
            &[
                nix_fixture!($version, "cache/87l70qqydcnw76l5ddzbr51lm4x2q4am.narinfo"),
                nix_fixture!($version, "cache/9bqs3qrgd83yqr5rv5h9wxwgra99y5bq.narinfo"),
                nix_fixture!($version, "cache/mk7hq1if2hv74basagfnvimdvfqm5yy9.narinfo"),
                nix_fixture!($version, "cache/yl26jhaprhck50x9y2lh7bjdpvxn4pk5.narinfo"),
                nix_fixture!($version, "cache/zsywi252l3lyaf8p9g0wgl92bf4vjs7x.narinfo"),
            ]
        };
    }

    fn captured() -> Vec<Captured> {
        vec![
            Captured {
                version: "2.8.0",
                public_key: nix_fixture!("2.8.0", "public-key.txt"),
                closures: vec![nix_fixture!("2.8.0", "path-info.json")],
                derivations: vec![nix_fixture!("2.8.0", "path-info-derivation.json")],
                missing: vec![nix_fixture!("2.8.0", "path-info-missing.json")],
                narinfos: narinfos!("2.8.0"),
            },
            Captured {
                version: "2.26.3",
                public_key: nix_fixture!("2.26.3", "public-key.txt"),
                closures: vec![nix_fixture!("2.26.3", "path-info.json")],
                derivations: vec![nix_fixture!("2.26.3", "path-info-derivation.json")],
                missing: vec![nix_fixture!("2.26.3", "path-info-missing.json")],
                narinfos: narinfos!("2.26.3"),
            },
            Captured {
                version: "2.34.8",
                public_key: nix_fixture!("2.34.8", "public-key.txt"),
                closures: vec![
                    nix_fixture!("2.34.8", "path-info.json"),
                    nix_fixture!("2.34.8", "path-info-format-1.json"),
                    nix_fixture!("2.34.8", "path-info-format-2.json"),
                ],
                derivations: vec![
                    nix_fixture!("2.34.8", "path-info-derivation.json"),
                    nix_fixture!("2.34.8", "path-info-format-1-derivation.json"),
                    nix_fixture!("2.34.8", "path-info-format-2-derivation.json"),
                ],
                missing: vec![
                    nix_fixture!("2.34.8", "path-info-missing.json"),
                    nix_fixture!("2.34.8", "path-info-format-1-missing.json"),
                    nix_fixture!("2.34.8", "path-info-format-2-missing.json"),
                ],
                narinfos: narinfos!("2.34.8"),
            },
            Captured {
                version: "2.35.2",
                public_key: nix_fixture!("2.35.2", "public-key.txt"),
                closures: vec![
                    nix_fixture!("2.35.2", "path-info.json"),
                    nix_fixture!("2.35.2", "path-info-format-1.json"),
                    nix_fixture!("2.35.2", "path-info-format-2.json"),
                    nix_fixture!("2.35.2", "path-info-format-3.json"),
                ],
                derivations: vec![
                    nix_fixture!("2.35.2", "path-info-derivation.json"),
                    nix_fixture!("2.35.2", "path-info-format-1-derivation.json"),
                    nix_fixture!("2.35.2", "path-info-format-2-derivation.json"),
                    nix_fixture!("2.35.2", "path-info-format-3-derivation.json"),
                ],
                missing: vec![
                    nix_fixture!("2.35.2", "path-info-missing.json"),
                    nix_fixture!("2.35.2", "path-info-format-1-missing.json"),
                    nix_fixture!("2.35.2", "path-info-format-2-missing.json"),
                    nix_fixture!("2.35.2", "path-info-format-3-missing.json"),
                ],
                narinfos: narinfos!("2.35.2"),
            },
        ]
    }

    fn sorted(mut infos: Vec<PathInfo>) -> Vec<PathInfo> {
        infos.sort_by(|a, b| a.path.cmp(&b.path));
        infos
    }

    fn without_signatures(infos: &[PathInfo]) -> Vec<PathInfo> {
        infos
            .iter()
            .cloned()
            .map(|mut i| {
                i.signatures.clear();
                i
            })
            .collect()
    }

    #[test]
    fn every_version_and_format_describes_the_fixture_closure_the_same() {
        let reference =
            sorted(parse_path_info_json(captured()[0].closures[0].as_bytes(), false).unwrap());
        assert_eq!(reference.len(), 5);
        for captured in captured() {
            for (i, text) in captured.closures.iter().enumerate() {
                let infos = sorted(parse_path_info_json(text.as_bytes(), false).unwrap());
                assert_eq!(
                    without_signatures(&infos),
                    without_signatures(&reference),
                    "Nix {} shape {i}",
                    captured.version
                );
            }
        }
    }

    #[test]
    fn what_each_version_prints_matches_the_narinfo_it_writes() {
        for captured in captured() {
            let key = PublicKey::parse(captured.public_key.trim()).unwrap();
            for (i, text) in captured.closures.iter().enumerate() {
                let infos = parse_path_info_json(text.as_bytes(), false).unwrap();
                for narinfo in captured.narinfos {
                    let narinfo = NarInfo::parse(narinfo).unwrap();
                    let info = infos
                        .iter()
                        .find(|i| i.path == narinfo.path)
                        .expect("the narinfo's path is in the closure");
                    let what = format!("Nix {} shape {i}: {}", captured.version, info.path);
                    assert_eq!(info.nar_hash, narinfo.nar_hash, "{what}");
                    assert_eq!(info.nar_size, narinfo.nar_size, "{what}");
                    assert_eq!(info.references, narinfo.references, "{what}");
                    assert_eq!(info.deriver, narinfo.deriver, "{what}");
                    assert_eq!(info.ca, narinfo.ca, "{what}");
                }
                // The top path was signed (`nix store sign`) with the capture's key.
                let top = infos
                    .iter()
                    .find(|i| i.path.name() == "nixbucket-fixture-top")
                    .unwrap();
                let fp = top.fingerprint();
                assert_eq!(top.signatures.len(), 1, "Nix {}", captured.version);
                assert!(
                    key.verify(&fp, &top.signatures[0]),
                    "Nix {}",
                    captured.version
                );
            }
        }
    }

    #[test]
    fn every_content_address_shape_reads_as_the_narinfo_line() {
        let infos = parse_path_info_json(
            nix_fixture!("2.34.8", "path-info-format-2.json").as_bytes(),
            false,
        )
        .unwrap();
        let ca = |name: &str| {
            infos
                .iter()
                .find(|i| i.path.name() == name)
                .unwrap()
                .ca
                .clone()
        };
        assert_eq!(ca("nixbucket-fixture-dep"), None);
        assert_eq!(
            ca("nixbucket-fixture-note").as_deref(),
            Some("text:sha256:10v7madfbfzz4xjcc2dv6xlz0iz3dyvhklgm1mmphyc480nw9bz0")
        );
        assert_eq!(
            ca("nixbucket-fixture-flat").as_deref(),
            Some("fixed:sha256:0d75vbn546fz9d9ip0f03daqhpm99h3fv14ci4afcmk3ir0p2c0c")
        );
        assert_eq!(
            ca("nixbucket-fixture-recursive").as_deref(),
            Some("fixed:r:sha256:07y32ljqjzpgw56dgrwfs7f0illrfg8bgkfq0d89p01m677grk1p")
        );
    }

    #[test]
    fn derivations_read_the_same_in_every_version() {
        let mut seen = Vec::new();
        for captured in captured() {
            for text in &captured.derivations {
                let infos = parse_path_info_json(text.as_bytes(), false).unwrap();
                assert_eq!(infos.len(), 1, "Nix {}", captured.version);
                assert!(infos[0].path.is_derivation());
                assert!(infos[0].ca.as_deref().unwrap().starts_with("text:sha256:"));
                seen.push(infos[0].clone());
            }
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:#?}");
    }

    /// Lix (2.94 on) leaves `signatures` and `deriver` out of `path-info --json` when they are
    /// empty, where Nix prints `[]` and null: the same paths read the same either way. Made
    /// from each captured Nix's closure by dropping those fields (there is no Lix here).
    #[test]
    fn lix_s_shape_without_empty_signatures_and_deriver_reads_the_same() {
        let mut dropped = 0;
        for captured in captured() {
            for text in &captured.closures {
                let mut json: Value = serde_json::from_str(text).unwrap();
                let entries: Vec<&mut Value> = match &mut json {
                    Value::Object(map) => map.values_mut().collect(),
                    Value::Array(items) => items.iter_mut().collect(),
                    _ => unreachable!(),
                };
                for entry in entries {
                    let Value::Object(fields) = entry else {
                        continue;
                    };
                    for name in ["signatures", "deriver"] {
                        let empty = match fields.get(name) {
                            Some(Value::Array(items)) => items.is_empty(),
                            Some(Value::Null) => true,
                            _ => false,
                        };
                        if empty {
                            fields.remove(name);
                            dropped += 1;
                        }
                    }
                }
                let lix = parse_path_info_json(json.to_string().as_bytes(), false).unwrap();
                let nix = parse_path_info_json(text.as_bytes(), false).unwrap();
                assert_eq!(lix, nix, "Nix {}", captured.version);
            }
        }
        // 2.8 leaves them out already, as Lix (its descendant) does; the later ones print them.
        assert!(
            dropped > 0,
            "no captured Nix printed an empty signatures or deriver"
        );
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it_in_every_version() {
        for captured in captured() {
            for text in &captured.missing {
                let err = parse_path_info_json(text.as_bytes(), false).unwrap_err();
                assert!(
                    err.to_string().starts_with(
                        "/nix/store/00000000000000000000000000000000-nixbucket-fixture-missing is not a valid path"
                    ),
                    "Nix {}: {err}",
                    captured.version
                );
                assert!(
                    parse_path_info_json(text.as_bytes(), true)
                        .unwrap()
                        .is_empty()
                );
            }
        }
    }

    /// Format 3 (Nix 2.35) writes signatures as objects; hashes may also come as objects.
    /// Derived from the captured format 2 by changing just those fields.
    #[test]
    fn reads_format_3_signatures_and_structured_hashes() {
        let mut value: Value =
            serde_json::from_str(nix_fixture!("2.34.8", "path-info-format-2.json")).unwrap();
        let expected = sorted(parse_path_info_json(value.to_string().as_bytes(), false).unwrap());
        value["version"] = 3.into();
        for info in value["info"].as_object_mut().unwrap().values_mut() {
            let signatures: Vec<Value> = info["signatures"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let (name, sig) = s.as_str().unwrap().split_once(':').unwrap();
                    serde_json::json!({"keyName": name, "sig": sig})
                })
                .collect();
            info["signatures"] = signatures.into();
            let sri = info["narHash"].as_str().unwrap().to_owned();
            let nix32 = Sha256::parse(&sri).unwrap().to_nix_base32();
            info["narHash"] =
                serde_json::json!({"algorithm": "sha256", "format": "nix32", "hash": nix32});
        }
        let infos = sorted(parse_path_info_json(value.to_string().as_bytes(), false).unwrap());
        assert_eq!(infos, expected);
        assert!(infos.iter().any(|i| !i.signatures.is_empty()));
    }
}
