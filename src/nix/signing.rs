//! Binary cache signing keys and signatures in Nix's text format.
//!
//! A secret key is `NAME:<base64 of 64 bytes>` (the ed25519 seed followed by the public key),
//! a public key `NAME:<base64 of 32 bytes>`, a signature `NAME:<base64 of 64 bytes>`; these are
//! the files `nix-store --generate-binary-cache-key` writes and the `Sig:` lines of narinfos.
//!
//! Secret material never reaches an error message or a `Debug` print, and is wiped from memory
//! when dropped. Errors name the key (the part before the colon), which is public.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use thiserror::Error;
use zeroize::Zeroizing;

const SEED_BYTES: usize = 32;
const PUBLIC_BYTES: usize = 32;
const SECRET_BYTES: usize = SEED_BYTES + PUBLIC_BYTES;
const SIGNATURE_BYTES: usize = 64;

const FORMAT_HINT: &str =
    "expected NAME:BASE64, as written by `nix-store --generate-binary-cache-key`";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("the {what} is empty")]
    Empty { what: &'static str },
    #[error("the {what} has no name: {FORMAT_HINT}")]
    MissingName { what: &'static str },
    #[error("the {what} has an empty name before the ':': {FORMAT_HINT}")]
    EmptyName { what: &'static str },
    #[error(
        "the key name {name:?} contains whitespace, so it could not be listed in trusted-public-keys"
    )]
    BadName { name: String },
    #[error("the {what} {name:?} is not valid base64 after the ':'")]
    BadBase64 { what: &'static str, name: String },
    #[error(
        "{name:?} is a public key; a secret key is needed (the other file that `nix-store --generate-binary-cache-key` wrote)"
    )]
    PublicKeyGiven { name: String },
    #[error(
        "{name:?} is a secret key; a public key is needed (and this secret key must stay private)"
    )]
    SecretKeyGiven { name: String },
    #[error("the {what} {name:?} is {actual} bytes long; expected {expected}")]
    WrongLength {
        what: &'static str,
        name: String,
        expected: usize,
        actual: usize,
    },
    #[error("the secret key {name:?} is damaged: its public half does not match its seed")]
    Mismatch { name: String },
    #[error("the public key {name:?} is not a valid ed25519 key")]
    InvalidPublicKey { name: String },
    #[error("cannot get random bytes from the operating system for a new key: {0}")]
    Random(getrandom::Error),
}

/// Splits `NAME:BASE64` after trimming surrounding whitespace.
fn split<'a>(text: &'a str, what: &'static str) -> Result<(&'a str, &'a str), KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty { what });
    }
    let (name, data) = text.split_once(':').ok_or(KeyError::MissingName { what })?;
    if name.is_empty() {
        return Err(KeyError::EmptyName { what });
    }
    check_name(name)?;
    Ok((name, data))
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if name.chars().any(char::is_whitespace) {
        return Err(KeyError::BadName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Decodes base64 into memory that is wiped on drop, and never reports which byte was bad:
/// the decoder's message would quote part of the key.
fn decode(data: &str, what: &'static str, name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    BASE64
        .decode(data)
        .map(Zeroizing::new)
        .map_err(|_| KeyError::BadBase64 {
            what,
            name: name.to_owned(),
        })
}

/// An ed25519 signing key with its Nix name. The key bytes are wiped when it is dropped.
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Parses the contents of a secret key file; surrounding whitespace and newlines are
    /// ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "secret key";
        let (name, data) = split(text, WHAT)?;
        let bytes = decode(data, WHAT, name)?;
        let Ok(bytes) = <&[u8; SECRET_BYTES]>::try_from(bytes.as_slice()) else {
            return Err(if bytes.len() == PUBLIC_BYTES {
                KeyError::PublicKeyGiven {
                    name: name.to_owned(),
                }
            } else {
                KeyError::WrongLength {
                    what: WHAT,
                    name: name.to_owned(),
                    expected: SECRET_BYTES,
                    actual: bytes.len(),
                }
            });
        };
        let mut seed = Zeroizing::new([0u8; SEED_BYTES]);
        seed.copy_from_slice(&bytes[..SEED_BYTES]);
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[SEED_BYTES..] {
            return Err(KeyError::Mismatch {
                name: name.to_owned(),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// A new key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "key name";
        if name.is_empty() {
            return Err(KeyError::Empty { what: WHAT });
        }
        check_name(name)?;
        if name.contains(':') {
            return Err(KeyError::BadName {
                name: name.to_owned(),
            });
        }
        let mut seed = Zeroizing::new([0u8; SEED_BYTES]);
        getrandom::fill(seed.as_mut_slice()).map_err(KeyError::Random)?;
        Ok(Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn to_public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a narinfo fingerprint (see [`super::narinfo::fingerprint`]).
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(fingerprint.as_bytes()).to_bytes(),
        }
    }

    /// The secret key file's contents, `NAME:BASE64`, in memory that is wiped on drop.
    pub fn to_nix_string(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
        bytes[..SEED_BYTES].copy_from_slice(self.key.as_bytes());
        bytes[SEED_BYTES..].copy_from_slice(self.key.verifying_key().as_bytes());
        // Sized up front so the text is never reallocated, which would leave a copy behind.
        let mut text = Zeroizing::new(String::with_capacity(
            self.name.len() + 1 + base64::encoded_len(SECRET_BYTES, true).unwrap_or(88),
        ));
        text.push_str(&self.name);
        text.push(':');
        BASE64.encode_string(bytes.as_slice(), &mut text);
        text
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses one public key as written in a file or in `trusted-public-keys`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "public key";
        let (name, data) = split(text, WHAT)?;
        let bytes = decode(data, WHAT, name)?;
        let Ok(bytes) = <[u8; PUBLIC_BYTES]>::try_from(bytes.as_slice()) else {
            return Err(if bytes.len() == SECRET_BYTES {
                KeyError::SecretKeyGiven {
                    name: name.to_owned(),
                }
            } else {
                KeyError::WrongLength {
                    what: WHAT,
                    name: name.to_owned(),
                    expected: PUBLIC_BYTES,
                    actual: bytes.len(),
                }
            });
        };
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPublicKey {
            name: name.to_owned(),
        })?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if `sig` is by a key of this name and verifies over `fingerprint` with this key.
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        sig.key_name == self.name
            && self
                .key
                .verify_strict(
                    fingerprint.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&sig.bytes),
                )
                .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One `Sig:` value of a narinfo: the signing key's name and the 64-byte ed25519 signature.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Signature {
    pub key_name: String,
    pub bytes: [u8; SIGNATURE_BYTES],
}

impl Signature {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "signature";
        let (name, data) = split(s, WHAT)?;
        let bytes = BASE64.decode(data).map_err(|_| KeyError::BadBase64 {
            what: WHAT,
            name: name.to_owned(),
        })?;
        let bytes = <[u8; SIGNATURE_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
            KeyError::WrongLength {
                what: WHAT,
                name: name.to_owned(),
                expected: SIGNATURE_BYTES,
                actual: bytes.len(),
            }
        })?;
        Ok(Self {
            key_name: name.to_owned(),
            bytes,
        })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, BASE64.encode(self.bytes))
    }
}

impl std::str::FromStr for Signature {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rstest::rstest;

    // A throwaway pair from `nix-store --generate-binary-cache-key fmt-test-1 sk pk` (Nix 2.8).
    pub(crate) const SECRET: &str = "fmt-test-1:3PnoNKxJcfDtfdB7lxl+hE8MkiKYUked0W8RkclgFSoslVpdshZbxRuBa1tzF2sBCAX3I1HcSU12djBD6XbErQ==";
    pub(crate) const PUBLIC: &str = "fmt-test-1:LJVaXbIWW8UbgWtbcxdrAQgF9yNR3ElNdnYwQ+l2xK0=";
    const SECRET_BASE64: &str =
        "3PnoNKxJcfDtfdB7lxl+hE8MkiKYUked0W8RkclgFSoslVpdshZbxRuBa1tzF2sBCAX3I1HcSU12djBD6XbErQ==";
    const SEED_BASE64_PREFIX: &str = "3PnoNKxJcfDtfdB7lxl+hE8MkiKYUked0W8RkclgFSo";

    #[test]
    fn parses_nix_generated_pair() {
        let secret = SecretKey::parse(&format!("{SECRET}\n")).unwrap();
        let public = PublicKey::parse(PUBLIC).unwrap();
        assert_eq!(secret.name(), "fmt-test-1");
        assert_eq!(secret.to_public(), public);
        assert_eq!(public.to_string(), PUBLIC);
        assert_eq!(format!("{public:?}"), PUBLIC);
        assert_eq!(secret.to_nix_string().as_str(), SECRET);
    }

    #[test]
    fn signature_matches_nix_and_verifies() {
        // Fingerprint of fmt-dep and the Sig Nix 2.8 wrote for it with SECRET
        // (`nix copy --to 'file://…?secret-key=sk'`).
        let fingerprint = "1;/nix/store/g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep;sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv;120;";
        let nix_sig = "fmt-test-1:uZlDiG6y9tYgng7psqIoEWkZd1xrkX1BHhycjS1X7sW6PgDmy/dVcS36AV/yxyTv8TitTceAQZvyVccRQvaABw==";
        let secret = SecretKey::parse(SECRET).unwrap();
        let sig = secret.sign(fingerprint);
        assert_eq!(sig.to_string(), nix_sig);
        assert_eq!(Signature::parse(nix_sig).unwrap(), sig);

        let public = PublicKey::parse(PUBLIC).unwrap();
        assert!(public.verify(fingerprint, &sig));
        assert!(!public.verify(&fingerprint.replace(";120;", ";121;"), &sig));
        let renamed = Signature {
            key_name: "other-1".into(),
            ..sig.clone()
        };
        assert!(!public.verify(fingerprint, &renamed));
        let other = SecretKey::generate("fmt-test-1").unwrap().to_public();
        assert!(!other.verify(fingerprint, &sig));
    }

    #[test]
    fn generated_keys_round_trip_and_differ() {
        let a = SecretKey::generate("ci-cache-1").unwrap();
        let b = SecretKey::generate("ci-cache-1").unwrap();
        assert_ne!(a.to_public(), b.to_public());
        let text = a.to_nix_string();
        assert!(text.starts_with("ci-cache-1:"));
        let parsed = SecretKey::parse(&text).unwrap();
        assert_eq!(parsed.to_public(), a.to_public());
        assert_eq!(
            PublicKey::parse(&a.to_public().to_string()).unwrap(),
            a.to_public()
        );
        let sig = a.sign("1;x");
        assert!(parsed.to_public().verify("1;x", &sig));
    }

    #[rstest]
    #[case::empty("", "the secret key is empty")]
    #[case::blank(" \n", "the secret key is empty")]
    #[case::no_colon(SECRET_BASE64, "the secret key has no name")]
    #[case::empty_name(&format!(":{SECRET_BASE64}"), "has an empty name")]
    #[case::space_in_name(&format!("my key:{SECRET_BASE64}"), "contains whitespace")]
    #[case::bad_base64(&format!("fmt-test-1:{}", SECRET_BASE64.replace('+', "!")), "\"fmt-test-1\" is not valid base64")]
    #[case::public_given(PUBLIC, "\"fmt-test-1\" is a public key; a secret key is needed")]
    #[case::seed_only(&format!("fmt-test-1:{SEED_BASE64_PREFIX}="), "is a public key; a secret key is needed")]
    #[case::truncated(&format!("fmt-test-1:{}", "A".repeat(64)), "is 48 bytes long; expected 64")]
    #[case::wrong_length("fmt-test-1:AAAA", "is 3 bytes long; expected 64")]
    #[case::mismatch(
        &format!("fmt-test-1:{}", SECRET_BASE64.replacen('3', "4", 1)),
        "is damaged: its public half does not match its seed"
    )]
    fn secret_key_errors(#[case] text: &str, #[case] message: &str) {
        let err = SecretKey::parse(text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains(message),
            "{shown:?} should contain {message:?}"
        );
        assert_no_secret(&shown);
        assert_no_secret(&format!("{err:?}"));
    }

    #[rstest]
    #[case::empty("", "the public key is empty")]
    #[case::no_colon("LJVaXbIWW8UbgWtbcxdrAQgF9yNR3ElNdnYwQ+l2xK0=", "has no name")]
    #[case::secret_given(SECRET, "\"fmt-test-1\" is a secret key; a public key is needed")]
    #[case::bad_base64("fmt-test-1:LJVa!", "not valid base64")]
    #[case::wrong_length("fmt-test-1:AAAA", "is 3 bytes long; expected 32")]
    fn public_key_errors(#[case] text: &str, #[case] message: &str) {
        let err = PublicKey::parse(text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains(message),
            "{shown:?} should contain {message:?}"
        );
        assert_no_secret(&shown);
        assert_no_secret(&format!("{err:?}"));
    }

    #[rstest]
    #[case::no_name("uZlDiG6y9tYg", "has no name")]
    #[case::short("k:AAAA", "signature \"k\" is 3 bytes long; expected 64")]
    #[case::bad_base64("k:***", "not valid base64")]
    fn signature_errors(#[case] text: &str, #[case] message: &str) {
        let shown = Signature::parse(text).unwrap_err().to_string();
        assert!(
            shown.contains(message),
            "{shown:?} should contain {message:?}"
        );
    }

    #[test]
    fn debug_print_hides_the_secret() {
        let secret = SecretKey::parse(SECRET).unwrap();
        let shown = format!("{secret:?} {secret:#?}");
        assert!(
            shown.contains(r#"SecretKey { name: "fmt-test-1", key: <redacted> }"#),
            "{shown}"
        );
        assert_no_secret(&shown);
    }

    #[test]
    fn generate_rejects_unusable_names() {
        for name in ["", "two words", "a:b"] {
            assert!(SecretKey::generate(name).is_err(), "{name:?}");
        }
    }

    fn assert_no_secret(text: &str) {
        assert!(!text.contains(SEED_BASE64_PREFIX), "secret leaked: {text}");
        assert!(
            !text.contains(&SEED_BASE64_PREFIX[..12]),
            "secret leaked: {text}"
        );
    }
}
