//! Usage records: which store paths a CI job relied on, and when, so that `nixbucket gc
//! --older-than` means "no job used it for that long" rather than "uploaded long ago".
//!
//! Design: every push writes one small object, `usage/<unix seconds>-<random>.zst`, before it
//! asks the cache what is missing. It names the hash part of every path of the job's closure,
//! whether the job then uploads it or finds it already there. Writing before the existence
//! checks matters: a `gc` that lists `usage/` after this object landed sees that the job may
//! rely on these paths and keeps them (or restores their narinfos), closing most of the window
//! in which a job could count on a path that gc is deleting.
//!
//! One PutObject per job, a few bytes per path (zstd squeezes the hash parts' shared alphabet),
//! and no read-modify-write: concurrent jobs never contend. `gc` reads all records, and unless
//! it is a dry run, merges them into one and deletes those it merged ("compaction"), so the
//! number of records stays about the number of jobs since the last gc.
//!
//! A job that knows its branch adds a tag to the name, `usage/<secs>-<random>-b<tag>.zst`, the
//! first 16 hex digits of the branch name's SHA-256: `setup` restores what the last job of the
//! same branch used (see [`crate::restore`]). Records gc merged carry no tag.
//!
//! Nix ignores the `usage/` prefix: it reads only `nix-cache-info`, `*.narinfo`, NARs and `log/`.
//!
//! The body, before compression, is text:
//! ```text
//! nixbucket-usage 1
//! @1764061462
//! 1d5i1r8ldqwbfsb2q3i52hbk3a4kbg9h
//! 5qn9lblnzjgza2vb23kwaclrcxnska2z
//! ```
//! An `@<unix seconds>` line sets the time of the hash parts that follow it; a merged record
//! has several. The object name's time is the newest time inside (for people reading a
//! listing); gc trusts the body.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::{Cache, CacheError};
use crate::nix::{HashPart, StorePath};

/// Where usage records live in the cache.
pub const PREFIX: &str = "usage/";

const MAGIC: &str = "nixbucket-usage 1";
const HASH_CHARS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("usage record '{key}' is not zstd-compressed: {source}")]
    Decompress { key: String, source: std::io::Error },
    #[error("usage record '{key}', line {line}: {reason}")]
    Malformed {
        key: String,
        line: usize,
        reason: &'static str,
    },
    #[error("usage record '{key}' unpacks to more than {limit} bytes; not reading it")]
    TooLarge { key: String, limit: u64 },
    #[error("could not compress a usage record: {0}")]
    Compress(std::io::Error),
}

/// When each path (by hash part) was last used, merged from any number of records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    last_used: HashMap<HashPart, u64>,
}

impl Usage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a use at `secs` (unix time); keeps the newest per path.
    pub fn note(&mut self, hash_part: HashPart, secs: u64) {
        let slot = self.last_used.entry(hash_part).or_insert(secs);
        *slot = (*slot).max(secs);
    }

    pub fn merge(&mut self, other: &Usage) {
        for (hash, secs) in &other.last_used {
            self.note(*hash, *secs);
        }
    }

    /// Unix seconds of the last recorded use of the path with this hash part.
    pub fn last_used(&self, hash_part: &HashPart) -> Option<u64> {
        self.last_used.get(hash_part).copied()
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }

    pub fn hash_parts(&self) -> impl Iterator<Item = HashPart> + '_ {
        self.last_used.keys().copied()
    }

    /// Only the paths `keep` says yes to (gc drops what it deleted before merging).
    pub fn retain(&mut self, mut keep: impl FnMut(&HashPart) -> bool) {
        self.last_used.retain(|hash, _| keep(hash));
    }

    /// The record body, uncompressed: times ascending, hash parts sorted within a time.
    pub fn to_text(&self) -> String {
        let mut by_time: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for (hash, secs) in &self.last_used {
            by_time.entry(*secs).or_default().push(hash.as_str());
        }
        let mut out = String::with_capacity(16 + self.last_used.len() * (HASH_CHARS + 1));
        out.push_str(MAGIC);
        out.push('\n');
        for (secs, mut hashes) in by_time {
            hashes.sort_unstable();
            out.push_str(&format!("@{secs}\n"));
            for hash in hashes {
                out.push_str(hash);
                out.push('\n');
            }
        }
        out
    }

    /// Parses a record body; `key` only names the record in errors.
    pub fn parse(key: &str, text: &str) -> Result<Usage, UsageError> {
        let bad = |line: usize, reason| UsageError::Malformed {
            key: key.to_owned(),
            line,
            reason,
        };
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, MAGIC)) => {}
            _ => return Err(bad(1, "does not start with 'nixbucket-usage 1'")),
        }
        let mut usage = Usage::new();
        let mut time = None;
        for (index, line) in lines {
            let line_no = index + 1;
            if line.is_empty() {
                continue;
            }
            if let Some(secs) = line.strip_prefix('@') {
                time = Some(
                    secs.parse::<u64>()
                        .map_err(|_| bad(line_no, "'@' is not followed by unix seconds"))?,
                );
                continue;
            }
            let Some(secs) = time else {
                return Err(bad(line_no, "a hash part before any '@<time>' line"));
            };
            let Some(hash) = HashPart::parse(line) else {
                return Err(bad(line_no, "not a 32-character nixbase32 hash part"));
            };
            usage.note(hash, secs);
        }
        Ok(usage)
    }

    /// zstd-compressed body, as stored.
    pub fn encode(&self) -> Result<Vec<u8>, UsageError> {
        zstd::encode_all(self.to_text().as_bytes(), 9).map_err(UsageError::Compress)
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<Usage, UsageError> {
        Usage::decode_up_to(key, bytes, RECORD_MAX)
    }

    /// [`Usage::decode`], refusing a record over `limit` bytes once decompressed (a small
    /// object that would unpack to gigabytes) before it has unpacked more than that.
    fn decode_up_to(key: &str, bytes: &[u8], limit: u64) -> Result<Usage, UsageError> {
        let decompress = || -> std::io::Result<Vec<u8>> {
            let mut raw = Vec::new();
            let decoder = zstd::stream::read::Decoder::new(bytes)?;
            std::io::Read::read_to_end(
                &mut std::io::Read::take(decoder, limit.saturating_add(1)),
                &mut raw,
            )?;
            Ok(raw)
        };
        let raw = decompress().map_err(|source| UsageError::Decompress {
            key: key.to_owned(),
            source,
        })?;
        if raw.len() as u64 > limit {
            return Err(UsageError::TooLarge {
                key: key.to_owned(),
                limit,
            });
        }
        let text = std::str::from_utf8(&raw).map_err(|_| UsageError::Malformed {
            key: key.to_owned(),
            line: 0,
            reason: "not UTF-8",
        })?;
        Usage::parse(key, text)
    }

    /// The newest time in the record, if any.
    pub fn newest(&self) -> Option<u64> {
        self.last_used.values().copied().max()
    }
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A fresh record name for time `secs`: sortable by time, unique by 64 random bits, tagged
/// with the job's branch if it has one.
pub fn record_key(secs: u64, branch: Option<&str>) -> String {
    let mut rnd = [0u8; 8];
    // A failed RNG only risks a name clash with a record written in the same second; the pid
    // and the clock's nanoseconds make even that unlikely.
    let n = match getrandom::fill(&mut rnd) {
        Ok(()) => u64::from_le_bytes(rnd),
        Err(_) => {
            u64::from(std::process::id()) << 32
                | u64::from(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .subsec_nanos(),
                )
        }
    };
    match branch {
        Some(b) => format!("{PREFIX}{secs:012}-{n:016x}-b{}.zst", branch_tag(b)),
        None => format!("{PREFIX}{secs:012}-{n:016x}.zst"),
    }
}

/// The tag a branch gets in record names: names stay short and safe whatever the branch is
/// called (slashes, spaces, unicode).
pub fn branch_tag(branch: &str) -> String {
    crate::nix::Sha256::digest(branch.as_bytes()).to_hex()[..16].to_owned()
}

/// The newest record of each branch among `keys`, for the `max` branches with the newest
/// records: gc's compaction leaves these whole (and merges their contents too), so that after
/// a gc `setup` still finds each active branch's last job.
pub fn newest_per_branch(keys: &[String], max: usize) -> std::collections::HashSet<String> {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort_unstable();
    let mut seen = std::collections::HashSet::new();
    let mut keep = std::collections::HashSet::new();
    for key in sorted.into_iter().rev() {
        if let Some(tag) = record_branch_tag(key) {
            if seen.len() < max && seen.insert(tag) {
                keep.insert(key.clone());
            }
        }
    }
    keep
}

/// The branch tag in a record's name, if it has one.
pub fn record_branch_tag(key: &str) -> Option<&str> {
    let stem = key.strip_prefix(PREFIX)?.strip_suffix(".zst")?;
    let tag = stem.rsplit_once("-b")?.1;
    (tag.len() == 16 && tag.bytes().all(|c| c.is_ascii_hexdigit())).then_some(tag)
}

/// Writes a record for `usage` (nothing if it is empty), tagged with `branch`, and returns its
/// key.
pub async fn write(
    cache: &Cache,
    usage: &Usage,
    branch: Option<&str>,
) -> Result<Option<String>, UsageError> {
    let Some(newest) = usage.newest() else {
        return Ok(None);
    };
    let key = record_key(newest, branch);
    cache
        .put(&key, usage.encode()?.into(), "application/zstd")
        .await?;
    Ok(Some(key))
}

/// The largest record read, compressed and as text. A record gc compacted names every path in
/// use, 33 bytes each as text and some 20 compressed: 256 MiB is millions of paths, far past
/// any cache, and still bounds what a broken or hostile bucket can make gc hold in memory.
const RECORD_MAX: u64 = 256 << 20;

/// Attempts at writing a job's record, each with the store client's own retries inside.
const RECORD_ATTEMPTS: u32 = 3;

/// Records that a job used `paths` at `at`: one small object. Push calls this with the whole
/// closure before it checks what the cache lacks. A lost record silently takes away gc's
/// protection for the job's paths, so a write the store failed to answer is tried again (a
/// record written twice, when an answer is lost, is harmless: gc merges them); a refusal is not.
pub async fn record<'a>(
    cache: &Cache,
    at: SystemTime,
    paths: impl IntoIterator<Item = &'a StorePath>,
    branch: Option<&str>,
) -> Result<Option<String>, UsageError> {
    let secs = unix_secs(at);
    let mut usage = Usage::new();
    for path in paths {
        usage.note(HashPart::of(path), secs);
    }
    let mut attempt = 1;
    loop {
        match write(cache, &usage, branch).await {
            Err(UsageError::Cache(err)) if err.is_outage() && attempt < RECORD_ATTEMPTS => {
                eprintln!(
                    "warning: could not write this job's usage record (attempt {attempt} of \
                     {RECORD_ATTEMPTS}): {err}; trying again"
                );
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            written => return written,
        }
    }
}

/// Reads one record; `None` if it vanished (another gc compacted it meanwhile).
pub async fn read(cache: &Cache, key: &str) -> Result<Option<Usage>, UsageError> {
    match cache.get_up_to(key, RECORD_MAX).await? {
        Some(bytes) => Ok(Some(Usage::decode(key, &bytes)?)),
        None => Ok(None),
    }
}

/// True for keys that name a usage record (and not, say, a stray file under `usage/`).
pub fn is_record_key(key: &str) -> bool {
    key.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.ends_with(".zst") && !rest.contains('/'))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn h(text: &str) -> HashPart {
        HashPart::parse(text).unwrap()
    }

    const A: &str = "1d5i1r8ldqwbfsb2q3i52hbk3a4kbg9h";
    const B: &str = "5qn9lblnzjgza2vb23kwaclrcxnska2z";

    #[test]
    fn text_groups_by_time_and_round_trips() {
        let mut u = Usage::new();
        u.note(h(B), 200);
        u.note(h(A), 100);
        u.note(h(A), 50); // older use of A is forgotten
        let text = u.to_text();
        assert_eq!(text, format!("nixbucket-usage 1\n@100\n{A}\n@200\n{B}\n"));
        assert_eq!(Usage::parse("k", &text).unwrap(), u);
        let bytes = u.encode().unwrap();
        assert_eq!(Usage::decode("k", &bytes).unwrap(), u);
        assert_eq!(u.newest(), Some(200));
    }

    #[test]
    fn a_record_that_unpacks_past_the_limit_is_refused_before_it_unpacks() {
        let mut u = Usage::new();
        u.note(h(A), 100);
        u.note(h(B), 200);
        let bytes = u.encode().unwrap();
        let text_len = u.to_text().len() as u64;
        assert_eq!(Usage::decode_up_to("k", &bytes, text_len).unwrap(), u);
        let err = Usage::decode_up_to("k", &bytes, text_len - 1).unwrap_err();
        assert!(matches!(err, UsageError::TooLarge { .. }), "{err}");
        // A small object of zeros that would unpack to 64 MiB stops at the limit.
        let bomb = zstd::encode_all(std::io::repeat(0).take(64 << 20), 19).unwrap();
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let err = Usage::decode_up_to("k", &bomb, 1 << 20).unwrap_err();
        assert!(
            err.to_string()
                .contains("unpacks to more than 1048576 bytes"),
            "{err}"
        );
    }

    #[test]
    fn merge_keeps_the_newest_use() {
        let mut a = Usage::new();
        a.note(h(A), 10);
        let mut b = Usage::new();
        b.note(h(A), 30);
        b.note(h(B), 5);
        a.merge(&b);
        assert_eq!(a.last_used(&h(A)), Some(30));
        assert_eq!(a.last_used(&h(B)), Some(5));
    }

    #[test]
    fn malformed_records_name_key_and_line() {
        let cases = [
            ("nope\n", 1, "does not start"),
            ("nixbucket-usage 1\nabc\n", 2, "before any"),
            ("nixbucket-usage 1\n@x\n", 2, "unix seconds"),
            (
                "nixbucket-usage 1\n@1\neeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\n",
                3,
                "nixbase32",
            ),
        ];
        for (text, line, reason) in cases {
            let err = Usage::parse("usage/x.zst", text).unwrap_err().to_string();
            assert!(err.contains("usage/x.zst"), "{err}");
            assert!(err.contains(&format!("line {line}")), "{err}");
            assert!(err.contains(reason), "{err}");
        }
        let err = Usage::decode("usage/y.zst", b"plain")
            .unwrap_err()
            .to_string();
        assert!(err.contains("usage/y.zst") && err.contains("zstd"), "{err}");
    }

    #[test]
    fn record_keys_sort_by_time_and_are_unique() {
        let (a, b) = (record_key(99, None), record_key(1_000, None));
        assert!(a < b, "{a} {b}");
        assert_ne!(record_key(5, None), record_key(5, None));
        assert!(is_record_key(&a), "{a}");
        assert!(a.starts_with("usage/000000000099-"), "{a}");
        assert!(!is_record_key("usage/sub/x.zst"));
        assert!(!is_record_key("x.narinfo"));
        assert_eq!(record_branch_tag(&a), None);
        let tagged = record_key(99, Some("feature/x y"));
        assert!(is_record_key(&tagged), "{tagged}");
        assert_eq!(
            record_branch_tag(&tagged),
            Some(branch_tag("feature/x y").as_str())
        );
        assert_ne!(branch_tag("main"), branch_tag("dev"));
        assert!(tagged < b, "tagged names still sort by time");
    }

    #[test]
    fn the_newest_record_of_each_branch_is_kept_up_to_a_number_of_branches() {
        let key = |secs: u64, branch: Option<&str>| record_key(secs, branch);
        let keys = vec![
            key(1, Some("main")),
            key(2, Some("dev")),
            key(3, Some("main")),
            key(4, None),
            key(5, Some("old")),
            key(6, Some("dev")),
        ];
        let kept = newest_per_branch(&keys, 10);
        let want: std::collections::HashSet<String> = [&keys[2], &keys[4], &keys[5]]
            .into_iter()
            .cloned()
            .collect();
        assert_eq!(kept, want);
        // With room for two branches, the one whose last record is oldest is merged away.
        let kept = newest_per_branch(&keys, 2);
        assert_eq!(kept.len(), 2);
        assert!(
            kept.contains(&keys[5]) && kept.contains(&keys[4]),
            "{kept:?}"
        );
    }
}
