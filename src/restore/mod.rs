//! Restoring at local speed: before the build, fetch what the last jobs used into a local
//! mirror, a directory laid out as a binary cache that Nix reads first.
//!
//! Why: Nix substitutes one path at a time over HTTP, about 36 ms a path even on loopback, and
//! from a local directory some 60 times faster. Here the narinfos and NARs are fetched with many
//! requests in flight, and Nix then reads them from disk.
//!
//! What to restore comes from the bucket alone, with no database: each push writes a usage
//! record naming its closure, tagged with its branch ([`crate::push::usage`]). The newest record
//! of the first branch in the list that has one is taken (the job's own branch, then the default
//! branch), else the newest record of any branch. Of that record, the paths used within
//! [`RECENT`] of its newest time are restored: all of a job's record, and the latest uses of a
//! record gc merged.
//!
//! Safety: the mirror holds the bucket's narinfos byte for byte, so Nix checks our signatures as
//! for the bucket itself; nothing is trusted that was not signed. A NAR is written under a
//! temporary name, checked against the narinfo's FileHash and FileSize and renamed into place,
//! and only then is its narinfo written (the same way): Nix never sees a narinfo whose NAR is
//! missing or partial. A path that cannot be restored is left to the bucket, which stays a
//! substituter behind the mirror.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cache::{Cache, CacheError};
use crate::nix::NarInfo;
use crate::nix::hash::Hasher;
use crate::nix::layout::{self, HashPart};
use crate::push::usage::{self, UsageError};

/// The mirror's `nix-cache-info`: priority 10, ahead of the bucket (40) and cache.nixos.org (40).
pub const MIRROR_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n";

/// A file that marks a directory as a mirror nixbucket made, and so may delete.
pub const MARKER: &str = ".nixbucket-mirror";

/// NARs larger than this are left to Nix, which streams one straight from the cache into the
/// store as fast as the mirror could fetch it: a mirror only pays where there are many round
/// trips to save, and a large NAR would be written and read back once more for nothing
/// (measured: a 512 MiB path took 1.6 s through Nix alone, 3.6 s through the mirror).
pub const LARGE_NAR: u64 = 32 << 20;

/// How far back from a record's newest use a path still counts as used by the last jobs.
pub const RECENT: u64 = 6 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("could not write the mirror {path}: {source}")]
    Mirror {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds files and is not a mirror nixbucket made; the mirror is deleted at job \
         end, so give --mirror a new or empty directory"
    )]
    NotAMirror { path: PathBuf },
}

#[derive(Clone, Debug)]
pub struct Options {
    /// The mirror directory; made if missing.
    pub mirror: PathBuf,
    /// Branches to restore from, best first.
    pub branches: Vec<String>,
    /// At most this many bytes of NARs (as stored, compressed).
    pub max_size: u64,
    /// NARs over this size (as stored) are left to Nix ([`LARGE_NAR`] by default).
    pub nar_max: u64,
    /// Requests in flight.
    pub jobs: usize,
    /// Hash parts of the paths the local store has already.
    pub have: HashSet<HashPart>,
    /// Print progress every this often (`None`: never).
    pub progress: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Report {
    /// The usage record restored from, and the branch it was chosen for (`None`: the newest
    /// record of any branch).
    pub record: Option<String>,
    pub branch: Option<String>,
    /// Paths the record names as recently used.
    pub wanted: usize,
    /// Of those, already in the local store.
    pub present: usize,
    /// No longer in the cache (gc deleted them).
    pub gone: usize,
    /// Left out to stay within the size budget.
    pub over_budget: usize,
    /// Left to Nix for being over [`Options::nar_max`].
    pub large: usize,
    /// Could not be fetched (the bucket has them; Nix will fetch them from it).
    pub failed: usize,
    pub restored: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn summary(&self) -> String {
        let Some(record) = &self.record else {
            return "restore: the cache has no usage record yet; nothing to restore".to_owned();
        };
        let from = match &self.branch {
            Some(b) => format!("the last job on {b}"),
            None => "the newest job of any branch".to_owned(),
        };
        let mut notes = vec![format!("{} already in the store", self.present)];
        for (n, what) in [
            (self.gone, "gone from the cache"),
            (self.large, "large, left to Nix"),
            (self.over_budget, "over the size budget"),
            (self.failed, "failed, left to the cache"),
        ] {
            if n > 0 {
                notes.push(format!("{n} {what}"));
            }
        }
        format!(
            "restored {} of {} paths ({}) in {:.1} s from {from} ({record}): {}",
            self.restored,
            self.wanted,
            crate::push::progress::human_bytes(self.bytes),
            self.elapsed.as_secs_f64(),
            notes.join(", ")
        )
    }
}

/// Picks the record to restore from: the newest of the first branch in `branches` that has
/// one, else the newest of all. `keys` must be sorted (oldest first).
pub fn choose_record<'a>(
    keys: &'a [String],
    branches: &[String],
) -> Option<(&'a str, Option<String>)> {
    for branch in branches {
        let tag = usage::branch_tag(branch);
        if let Some(key) = keys
            .iter()
            .rev()
            .find(|k| usage::record_branch_tag(k) == Some(tag.as_str()))
        {
            return Some((key, Some(branch.clone())));
        }
    }
    keys.last().map(|k| (k.as_str(), None))
}

/// Lays out `dir` as an empty mirror (a binary cache Nix reads first). A directory that holds
/// something and is not a mirror is refused: `push` deletes the mirror at job end.
pub fn prepare_mirror(dir: &Path) -> Result<(), RestoreError> {
    let io = |source| RestoreError::Mirror {
        path: dir.to_owned(),
        source,
    };
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() && !dir.join(MARKER).is_file() {
            return Err(RestoreError::NotAMirror {
                path: dir.to_owned(),
            });
        }
    }
    std::fs::create_dir_all(dir.join("nar")).map_err(io)?;
    std::fs::write(dir.join(MARKER), b"").map_err(io)?;
    std::fs::write(dir.join(layout::CACHE_INFO_KEY), MIRROR_INFO).map_err(io)?;
    Ok(())
}

/// Deletes a mirror `prepare_mirror` made; a directory without the marker is left alone.
pub fn remove_mirror(dir: &Path) -> std::io::Result<bool> {
    if !dir.join(MARKER).is_file() {
        return Ok(false);
    }
    std::fs::remove_dir_all(dir)?;
    Ok(true)
}

/// Removes the mirrors earlier jobs left beside `mirror` (a job killed before its push, on a
/// runner that keeps its temporary folder): directories named `nixbucket-mirror-*` that hold
/// the marker `prepare_mirror` writes, made over [`STALE_MIRROR`] ago, so that a job running
/// beside this one on the same machine keeps its own. Returns how many went.
pub fn sweep_stale_mirrors(mirror: &Path) -> usize {
    sweep_mirrors_older_than(mirror, STALE_MIRROR)
}

/// A mirror older than this belongs to no running job: CI systems end jobs well before.
const STALE_MIRROR: Duration = Duration::from_secs(24 * 3600);

fn sweep_mirrors_older_than(mirror: &Path, age: Duration) -> usize {
    let stale = |dir: &Path| {
        std::fs::metadata(dir.join(MARKER))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age))
    };
    let (Some(parent), Some(ours)) = (mirror.parent(), mirror.file_name()) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != ours)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("nixbucket-mirror-"))
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| stale(&e.path()) && remove_mirror(&e.path()).unwrap_or(false))
        .count()
}

/// Hash parts of the narinfos in a mirror.
pub fn mirrored(dir: &Path) -> HashSet<HashPart> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            HashPart::of_narinfo_key(&name)
        })
        .collect()
}

struct Wanted {
    hash_part: HashPart,
    bytes: bytes::Bytes,
    info: NarInfo,
}

#[derive(Default)]
struct Progress {
    done: AtomicUsize,
    bytes: AtomicU64,
}

/// Fetches the paths the last jobs used into the mirror (see the module doc).
pub async fn restore(cache: &Cache, opts: &Options) -> Result<Report, RestoreError> {
    let started = Instant::now();
    let mut report = Report::default();
    prepare_mirror(&opts.mirror)?;
    let keys: Vec<String> = cache
        .list(usage::PREFIX)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| usage::is_record_key(k))
        .collect();
    let Some((key, branch)) = choose_record(&keys, &opts.branches) else {
        report.elapsed = started.elapsed();
        return Ok(report);
    };
    report.record = Some(key.to_owned());
    report.branch = branch;
    // A record gc compacted meanwhile is gone; its paths are in the merged one, next time.
    let used = usage::read(cache, key).await?.unwrap_or_default();
    let newest = used.newest().unwrap_or(0);
    let mut todo: Vec<HashPart> = used
        .hash_parts()
        .filter(|h| used.last_used(h).unwrap_or(0) >= newest.saturating_sub(RECENT))
        .collect();
    todo.sort_unstable();
    report.wanted = todo.len();
    todo.retain(|h| !opts.have.contains(h));
    report.present = report.wanted - todo.len();

    let wanted = fetch_narinfos(cache, todo, opts.jobs, &mut report).await;
    // A narinfo without FileSize gives no bound to read its NAR against (NarSize is whatever
    // the writer said): its path is left to Nix, as a large one.
    let sizes: Vec<u64> = wanted
        .iter()
        .map(|w| w.info.file_size.unwrap_or(u64::MAX))
        .collect();
    let budget = disk_budget(&opts.mirror, opts.max_size);
    let (keep, large, over_budget) = select(&sizes, budget, opts.nar_max);
    (report.large, report.over_budget) = (large, over_budget);
    let mut wanted: Vec<Wanted> = wanted
        .into_iter()
        .zip(keep)
        .filter_map(|(w, k)| k.then_some(w))
        .collect();
    wanted.sort_by_key(|w| (nar_bytes(&w.info), w.hash_part));
    fetch_nars(cache, opts, wanted, &mut report).await;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The narinfos of `todo` that are fit for the mirror; the rest are counted in `report`.
async fn fetch_narinfos(
    cache: &Cache,
    todo: Vec<HashPart>,
    jobs: usize,
    report: &mut Report,
) -> Vec<Wanted> {
    let fetched: Vec<(HashPart, Result<Option<bytes::Bytes>, CacheError>)> =
        futures::stream::iter(todo)
            .map(|h| async move { (h, cache.get(&h.narinfo_key()).await) })
            .buffer_unordered(jobs.max(1))
            .collect()
            .await;
    let mut wanted = Vec::new();
    for (hash_part, got) in fetched {
        match got.map(|b| b.map(|b| (parse_narinfo(hash_part, &b), b))) {
            Ok(None) => report.gone += 1,
            Ok(Some((Ok(info), bytes))) => wanted.push(Wanted {
                hash_part,
                bytes,
                info,
            }),
            Ok(Some((Err(why), _))) => {
                eprintln!(
                    "warning: restore: {}: {why}; not restoring it",
                    hash_part.narinfo_key()
                );
                report.failed += 1;
            }
            Err(e) => {
                eprintln!("warning: restore: {}: {e}", hash_part.narinfo_key());
                report.failed += 1;
            }
        }
    }
    wanted
}

/// Fetches each NAR and then its narinfo into the mirror, `opts.jobs` at a time, smallest
/// first, with progress every `opts.progress`; what fails is left to the cache.
async fn fetch_nars(cache: &Cache, opts: &Options, wanted: Vec<Wanted>, report: &mut Report) {
    let total = wanted.len();
    let total_bytes: u64 = wanted.iter().map(|w| nar_bytes(&w.info)).sum();
    eprintln!(
        "restoring {total} paths ({}) into {}",
        crate::push::progress::human_bytes(total_bytes),
        opts.mirror.display()
    );
    let progress = Arc::new(Progress::default());
    let ticker = opts.progress.map(|every| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "restore: {} of {total} paths, {} of {}",
                    progress.done.load(Ordering::Relaxed),
                    crate::push::progress::human_bytes(progress.bytes.load(Ordering::Relaxed)),
                    crate::push::progress::human_bytes(total_bytes),
                );
            }
        })
    });
    let results: Vec<(HashPart, Result<u64, String>)> = futures::stream::iter(wanted)
        .map(|w| {
            let progress = progress.clone();
            async move {
                let result = fetch_path(cache, &opts.mirror, &w).await;
                if let Ok(n) = &result {
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    progress.bytes.fetch_add(*n, Ordering::Relaxed);
                }
                (w.hash_part, result)
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    if let Some(t) = ticker {
        t.abort();
    }
    for (hash_part, result) in results {
        match result {
            Ok(n) => {
                report.restored += 1;
                report.bytes += n;
            }
            Err(why) => {
                eprintln!("warning: restore: {hash_part}: {why}; Nix will fetch it from the cache");
                report.failed += 1;
            }
        }
    }
}

/// Which of the NARs of `sizes` to restore: none over `nar_max`, and within `budget` the
/// smallest first, which restores the most paths (round trips saved) for the bytes. Also the
/// number left out as large and as over the budget.
fn select(sizes: &[u64], budget: u64, nar_max: u64) -> (Vec<bool>, usize, usize) {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| sizes[i]);
    let mut keep = vec![false; sizes.len()];
    let (mut large, mut over, mut left) = (0, 0, budget);
    for i in order {
        if sizes[i] > nar_max {
            large += 1;
        } else if sizes[i] <= left {
            left -= sizes[i];
            keep[i] = true;
        } else {
            over += 1;
        }
    }
    (keep, large, over)
}

/// How much of the mirror's disk a restore may fill: a quarter of what is free, since Nix then
/// unpacks each NAR into the store (often on the same disk, and some three times the size
/// compressed) and the build needs room too. `max_size` when that is less, or when the free
/// space cannot be read.
fn disk_budget(mirror: &Path, max_size: u64) -> u64 {
    let Ok(stat) = rustix::fs::statvfs(mirror) else {
        return max_size;
    };
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let budget = free / DISK_SHARE;
    if budget < max_size {
        eprintln!(
            "restore: {} free where the mirror is; restoring at most {} (a quarter, leaving \
             room for Nix to unpack and build)",
            crate::push::progress::human_bytes(free),
            crate::push::progress::human_bytes(budget)
        );
    }
    budget.min(max_size)
}

/// The share of the free disk a restore leaves for everything else, as a divisor.
const DISK_SHARE: u64 = 4;

fn nar_bytes(info: &NarInfo) -> u64 {
    info.file_size.unwrap_or(info.nar_size)
}

/// A narinfo fit for the mirror: it parses, describes the path it is named for, and its NAR
/// lies directly under `nar/` (never outside the mirror).
fn parse_narinfo(hash_part: HashPart, bytes: &[u8]) -> Result<NarInfo, String> {
    let info = layout::read_narinfo(bytes, Some(hash_part)).map_err(|e| e.to_string())?;
    let file = info.url.strip_prefix(layout::NAR_DIR).unwrap_or("");
    if file.is_empty() || file.contains('/') || file.starts_with('.') || file.contains('\0') {
        return Err(format!("its URL {:?} is not a file under nar/", info.url));
    }
    Ok(info)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name(dir: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}", std::process::id()))
}

/// Fetches one path's NAR and then its narinfo into the mirror; the NAR's size on success.
async fn fetch_path(cache: &Cache, mirror: &Path, w: &Wanted) -> Result<u64, String> {
    let nar_path = mirror.join(&w.info.url);
    let size = if tokio::fs::try_exists(&nar_path).await.unwrap_or(false) {
        // Another path with the same NAR contents brought it already.
        0
    } else {
        let (_, mut body) = cache
            .get_stream(&w.info.url)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("its NAR {} is missing from the cache", w.info.url))?;
        let temp = temp_name(mirror);
        let written = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut hasher = Hasher::new();
            let mut buf = vec![0u8; 256 << 10];
            // An object larger than its narinfo says is read to one byte past that size and
            // no further: one planted to fill the disk costs no more than the size it claims.
            let limit = w
                .info
                .file_size
                .map_or(u64::MAX, |size| size.saturating_add(1));
            loop {
                let room = usize::try_from(limit - hasher.len()).unwrap_or(usize::MAX);
                let take = room.min(buf.len());
                let n = body.read(&mut buf[..take]).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await?;
            }
            file.flush().await?;
            Ok::<_, std::io::Error>(hasher)
        }
        .await;
        let checked = match written {
            Err(e) => Err(format!("fetching {}: {e}", w.info.url)),
            Ok(hasher) => check_nar(&w.info, hasher),
        };
        if let Err(why) = checked {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(why);
        }
        let n = nar_bytes(&w.info);
        tokio::fs::rename(&temp, &nar_path)
            .await
            .map_err(|e| format!("placing {}: {e}", nar_path.display()))?;
        n
    };
    let temp = temp_name(mirror);
    let info_path = mirror.join(w.hash_part.narinfo_key());
    let placed = async {
        tokio::fs::write(&temp, &w.bytes).await?;
        tokio::fs::rename(&temp, &info_path).await
    }
    .await;
    if let Err(e) = placed {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(format!("writing {}: {e}", info_path.display()));
    }
    Ok(size)
}

/// The fetched NAR is what the narinfo says it is, where the narinfo says.
fn check_nar(info: &NarInfo, hasher: Hasher) -> Result<(), String> {
    let len = hasher.len();
    let hash = hasher.finish();
    if let Some(size) = info.file_size {
        if size != len {
            return Err(format!("{} has {len} bytes, not {size}", info.url));
        }
    }
    if let Some(expected) = info.file_hash {
        if expected != hash {
            return Err(format!("{} does not match its FileHash", info.url));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn stale_mirrors_beside_ours_go_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("nixbucket-mirror-ours");
        let stale = tmp.path().join("nixbucket-mirror-0123");
        let unmarked = tmp.path().join("nixbucket-mirror-4567");
        let other = tmp.path().join("something-else");
        for dir in [&ours, &stale, &other] {
            prepare_mirror(dir).unwrap();
        }
        std::fs::create_dir(&unmarked).unwrap();
        // Made just now: another job's, maybe running beside this one.
        assert_eq!(sweep_stale_mirrors(&ours), 0);
        assert!(stale.exists());
        assert_eq!(sweep_mirrors_older_than(&ours, Duration::ZERO), 1);
        assert!(!stale.exists());
        assert!(ours.exists() && unmarked.exists() && other.exists());
    }

    #[test]
    fn the_record_of_the_first_branch_that_has_one_is_chosen() {
        let main = usage::branch_tag("main");
        let dev = usage::branch_tag("dev");
        let all = keys(&[
            &format!("usage/000000000100-00000000000000aa-b{dev}.zst"),
            &format!("usage/000000000200-00000000000000bb-b{main}.zst"),
            &format!("usage/000000000300-00000000000000cc-b{dev}.zst"),
            "usage/000000000400-00000000000000dd.zst",
        ]);
        let pick = |branches: &[&str]| {
            let b: Vec<String> = branches.iter().map(|s| (*s).to_owned()).collect();
            choose_record(&all, &b).map(|(k, b)| (k.to_owned(), b))
        };
        assert_eq!(
            pick(&["dev", "main"]),
            Some((all[2].clone(), Some("dev".into())))
        );
        assert_eq!(
            pick(&["feature", "main"]),
            Some((all[1].clone(), Some("main".into())))
        );
        assert_eq!(pick(&["feature"]), Some((all[3].clone(), None)));
        assert_eq!(pick(&[]), Some((all[3].clone(), None)));
        assert_eq!(choose_record(&[], &["main".to_owned()]), None);
    }

    #[test]
    fn small_paths_are_chosen_first_within_the_budget_and_large_ones_left_to_nix() {
        let sizes = [300, 100, LARGE_NAR + 1, 200, LARGE_NAR];
        assert_eq!(
            select(&sizes, 350, LARGE_NAR),
            (vec![false, true, false, true, false], 1, 2)
        );
        assert_eq!(
            select(&sizes, u64::MAX, LARGE_NAR),
            (vec![true, true, false, true, true], 1, 0)
        );
        assert_eq!(select(&sizes, 0, LARGE_NAR), (vec![false; 5], 1, 4));
        assert_eq!(
            select(&sizes, u64::MAX, 150).1,
            4,
            "a lower limit leaves more to Nix"
        );
        assert_eq!(select(&[], 10, LARGE_NAR), (vec![], 0, 0));
    }

    #[test]
    fn a_mirror_is_removed_only_if_nixbucket_made_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mirror = tmp.path().join("m");
        prepare_mirror(&mirror).unwrap();
        let hash = "1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h";
        std::fs::write(mirror.join(format!("{hash}.narinfo")), "x").unwrap();
        assert_eq!(
            mirrored(&mirror),
            HashSet::from([HashPart::parse(hash).unwrap()])
        );
        assert_eq!(
            std::fs::read_to_string(mirror.join("nix-cache-info")).unwrap(),
            MIRROR_INFO
        );
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        assert!(!remove_mirror(&other).unwrap());
        assert!(other.exists());
        // An empty directory can become a mirror; one holding files is refused, and stays.
        std::fs::write(other.join("precious"), "x").unwrap();
        let err = prepare_mirror(&other).unwrap_err();
        assert!(matches!(err, RestoreError::NotAMirror { .. }), "{err}");
        assert!(!other.join(MARKER).exists());
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        prepare_mirror(&empty).unwrap();
        prepare_mirror(&empty).unwrap();
        assert!(remove_mirror(&mirror).unwrap());
        assert!(!mirror.exists());
    }

    #[test]
    fn narinfos_naming_another_path_or_a_nar_elsewhere_are_not_mirrored() {
        let text = "StorePath: /nix/store/1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h-hello\n\
                    URL: nar/1ljmvwqa7rvcf261pzfl3z2ibazfbvvfvrfmp5jdc89ddgmrb3fa.nar.zst\n\
                    Compression: zstd\n\
                    NarHash: sha256:1ig8hwv1z7pbwg539a60k8wjx89j8p86kp9jv36i721h3a7mdbjk\n\
                    NarSize: 880\n\
                    References: \n";
        let hash = HashPart::parse("1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h").unwrap();
        assert!(parse_narinfo(hash, text.as_bytes()).is_ok());
        let other = HashPart::parse("5qn9lblnzjgza2vb23kwaclrcxnska2z").unwrap();
        let other = parse_narinfo(other, text.as_bytes());
        assert!(other.unwrap_err().contains("describes"));
        for url in [
            "../x.nar",
            "nar/../../etc/passwd",
            "nar/a/b.nar",
            "/etc/passwd",
            "nar/",
        ] {
            let bad = text.replace(
                "nar/1ljmvwqa7rvcf261pzfl3z2ibazfbvvfvrfmp5jdc89ddgmrb3fa.nar.zst",
                url,
            );
            let err = parse_narinfo(hash, bad.as_bytes()).unwrap_err();
            assert!(err.contains("not a file under nar/"), "{url}: {err}");
        }
    }
}
