//! Path metadata from the local Nix, in one `nix path-info --json` process per batch of paths
//! rather than one process per path.

use std::collections::HashSet;
use std::process::Command;

use serde::Deserialize;

use crate::nix::{Sha256, Signature, StorePath};

/// How many paths go on one `nix path-info` command line (far below ARG_MAX).
const BATCH: usize = 4000;

/// What the local store records about one valid path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub signatures: Vec<Signature>,
    pub ca: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not run `nix` (is Nix installed and on PATH?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`nix path-info` failed: {stderr}")]
    Failed { stderr: String },
    #[error(
        "{path} is not a valid path in the local Nix store (was it built or fetched on this machine?)"
    )]
    NotValid { path: String },
    #[error("could not read the output of `nix path-info`: {0}")]
    BadJson(String),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawInfo {
    path: Option<String>,
    #[serde(default = "yes")]
    valid: bool,
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    #[serde(default)]
    signatures: Vec<String>,
    ca: Option<String>,
}

fn yes() -> bool {
    true
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
    // Nix 2.8 reads a `.drv` argument as "the outputs of this derivation" unless told
    // `--derivation`, which in turn drops arguments that are not derivations: so two queries.
    let (drvs, others): (Vec<StorePath>, Vec<StorePath>) =
        paths.iter().cloned().partition(StorePath::is_derivation);
    let mut seen = HashSet::new();
    let mut infos = Vec::new();
    for (group, derivation) in [(others, false), (drvs, true)] {
        for batch in group.chunks(BATCH) {
            let mut cmd = Command::new("nix");
            cmd.args([
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "--json",
            ]);
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

/// Nix 2.8–2.18 print an array of objects with a `path` field; later versions an object keyed
/// by path. Both are read.
pub(crate) fn parse_path_info_json(
    bytes: &[u8],
    skip_invalid: bool,
) -> Result<Vec<PathInfo>, StoreError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| StoreError::BadJson(e.to_string()))?;
    let entries: Vec<(Option<String>, serde_json::Value)> = match value {
        serde_json::Value::Array(items) => items.into_iter().map(|v| (None, v)).collect(),
        serde_json::Value::Object(map) => map.into_iter().map(|(k, v)| (Some(k), v)).collect(),
        _ => {
            return Err(StoreError::BadJson(
                "expected a JSON array or object".into(),
            ));
        }
    };
    let mut infos = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let info = {
            // Newer Nix prints `null` for a path it does not have.
            let mut raw: RawInfo = if value.is_null() {
                RawInfo::default()
            } else {
                serde_json::from_value(value).map_err(|e| StoreError::BadJson(e.to_string()))?
            };
            let path_text = raw
                .path
                .take()
                .or(key)
                .ok_or_else(|| StoreError::BadJson("an entry has no path".into()))?;
            if !raw.valid {
                if skip_invalid {
                    continue;
                }
                return Err(StoreError::NotValid { path: path_text });
            }
            convert(path_text, raw)?
        };
        infos.push(info);
    }
    Ok(infos)
}

fn convert(path_text: String, raw: RawInfo) -> Result<PathInfo, StoreError> {
    let bad = |what: &str| StoreError::BadJson(format!("{path_text}: {what}"));
    let path = StorePath::from_absolute(&path_text).map_err(|e| bad(&e.to_string()))?;
    let nar_hash = Sha256::parse(raw.nar_hash.as_deref().ok_or_else(|| bad("no narHash"))?)
        .map_err(|e| bad(&e.to_string()))?;
    let nar_size = raw.nar_size.ok_or_else(|| bad("no narSize"))?;
    let references = raw
        .references
        .iter()
        .map(|r| StorePath::from_absolute(r).map_err(|e| bad(&e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let deriver = match raw.deriver.as_deref() {
        None | Some("") => None,
        Some(d) => Some(StorePath::from_absolute(d).map_err(|e| bad(&e.to_string()))?),
    };
    // A signature we cannot parse is not ours to judge; it is dropped rather than failing the push.
    let signatures = raw
        .signatures
        .iter()
        .filter_map(|s| Signature::parse(s).ok())
        .collect();
    Ok(PathInfo {
        path,
        nar_hash,
        nar_size,
        references,
        deriver,
        signatures,
        ca: raw.ca,
    })
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

    const NIX_2_8: &str = r#"[{"path":"/nix/store/bw9svbjjplvpv3vpkgb10wycmbncwrk1-hello-test","narHash":"sha256-XmT6U9amWzVbtsvG9ZDDDr5NhLKE9br8ILg2BwRnW6Q=","narSize":752,"references":["/nix/store/wsjymlc52qk8vs92n03qp5spl0rva21y-dep"],"deriver":"/nix/store/vnpnzfx27q6lj3dsfz1fkhpja8l24pkb-hello-test.drv","registrationTime":1795595223,"ultimate":true,"signatures":["test-1:tOGrKaKbcPyZytKUqJlbsFBUBOsMtkYaY/TXikaAje0cTB3NptqpW/LaJEHsvGovisdNowB2qiFKhHeAO3mtAQ=="]}]"#;

    #[test]
    fn reads_nix_2_8_array_output() {
        let infos = parse_path_info_json(NIX_2_8.as_bytes(), false).unwrap();
        assert_eq!(infos.len(), 1);
        let info = &infos[0];
        assert_eq!(info.path.name(), "hello-test");
        assert_eq!(info.nar_size, 752);
        assert_eq!(
            info.nar_hash.to_nix_base32(),
            "192vcw20fdmq43ybmxc4na24vghfqf8gbinbnrdkanx6sr9zlr2y"
        );
        assert_eq!(info.references[0].name(), "dep");
        assert_eq!(info.deriver.as_ref().unwrap().name(), "hello-test.drv");
        assert_eq!(info.signatures[0].key_name, "test-1");
    }

    #[test]
    fn reads_the_newer_object_output() {
        let text = r#"{"/nix/store/wsjymlc52qk8vs92n03qp5spl0rva21y-dep":{"narHash":"sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=","narSize":120,"references":[],"deriver":null,"signatures":[],"ca":null}}"#;
        let infos = parse_path_info_json(text.as_bytes(), false).unwrap();
        assert_eq!(infos[0].path.name(), "dep");
        assert_eq!(infos[0].deriver, None);
    }

    #[test]
    fn an_invalid_path_is_an_error_naming_it() {
        let text = r#"[{"path":"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nope","valid":false}]"#;
        let err = parse_path_info_json(text.as_bytes(), false).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nope is not a valid path"
            ),
            "{err}"
        );
        assert!(
            parse_path_info_json(text.as_bytes(), true)
                .unwrap()
                .is_empty()
        );
    }
}
