//! SHA-256 digests as Nix prints and parses them, and the hashers that produce them.
//!
//! A digest is kept as its 32 bytes; the text forms (`sha256:<nixbase32>`, `sha256:<hex>`,
//! SRI `sha256-<base64>`) exist only at the edges. Hashing goes through `sha2`, which picks the
//! CPU's SHA extensions at run time, so hashing a NAR stream costs little next to reading it.

use std::fmt;
use std::io::{self, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest;
use thiserror::Error;

use super::base32;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("hash {text:?} does not name its type: expected sha256:… or sha256-…")]
    MissingType { text: String },
    #[error("hash {text:?} is of type {algo:?}; only sha256 is supported")]
    UnsupportedType { text: String, algo: String },
    #[error(
        "sha256 hash {text:?} has {len} characters; expected 52 (nixbase32), 64 (hex) or 44 (base64)"
    )]
    BadLength { text: String, len: usize },
    #[error("sha256 hash {text:?} is not valid {encoding}")]
    BadEncoding {
        text: String,
        encoding: &'static str,
    },
}

impl Sha256 {
    pub fn digest(data: &[u8]) -> Self {
        Self(sha2::Sha256::digest(data).into())
    }

    /// Parses `sha256:<nixbase32>`, `sha256:<hex>`, `sha256:<base64>` or SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let (algo, body, sri) = match (s.split_once(':'), s.split_once('-')) {
            (Some((algo, body)), _) => (algo, body, false),
            (None, Some((algo, body))) => (algo, body, true),
            (None, None) => return Err(HashError::MissingType { text: s.to_owned() }),
        };
        if algo != "sha256" {
            return Err(HashError::UnsupportedType {
                text: s.to_owned(),
                algo: algo.to_owned(),
            });
        }
        let bad = |encoding| HashError::BadEncoding {
            text: s.to_owned(),
            encoding,
        };
        let bytes = match body.len() {
            44 => BASE64.decode(body).map_err(|_| bad("base64"))?,
            52 if !sri => base32::decode(body).map_err(|_| bad("nixbase32"))?,
            64 if !sri => decode_hex(body).ok_or_else(|| bad("hex"))?,
            len => {
                return Err(HashError::BadLength {
                    text: s.to_owned(),
                    len,
                });
            }
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("base64"))?;
        Ok(Self(bytes))
    }

    /// The 52 nixbase32 characters, without the `sha256:` prefix (as in NAR file names).
    pub fn to_nix_base32(&self) -> String {
        base32::encode(&self.0)
    }

    /// `sha256-<base64>`, the form `nix path-info --json` prints.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(self.0))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix_base32())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Sha256 {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        Self::parse(s)
    }
}

/// A hash of any algorithm Nix uses, as bytes: what a content address (`CA:`) may carry,
/// where only sha256 is a [`Sha256`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnyHash {
    pub algorithm: String,
    pub bytes: Vec<u8>,
}

impl AnyHash {
    /// Reads `<algorithm>:<hex|nixbase32|base64>` or SRI `<algorithm>-<base64>`.
    pub fn parse(text: &str) -> Result<AnyHash, String> {
        let (algorithm, body) = text
            .split_once(':')
            .or_else(|| text.split_once('-'))
            .ok_or_else(|| format!("{text:?} names no algorithm"))?;
        AnyHash::from_parts(algorithm, body)
    }

    /// `body` in hex, nixbase32 or base64, told apart by its length for `algorithm`.
    pub fn from_parts(algorithm: &str, body: &str) -> Result<AnyHash, String> {
        let len = match algorithm {
            "md5" => 16,
            "sha1" => 20,
            "sha256" => 32,
            "sha512" => 64,
            other => return Err(format!("unknown hash algorithm {other:?}")),
        };
        let bytes = if body.len() == len * 2 {
            decode_hex(body)
        } else if body.len() == (len * 8).div_ceil(5) {
            base32::decode(body).ok()
        } else {
            BASE64.decode(body).ok()
        };
        match bytes {
            Some(bytes) if bytes.len() == len => Ok(AnyHash {
                algorithm: algorithm.to_owned(),
                bytes,
            }),
            _ => Err(format!("{body:?} is not a {algorithm} hash")),
        }
    }

    /// `<algorithm>:<nixbase32>`, as a narinfo's `CA:` line writes it.
    pub fn to_nix_base32(&self) -> String {
        format!("{}:{}", self.algorithm, base32::encode(&self.bytes))
    }

    pub fn to_sha256(&self) -> Option<Sha256> {
        if self.algorithm != "sha256" {
            return None;
        }
        Some(Sha256(self.bytes.as_slice().try_into().ok()?))
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(*pair.get(1)?)?))
        .collect()
}

/// Incremental SHA-256 for data that arrives in pieces.
#[derive(Clone, Default)]
pub struct Hasher {
    state: sha2::Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.state.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Sha256 {
        Sha256(self.state.finalize().into())
    }
}

/// Passes writes through to `inner` while hashing and counting what was written, so a NAR
/// stream can be hashed on its way to a compressor or a file without a second pass.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer (not flushed), the digest and the number of bytes written.
    pub fn finish(self) -> (W, Sha256, u64) {
        let len = self.hasher.len();
        (self.inner, self.hasher.finish(), len)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hash only what the inner writer took, so a short write is not hashed twice.
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    // sha256("hello\n"), as printed by `nix hash file --base32/--base16/--sri`
    // in each encoding on Nix 2.8.
    const HELLO_NIX32: &str = "sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq";
    const HELLO_HEX: &str =
        "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    const HELLO_SRI: &str = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=";

    #[rstest]
    #[case::nixbase32(HELLO_NIX32)]
    #[case::hex(HELLO_HEX)]
    #[case::hex_upper(&HELLO_HEX.to_uppercase().replace("SHA256", "sha256"))]
    #[case::sri(HELLO_SRI)]
    #[case::base64_with_colon(&HELLO_SRI.replace('-', ":"))]
    fn parses_every_form(#[case] text: &str) {
        let hash = Sha256::parse(text).unwrap();
        assert_eq!(hash, Sha256::digest(b"hello\n"));
        assert_eq!(hash.to_string(), HELLO_NIX32);
        assert_eq!(format!("{hash:?}"), HELLO_NIX32);
        assert_eq!(hash.to_sri(), HELLO_SRI);
        assert_eq!(format!("sha256:{}", hash.to_hex()), HELLO_HEX);
        assert_eq!(hash.to_nix_base32().len(), 52);
    }

    #[rstest]
    #[case::no_type(
        "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
        "does not name its type"
    )]
    #[case::sha1("sha1:0d4x3n2rn0qb9m1qcb5ch5jmmn0q9dk5", "only sha256")]
    #[case::short(
        "sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4a",
        "has 51 characters"
    )]
    #[case::bad_nix32_char(
        "sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4ae",
        "not valid nixbase32"
    )]
    #[case::bad_hex(
        "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be0g",
        "not valid hex"
    )]
    #[case::sri_with_nix32(
        "sha256-00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
        "has 52 characters"
    )]
    #[case::bad_base64(
        "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2v!M=",
        "not valid base64"
    )]
    fn rejects(#[case] text: &str, #[case] message: &str) {
        let err = Sha256::parse(text).unwrap_err().to_string();
        assert!(err.contains(message), "{err:?} should contain {message:?}");
    }

    #[test]
    fn writer_and_hasher_agree_with_one_shot_digest() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = Sha256Writer::new(Vec::new());
        for chunk in data.chunks(7919) {
            writer.write_all(chunk).unwrap();
        }
        let (inner, hash, len) = writer.finish();
        assert_eq!(inner, data);
        assert_eq!(len, data.len() as u64);
        assert_eq!(hash, Sha256::digest(&data));

        let mut hasher = Hasher::new();
        data.chunks(333).for_each(|c| hasher.update(c));
        assert_eq!(hasher.len(), data.len() as u64);
        assert_eq!(hasher.finish(), Sha256::digest(&data));
    }

    #[test]
    fn any_hash_reads_every_encoding_by_its_length() {
        let sha256 = Sha256::digest(b"fixed\n");
        for text in [
            sha256.to_sri(),
            format!("sha256:{}", sha256.to_nix_base32()),
            format!("sha256:{}", sha256.to_hex()),
        ] {
            let any = AnyHash::parse(&text).unwrap();
            assert_eq!(any.to_sha256(), Some(sha256), "{text}");
            assert_eq!(any.to_nix_base32(), sha256.to_string(), "{text}");
        }
        let sha1 = AnyHash::parse("sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=").unwrap();
        assert_eq!(sha1.bytes.len(), 20);
        assert_eq!(sha1.to_sha256(), None);
        assert!(AnyHash::parse("sha256-short").is_err());
        assert!(AnyHash::parse("blake9-AAAA").is_err());
        assert!(AnyHash::parse("nothing").is_err());
    }
}
