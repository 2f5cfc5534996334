//! Garbage collection of a binary cache without a database: the bucket's listing, the
//! narinfos' References and the usage records (see [`crate::push::usage`]) are the truth.
//!
//! A path is kept when it is a root (used recently enough, younger than the grace period,
//! named by `--keep`, or unreadable so we cannot know what it needs) or when a kept path
//! references it. With a size budget, roots are taken newest use first until the next
//! closure would not fit. Then, in this order, so that a reader never meets a narinfo whose
//! NAR or reference is gone:
//! 1. narinfos are deleted (after a last look at usage records written since the listing);
//! 2. narinfos and usage records are listed again: one that appeared meanwhile (a push
//!    running alongside) and needs a deleted path gets that path's narinfo back, from the
//!    text read in the plan, with its closure;
//! 3. NARs that no remaining narinfo names, and that are older than the grace period, go,
//!    each looked at (HEAD) right before its deletion: a push that reuses such a NAR touches
//!    it first (see [`crate::push`]), and then it stays; build logs (`log/<derivation>`) go
//!    with the last narinfo their derivation built, or, if it built none that stays (a
//!    failed build), once they are as old as an unused path may be; realisations go with the
//!    narinfo of the path they name; each of these is looked at (HEAD) first, and one written
//!    since gc's listing (a push running alongside wrote a log or listing again) stays. A push
//!    finds a realisation already there and leaves it, so a realisation can still go while a
//!    push puts its path back: a `ca-derivations` user then builds that output again;
//! 4. when NARs were deleted, narinfos are listed a third time: one that a push wrote for a
//!    NAR gc deleted in the moment between its look and the deletion goes again, with every
//!    narinfo that references its path, so no narinfo is left without its NAR;
//! 5. usage records are merged into one (compaction); the newest record of each branch also
//!    stays whole, for `setup` to restore by (see [`crate::restore`]).
//!
//! Cost: two listings (65 ListObjectsV2 calls side by side, one per leading hash character of
//! narinfos and of NARs, plus usage records; the second without NARs), one GET per narinfo
//! and usage record, one DeleteObjects per 1000 narinfos or usage records removed, and a HEAD
//! and a DELETE per NAR removed; no HEAD per object in the plan. Requests run `jobs` at a time.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use crate::cache::{Cache, CacheError, ObjectInfo};
use crate::nix::StorePath;
use crate::nix::layout::{self, HashPart};
use crate::push::usage::{self, Usage, UsageError};
use plan::{Entry, Plan};

mod plan;
pub mod units;

/// What decides which roots are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Keep paths used (pushed or found present by a job) within this long.
    OlderThan(Duration),
    /// Keep the most recently used closures whose NARs fit in this many bytes.
    MaxSize(u64),
}

#[derive(Clone, Debug)]
pub struct GcOptions {
    pub policy: Policy,
    /// Paths kept whatever their age, with their closure.
    pub keep: Vec<StorePath>,
    /// Objects younger than this are never deleted: a push may be writing them.
    pub grace: Duration,
    /// The time gc takes as now (tests pretend days have passed).
    pub now: SystemTime,
    pub dry_run: bool,
    /// How many GETs or DELETEs run at once.
    pub jobs: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("could not delete {failed} objects (first: {first}); the cache is still whole")]
    Delete { failed: usize, first: CacheError },
    #[error("could not restore the narinfo '{key}' that a concurrent push needs: {source}")]
    Restore { key: String, source: CacheError },
}

/// One path that gc deletes (or would delete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    pub path: StorePath,
    /// Bytes of its NAR object, if that exists.
    pub nar_bytes: u64,
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub narinfos: usize,
    pub kept: usize,
    /// Paths whose narinfos were deleted (or would be, in a dry run), sorted.
    pub deleted: Vec<Deleted>,
    /// NAR objects deleted, and their bytes.
    pub nars_deleted: usize,
    pub nar_bytes_freed: u64,
    /// narinfo and usage-record bytes deleted.
    pub meta_bytes_freed: u64,
    /// NAR bytes the kept paths occupy.
    pub nar_bytes_kept: u64,
    /// Build logs deleted: of no path that stays, and old (see `plan::orphan_logs_before`).
    pub logs_deleted: usize,
    /// Realisations deleted: their output's narinfo is gone, and they are past the grace
    /// period.
    pub realisations_deleted: usize,
    /// NAR listings deleted: their path's narinfo is gone, and they are past the grace period.
    pub listings_deleted: usize,
    /// Narinfos put back because a concurrent push needs them.
    pub restored: Vec<StorePath>,
    /// Narinfos a concurrent push wrote for a NAR gc deleted at that moment, removed with
    /// their referrers so the cache stays whole (the next push puts them back).
    pub unlinked: Vec<StorePath>,
    /// Narinfos that could not be read or parsed: kept, and reported.
    pub unreadable: Vec<(String, String)>,
    /// Usage records merged into one (and the key of the merged one).
    pub usage_records_merged: usize,
    pub usage_record_written: Option<String>,
    /// Objects left alone only because they are younger than the grace period.
    pub young: usize,
    /// Wall time of each step, in order: where a slow gc spends it.
    pub phases: Vec<(&'static str, Duration)>,
}

/// How far the store's clock and ours may disagree when gc compares a LastModified with the
/// moment of its listing.
const CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// Records how long each step took.
struct Clock(std::time::Instant);

impl Clock {
    fn lap(&mut self, report: &mut GcReport, phase: &'static str) {
        report.phases.push((phase, self.0.elapsed()));
        self.0 = std::time::Instant::now();
    }
}

/// Branches whose newest usage record compaction leaves whole (the most recently active).
const BRANCH_RECORDS_KEPT: usize = 64;

/// The cache as gc first finds it.
struct Snapshot {
    listing: Vec<ObjectInfo>,
    listed: HashMap<String, ObjectInfo>,
    usage_keys: Vec<String>,
    usage: Usage,
    entries: Vec<Entry>,
    nar_sizes: HashMap<String, u64>,
}

/// Lists the cache, plans, and (unless a dry run) deletes. See the module docs for the order.
pub async fn collect(cache: &Cache, opts: &GcOptions) -> Result<GcReport, GcError> {
    let jobs = opts.jobs.max(1);
    let mut clock = Clock(std::time::Instant::now());
    // What a writer changed after this moment (gc's now, less a margin for the store's clock
    // and ours) is taken as changed since the listing.
    let listed_at = opts.now - CLOCK_MARGIN;
    let mut report = GcReport::default();
    let mut snap = read_snapshot(cache, jobs, &mut clock, &mut report).await?;
    let mut plan = plan::plan(&snap.entries, &snap.usage, &snap.nar_sizes, opts);
    report.young += plan.young;
    // A last look at jobs that started after the listing: what they use stays. (Their keys
    // are listed again below, after the deletions, and merged then.)
    if !opts.dry_run {
        let (_, fresh) = new_usage(cache, &snap.listed, jobs).await?;
        plan.keep_used(&fresh);
        snap.usage.merge(&fresh);
    }
    summarize(&mut report, &snap, &plan);
    if opts.dry_run {
        dry_run_nars(&mut report, &snap, &plan, opts);
        let kept = (0..snap.entries.len())
            .filter(|&i| plan.kept[i])
            .map(|i| &snap.entries[i]);
        let beside = doomed_beside(cache, &snap, kept, opts, jobs).await;
        beside.count(&snap, &mut report);
        clock.lap(&mut report, "plan");
        return Ok(report);
    }
    clock.lap(&mut report, "plan");

    // 1. narinfos.
    let doomed = plan.doomed();
    let doomed_keys: Vec<String> = doomed
        .iter()
        .map(|&i| snap.entries[i].key.clone())
        .collect();
    delete_all(cache, &doomed_keys, jobs).await?;
    report.meta_bytes_freed += doomed.iter().map(|&i| snap.entries[i].size).sum::<u64>();
    // 2. A second listing: repair what a concurrent push built on a deleted path.
    let repaired = repair(cache, &mut snap, &plan, jobs, &mut report).await?;
    clock.lap(&mut report, "delete narinfos, list again");
    // 3. NARs that nothing names any more.
    let stale = delete_orphan_nars(cache, &snap, &repaired, opts, &mut report).await?;
    let mut beside = doomed_beside(cache, &snap, repaired.live(&snap), opts, jobs).await;
    let keys: Vec<String> = beside
        .logs
        .iter()
        .chain(&beside.realisations)
        .chain(&beside.listings)
        .cloned()
        .collect();
    // A last look (HEAD) at each before they go, a thousand to a DeleteObjects: a push
    // running alongside may have written one again (a rebuilt path's log, realisation or
    // listing), and then it stays.
    let (stale_keys, touched) = still_stale(cache, &keys, listed_at, jobs).await?;
    delete_all(cache, &stale_keys, jobs).await?;
    report.young += touched;
    let stale_keys: HashSet<&str> = stale_keys.iter().map(String::as_str).collect();
    beside.retain(|key| stale_keys.contains(key));
    beside.count(&snap, &mut report);
    clock.lap(&mut report, "delete NARs, logs and realisations");
    // 4. A push may have reused a NAR in the moment between gc's last look at it and its
    //    deletion: its narinfo now names a NAR that is gone. Such narinfos, and any that
    //    reference their paths, go too, so what stays is whole; the next push puts them back.
    let known: HashMap<&str, Option<SystemTime>> = repaired
        .listing
        .iter()
        .map(|o| (o.key.as_str(), o.last_modified))
        .collect();
    report.unlinked = unlink_broken(cache, &stale, &known, repaired.live(&snap), jobs).await?;
    clock.lap(&mut report, "list again, unlink");
    // 5. Compaction: one record with what is still relevant replaces the ones read.
    compact_usage(cache, &snap, &repaired, jobs, &mut report).await?;
    clock.lap(&mut report, "merge usage");
    Ok(report)
}

/// The listing, the usage records and every narinfo, read.
async fn read_snapshot(
    cache: &Cache,
    jobs: usize,
    clock: &mut Clock,
    report: &mut GcReport,
) -> Result<Snapshot, GcError> {
    let listing = list_cache(cache, true, jobs).await?;
    clock.lap(report, "list");
    let listed: HashMap<String, ObjectInfo> =
        listing.iter().map(|o| (o.key.clone(), o.clone())).collect();
    let usage_keys: Vec<String> = listing
        .iter()
        .filter(|o| usage::is_record_key(&o.key))
        .map(|o| o.key.clone())
        .collect();
    let usage = read_usage(cache, &usage_keys, jobs).await?;
    let narinfo_objects: Vec<&ObjectInfo> = listing
        .iter()
        .filter(|o| layout::is_narinfo_key(&o.key))
        .collect();
    let entries = read_narinfos(cache, &narinfo_objects, jobs).await?;
    clock.lap(report, "read");
    report.narinfos = entries.len();
    for e in &entries {
        if e.info.is_none() {
            let why = match layout::read_narinfo(&e.text, Some(e.hash)) {
                Err(layout::ReadError::OtherPath(_)) | Ok(_) => "describes another path".to_owned(),
                Err(err) => err.to_string(),
            };
            report.unreadable.push((e.key.clone(), why));
        }
    }
    let nar_sizes = listing
        .iter()
        .filter(|o| layout::is_nar_key(&o.key))
        .map(|o| (o.key.clone(), o.size))
        .collect();
    Ok(Snapshot {
        listing,
        listed,
        usage_keys,
        usage,
        entries,
        nar_sizes,
    })
}

/// What the plan keeps and deletes, in the report.
fn summarize(report: &mut GcReport, snap: &Snapshot, plan: &Plan) {
    let entries = &snap.entries;
    report.kept = plan.kept.iter().filter(|k| **k).count();
    report.nar_bytes_kept = {
        let named: HashSet<&str> = (0..entries.len())
            .filter(|&i| plan.kept[i])
            .filter_map(|i| entries[i].nar_url())
            .collect();
        named.iter().filter_map(|u| snap.nar_sizes.get(*u)).sum()
    };
    report.deleted = plan
        .doomed()
        .iter()
        .filter_map(|&i| {
            let e = &entries[i];
            e.info.as_ref().map(|info| Deleted {
                path: info.path.clone(),
                nar_bytes: e.nar_size(&snap.nar_sizes),
            })
        })
        .collect();
    report.deleted.sort_by(|a, b| a.path.cmp(&b.path));
}

/// A dry run's count of the NARs that would go: those only doomed narinfos name, plus old
/// orphans.
fn dry_run_nars(report: &mut GcReport, snap: &Snapshot, plan: &Plan, opts: &GcOptions) {
    let young_before = plan::young_before(opts);
    let named_by_kept: HashSet<&str> = (0..snap.entries.len())
        .filter(|&i| plan.kept[i])
        .filter_map(|i| snap.entries[i].nar_url())
        .collect();
    for o in snap.listing.iter().filter(|o| layout::is_nar_key(&o.key)) {
        let young = o.last_modified.is_none_or(|t| t > young_before);
        if !named_by_kept.contains(o.key.as_str()) && !young {
            report.nars_deleted += 1;
            report.nar_bytes_freed += o.size;
        }
    }
    report.meta_bytes_freed = plan.doomed().iter().map(|&i| snap.entries[i].size).sum();
}

/// What the second listing found, and which entries are gone for good.
struct Repaired {
    listing: Vec<ObjectInfo>,
    /// By entry index: deleted and not put back.
    gone: Vec<bool>,
    /// Narinfos written since the first listing.
    fresh: Vec<Entry>,
    /// Usage records written since the first listing.
    late_usage_keys: Vec<String>,
}

impl Repaired {
    /// The narinfos in the cache now, as last read.
    fn live<'a>(&'a self, snap: &'a Snapshot) -> impl Iterator<Item = &'a Entry> {
        snap.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.gone[*i])
            .map(|(_, e)| e)
            .chain(&self.fresh)
    }
}

/// Phase 2: lists narinfos and usage records again, and puts back the deleted narinfos that
/// one written meanwhile needs, with their closures.
async fn repair(
    cache: &Cache,
    snap: &mut Snapshot,
    plan: &Plan,
    jobs: usize,
    report: &mut GcReport,
) -> Result<Repaired, GcError> {
    let entries = &snap.entries;
    let listing = list_cache(cache, false, jobs).await?;
    let mut gone = plan.kept.iter().map(|k| !k).collect::<Vec<bool>>();
    let new_narinfos: Vec<&ObjectInfo> = listing
        .iter()
        .filter(|o| layout::is_narinfo_key(&o.key))
        .filter(|o| {
            snap.listed
                .get(&o.key)
                .is_none_or(|old| old.last_modified != o.last_modified)
        })
        .collect();
    let fresh = read_narinfos(cache, &new_narinfos, jobs).await?;
    let referenced = fresh
        .iter()
        .filter_map(|e| e.info.as_ref())
        .flat_map(|info| info.references.iter().map(HashPart::of));
    // A narinfo rewritten under the same key (a re-push) is back too.
    let mut needed: Vec<usize> = plan
        .graph
        .indices(referenced.chain(fresh.iter().map(|e| e.hash)))
        .collect();
    let (late_usage_keys, late_usage) = new_usage(cache, &snap.listed, jobs).await?;
    needed.extend(plan.graph.indices(late_usage.hash_parts()));
    let mut back = plan.kept.clone();
    plan.graph.close(&needed, &mut back);
    let to_restore: Vec<usize> = (0..entries.len())
        .filter(|&i| back[i] && !plan.kept[i])
        .collect();
    restore(cache, entries, &to_restore, &fresh).await?;
    for &i in &to_restore {
        gone[i] = false;
        if let Some(info) = &entries[i].info {
            report.restored.push(info.path.clone());
        }
    }
    report.restored.sort();
    report
        .deleted
        .retain(|d| !report.restored.contains(&d.path));
    snap.usage.merge(&late_usage);
    Ok(Repaired {
        listing,
        gone,
        fresh,
        late_usage_keys,
    })
}

/// Phase 3: NARs from the first listing that no remaining narinfo names and that are older
/// than the grace period, each looked at again right before its deletion (a NAR uploaded
/// since the listing is young). Returns the keys deleted.
async fn delete_orphan_nars(
    cache: &Cache,
    snap: &Snapshot,
    repaired: &Repaired,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<HashSet<String>, GcError> {
    let young_before = plan::young_before(opts);
    let named: HashSet<&str> = repaired.live(snap).filter_map(Entry::nar_url).collect();
    let mut doomed = Vec::new();
    for o in snap.listing.iter().filter(|o| layout::is_nar_key(&o.key)) {
        if named.contains(o.key.as_str()) {
            continue;
        }
        if o.last_modified.is_none_or(|t| t > young_before) {
            report.young += 1;
            continue;
        }
        doomed.push(o.key.clone());
    }
    let stale = delete_stale(cache, &doomed, young_before, opts.jobs.max(1)).await?;
    report.nars_deleted += stale.keys.len();
    report.nar_bytes_freed += stale.bytes;
    report.young += stale.touched;
    Ok(stale.keys)
}

/// The build logs and realisations that go beside the narinfos that stay.
struct Beside {
    logs: Vec<String>,
    realisations: Vec<String>,
    /// NAR listings (`<hash>.ls`) of paths whose narinfo goes.
    listings: Vec<String>,
}

impl Beside {
    /// Keeps only the keys `deleted` says were.
    fn retain(&mut self, deleted: impl Fn(&str) -> bool) {
        for keys in [&mut self.logs, &mut self.realisations, &mut self.listings] {
            keys.retain(|k| deleted(k));
        }
    }

    /// Counts them, and their bytes, in the report.
    fn count(&self, snap: &Snapshot, report: &mut GcReport) {
        report.logs_deleted = self.logs.len();
        report.realisations_deleted = self.realisations.len();
        report.listings_deleted = self.listings.len();
        report.meta_bytes_freed += (self.logs.iter().chain(&self.realisations))
            .chain(&self.listings)
            .filter_map(|k| snap.listed.get(k).map(|o| o.size))
            .sum::<u64>();
    }
}

/// Phase 3, beside the NARs: a build log goes with the last narinfo its derivation built, or,
/// built by none (a failed build), once it is old; a realisation goes with the narinfo of the
/// path it names. `stay`: the narinfos that stay.
async fn doomed_beside<'a>(
    cache: &Cache,
    snap: &Snapshot,
    stay: impl Iterator<Item = &'a Entry>,
    opts: &GcOptions,
    jobs: usize,
) -> Beside {
    let stay: Vec<&Entry> = stay.collect();
    let logs = plan::doomed_logs(log_objects(snap), &derivers(stay.iter().copied()), opts);
    let live: HashSet<HashPart> = stay.iter().map(|e| e.hash).collect();
    let realisations = read_realisations(cache, snap, jobs).await;
    let realisations = plan::doomed_with_their_paths(realisations.iter(), &live, opts);
    // A listing names its path by its key, and goes with it as a realisation does.
    let listings: Vec<_> = snap
        .listing
        .iter()
        .filter_map(|o| {
            let hash = HashPart::of_listing_key(&o.key)?;
            Some((o.key.clone(), o.last_modified, Some(hash)))
        })
        .collect();
    let listings = plan::doomed_with_their_paths(listings.iter(), &live, opts);
    Beside {
        logs,
        realisations,
        listings,
    }
}

/// Each realisation listed: its key, when it was written, and the hash part of the path it
/// names (none when it cannot be read: such a one is kept).
async fn read_realisations(
    cache: &Cache,
    snap: &Snapshot,
    jobs: usize,
) -> Vec<(String, Option<SystemTime>, Option<HashPart>)> {
    use crate::push::realisations;
    let listed = snap.listing.iter().filter(|o| realisations::is_key(&o.key));
    futures::stream::iter(listed.map(|o| async move {
        let named = match cache.get(&o.key).await {
            Ok(Some(bytes)) => realisations::read(&o.key, &bytes)
                .ok()
                .map(|r| HashPart::of(&r.out_path)),
            _ => None,
        };
        (o.key.clone(), o.last_modified, named)
    }))
    .buffer_unordered(jobs)
    .collect()
    .await
}

/// The derivations whose logs stay with `entries`: those that built them, and those among
/// them (a failed build's derivation is pushed with its log), by hash part.
fn derivers<'a>(entries: impl Iterator<Item = &'a Entry>) -> HashSet<HashPart> {
    entries
        .filter_map(|e| e.info.as_ref())
        .flat_map(|info| {
            let own = info.path.is_derivation().then_some(&info.path);
            info.deriver.as_ref().into_iter().chain(own)
        })
        .map(HashPart::of)
        .collect()
}

/// The build logs listed, with when each was last written.
fn log_objects(snap: &Snapshot) -> impl Iterator<Item = (&str, Option<SystemTime>)> {
    snap.listing
        .iter()
        .filter(|o| o.key.starts_with(layout::LOG_DIR))
        .map(|o| (o.key.as_str(), o.last_modified))
}

/// Phase 5: the usage records read are merged into one that names only live paths; each
/// branch's newest record stays as it is as well, since setup restores by it.
async fn compact_usage(
    cache: &Cache,
    snap: &Snapshot,
    repaired: &Repaired,
    jobs: usize,
    report: &mut GcReport,
) -> Result<(), GcError> {
    let read_keys: Vec<String> = snap
        .usage_keys
        .iter()
        .chain(&repaired.late_usage_keys)
        .cloned()
        .collect();
    let live: HashSet<HashPart> = repaired.live(snap).map(|e| e.hash).collect();
    let mut usage = snap.usage.clone();
    let before = usage.len();
    usage.retain(|h| live.contains(h));
    let kept = usage::newest_per_branch(&read_keys, BRANCH_RECORDS_KEPT);
    let merged: Vec<String> = read_keys
        .into_iter()
        .filter(|k| !kept.contains(k))
        .collect();
    if merged.len() > 1 || usage.len() < before {
        report.usage_record_written = usage::write(cache, &usage, None).await?;
        let meta: u64 = merged
            .iter()
            .filter_map(|k| snap.listed.get(k).map(|o| o.size))
            .sum();
        delete_all(cache, &merged, jobs).await?;
        report.usage_records_merged = merged.len();
        report.meta_bytes_freed += meta;
    }
    Ok(())
}

/// Narinfos, usage records and (with `nars`) NARs, build logs and realisations: all gc reads or
/// deletes, in 33 or 67 listings side by side.
async fn list_cache(cache: &Cache, nars: bool, jobs: usize) -> Result<Vec<ObjectInfo>, CacheError> {
    let mut prefixes = if nars {
        let mut prefixes = layout::store_prefixes();
        prefixes.push(layout::LOG_DIR.to_owned());
        prefixes.push(crate::push::realisations::DIR.to_owned());
        prefixes
    } else {
        layout::narinfo_prefixes()
    };
    prefixes.push(usage::PREFIX.to_owned());
    let mut listed = cache.list_level(&prefixes, jobs).await?;
    if nars {
        // Nix 2.35's realisations sit a level down, build-trace-v2/DRV/OUTPUT.doi.
        let trace_dir = crate::push::realisations::BUILD_TRACE_DIR;
        listed.extend(cache.list(trace_dir).await?);
    }
    Ok(listed)
}

/// Usage records that were not in `listed`, read: (their keys, their merged contents).
async fn new_usage(
    cache: &Cache,
    listed: &HashMap<String, ObjectInfo>,
    jobs: usize,
) -> Result<(Vec<String>, Usage), GcError> {
    let keys: Vec<String> = cache
        .list(usage::PREFIX)
        .await?
        .into_iter()
        .filter(|o| usage::is_record_key(&o.key) && !listed.contains_key(&o.key))
        .map(|o| o.key)
        .collect();
    let merged = read_usage(cache, &keys, jobs).await?;
    Ok((keys, merged))
}

async fn read_usage(cache: &Cache, keys: &[String], jobs: usize) -> Result<Usage, GcError> {
    let results: Vec<Result<Option<Usage>, UsageError>> =
        futures::stream::iter(keys.iter().map(|k| usage::read(cache, k)))
            .buffer_unordered(jobs)
            .collect()
            .await;
    let mut merged = Usage::new();
    for r in results {
        // An unreadable record is an error: guessing could delete what a job relies on.
        if let Some(u) = r? {
            merged.merge(&u);
        }
    }
    Ok(merged)
}

async fn read_narinfos(
    cache: &Cache,
    objects: &[&ObjectInfo],
    jobs: usize,
) -> Result<Vec<Entry>, GcError> {
    let results: Vec<Result<Option<Entry>, CacheError>> =
        futures::stream::iter(objects.iter().map(|o| async move {
            let Some(text) = cache.get(&o.key).await? else {
                // Deleted since the listing (another gc): nothing to decide about.
                return Ok(None);
            };
            let Some(hash) = HashPart::of_narinfo_key(&o.key) else {
                return Ok(None);
            };
            let info = layout::read_narinfo(&text, Some(hash)).ok();
            Ok(Some(Entry {
                key: o.key.clone(),
                hash,
                modified: o.last_modified,
                size: o.size,
                text,
                info,
            }))
        }))
        .buffer_unordered(jobs)
        .collect()
        .await;
    let mut entries = Vec::with_capacity(results.len());
    for r in results {
        if let Some(e) = r? {
            entries.push(e);
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(entries)
}

/// Narinfos written since the listing `known` that name one of the `deleted` NARs, and
/// every narinfo that references their paths, transitively: deleted, and their paths
/// returned. `live` are the narinfos read before; nothing is listed when no NAR was deleted.
async fn unlink_broken<'a>(
    cache: &Cache,
    deleted: &HashSet<String>,
    known: &HashMap<&str, Option<SystemTime>>,
    live: impl Iterator<Item = &'a Entry>,
    jobs: usize,
) -> Result<Vec<StorePath>, GcError> {
    if deleted.is_empty() {
        return Ok(Vec::new());
    }
    let now = list_cache(cache, false, jobs).await?;
    let new_objects: Vec<&ObjectInfo> = now
        .iter()
        .filter(|o| layout::is_narinfo_key(&o.key))
        .filter(|o| known.get(o.key.as_str()) != Some(&o.last_modified))
        .collect();
    let new_entries = read_narinfos(cache, &new_objects, jobs).await?;
    let new_keys: HashSet<&str> = new_entries.iter().map(|e| e.key.as_str()).collect();
    // The newest text of each narinfo: one rewritten since is read anew.
    let mut all: Vec<&Entry> = new_entries.iter().collect();
    for e in live {
        if !new_keys.contains(e.key.as_str()) {
            all.push(e);
        }
    }
    let mut broken: HashSet<HashPart> = new_entries
        .iter()
        .filter(|e| e.nar_url().is_some_and(|url| deleted.contains(url)))
        .map(|e| e.hash)
        .collect();
    if broken.is_empty() {
        return Ok(Vec::new());
    }
    loop {
        let referrers: Vec<HashPart> = all
            .iter()
            .filter(|e| !broken.contains(&e.hash))
            .filter(|e| {
                e.info.as_ref().is_some_and(|info| {
                    info.references
                        .iter()
                        .any(|r| broken.contains(&HashPart::of(r)))
                })
            })
            .map(|e| e.hash)
            .collect();
        if referrers.is_empty() {
            break;
        }
        broken.extend(referrers);
    }
    let doomed: Vec<&Entry> = all
        .into_iter()
        .filter(|e| broken.contains(&e.hash))
        .collect();
    let keys: Vec<String> = doomed.iter().map(|e| e.key.clone()).collect();
    delete_all(cache, &keys, jobs).await?;
    let mut paths: Vec<StorePath> = doomed
        .iter()
        .filter_map(|e| e.info.as_ref().map(|i| i.path.clone()))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Puts deleted narinfos back, references before referrers, unless a push already did.
async fn restore(
    cache: &Cache,
    entries: &[Entry],
    which: &[usize],
    fresh: &[Entry],
) -> Result<(), GcError> {
    let rewritten: HashSet<&str> = fresh.iter().map(|e| e.key.as_str()).collect();
    // Any order that puts a reference first: repeat passes over what is left.
    let mut left: Vec<usize> = which
        .iter()
        .copied()
        .filter(|&i| !rewritten.contains(entries[i].key.as_str()))
        .collect();
    let pending: HashSet<HashPart> = left.iter().map(|&i| entries[i].hash).collect();
    let mut done: HashSet<HashPart> = HashSet::new();
    while !left.is_empty() {
        let (ready, rest): (Vec<usize>, Vec<usize>) = left.iter().partition(|&&i| {
            entries[i].info.as_ref().is_none_or(|info| {
                info.references.iter().all(|r| {
                    let h = HashPart::of(r);
                    h == entries[i].hash || !pending.contains(&h) || done.contains(&h)
                })
            })
        });
        // A reference cycle cannot happen in Nix; if data says otherwise, write the rest anyway.
        let ready = if ready.is_empty() {
            rest.clone()
        } else {
            ready
        };
        let rest: Vec<usize> = left
            .iter()
            .copied()
            .filter(|i| !ready.contains(i))
            .collect();
        for &i in &ready {
            let e = &entries[i];
            cache
                .put(&e.key, e.text.clone(), layout::NARINFO_TYPE)
                .await
                .map_err(|source| GcError::Restore {
                    key: e.key.clone(),
                    source,
                })?;
            done.insert(e.hash);
        }
        left = rest;
    }
    Ok(())
}

async fn delete_all(cache: &Cache, keys: &[String], jobs: usize) -> Result<(), GcError> {
    let mut errors = cache.delete_many(keys, jobs).await.into_iter();
    if let Some(first) = errors.next() {
        return Err(GcError::Delete {
            failed: 1 + errors.count(),
            first,
        });
    }
    Ok(())
}

/// What [`delete_stale`] did.
#[derive(Default)]
struct StaleDeleted {
    keys: HashSet<String>,
    bytes: u64,
    /// Found touched since the plan, and left.
    touched: usize,
}

/// The first of the requests that failed, and how many did.
#[allow(clippy::result_large_err)] // as large as every GcError the callers return
fn none_failed(failed: Vec<CacheError>) -> Result<(), GcError> {
    let mut errors = failed.into_iter();
    match errors.next() {
        Some(first) => Err(GcError::Delete {
            failed: 1 + errors.count(),
            first,
        }),
        None => Ok(()),
    }
}

/// Of `keys`, those still there and not written since `young_before`, looked at (HEAD) now;
/// and how many were written since.
async fn still_stale(
    cache: &Cache,
    keys: &[String],
    young_before: SystemTime,
    jobs: usize,
) -> Result<(Vec<String>, usize), GcError> {
    let looks: Vec<(String, Result<Option<ObjectInfo>, CacheError>)> =
        futures::stream::iter(keys.iter().cloned())
            .map(|key| async move {
                let looked = cache.head(&key).await;
                (key, looked)
            })
            .buffer_unordered(jobs)
            .collect()
            .await;
    let (mut stale, mut touched, mut failed) = (Vec::new(), 0, Vec::new());
    for (key, looked) in looks {
        match looked {
            Ok(None) => {}
            Ok(Some(now)) if now.last_modified.is_none_or(|t| t > young_before) => touched += 1,
            Ok(Some(_)) => stale.push(key),
            Err(e) => failed.push(e),
        }
    }
    none_failed(failed)?;
    Ok((stale, touched))
}

/// Deletes each object that is still older than `young_before` when looked at right before
/// its deletion: a push that reuses an orphan NAR touches it first, and that NAR stays.
async fn delete_stale(
    cache: &Cache,
    keys: &[String],
    young_before: SystemTime,
    jobs: usize,
) -> Result<StaleDeleted, GcError> {
    enum Looked {
        Gone,
        Touched,
        Deleted(String, u64),
    }
    let one = |key: String| async move {
        let Some(now) = cache.head(&key).await? else {
            return Ok(Looked::Gone);
        };
        if now.last_modified.is_none_or(|t| t > young_before) {
            return Ok(Looked::Touched);
        }
        cache.delete(&key).await?;
        Ok::<_, CacheError>(Looked::Deleted(key, now.size))
    };
    let results: Vec<Result<Looked, CacheError>> = futures::stream::iter(keys.iter().cloned())
        .map(one)
        .buffer_unordered(jobs)
        .collect()
        .await;
    let mut sum = StaleDeleted::default();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(Looked::Gone) => {}
            Ok(Looked::Touched) => sum.touched += 1,
            Ok(Looked::Deleted(key, bytes)) => {
                sum.keys.insert(key);
                sum.bytes += bytes;
            }
            Err(e) => failed.push(e),
        }
    }
    none_failed(failed)?;
    Ok(sum)
}
