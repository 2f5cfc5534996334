//! Editing nix.conf without disturbing it: nixbucket owns one marked block and rewrites only
//! that, so a second `setup` replaces its own lines instead of adding more, and every other
//! line (comments, settings, includes) stays byte for byte.

/// First and last line of the block nixbucket manages.
pub const BEGIN: &str =
    "# nixbucket: begin (managed by `nixbucket setup`; edits inside are replaced)";
pub const END: &str = "# nixbucket: end";

/// The first and last line of one block nixbucket manages: setup's, or the block `use` keeps
/// for one cache. Each is found and rewritten on its own, so a developer's machine can read
/// several caches and a job's setup beside them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Markers {
    pub begin: String,
    pub end: String,
}

impl Markers {
    /// `setup`'s block.
    pub fn setup() -> Markers {
        Markers {
            begin: BEGIN.to_owned(),
            end: END.to_owned(),
        }
    }

    /// The block `nixbucket use` keeps for the cache in `bucket`.
    pub fn use_of(bucket: &str) -> Markers {
        Markers {
            begin: format!(
                "# nixbucket: begin {bucket} (managed by `nixbucket use`; edits inside are replaced)"
            ),
            end: format!("# nixbucket: end {bucket}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfError {
    #[error("line {line}: found the start of a nixbucket block but not its end ({end:?})")]
    UnclosedBlock { line: usize, end: String },
    #[error("line {line}: a second nixbucket block; remove one of them")]
    SecondBlock { line: usize },
    #[error("{setting} value {value:?} contains a newline")]
    Newline { setting: String, value: String },
}

/// `text` with nixbucket's block set to `settings` (name, values). An empty `settings` removes
/// the block. Values are deduplicated, in their first order.
pub fn set_managed_block(
    text: &str,
    settings: &[(&str, Vec<String>)],
) -> Result<String, ConfError> {
    set_block(text, &Markers::setup(), settings)
}

/// `text` with the block between `markers` set to `settings`, as [`set_managed_block`].
pub fn set_block(
    text: &str,
    markers: &Markers,
    settings: &[(&str, Vec<String>)],
) -> Result<String, ConfError> {
    let (before, after) = split_block(text, markers)?;
    let mut out = String::with_capacity(text.len() + 256);
    out.push_str(before);
    let block = render_block(settings, markers)?;
    if !block.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&block);
    }
    out.push_str(after);
    Ok(out)
}

/// The settings inside nixbucket's block, as (name, values).
pub fn managed_settings(text: &str) -> Result<Vec<(String, Vec<String>)>, ConfError> {
    let (before, after) = split_block(text, &Markers::setup())?;
    let inner = &text[before.len()..text.len() - after.len()];
    Ok(inner
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect())
}

/// The text before nixbucket's block and the text after it (the block itself, if any, lies
/// between them).
fn split_block<'t>(text: &'t str, markers: &Markers) -> Result<(&'t str, &'t str), ConfError> {
    let (begin_line, end_line) = (markers.begin.as_str(), markers.end.as_str());
    let mut offset = 0;
    let mut start = None;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end_matches(['\n', '\r']);
        match start {
            None if trimmed == begin_line => start = Some((offset, number + 1)),
            Some((begin, _)) if trimmed == end_line => {
                let after = &text[offset + line.len()..];
                // A second block would survive every rewrite of the first (or, unclosed, make
                // our own output unreadable next time): refuse it now (found by fuzzing).
                let skipped = number + 1;
                if let Some(n) = after
                    .lines()
                    .position(|l| l.trim_end_matches('\r') == begin_line)
                {
                    return Err(ConfError::SecondBlock {
                        line: skipped + n + 1,
                    });
                }
                return Ok((&text[..begin], after));
            }
            _ => {}
        }
        offset += line.len();
    }
    match start {
        Some((_, line)) => Err(ConfError::UnclosedBlock {
            line,
            end: end_line.to_owned(),
        }),
        None => Ok((text, "")),
    }
}

fn render_block(settings: &[(&str, Vec<String>)], markers: &Markers) -> Result<String, ConfError> {
    let mut lines = Vec::new();
    for (name, values) in settings {
        let mut seen = Vec::<&str>::new();
        for value in values {
            if value.contains('\n') {
                return Err(ConfError::Newline {
                    setting: (*name).to_owned(),
                    value: value.clone(),
                });
            }
            if !seen.contains(&value.as_str()) {
                seen.push(value);
            }
        }
        if !seen.is_empty() {
            lines.push(format!("{name} = {}", seen.join(" ")));
        }
    }
    if lines.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "{}\n{}\n{}\n",
        markers.begin,
        lines.join("\n"),
        markers.end
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Vec<(&'static str, Vec<String>)> {
        vec![
            ("extra-substituters", vec!["s3://b?region=x".into()]),
            (
                "extra-trusted-public-keys",
                vec!["c-1:AAAA".into(), "c-1:AAAA".into()],
            ),
        ]
    }

    const USER: &str = "# my settings\nsandbox = false\nsubstituters = https://cache.nixos.org\n";

    #[test]
    fn adds_a_block_and_keeps_everything_else() {
        let out = set_managed_block(USER, &ours()).unwrap();
        assert!(out.starts_with(USER));
        assert_eq!(
            &out[USER.len()..],
            format!(
                "{BEGIN}\nextra-substituters = s3://b?region=x\nextra-trusted-public-keys = c-1:AAAA\n{END}\n"
            )
        );
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let once = set_managed_block(USER, &ours()).unwrap();
        assert_eq!(set_managed_block(&once, &ours()).unwrap(), once);
    }

    #[test]
    fn replaces_the_block_in_place_and_keeps_what_follows() {
        let once = set_managed_block(USER, &ours()).unwrap();
        let with_tail = format!("{once}# after\nkeep-outputs = true");
        let replaced = set_managed_block(
            &with_tail,
            &[("extra-substituters", vec!["file:///c".into()])],
        )
        .unwrap();
        assert_eq!(
            replaced,
            format!(
                "{USER}{BEGIN}\nextra-substituters = file:///c\n{END}\n# after\nkeep-outputs = true"
            )
        );
        assert_eq!(
            managed_settings(&replaced).unwrap(),
            vec![("extra-substituters".into(), vec!["file:///c".into()])]
        );
    }

    #[test]
    fn empty_settings_remove_the_block() {
        let once = set_managed_block(USER, &ours()).unwrap();
        assert_eq!(set_managed_block(&once, &[]).unwrap(), USER);
    }

    #[test]
    fn a_file_without_final_newline_gets_one_before_the_block() {
        let out = set_managed_block("sandbox = false", &ours()).unwrap();
        assert!(out.starts_with("sandbox = false\n# nixbucket: begin"));
    }

    #[test]
    fn an_unclosed_block_is_an_error_not_a_guess() {
        let text = format!("a = b\n{BEGIN}\nextra-substituters = x\n");
        assert_eq!(
            set_managed_block(&text, &ours()),
            Err(ConfError::UnclosedBlock {
                line: 2,
                end: END.to_owned()
            })
        );
    }

    #[test]
    fn the_blocks_of_setup_and_of_each_use_are_kept_apart() {
        let a = Markers::use_of("cache-a");
        let b = Markers::use_of("cache-b");
        let key = |k: &str| vec![("extra-substituters", vec![k.to_owned()])];
        let text = set_block("sandbox = false\n", &a, &key("http://127.0.0.1:37001")).unwrap();
        let text = set_block(&text, &b, &key("http://127.0.0.1:37002")).unwrap();
        let text = set_managed_block(&text, &key("http://127.0.0.1:40000")).unwrap();
        for port in ["37001", "37002", "40000"] {
            assert!(text.contains(port), "{text}");
        }
        // Each is rewritten and removed on its own.
        let text = set_block(&text, &a, &[]).unwrap();
        assert!(!text.contains("37001") && text.contains("37002") && text.contains("40000"));
        let again = set_block(&text, &b, &key("http://127.0.0.1:37002")).unwrap();
        assert_eq!(
            again, text,
            "a second write of the same block changes nothing"
        );
        assert!(text.starts_with("sandbox = false\n"), "{text}");
    }

    #[test]
    fn a_second_block_is_an_error() {
        // Closed or not, a second block would outlive every rewrite of the first.
        for tail in ["", "x = y\n", &format!("{END}\n")] {
            let text = format!("a = b\n{BEGIN}\n{END}\nc = d\n{BEGIN}\n{tail}");
            assert_eq!(
                set_managed_block(&text, &[]),
                Err(ConfError::SecondBlock { line: 5 })
            );
        }
    }

    #[test]
    fn newlines_in_values_are_refused() {
        let err =
            set_managed_block("", &[("extra-substituters", vec!["a\nb".into()])]).unwrap_err();
        assert!(matches!(err, ConfError::Newline { .. }));
    }
}
