//! Cache URLs in Nix's own syntax (`file:///dir`, `s3://bucket?region=…`), so a user can copy
//! a substituter URL from the Nix manual into nixbucket and back into `nix.conf` unchanged.
//!
//! Nix splits a store URL at the first `?`: what comes before is taken literally (a `file://`
//! path is not percent-decoded), what comes after is `name=value` pairs joined by `&`, with
//! percent-decoded values. We follow the same rules, and refuse what Nix would silently ignore
//! (an unknown parameter is almost always a typo that would cost a cache miss).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Parameters that only make sense for `s3://` caches; kept in dedicated fields.
const S3_PARAMS: &[&str] = &["region", "endpoint", "scheme", "profile"];

/// The other parameters Nix 2.33–2.35 documents for `s3://` stores (some inherited from its HTTP
/// store); kept in `params`. `buffer-size` is Nix's old name for `multipart-chunk-size`.
const S3_STORE_PARAMS: &[&str] = &[
    "addressing-style",
    "storage-class",
    "multipart-chunk-size",
    "multipart-threshold",
    "buffer-size",
    "retry-attempts",
    "retry-delay",
    "retry-delay-rate-limited",
    "retry-max-delay",
    "tls-certificate",
    "tls-private-key",
];

/// The parameters nixbucket acts on (beside the dedicated S3 ones); Nix's others are accepted,
/// so a URL copied from Nix's manual works, and named as ignored ([`CacheUrl::ignored_params`]).
const USED_PARAMS: &[&str] = &[
    "compression",
    "write-nar-listing",
    "addressing-style",
    "storage-class",
];

/// Nix's binary-cache store parameters. Accepted for every cache kind and kept in `params`.
pub const BINARY_CACHE_PARAMS: &[&str] = &[
    "compression",
    "secret-key",
    "write-nar-listing",
    "parallel-compression",
    "priority",
    "want-mass-query",
    "multipart-upload",
    "buffer-size",
    "narinfo-compression",
    "ls-compression",
    "log-compression",
    "trusted",
    "index-debug-info",
    "compression-level",
    "secret-keys",
    "local-nar-cache",
    "path-info-cache-size",
    "system-features",
];

/// Where a binary cache lives, parsed from a Nix store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUrl {
    /// `file:///abs/dir`: a directory on this machine.
    File {
        root: PathBuf,
        /// Nix binary-cache parameters (`compression=zstd`, …) in the order given.
        params: Vec<(String, String)>,
    },
    /// `s3://bucket?region=…&endpoint=…&scheme=…&profile=…`.
    S3 {
        bucket: String,
        region: Option<String>,
        /// As written by the user: `host[:port]` or a full `http(s)://` URL.
        endpoint: Option<String>,
        /// `http` or `https`; applies when `endpoint` has no scheme of its own.
        scheme: Option<String>,
        profile: Option<String>,
        /// Nix binary-cache parameters (`compression=zstd`, …) in the order given.
        params: Vec<(String, String)>,
    },
}

/// Why a cache URL was refused. Each message names the offending part of the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheUrlError {
    #[error("empty cache URL: expected file:///absolute/dir or s3://bucket")]
    Empty,
    #[error(
        "unsupported cache URL scheme in '{url}': expected file:///absolute/dir or s3://bucket"
    )]
    UnsupportedScheme { url: String },
    #[error(
        "cache URL '{url}' needs an absolute directory, like file:///var/cache/nix (note the three slashes)"
    )]
    RelativePath { url: String },
    #[error("cache URL '{url}' names no bucket: expected s3://BUCKET")]
    EmptyBucket { url: String },
    #[error(
        "cache URL '{url}': '{bucket}' is not a bucket name; Nix's s3:// URLs name a bucket only, without a key prefix"
    )]
    BadBucket { url: String, bucket: String },
    #[error("cache URL '{url}': unknown parameter '{name}'{}", suggestion_text(.suggestion))]
    UnknownParam {
        url: String,
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error("cache URL '{url}': parameter '{name}' only applies to s3:// caches")]
    S3OnlyParam { url: String, name: String },
    #[error("cache URL '{url}': parameter '{name}' is given more than once")]
    DuplicateParam { url: String, name: String },
    #[error("cache URL '{url}': malformed parameter '{param}', expected name=value")]
    MalformedParam { url: String, param: String },
    #[error("cache URL '{url}': scheme must be 'http' or 'https', not '{value}'")]
    BadScheme { url: String, value: String },
    #[error("cache URL '{url}': parameter '{name}' has an empty value")]
    EmptyValue { url: String, name: String },
    #[error("cache URL '{url}': addressing-style must be auto, path or virtual, not '{value}'")]
    BadAddressingStyle { url: String, value: String },
}

fn suggestion_text(s: &Option<&'static str>) -> String {
    match s {
        Some(s) => format!(" (did you mean '{s}'?)"),
        None => String::new(),
    }
}

impl CacheUrl {
    /// The Nix binary-cache parameters given in the URL, in order.
    pub fn params(&self) -> &[(String, String)] {
        match self {
            CacheUrl::File { params, .. } | CacheUrl::S3 { params, .. } => params,
        }
    }

    /// The value of one binary-cache parameter, e.g. `param("compression")`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The parameters given that nixbucket does not act on (Nix's own tuning: retries,
    /// multipart sizes, TLS files, …), in order, for a note to the user.
    pub fn ignored_params(&self) -> Vec<&str> {
        self.params()
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !USED_PARAMS.contains(n))
            .collect()
    }

    /// `addressing-style=path` (true) or `virtual` (false); None for `auto` or none given,
    /// where a custom endpoint means path style and AWS itself virtual-hosted style.
    pub fn path_style(&self) -> Option<bool> {
        match self.param("addressing-style") {
            Some("path") => Some(true),
            Some("virtual") => Some(false),
            _ => None,
        }
    }

    /// `endpoint=host[:port]` without a scheme: Nix 2.33 to 2.35 take the host for a scheme
    /// and fail, where nixbucket (and older Nix) complete it with `scheme`, else https.
    pub fn endpoint_lacks_scheme(&self) -> bool {
        matches!(self, CacheUrl::S3 { endpoint: Some(ep), .. } if !ep.contains("://"))
    }

    /// The endpoint as a full URL for the S3 client, or `None` for AWS itself.
    /// Nix accepts a bare `host[:port]`; the `scheme` parameter (default https) completes it.
    pub fn s3_endpoint_url(&self) -> Option<String> {
        match self {
            CacheUrl::S3 {
                endpoint: Some(ep),
                scheme,
                ..
            } => {
                if ep.contains("://") {
                    Some(ep.clone())
                } else {
                    Some(format!("{}://{ep}", scheme.as_deref().unwrap_or("https")))
                }
            }
            _ => None,
        }
    }
}

impl FromStr for CacheUrl {
    type Err = CacheUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(CacheUrlError::Empty);
        }
        let url = s.to_owned();
        let (base, query) = match s.split_once('?') {
            // Trimmed like the whole URL: `file:///dir ?x=y` must not name "/dir ", which
            // nix.conf (whitespace-trimmed) would read back as "/dir" (found by fuzzing).
            Some((b, q)) => (b.trim_end(), Some(q)),
            None => (s, None),
        };

        let raw = parse_query(&url, query)?;
        let is_s3 = if let Some(rest) = base.strip_prefix("file://") {
            // Nix takes the rest literally: `file://dir` would be the relative path "dir".
            if rest.is_empty() || !rest.starts_with('/') {
                return Err(CacheUrlError::RelativePath { url });
            }
            false
        } else if base.starts_with("s3://") {
            true
        } else {
            return Err(CacheUrlError::UnsupportedScheme { url });
        };

        let mut s3_fields: [Option<String>; 4] = Default::default();
        let mut params = Vec::new();
        for (name, value) in raw {
            if let Some(i) = S3_PARAMS.iter().position(|p| *p == name) {
                if !is_s3 {
                    return Err(CacheUrlError::S3OnlyParam { url, name });
                }
                if value.is_empty() {
                    return Err(CacheUrlError::EmptyValue { url, name });
                }
                s3_fields[i] = Some(value);
            } else if BINARY_CACHE_PARAMS.contains(&name.as_str()) {
                params.push((name, value));
            } else if S3_STORE_PARAMS.contains(&name.as_str()) {
                if !is_s3 {
                    return Err(CacheUrlError::S3OnlyParam { url, name });
                }
                if name == "addressing-style"
                    && !matches!(value.as_str(), "auto" | "path" | "virtual")
                {
                    return Err(CacheUrlError::BadAddressingStyle { url, value });
                }
                if value.is_empty() {
                    return Err(CacheUrlError::EmptyValue { url, name });
                }
                params.push((name, value));
            } else {
                let suggestion = closest_param(&name);
                return Err(CacheUrlError::UnknownParam {
                    url,
                    name,
                    suggestion,
                });
            }
        }

        if !is_s3 {
            let root = PathBuf::from(&base["file://".len()..]);
            return Ok(CacheUrl::File { root, params });
        }

        let bucket = &base["s3://".len()..];
        if bucket.is_empty() {
            return Err(CacheUrlError::EmptyBucket { url });
        }
        if !valid_bucket_name(bucket) {
            return Err(CacheUrlError::BadBucket {
                bucket: bucket.to_owned(),
                url,
            });
        }
        let [region, endpoint, scheme, profile] = s3_fields;
        if let Some(value) = &scheme
            && value != "http"
            && value != "https"
        {
            return Err(CacheUrlError::BadScheme {
                value: value.clone(),
                url,
            });
        }
        Ok(CacheUrl::S3 {
            bucket: bucket.to_owned(),
            region,
            endpoint,
            scheme,
            profile,
            params,
        })
    }
}

/// Lenient on purpose (S3-compatible stores differ), strict only on what breaks URLs and keys.
fn valid_bucket_name(b: &str) -> bool {
    b.len() <= 255
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn parse_query(url: &str, query: Option<&str>) -> Result<Vec<(String, String)>, CacheUrlError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let Some(query) = query else {
        return Ok(out);
    };
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(CacheUrlError::MalformedParam {
                url: url.to_owned(),
                param: part.to_owned(),
            });
        };
        let name = percent_decode(name);
        if name.is_empty() {
            return Err(CacheUrlError::MalformedParam {
                url: url.to_owned(),
                param: part.to_owned(),
            });
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(CacheUrlError::DuplicateParam {
                url: url.to_owned(),
                name,
            });
        }
        out.push((name, percent_decode(value)));
    }
    Ok(out)
}

/// Whether two substituter URLs name the same store as Nix reads them. Nix 2.34 prints a
/// substituter back with its query parameters sorted and percent-encoded
/// (`s3://b?endpoint=…&region=…` for `s3://b?region=…&endpoint=…`), older versions as written;
/// a trailing `/` never matters.
pub fn same_store_url(a: &str, b: &str) -> bool {
    fn parts(url: &str) -> (&str, Vec<(String, String)>) {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (name, value) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        params.sort();
        (base.trim_end_matches('/'), params)
    }
    parts(a) == parts(b)
}

/// `%XX` decoding as Nix does it (no `+` to space); malformed escapes are kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Escapes only what would change how Nix splits the query; `:` and `/` stay readable.
fn percent_encode_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | '&' | '=' | '?' | '#' | ' ' | '+' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn closest_param(name: &str) -> Option<&'static str> {
    S3_PARAMS
        .iter()
        .chain(BINARY_CACHE_PARAMS)
        .chain(S3_STORE_PARAMS)
        .map(|known| (edit_distance(name, known), *known))
        .filter(|(d, known)| *d <= 2.max(known.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn write_params<'a>(
    f: &mut fmt::Formatter<'_>,
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> fmt::Result {
    for (i, (name, value)) in params.enumerate() {
        let sep = if i == 0 { '?' } else { '&' };
        write!(f, "{sep}{name}={}", percent_encode_value(value))?;
    }
    Ok(())
}

impl fmt::Display for CacheUrl {
    /// The canonical URL: S3 parameters first (region, endpoint, scheme, profile), then the
    /// binary-cache parameters in the order given. Parsing it gives back the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheUrl::File { root, params } => {
                write!(f, "file://{}", display_path(root))?;
                write_params(f, params.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            }
            CacheUrl::S3 {
                bucket,
                region,
                endpoint,
                scheme,
                profile,
                params,
            } => {
                write!(f, "s3://{bucket}")?;
                let s3 = [
                    ("region", region),
                    ("endpoint", endpoint),
                    ("scheme", scheme),
                    ("profile", profile),
                ];
                let s3 = s3
                    .into_iter()
                    .filter_map(|(n, v)| v.as_deref().map(|v| (n, v)));
                write_params(
                    f,
                    s3.chain(params.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
                )
            }
        }
    }
}

fn display_path(p: &Path) -> std::borrow::Cow<'_, str> {
    p.to_string_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parse(s: &str) -> Result<CacheUrl, CacheUrlError> {
        s.parse()
    }

    #[test]
    fn space_before_the_query_is_not_part_of_the_path() {
        let u = parse("file:///var/cache ?compression=zstd").unwrap();
        assert_eq!(u.to_string(), "file:///var/cache?compression=zstd");
        assert_eq!(parse("file:/// ?").unwrap(), parse("file:///").unwrap());
    }

    #[test]
    fn file_url() {
        let u = parse("file:///var/cache/nix?compression=zstd").unwrap();
        assert_eq!(
            u,
            CacheUrl::File {
                root: "/var/cache/nix".into(),
                params: vec![("compression".into(), "zstd".into())],
            }
        );
        assert_eq!(u.param("compression"), Some("zstd"));
        assert_eq!(u.to_string(), "file:///var/cache/nix?compression=zstd");
    }

    #[test]
    fn s3_url_all_fields() {
        let u = parse(
            "s3://my-bucket?region=eu-west-1&endpoint=minio.local:9000&scheme=http&profile=ci&compression=xz&priority=30",
        )
        .unwrap();
        let some = |value: &str| Some(value.to_owned());
        let expected = CacheUrl::S3 {
            bucket: "my-bucket".to_owned(),
            region: some("eu-west-1"),
            endpoint: some("minio.local:9000"),
            scheme: some("http"),
            profile: some("ci"),
            params: vec![
                ("compression".to_owned(), "xz".to_owned()),
                ("priority".to_owned(), "30".to_owned()),
            ],
        };
        assert_eq!(u, expected);
        assert_eq!(
            u.s3_endpoint_url().as_deref(),
            Some("http://minio.local:9000")
        );
        assert_eq!(
            u.to_string(),
            "s3://my-bucket?region=eu-west-1&endpoint=minio.local:9000&scheme=http&profile=ci&compression=xz&priority=30"
        );
    }

    #[rstest]
    #[case::plain("s3://b")]
    #[case::endpoint_url("s3://b?endpoint=http://127.0.0.1:9000&region=us-east-1")]
    #[case::file_params("file:///tmp/c?compression=none&write-nar-listing=1")]
    #[case::encoded_value("s3://b?profile=a%26b")]
    fn display_round_trips(#[case] s: &str) {
        let u = parse(s).unwrap();
        assert_eq!(parse(&u.to_string()).unwrap(), u, "{u}");
    }

    #[test]
    fn endpoint_defaults_to_https() {
        let u = parse("s3://b?endpoint=s3.example.com").unwrap();
        assert_eq!(
            u.s3_endpoint_url().as_deref(),
            Some("https://s3.example.com")
        );
        let u = parse("s3://b?endpoint=http://h:1&scheme=https").unwrap();
        assert_eq!(u.s3_endpoint_url().as_deref(), Some("http://h:1"));
        assert_eq!(parse("s3://b").unwrap().s3_endpoint_url(), None);
    }

    #[rstest]
    #[case::empty("", "empty cache URL")]
    #[case::relative("file://cache", "needs an absolute directory")]
    #[case::no_path("file://", "needs an absolute directory")]
    #[case::http(
        "https://cache.nixos.org",
        "unsupported cache URL scheme in 'https://cache.nixos.org'"
    )]
    #[case::bare_path("/tmp/cache", "unsupported cache URL scheme")]
    #[case::empty_bucket("s3://?region=x", "names no bucket")]
    #[case::prefix("s3://bucket/prefix", "'bucket/prefix' is not a bucket name")]
    #[case::typo(
        "s3://b?regoin=x",
        "unknown parameter 'regoin' (did you mean 'region'?)"
    )]
    #[case::typo2(
        "s3://b?compresion=xz",
        "unknown parameter 'compresion' (did you mean 'compression'?)"
    )]
    #[case::unknown("s3://b?colour=red", "unknown parameter 'colour'")]
    #[case::s3_on_file(
        "file:///x?region=us-east-1",
        "parameter 'region' only applies to s3:// caches"
    )]
    #[case::dup(
        "s3://b?region=a&region=b",
        "parameter 'region' is given more than once"
    )]
    #[case::malformed("s3://b?region", "malformed parameter 'region'")]
    #[case::scheme("s3://b?scheme=ftp", "scheme must be 'http' or 'https', not 'ftp'")]
    #[case::empty_value("s3://b?region=", "parameter 'region' has an empty value")]
    #[case::s3_store_on_file(
        "file:///x?storage-class=STANDARD_IA",
        "parameter 'storage-class' only applies to s3:// caches"
    )]
    #[case::addressing(
        "s3://b?addressing-style=dns",
        "addressing-style must be auto, path or virtual, not 'dns'"
    )]
    #[case::empty_storage_class(
        "s3://b?storage-class=",
        "parameter 'storage-class' has an empty value"
    )]
    fn refused(#[case] s: &str, #[case] expected: &str) {
        let err = parse(s).unwrap_err().to_string();
        assert!(err.contains(expected), "{s:?}: got {err:?}");
    }

    /// Every parameter Nix 2.35.2's manual documents for `s3://` stores (including what they
    /// inherit from its HTTP and binary cache stores): a URL copied from it parses, the ones
    /// nixbucket acts on are read, and the rest are named as ignored.
    #[test]
    fn every_parameter_nix_2_35_documents_for_s3_is_accepted_and_the_unused_named() {
        let url = "s3://b?region=eu-west-1&endpoint=https://s3.example.com&scheme=https\
                   &profile=ci&addressing-style=virtual&storage-class=STANDARD_IA\
                   &multipart-upload=true&multipart-chunk-size=16777216\
                   &multipart-threshold=104857600&buffer-size=8388608&retry-attempts=5\
                   &retry-delay=250&retry-delay-rate-limited=5000&retry-max-delay=60000\
                   &tls-certificate=/c.pem&tls-private-key=/k.pem&compression=zstd\
                   &compression-level=6&parallel-compression=true&write-nar-listing=true\
                   &index-debug-info=true&secret-key=/s&secret-keys=/s&local-nar-cache=/n\
                   &narinfo-compression=xz&ls-compression=xz&log-compression=xz\
                   &priority=30&want-mass-query=true&trusted=true&path-info-cache-size=1\
                   &system-features=kvm";
        let u = parse(url).unwrap();
        assert_eq!(u.path_style(), Some(false));
        assert_eq!(u.param("storage-class"), Some("STANDARD_IA"));
        let ignored = u.ignored_params();
        for used in [
            "compression",
            "write-nar-listing",
            "storage-class",
            "addressing-style",
        ] {
            assert!(!ignored.contains(&used), "{used} is used");
        }
        for unused in [
            "retry-attempts",
            "multipart-chunk-size",
            "tls-certificate",
            "priority",
        ] {
            assert!(
                ignored.contains(&unused),
                "{unused} is not used: {ignored:?}"
            );
        }
        assert!(!u.endpoint_lacks_scheme());
        assert_eq!(parse(&u.to_string()).unwrap(), u);
        let file = parse("file:///c?compression-level=9&secret-keys=/k&priority=10").unwrap();
        assert_eq!(
            file.ignored_params(),
            ["compression-level", "secret-keys", "priority"]
        );
    }

    #[test]
    fn an_endpoint_without_a_scheme_is_told_apart() {
        assert!(
            parse("s3://b?endpoint=minio.local:9000")
                .unwrap()
                .endpoint_lacks_scheme()
        );
        assert!(
            !parse("s3://b?endpoint=http://minio.local:9000")
                .unwrap()
                .endpoint_lacks_scheme()
        );
        assert!(!parse("s3://b").unwrap().endpoint_lacks_scheme());
        assert_eq!(
            parse("s3://b?addressing-style=path").unwrap().path_style(),
            Some(true)
        );
        assert_eq!(
            parse("s3://b?addressing-style=auto").unwrap().path_style(),
            None
        );
    }

    #[test]
    fn unrelated_name_gets_no_suggestion() {
        let err = parse("s3://b?colour=red").unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn a_substituter_is_the_same_however_nix_orders_its_parameters() {
        let ours = "s3://cache?region=eu-west-1&endpoint=http://127.0.0.1:9000";
        // As Nix 2.34 prints it back: sorted, `:` and `/` left alone.
        assert!(same_store_url(
            ours,
            "s3://cache?endpoint=http://127.0.0.1:9000&region=eu-west-1"
        ));
        assert!(same_store_url(
            ours,
            "s3://cache?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1"
        ));
        assert!(same_store_url("file:///c/", "file:///c"));
        assert!(!same_store_url(
            ours,
            "s3://cache?region=eu-west-2&endpoint=http://127.0.0.1:9000"
        ));
        assert!(!same_store_url(
            ours,
            "s3://other?region=eu-west-1&endpoint=http://127.0.0.1:9000"
        ));
        assert!(!same_store_url(ours, "s3://cache?region=eu-west-1"));
    }
}
