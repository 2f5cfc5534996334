//! The `.narinfo` text a binary cache keeps for each store path, and its signatures.
//!
//! [`NarInfo`]'s `Display` is the only serializer and writes what Nix 2.8 writes, field for
//! field and in the same order, with references and signatures sorted as Nix's sets sort them.
//! Parsing follows Nix's reader: unknown keys are skipped, a missing `Compression` means
//! bzip2, `Deriver: unknown-deriver` means none, and a missing StorePath, URL, NarHash or
//! NarSize (or a NarSize of 0) makes the file invalid, as it would be for Nix.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::{Deref, DerefMut};

use thiserror::Error;

use super::hash::{HashError, Sha256};
use super::path_info::PathInfo;
use super::signing::{KeyError, Signature};
use super::store_path::{StorePath, StorePathError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Xz,
    Bzip2,
    /// A method this crate does not write (`br`, `lzip`, `lz4`, …), kept by name.
    Other(String),
}

impl Compression {
    pub fn as_str(&self) -> &str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
            Self::Other(name) => name,
        }
    }

    /// The file name suffix Nix gives a NAR compressed this way.
    pub fn nar_extension(&self) -> &str {
        match self {
            Self::None => ".nar",
            Self::Zstd => ".nar.zst",
            Self::Xz => ".nar.xz",
            Self::Bzip2 => ".nar.bz2",
            Self::Other(name) => match name.as_str() {
                "lzip" => ".nar.lzip",
                "lz4" => ".nar.lz4",
                "br" => ".nar.br",
                _ => ".nar",
            },
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "none" => Self::None,
            "zstd" => Self::Zstd,
            "xz" => Self::Xz,
            "bzip2" => Self::Bzip2,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error)]
pub enum NarInfoError {
    #[error("line {line}: expected 'Key: value'")]
    MalformedLine { line: usize },
    #[error("line {line}: a control character (such as a carriage return) in a narinfo line")]
    ControlCharacter { line: usize },
    #[error("line {line}: {field} appears a second time")]
    Duplicate { line: usize, field: &'static str },
    #[error("line {line}: {field}: {source}")]
    StorePath {
        line: usize,
        field: &'static str,
        source: StorePathError,
    },
    #[error("line {line}: {field}: {source}")]
    Hash {
        line: usize,
        field: &'static str,
        source: HashError,
    },
    #[error("line {line}: {field}: {value:?} is not a byte count")]
    Number {
        line: usize,
        field: &'static str,
        value: String,
    },
    #[error("line {line}: Sig: {source}")]
    Signature { line: usize, source: KeyError },
    #[error("the {field} field is missing")]
    Missing { field: &'static str },
    #[error("NarSize is 0, which Nix rejects")]
    ZeroNarSize,
}

/// A narinfo: a valid path's [`PathInfo`] and where its NAR lies in the cache. It reads as its
/// `PathInfo` (`narinfo.nar_hash`, `narinfo.sign(key)`), as Nix's `NarInfo` extends
/// `ValidPathInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub info: PathInfo,
    /// Where the NAR is, relative to the cache root (see [`crate::nix::layout`]).
    pub url: String,
    pub compression: Compression,
    /// SHA-256 of the file at `url` (the compressed NAR).
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
}

impl Deref for NarInfo {
    type Target = PathInfo;

    fn deref(&self) -> &PathInfo {
        &self.info
    }
}

impl DerefMut for NarInfo {
    fn deref_mut(&mut self) -> &mut PathInfo {
        &mut self.info
    }
}

impl NarInfo {
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut fields = Fields::default();
        // Lines end at '\n' alone, as Nix reads them: a '\r' is part of the line, and a line
        // with a control character is refused rather than trimmed into another value.
        for (index, line) in text.split('\n').enumerate() {
            let line_no = index + 1;
            if line.is_empty() {
                continue;
            }
            if line.chars().any(char::is_control) {
                return Err(NarInfoError::ControlCharacter { line: line_no });
            }
            let (key, value) = line
                .split_once(':')
                .ok_or(NarInfoError::MalformedLine { line: line_no })?;
            let value = value.strip_prefix(' ').unwrap_or(value);
            fields.take(line_no, key, value)?;
        }
        fields.finish()
    }
}

impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.path)?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        if let Some(file_hash) = &self.file_hash {
            writeln!(f, "FileHash: {file_hash}")?;
        }
        if let Some(file_size) = self.file_size {
            writeln!(f, "FileSize: {file_size}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        // Nix keeps both as ordered sets, so it writes them sorted and without duplicates.
        let references: BTreeSet<&StorePath> = self.references.iter().collect();
        f.write_str("References: ")?;
        for (i, reference) in references.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(&reference.base_name())?;
        }
        f.write_str("\n")?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "Deriver: {}", deriver.base_name())?;
        }
        let signatures: BTreeSet<String> =
            self.signatures.iter().map(ToString::to_string).collect();
        for signature in signatures {
            writeln!(f, "Sig: {signature}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}

/// Fields as they are read, before the required ones are known to be present.
#[derive(Default)]
struct Fields {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<Compression>,
    file_hash: Option<Sha256>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePath>>,
    deriver: Option<Option<StorePath>>,
    signatures: Vec<Signature>,
    ca: Option<String>,
}

fn set<T>(
    slot: &mut Option<T>,
    value: T,
    line: usize,
    field: &'static str,
) -> Result<(), NarInfoError> {
    if slot.is_some() {
        return Err(NarInfoError::Duplicate { line, field });
    }
    *slot = Some(value);
    Ok(())
}

impl Fields {
    fn take(&mut self, line: usize, key: &str, value: &str) -> Result<(), NarInfoError> {
        let store_path = |field, parse: fn(&str) -> Result<StorePath, StorePathError>, text| {
            parse(text).map_err(|source| NarInfoError::StorePath {
                line,
                field,
                source,
            })
        };
        let hash = |field, text| {
            Sha256::parse(text).map_err(|source| NarInfoError::Hash {
                line,
                field,
                source,
            })
        };
        let number = |field, text: &str| {
            text.parse::<u64>().map_err(|_| NarInfoError::Number {
                line,
                field,
                value: text.to_owned(),
            })
        };
        match key {
            "StorePath" => {
                let field = "StorePath";
                let path = store_path(field, StorePath::from_absolute, value)?;
                set(&mut self.store_path, path, line, field)
            }
            "URL" => set(&mut self.url, value.to_owned(), line, "URL"),
            "Compression" => set(
                &mut self.compression,
                // Nix reads an empty value as its default, bzip2.
                match value {
                    "" => Compression::Bzip2,
                    name => Compression::parse(name),
                },
                line,
                "Compression",
            ),
            "FileHash" => set(
                &mut self.file_hash,
                hash("FileHash", value)?,
                line,
                "FileHash",
            ),
            "FileSize" => set(
                &mut self.file_size,
                number("FileSize", value)?,
                line,
                "FileSize",
            ),
            "NarHash" => set(&mut self.nar_hash, hash("NarHash", value)?, line, "NarHash"),
            "NarSize" => set(
                &mut self.nar_size,
                number("NarSize", value)?,
                line,
                "NarSize",
            ),
            "References" => {
                let field = "References";
                let references = value
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(|r| store_path(field, StorePath::from_base_name, r))
                    .collect::<Result<Vec<_>, _>>()?;
                set(&mut self.references, references, line, field)
            }
            "Deriver" => {
                let field = "Deriver";
                let deriver = match value {
                    "unknown-deriver" => None,
                    base => Some(store_path(field, StorePath::from_base_name, base)?),
                };
                set(&mut self.deriver, deriver, line, field)
            }
            "Sig" => {
                let signature = Signature::parse(value)
                    .map_err(|source| NarInfoError::Signature { line, source })?;
                self.signatures.push(signature);
                Ok(())
            }
            "CA" => set(&mut self.ca, value.to_owned(), line, "CA"),
            // Nix skips keys it does not know (older files carry `System:`), and so do we.
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<NarInfo, NarInfoError> {
        // Checked in the order Nix checks them, so both report the same field first.
        let missing = |field| NarInfoError::Missing { field };
        let store_path = self.store_path.ok_or(missing("StorePath"))?;
        let nar_hash = self.nar_hash.ok_or(missing("NarHash"))?;
        let url = self
            .url
            .filter(|url| !url.is_empty())
            .ok_or(missing("URL"))?;
        let nar_size = self.nar_size.ok_or(missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        Ok(NarInfo {
            info: PathInfo {
                path: store_path,
                nar_hash,
                nar_size,
                references: self.references.unwrap_or_default(),
                deriver: self.deriver.flatten(),
                signatures: self.signatures,
                ca: self.ca.filter(|ca| !ca.is_empty()),
            },
            url,
            compression: self.compression.unwrap_or(Compression::Bzip2),
            file_hash: self.file_hash,
            file_size: self.file_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    use crate::nix::{PublicKey, SecretKey};

    // Written by Nix 2.8 with `nix copy --to file:///tmp/…` for two derivations built from
    // `builtins.derivation` (fmt-top's output names fmt-dep's, so it references it).
    const DEP_XZ: &str = "\
StorePath: /nix/store/g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep
URL: nar/1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j.nar.xz
Compression: xz
FileHash: sha256:1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j
FileSize: 128
NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv
NarSize: 120
References: 
Deriver: rb3a6016a83q1hhhvmivy1qa84jpnqf2-fmt-dep.drv
";
    const TOP_XZ: &str = "\
StorePath: /nix/store/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top
URL: nar/09kwidd2yhbfbcb0z5cydz450b8zyjgsjv9xyl5lf9qzlcl8bli8.nar.xz
Compression: xz
FileHash: sha256:09kwidd2yhbfbcb0z5cydz450b8zyjgsjv9xyl5lf9qzlcl8bli8
FileSize: 232
NarHash: sha256:1yg99ca88klv883flsx7lmsv6sns890rz7zwdyksivv84x0rcvic
NarSize: 528
References: g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep
Deriver: d0bxz7jay5v8jdyc1nkmschk340fg7mg-fmt-top.drv
";
    // The same paths, `?secret-key=sk&compression=none` with the key in signing::tests.
    const DEP_SIGNED: &str = "\
StorePath: /nix/store/g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep
URL: nar/00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv.nar
Compression: none
FileHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv
FileSize: 120
NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv
NarSize: 120
References: 
Deriver: rb3a6016a83q1hhhvmivy1qa84jpnqf2-fmt-dep.drv
Sig: fmt-test-1:uZlDiG6y9tYgng7psqIoEWkZd1xrkX1BHhycjS1X7sW6PgDmy/dVcS36AV/yxyTv8TitTceAQZvyVccRQvaABw==
";
    const TOP_SIGNED: &str = "\
StorePath: /nix/store/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top
URL: nar/1yg99ca88klv883flsx7lmsv6sns890rz7zwdyksivv84x0rcvic.nar
Compression: none
FileHash: sha256:1yg99ca88klv883flsx7lmsv6sns890rz7zwdyksivv84x0rcvic
FileSize: 528
NarHash: sha256:1yg99ca88klv883flsx7lmsv6sns890rz7zwdyksivv84x0rcvic
NarSize: 528
References: g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep
Deriver: d0bxz7jay5v8jdyc1nkmschk340fg7mg-fmt-top.drv
Sig: fmt-test-1:DXH1iTOu105VWTZZ3OkVuhwLqfeWBTuTLUrDpRocX89W8x1pUxkSvngFVpx/auT0jlkEzD7+RfSwQKMpw4TZBA==
";
    // `nix store add-path`, `builtins.toFile`, `nix store add-file` and a derivation whose
    // output names itself, copied with `?secret-key=sk&compression=zstd`.
    const CA_RECURSIVE: &str = "\
StorePath: /nix/store/2lwd6mnnxpk6z4rpl70mqcrfvkg8rj6m-fmt-ca-dir
URL: nar/1d4wxilf3l903vliwh59jjzhm3qvh4hy1pdb6vq8zl53w8a3w4mx.nar.zst
Compression: zstd
FileHash: sha256:1d4wxilf3l903vliwh59jjzhm3qvh4hy1pdb6vq8zl53w8a3w4mx
FileSize: 136
NarHash: sha256:0fzd3xy0rg1gdxfi7wg675q1vs7hh332lz0x4ml9l3arvl37yx9d
NarSize: 288
References: 
Sig: fmt-test-1:qZZwnSNuFKiGNqTh9YOg72PY1/TxjcjLdEToZYiZYCVNp51QZthpDdHleg8nxxXojKoF4YB+jJOen0TrIO8EAg==
CA: fixed:r:sha256:0fzd3xy0rg1gdxfi7wg675q1vs7hh332lz0x4ml9l3arvl37yx9d
";
    const CA_TEXT: &str = "\
StorePath: /nix/store/5q88hl1ax5460zq526ijwcxfmwh4y9zw-fmt-text
URL: nar/1lvjphjgx73wz0la7jkl5w52947npjhbvlb124xajww4qy2n29n1.nar.zst
Compression: zstd
FileHash: sha256:1lvjphjgx73wz0la7jkl5w52947npjhbvlb124xajww4qy2n29n1
FileSize: 92
NarHash: sha256:1nwdya00skjl6yg8y2vf24z2d23gkwjk3viivnlfjmfcvhjfp08s
NarSize: 128
References: 
Sig: fmt-test-1:Y35i3THUzAiOl/oaUczflkAftye/Xuwx0Vc0npGL/nEVRrT3YwsCT3YhB17FNjBLQvX4GdrLdH1wOKdLmXwTBw==
CA: text:sha256:19cbk5kiyb8vy72k62acgav8d08dldqzmdk6jslbkmry9d43hlwv
";
    const CA_FLAT: &str = "\
StorePath: /nix/store/r9cccbs89xvsgp5gz9g6iifm06vxsp6i-fmt-ca-file
URL: nar/1ld8almsygzh7iy6qgh9mmmq712hk7d577vwf72iz6y0794m67dl.nar.zst
Compression: zstd
FileHash: sha256:1ld8almsygzh7iy6qgh9mmmq712hk7d577vwf72iz6y0794m67dl
FileSize: 97
NarHash: sha256:14bdl7qfbxwr9ky4v5lyaa4iv6m0dp0hzkm4pz2rnsbcf71k8xms
NarSize: 136
References: 
Sig: fmt-test-1:gVyu4RD6tJbTxsOSkCk1X+3boL9PUJ0ZQh39r4DOx24lyEwftnutOcHc54ec9IywPkQMb8wZVJjKsWhnmcrdAA==
CA: fixed:sha256:1aisjw05av68bcjcgjvwnsnl85c55sk7c6lfr2w3fgcs4v7kmk99
";
    const SELF_REFERENCE: &str = "\
StorePath: /nix/store/h0qswnfhdnxfm2m76mh6b31fndn2f4zv-fmt-self
URL: nar/0vdm1y7cjglngk6wj5611l77025mvy5x7vwkyyr6zbkqj22as55s.nar.zst
Compression: zstd
FileHash: sha256:0vdm1y7cjglngk6wj5611l77025mvy5x7vwkyyr6zbkqj22as55s
FileSize: 131
NarHash: sha256:063g0xjm35i64mibpfksklm74vxnzlv9mhl1nbkaykl9wzx2qbxv
NarSize: 168
References: h0qswnfhdnxfm2m76mh6b31fndn2f4zv-fmt-self
Deriver: ns107khirgg5cv1511fkdvinqih8kmvq-fmt-self.drv
Sig: fmt-test-1:H1ooAZuz7kBtNoMsm9NLgbxhdltMs3IzeWsSEJhqrTXgHdE3GJx6Weecqx7hNuWFUSO8xoCCYMXqQF7Vofj2Cw==
";

    use crate::nix::signing::tests::{PUBLIC, SECRET};

    #[rstest]
    #[case::empty_references_with_deriver(DEP_XZ)]
    #[case::reference_and_deriver(TOP_XZ)]
    #[case::signed_uncompressed(DEP_SIGNED)]
    #[case::signed_with_reference(TOP_SIGNED)]
    #[case::ca_recursive(CA_RECURSIVE)]
    #[case::ca_text(CA_TEXT)]
    #[case::ca_flat(CA_FLAT)]
    #[case::self_reference(SELF_REFERENCE)]
    fn display_reproduces_nix_text(#[case] text: &str) {
        let info = NarInfo::parse(text).unwrap();
        assert_eq!(info.to_string(), text);
        // Nix names the NAR after the hash of the file it stores.
        let file_hash = info.file_hash.unwrap();
        assert_eq!(
            crate::nix::layout::nar_key(&file_hash, &info.compression),
            info.url
        );
    }

    /// Every narinfo `nix copy` of each Nix wrote (scripts/capture-nix-fixtures.sh) reads and
    /// writes back byte for byte under the key and NAR name Nix gave it, and the one signed
    /// verifies with the capture's key.
    #[rstest]
    #[case::nix_2_8("2.8.0")]
    #[case::nix_2_26("2.26.3")]
    #[case::nix_2_34("2.34.8")]
    #[case::nix_2_35("2.35.2")]
    fn every_narinfo_nix_copy_wrote_reads_and_writes_back_the_same(#[case] version: &str) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nix")
            .join(version);
        let public = std::fs::read_to_string(dir.join("public-key.txt")).unwrap();
        let public = [PublicKey::parse(public.trim()).unwrap()];
        let (mut read, mut signed) = (0, 0);
        for entry in std::fs::read_dir(dir.join("cache")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if !name.ends_with(".narinfo") {
                continue;
            }
            let text = std::fs::read_to_string(dir.join("cache").join(&name)).unwrap();
            let info = NarInfo::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(info.to_string(), text, "{name}");
            assert_eq!(crate::nix::layout::narinfo_key(&info.path), name);
            let file_hash = info.file_hash.expect("nix copy writes FileHash");
            assert_eq!(
                crate::nix::layout::nar_key(&file_hash, &info.compression),
                info.url
            );
            if !info.signatures.is_empty() {
                assert!(info.verify(&public), "{name}");
                signed += 1;
            }
            read += 1;
        }
        assert_eq!((read, signed), (5, 1), "narinfos read, and signed");
    }

    #[rstest]
    #[case::signed_uncompressed(DEP_SIGNED)]
    #[case::signed_with_reference(TOP_SIGNED)]
    #[case::ca_recursive(CA_RECURSIVE)]
    #[case::ca_text(CA_TEXT)]
    #[case::ca_flat(CA_FLAT)]
    #[case::self_reference(SELF_REFERENCE)]
    fn our_signature_is_the_one_nix_wrote(#[case] text: &str) {
        let public = PublicKey::parse(PUBLIC).unwrap();
        let nix_signed = NarInfo::parse(text).unwrap();
        assert!(nix_signed.verify(std::slice::from_ref(&public)));

        let mut info = nix_signed.clone();
        info.remove_signatures("fmt-test-1");
        assert!(info.signatures.is_empty());
        assert!(!info.verify(std::slice::from_ref(&public)));
        info.sign(&SecretKey::parse(SECRET).unwrap());
        assert_eq!(info, nix_signed);
        assert_eq!(info.to_string(), text);
    }

    #[test]
    fn parsed_fields() {
        let info = NarInfo::parse(TOP_SIGNED).unwrap();
        assert_eq!(info.path.name(), "fmt-top");
        assert_eq!(info.compression, Compression::None);
        assert_eq!(info.file_size, Some(528));
        assert_eq!(info.nar_size, 528);
        assert_eq!(info.file_hash, Some(info.nar_hash));
        assert_eq!(
            info.references,
            [StorePath::from_base_name("g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep").unwrap()]
        );
        assert_eq!(
            info.deriver.as_ref().map(StorePath::name),
            Some("fmt-top.drv")
        );
        assert_eq!(info.signatures.len(), 1);
        assert_eq!(info.ca, None);
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top;\
             sha256:1yg99ca88klv883flsx7lmsv6sns890rz7zwdyksivv84x0rcvic;528;\
             /nix/store/g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep"
        );
        let ca = NarInfo::parse(CA_RECURSIVE).unwrap();
        assert_eq!(
            ca.ca.as_deref(),
            Some("fixed:r:sha256:0fzd3xy0rg1gdxfi7wg675q1vs7hh332lz0x4ml9l3arvl37yx9d")
        );
        assert_eq!(ca.deriver, None);
    }

    #[test]
    fn display_sorts_and_omits_like_nix() {
        let mut info = NarInfo::parse(SELF_REFERENCE).unwrap();
        info.references.insert(
            0,
            StorePath::from_base_name("g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep").unwrap(),
        );
        let first = info.references[0].clone();
        info.references.push(first);
        info.sign(&SecretKey::parse(SECRET).unwrap());
        let extra = SecretKey::generate("another-1").unwrap();
        info.sign(&extra);
        info.file_hash = None;
        info.file_size = None;
        let text = info.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "Compression: zstd");
        assert_eq!(
            lines[3],
            "NarHash: sha256:063g0xjm35i64mibpfksklm74vxnzlv9mhl1nbkaykl9wzx2qbxv"
        );
        assert_eq!(
            lines[5],
            "References: g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep h0qswnfhdnxfm2m76mh6b31fndn2f4zv-fmt-self"
        );
        assert!(lines[7].starts_with("Sig: another-1:"));
        assert!(lines[8].starts_with("Sig: fmt-test-1:"));
        assert_eq!(lines.len(), 9);
        let public = [extra.to_public()];
        assert!(NarInfo::parse(&text).unwrap().verify(&public));
    }

    #[test]
    fn sign_replaces_a_signature_of_the_same_name() {
        let mut info = NarInfo::parse(DEP_SIGNED).unwrap();
        let before = info.signatures[0].clone();
        let replacement = SecretKey::generate("fmt-test-1").unwrap();
        info.sign(&replacement);
        assert_eq!(info.signatures.len(), 1);
        assert_ne!(info.signatures[0], before);
        assert!(info.verify(&[replacement.to_public()]));
        assert!(!info.verify(&[PublicKey::parse(PUBLIC).unwrap()]));
    }

    #[test]
    fn verify_rejects_tampering() {
        let public = [PublicKey::parse(PUBLIC).unwrap()];
        let mut info = NarInfo::parse(TOP_SIGNED).unwrap();
        info.references.clear();
        assert!(!info.verify(&public));
        let mut info = NarInfo::parse(TOP_SIGNED).unwrap();
        info.nar_size += 1;
        assert!(!info.verify(&public));
        // Not part of the fingerprint, as in Nix: a cache may recompress without re-signing.
        let mut info = NarInfo::parse(TOP_SIGNED).unwrap();
        info.url = "nar/other.nar.zst".into();
        info.compression = Compression::Zstd;
        assert!(info.verify(&public));
    }

    #[test]
    fn reader_follows_nix_defaults() {
        let text = "\
StorePath: /nix/store/g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep
URL: nar/x.nar.bz2
System: x86_64-linux
NarHash: sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=
NarSize: 120
Deriver: unknown-deriver
Compression: 
SomethingNew: ignored
";
        let info = NarInfo::parse(text).unwrap();
        assert_eq!(info.compression, Compression::Bzip2);
        assert_eq!(info.deriver, None);
        assert_eq!(info.references, []);
        assert_eq!((info.file_hash, info.file_size), (None, None));
        assert_eq!(info.nar_hash, Sha256::digest(b"hello\n"));
        assert_eq!(
            info.to_string(),
            "\
StorePath: /nix/store/g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep
URL: nar/x.nar.bz2
Compression: bzip2
NarHash: sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq
NarSize: 120
References: 
"
        );
    }

    #[rstest]
    #[case::no_colon(&DEP_XZ.replace("FileSize: 128", "FileSize 128"), "line 5: expected 'Key: value'")]
    #[case::missing_store_path(&drop_line(DEP_XZ, "StorePath"), "the StorePath field is missing")]
    #[case::missing_nar_hash(&drop_line(DEP_XZ, "NarHash"), "the NarHash field is missing")]
    #[case::missing_url(&drop_line(DEP_XZ, "URL"), "the URL field is missing")]
    #[case::empty_url(&DEP_XZ.replace("URL: nar/1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j.nar.xz", "URL: "), "the URL field is missing")]
    // Found by fuzzing: "URL: \r\r" was once read as the URL "\r", which writes back as a
    // line read as an empty URL.
    #[case::carriage_return_in_url(&DEP_XZ.replace(".nar.xz\n", ".nar.xz\r\r\n"), "line 2: a control character")]
    #[case::crlf_line_ends(&DEP_XZ.replace('\n', "\r\n"), "line 1: a control character")]
    #[case::missing_nar_size(&drop_line(DEP_XZ, "NarSize"), "the NarSize field is missing")]
    #[case::zero_nar_size(&DEP_XZ.replace("NarSize: 120", "NarSize: 0"), "NarSize is 0")]
    #[case::bad_nar_size(&DEP_XZ.replace("NarSize: 120", "NarSize: -1"), "line 7: NarSize: \"-1\" is not a byte count")]
    #[case::bad_file_size(&DEP_XZ.replace("FileSize: 128", "FileSize: 1e3"), "line 5: FileSize: \"1e3\" is not a byte count")]
    #[case::bad_nar_hash(&DEP_XZ.replace("NarHash: sha256:00k", "NarHash: sha256:e0k"), "line 6: NarHash: sha256 hash")]
    #[case::md5_file_hash(&DEP_XZ.replace("FileHash: sha256:", "FileHash: md5:"), "line 4: FileHash: hash")]
    #[case::store_path_not_absolute(&DEP_XZ.replace("StorePath: /nix/store/", "StorePath: "), "line 1: StorePath:")]
    #[case::bad_reference(&TOP_XZ.replace("References: g8cds", "References: g8cde"), "line 8: References: store path \"g8cde6b")]
    #[case::bad_deriver(&DEP_XZ.replace("-fmt-dep.drv", "-fmt dep.drv"), "line 9: Deriver:")]
    #[case::bad_signature(&DEP_SIGNED.replace("Sig: fmt-test-1:uZ", "Sig: fmt-test-1:u"), "line 10: Sig: the signature \"fmt-test-1\" is not valid base64")]
    #[case::duplicate_references(&format!("{TOP_XZ}References: \n"), "line 10: References appears a second time")]
    #[case::duplicate_nar_hash(&format!("{DEP_XZ}NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\n"), "line 10: NarHash appears a second time")]
    fn parse_errors(#[case] text: &str, #[case] message: &str) {
        let err = NarInfo::parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with(message),
            "{err:?} should start with {message:?}"
        );
    }

    fn drop_line(text: &str, key: &str) -> String {
        text.lines()
            .filter(|line| !line.starts_with(&format!("{key}:")))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[rstest]
    #[case::none("none", Compression::None, ".nar")]
    #[case::zstd("zstd", Compression::Zstd, ".nar.zst")]
    #[case::xz("xz", Compression::Xz, ".nar.xz")]
    #[case::bzip2("bzip2", Compression::Bzip2, ".nar.bz2")]
    #[case::brotli("br", Compression::Other("br".into()), ".nar.br")]
    #[case::unknown("snappy", Compression::Other("snappy".into()), ".nar")]
    fn compression_names(#[case] name: &str, #[case] parsed: Compression, #[case] extension: &str) {
        let compression = Compression::parse(name);
        assert_eq!(compression, parsed);
        assert_eq!(compression.as_str(), name);
        assert_eq!(compression.nar_extension(), extension);
    }
}
