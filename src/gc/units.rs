//! The durations and sizes `gc` takes on its command line: `30d`, `12h`, `1w2d`; `10G`, `500MiB`.

/// Why a duration or size was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "{text:?} is not a duration: use a number and a unit, s, m, h, d or w (e.g. 30d, 12h, 1d12h)"
    )]
    Duration { text: String },
    #[error(
        "{text:?} is not a size: use a number and an optional unit, K, M, G or T (powers of 1024; e.g. 500M, 10GiB)"
    )]
    Size { text: String },
}

/// Parses `30d`, `12h`, `90m`, `45s`, `2w`, and sums like `1d12h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, UnitError> {
    let err = || UnitError::Duration {
        text: text.to_owned(),
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = match &rest[..unit_len] {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(err)?;
    }
    Ok(std::time::Duration::from_secs(total))
}

/// Parses a byte count: `1000`, `500K`, `500M`, `10G`, `1T`, also with `B` or `iB` after the
/// letter. Units are powers of 1024, as `du -h` shows them.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size {
        text: text.to_owned(),
    };
    let s = text.trim();
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(err());
    }
    let n: u64 = s[..digits].parse().map_err(|_| err())?;
    let unit = s[digits..].trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::time::Duration;

    #[rstest]
    #[case::seconds("45s", 45)]
    #[case::minutes("90m", 5400)]
    #[case::hours("12h", 43_200)]
    #[case::days("30d", 2_592_000)]
    #[case::weeks("2w", 1_209_600)]
    #[case::sum("1d12h", 129_600)]
    #[case::zero("0s", 0)]
    fn durations(#[case] text: &str, #[case] secs: u64) {
        assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)));
    }

    #[rstest]
    #[case::empty("")]
    #[case::no_unit("30")]
    #[case::unknown_unit("3y")]
    #[case::unit_only("d")]
    #[case::negative("-1d")]
    fn bad_durations(#[case] text: &str) {
        let err = parse_duration(text).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{text:?}")) && err.contains("30d"),
            "{err}"
        );
    }

    #[rstest]
    #[case::bytes("1000", 1000)]
    #[case::kib("4K", 4096)]
    #[case::mib("500M", 500 << 20)]
    #[case::gib("10GiB", 10 << 30)]
    #[case::gb_lower("2gb", 2 << 30)]
    #[case::tib("1T", 1 << 40)]
    fn sizes(#[case] text: &str, #[case] bytes: u64) {
        assert_eq!(parse_size(text), Ok(bytes));
    }

    #[rstest]
    #[case::empty("")]
    #[case::unit_only("G")]
    #[case::unknown("3P")]
    #[case::overflow("99999999999T")]
    fn bad_sizes(#[case] text: &str) {
        assert!(parse_size(text).is_err(), "{text}");
    }
}
