//! The keys: do the narinfos of a sample carry a signature Nix will accept?

use std::collections::BTreeSet;

use super::Check;
use crate::cache::CacheUrl;
use crate::nix::{NarInfo, PublicKey};

/// One narinfo of the sample, or why it could not be read.
#[derive(Clone, Debug)]
pub struct Sampled {
    pub key: String,
    pub narinfo: Result<NarInfo, String>,
}

/// Up to 8 narinfos of a `file://` cache.
pub async fn sample_directory(url: &CacheUrl) -> Vec<Sampled> {
    let CacheUrl::File { root, .. } = url else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".narinfo"))
        .collect();
    names.sort();
    names.truncate(8);
    names
        .into_iter()
        .map(|key| {
            let narinfo = std::fs::read_to_string(root.join(&key))
                .map_err(|e| e.to_string())
                .and_then(|t| NarInfo::parse(&t).map_err(|e| e.to_string()));
            Sampled { key, narinfo }
        })
        .collect()
}

/// Whether the sample verifies with `trusted` (Nix's keys, as text). `signer` is the public
/// half of the key push signs with, when the doctor was given it: the fix then names it.
/// `conf` says where a key goes for the Nix that substitutes (a nix.conf, and whether the
/// daemon must be restarted).
pub fn check(
    sample: &[Sampled],
    trusted: &[String],
    signer: Option<&PublicKey>,
    conf: &str,
) -> Check {
    const NAME: &str = "keys";
    let keys: Vec<PublicKey> = trusted
        .iter()
        .filter_map(|k| PublicKey::parse(k).ok())
        .collect();
    let narinfos: Vec<&NarInfo> = sample
        .iter()
        .filter_map(|s| s.narinfo.as_ref().ok())
        .collect();
    if narinfos.is_empty() {
        return match sample.first() {
            Some(Sampled {
                key,
                narinfo: Err(why),
            }) => Check::skipped(NAME, format!("could not read the sampled {key}: {why}")),
            _ => Check::skipped(
                NAME,
                "the cache holds no narinfo yet to check signatures on",
            ),
        };
    }
    let verified = narinfos.iter().filter(|n| n.verify(&keys)).count();
    let total = narinfos.len();
    let signed_by: BTreeSet<&str> = narinfos
        .iter()
        .flat_map(|n| n.signatures.iter().map(|s| s.key_name.as_str()))
        .collect();
    let names = |set: &BTreeSet<&str>| set.iter().copied().collect::<Vec<_>>().join(", ");
    let trusted_names: BTreeSet<&str> = keys.iter().map(PublicKey::name).collect();
    if verified == total {
        return Check::ok(
            NAME,
            format!(
                "{total} of {total} sampled narinfos carry a signature by a key Nix trusts ({})",
                names(&signed_by)
            ),
        );
    }
    let signer_verifies =
        signer.filter(|s| narinfos.iter().all(|n| n.verify(std::slice::from_ref(*s))));
    let trust_line = match signer_verifies {
        Some(key) => format!("`extra-trusted-public-keys = {key}`"),
        None => "`extra-trusted-public-keys = NAME:PUBLIC-KEY`, the public half of the key \
                 push signs with (`nixbucket keygen` printed it),"
            .to_owned(),
    };
    let same_name: Vec<&str> = signed_by
        .iter()
        .copied()
        .filter(|n| trusted_names.contains(n))
        .collect();
    let detail = if signed_by.is_empty() {
        format!(
            "{} of {total} sampled narinfos carry no signature at all",
            total - verified
        )
    } else if !same_name.is_empty() {
        format!(
            "{} of {total} sampled narinfos are signed by a key named {}, but the key Nix trusts \
             under that name is another one: the public key is wrong",
            total - verified,
            same_name.join(", ")
        )
    } else {
        format!(
            "{} of {total} sampled narinfos are signed by {}, a key Nix does not trust (it \
             trusts {})",
            total - verified,
            names(&signed_by),
            match trusted_names.is_empty() {
                true => "none".to_owned(),
                false => names(&trusted_names),
            }
        )
    };
    let fix = match signed_by.is_empty() {
        true => "sign them: `nixbucket sign --cache URL --signing-key-file FILE`".to_owned(),
        false => format!(
            "add {trust_line} to {conf}, in place of any wrong key of the same name (setup \
             takes it as --public-key)"
        ),
    };
    match verified {
        0 => Check::fail(NAME, format!("{detail}; Nix refuses them"), fix),
        _ => Check::warn(NAME, detail, fix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::SecretKey;

    fn signed_sample(key: &SecretKey) -> Vec<Sampled> {
        let text = nix_fixture!("2.8.0", "cache/87l70qqydcnw76l5ddzbr51lm4x2q4am.narinfo");
        let mut narinfo = NarInfo::parse(text).unwrap();
        narinfo.sign(key);
        vec![Sampled {
            key: "x.narinfo".into(),
            narinfo: Ok(narinfo),
        }]
    }

    #[test]
    fn a_wrong_key_of_the_right_name_fails_and_the_fix_names_the_right_one() {
        let right = SecretKey::generate("cache-1").unwrap();
        let wrong = SecretKey::generate("cache-1").unwrap();
        let sample = signed_sample(&right);
        let check = check(
            &sample,
            &[wrong.to_public().to_string()],
            Some(&right.to_public()),
            "nix.conf",
        );
        assert_eq!(check.status, crate::doctor::Status::Fail, "{check}");
        assert!(check.detail.contains("the public key is wrong"), "{check}");
        let fix = check.fix.unwrap();
        assert!(fix.contains(&right.to_public().to_string()), "{fix}");
        let good = super::check(&sample, &[right.to_public().to_string()], None, "nix.conf");
        assert_eq!(good.status, crate::doctor::Status::Ok, "{good}");
    }

    #[test]
    fn an_untrusted_key_name_is_named() {
        let ours = SecretKey::generate("ours-1").unwrap();
        let check = check(&signed_sample(&ours), &[], None, "nix.conf");
        assert_eq!(check.status, crate::doctor::Status::Fail, "{check}");
        assert!(check.detail.contains("signed by ours-1"), "{check}");
        assert!(check.detail.contains("trusts none"), "{check}");
        assert_eq!(
            super::check(&[], &[], None, "nix.conf").status,
            crate::doctor::Status::Skipped
        );
    }
}
