//! The outputs a derivation (`.drv` file) names. A `.drv` is ATerm text that begins with its
//! outputs: `Derive([("out","/nix/store/…-name","",""),…],…`. Each output is a name, a store
//! path (empty for a content-addressed output whose path is known only once it is built), and
//! the hash algorithm and hash of a fixed output. Only that first list is read.

use super::store_path::{StorePath, StorePathError};

#[derive(Debug, thiserror::Error)]
pub enum DerivationError {
    #[error("not a derivation: it does not begin with `Derive([`")]
    NotADerivation,
    #[error("byte {at}: {what}")]
    Syntax { at: usize, what: &'static str },
    #[error("output {name}: {source}")]
    OutputPath {
        name: String,
        source: StorePathError,
    },
}

/// One output of a derivation: its name, and its store path where the derivation fixes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub path: Option<StorePath>,
}

/// The outputs `text` (a `.drv` file) names, in its order.
pub fn outputs(text: &str) -> Result<Vec<Output>, DerivationError> {
    let mut reader = Reader {
        text: text.as_bytes(),
        at: 0,
    };
    if !reader.eat(b"Derive([") {
        return Err(DerivationError::NotADerivation);
    }
    let mut outputs = Vec::new();
    if reader.eat(b"]") {
        return Ok(outputs);
    }
    loop {
        reader.expect(b"(", "expected `(` before an output")?;
        let name = reader.string()?;
        reader.expect(b",", "expected `,` after an output's name")?;
        let path = reader.string()?;
        for _ in 0..2 {
            reader.expect(b",", "expected `,` in an output")?;
            reader.string()?;
        }
        reader.expect(b")", "expected `)` after an output")?;
        let path = match path.as_str() {
            "" => None,
            path => Some(StorePath::from_absolute(path).map_err(|source| {
                DerivationError::OutputPath {
                    name: name.clone(),
                    source,
                }
            })?),
        };
        outputs.push(Output { name, path });
        if reader.eat(b"]") {
            return Ok(outputs);
        }
        reader.expect(b",", "expected `,` or `]` after an output")?;
    }
}

struct Reader<'a> {
    text: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn eat(&mut self, token: &[u8]) -> bool {
        let found = self.text[self.at..].starts_with(token);
        if found {
            self.at += token.len();
        }
        found
    }

    fn expect(&mut self, token: &[u8], what: &'static str) -> Result<(), DerivationError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn error(&self, what: &'static str) -> DerivationError {
        DerivationError::Syntax { at: self.at, what }
    }

    /// A quoted string, with ATerm's escapes (`\"`, `\\`, `\n`, `\r`, `\t`) undone.
    fn string(&mut self) -> Result<String, DerivationError> {
        self.expect(b"\"", "expected a quoted string")?;
        let mut bytes = Vec::new();
        loop {
            let Some(&byte) = self.text.get(self.at) else {
                return Err(self.error("a string runs to the end"));
            };
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(&escaped) = self.text.get(self.at) else {
                        return Err(self.error("a string runs to the end"));
                    };
                    self.at += 1;
                    bytes.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                }
                other => bytes.push(other),
            }
        }
        String::from_utf8(bytes).map_err(|_| self.error("a string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// The derivations scripts/capture-nix-fixtures.sh copied out of each Nix's store.
    #[rstest]
    #[case::nix_2_8(nix_fixture!("2.8.0", "top.drv"), nix_fixture!("2.8.0", "fixed.drv"))]
    #[case::nix_2_26(nix_fixture!("2.26.3", "top.drv"), nix_fixture!("2.26.3", "fixed.drv"))]
    #[case::nix_2_34(nix_fixture!("2.34.8", "top.drv"), nix_fixture!("2.34.8", "fixed.drv"))]
    #[case::nix_2_35(nix_fixture!("2.35.2", "top.drv"), nix_fixture!("2.35.2", "fixed.drv"))]
    fn reads_the_outputs_nix_wrote(#[case] top: &str, #[case] fixed: &str) {
        let out = |base: &str| Output {
            name: "out".to_owned(),
            path: Some(StorePath::from_base_name(base).unwrap()),
        };
        assert_eq!(
            outputs(top).unwrap(),
            [out(
                "mk7hq1if2hv74basagfnvimdvfqm5yy9-nixbucket-fixture-top"
            )]
        );
        assert_eq!(
            outputs(fixed).unwrap(),
            [out(
                "zsywi252l3lyaf8p9g0wgl92bf4vjs7x-nixbucket-fixture-recursive"
            )]
        );
    }

    #[test]
    fn several_outputs_escapes_and_floating_paths() {
        let text = r#"Derive([("dev","/nix/store/00000000000000000000000000000000-x-dev","",""),("o\"ut","","r:sha256",""),("out","/nix/store/11111111111111111111111111111111-x","","")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
        let found = outputs(text).unwrap();
        let names: Vec<&str> = found.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["dev", "o\"ut", "out"]);
        assert_eq!(found[1].path, None);
        assert_eq!(
            found[2].path.as_ref().unwrap().name(),
            "x",
            "the third output's path"
        );
    }

    #[rstest]
    #[case::empty("", "not a derivation")]
    #[case::json("{\"out\": {}}", "not a derivation")]
    #[case::cut("Derive([(\"out\",\"/nix/st", "runs to the end")]
    #[case::three_fields("Derive([(\"out\",\"\",\"\")]", "expected `,` in an output")]
    #[case::bad_path("Derive([(\"out\",\"/tmp/x\",\"\",\"\")]", "output out:")]
    fn refuses_what_is_not_a_derivation(#[case] text: &str, #[case] message: &str) {
        let err = outputs(text).unwrap_err().to_string();
        assert!(err.contains(message), "{err:?} should contain {message:?}");
    }
}
