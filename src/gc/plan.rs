//! The pure half of gc: from the narinfos as listed and read, the usage records and the NAR
//! sizes, which narinfos stay. No I/O, so each rule (grace, keep, policy, closure) is a unit
//! test; the phases in [`super`] carry the decision out.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use bytes::Bytes;

use super::{GcOptions, Policy};
use crate::nix::{HashPart, NarInfo};
use crate::push::usage::{self, Usage};

/// One narinfo as listed and read.
pub(super) struct Entry {
    pub key: String,
    pub hash: HashPart,
    pub modified: Option<SystemTime>,
    pub size: u64,
    pub text: Bytes,
    /// None when it does not parse or describes another path.
    pub info: Option<NarInfo>,
}

impl Entry {
    /// The NAR this narinfo names. For one we cannot parse, the text of its `URL:` line: we
    /// keep such a narinfo, and must not delete what it may still point at.
    pub fn nar_url(&self) -> Option<&str> {
        match &self.info {
            Some(info) => Some(info.url.as_str()),
            None => std::str::from_utf8(&self.text)
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("URL:"))
                .map(str::trim),
        }
    }

    /// Bytes of the NAR this narinfo names, as listed (0 if not listed).
    pub fn nar_size(&self, nar_sizes: &HashMap<String, u64>) -> u64 {
        self.nar_url()
            .and_then(|u| nar_sizes.get(u).copied())
            .unwrap_or(0)
    }
}

/// Objects modified after this are young: a push may be writing them.
pub(super) fn young_before(opts: &GcOptions) -> SystemTime {
    opts.now
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A build log whose derivation built no narinfo still in the cache (a failed build, or a
/// path gc deleted) goes once it was last written before this: under `--older-than`, as a
/// path unused that long would; under `--max-size`, once the grace period is over.
pub(super) fn orphan_logs_before(opts: &GcOptions) -> SystemTime {
    match opts.policy {
        Policy::OlderThan(age) => opts
            .now
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .min(young_before(opts)),
        Policy::MaxSize(_) => young_before(opts),
    }
}

/// The build logs (`log/<derivation>`) that go: those of no derivation in `derivers` (the
/// `Deriver:` of every narinfo that stays, and the derivations that stay) and older than
/// [`orphan_logs_before`].
pub(super) fn doomed_logs<'a>(
    logs: impl Iterator<Item = (&'a str, Option<SystemTime>)>,
    derivers: &HashSet<HashPart>,
    opts: &GcOptions,
) -> Vec<String> {
    let before = orphan_logs_before(opts);
    logs.filter(|(key, modified)| {
        let built_a_kept_path =
            HashPart::of_log_key(key).is_some_and(|drv| derivers.contains(&drv));
        !built_a_kept_path && modified.is_some_and(|t| t < before)
    })
    .map(|(key, _)| key.to_owned())
    .collect()
}

/// The objects that name one path and go with it (realisations, NAR listings): those naming a
/// path whose narinfo does not stay (not in `live`), once past the grace period (a push
/// writes both after the narinfo). One that could not be read names nothing, and stays.
pub(super) fn doomed_with_their_paths<'a>(
    objects: impl Iterator<Item = &'a (String, Option<SystemTime>, Option<HashPart>)>,
    live: &HashSet<HashPart>,
    opts: &GcOptions,
) -> Vec<String> {
    let young_before = young_before(opts);
    objects
        .filter(|(_, modified, named)| {
            named.is_some_and(|h| !live.contains(&h)) && modified.is_some_and(|t| t < young_before)
        })
        .map(|(key, _, _)| key.clone())
        .collect()
}

/// Which of the entries stay, and why some stay whatever the policy says.
pub(super) struct Plan {
    /// Kept, by entry index.
    pub kept: Vec<bool>,
    /// Entries kept because they are younger than the grace period.
    pub young: usize,
    pub graph: Graph,
}

impl Plan {
    /// Keeps what `usage` names (jobs that started after the listing), with its closure.
    pub fn keep_used(&mut self, usage: &Usage) {
        let used: Vec<usize> = self.graph.indices(usage.hash_parts()).collect();
        self.graph.close(&used, &mut self.kept);
    }

    /// Entries that go, by index.
    pub fn doomed(&self) -> Vec<usize> {
        (0..self.kept.len()).filter(|&i| !self.kept[i]).collect()
    }
}

/// Roots no policy may drop (young, unreadable, `--keep`), then the policy's roots, each
/// with its closure.
pub(super) fn plan(
    entries: &[Entry],
    usage: &Usage,
    nar_sizes: &HashMap<String, u64>,
    opts: &GcOptions,
) -> Plan {
    let graph = Graph::new(entries);
    let young_before = young_before(opts);
    let keep: HashSet<HashPart> = opts.keep.iter().map(HashPart::of).collect();
    let mut kept = vec![false; entries.len()];
    let mut must = Vec::new();
    let mut young = 0;
    for (i, e) in entries.iter().enumerate() {
        let is_young = e.modified.is_none_or(|t| t > young_before);
        young += usize::from(is_young);
        if is_young || e.info.is_none() || keep.contains(&e.hash) {
            must.push(i);
        }
    }
    graph.close(&must, &mut kept);

    let last_used = |e: &Entry| -> u64 {
        let modified = e.modified.map_or(u64::MAX, usage::unix_secs);
        usage.last_used(&e.hash).unwrap_or(0).max(modified)
    };
    let nar_size_of = |e: &Entry| e.nar_size(nar_sizes);
    match opts.policy {
        Policy::OlderThan(age) => {
            let cutoff = usage::unix_secs(opts.now).saturating_sub(age.as_secs());
            let recent: Vec<usize> = (0..entries.len())
                .filter(|&i| last_used(&entries[i]) >= cutoff)
                .collect();
            graph.close(&recent, &mut kept);
        }
        Policy::MaxSize(budget) => {
            let mut total: u64 = (0..entries.len())
                .filter(|&i| kept[i])
                .map(|i| nar_size_of(&entries[i]))
                .sum();
            let mut order: Vec<usize> = (0..entries.len()).filter(|&i| !kept[i]).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(last_used(&entries[i])));
            for i in order {
                if kept[i] {
                    continue;
                }
                let adds = graph.missing_closure(i, &kept);
                let extra: u64 = adds.iter().map(|&j| nar_size_of(&entries[j])).sum();
                if total + extra > budget {
                    // Least recently used from here on: everything older goes.
                    break;
                }
                total += extra;
                for j in adds {
                    kept[j] = true;
                }
            }
        }
    }
    Plan { kept, young, graph }
}

/// The reference graph between the narinfos present, by index.
pub(super) struct Graph {
    index: HashMap<HashPart, usize>,
    refs: Vec<Vec<usize>>,
}

impl Graph {
    pub fn new(entries: &[Entry]) -> Graph {
        let index: HashMap<HashPart, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.hash, i))
            .collect();
        let refs = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.info.as_ref().map_or_else(Vec::new, |info| {
                    info.references
                        .iter()
                        .filter_map(|r| index.get(&HashPart::of(r)).copied())
                        .filter(|&j| j != i)
                        .collect()
                })
            })
            .collect();
        Graph { index, refs }
    }

    /// The entries of those hash parts that are present.
    pub fn indices(&self, hashes: impl Iterator<Item = HashPart>) -> impl Iterator<Item = usize> {
        hashes.filter_map(|h| self.index.get(&h).copied())
    }

    /// Marks `roots` and everything they reference as kept.
    pub fn close(&self, roots: &[usize], kept: &mut [bool]) {
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(i) = stack.pop() {
            if !kept[i] {
                kept[i] = true;
                stack.extend(self.refs[i].iter().copied().filter(|&j| !kept[j]));
            }
        }
    }

    /// What keeping `root` would add to `kept`.
    fn missing_closure(&self, root: usize, kept: &[bool]) -> Vec<usize> {
        let mut seen = HashSet::new();
        let mut stack = vec![root];
        let mut out = Vec::new();
        while let Some(i) = stack.pop() {
            if kept[i] || !seen.insert(i) {
                continue;
            }
            out.push(i);
            stack.extend(self.refs[i].iter().copied());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::nix::{Compression, PathInfo, Sha256, StorePath};

    const DAY: u64 = 86_400;
    /// "Now" in these tests: day 100.
    const NOW: u64 = 100 * DAY;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn path(name: &str) -> StorePath {
        let hash = Sha256::digest(name.as_bytes()).to_nix_base32();
        StorePath::from_absolute(&format!("/nix/store/{}-{name}", &hash[..32])).unwrap()
    }

    /// A narinfo for `name` referencing `refs`, last written on day `day`, naming its NAR
    /// `nar/<name>.nar`.
    fn entry(name: &str, refs: &[&str], day: u64) -> Entry {
        let store_path = path(name);
        let info = NarInfo {
            info: PathInfo {
                path: store_path.clone(),
                nar_hash: Sha256::digest(name.as_bytes()),
                nar_size: 1,
                references: refs.iter().map(|r| path(r)).collect(),
                deriver: None,
                signatures: Vec::new(),
                ca: None,
            },
            url: format!("nar/{name}.nar"),
            compression: Compression::None,
            file_hash: None,
            file_size: None,
        };
        Entry {
            key: crate::nix::layout::narinfo_key(&store_path),
            hash: HashPart::of(&store_path),
            modified: Some(at(day * DAY)),
            size: 100,
            text: Bytes::from(info.to_string()),
            info: Some(info),
        }
    }

    fn opts(policy: Policy) -> GcOptions {
        GcOptions {
            policy,
            keep: Vec::new(),
            grace: Duration::from_secs(DAY),
            now: at(NOW),
            dry_run: false,
            jobs: 1,
        }
    }

    fn sizes(entries: &[Entry], each: u64) -> HashMap<String, u64> {
        entries
            .iter()
            .map(|e| (e.nar_url().unwrap().to_owned(), each))
            .collect()
    }

    fn kept_names(entries: &[Entry], plan: &Plan) -> Vec<String> {
        let mut names: Vec<String> = (0..entries.len())
            .filter(|&i| plan.kept[i])
            .map(|i| entries[i].info.as_ref().unwrap().path.name().to_owned())
            .collect();
        names.sort();
        names
    }

    fn used(pairs: &[(&str, u64)]) -> Usage {
        let mut usage = Usage::new();
        for (name, day) in pairs {
            usage.note(HashPart::of(&path(name)), day * DAY);
        }
        usage
    }

    #[test]
    fn a_path_used_recently_keeps_its_closure_and_the_rest_goes() {
        let entries = vec![
            entry("app", &["lib"], 10),
            entry("lib", &["libc"], 10),
            entry("libc", &[], 10),
            entry("old", &["libc"], 10),
        ];
        let usage = used(&[("app", 95), ("old", 50)]);
        let policy = Policy::OlderThan(Duration::from_secs(30 * DAY));
        let plan = plan(&entries, &usage, &sizes(&entries, 1), &opts(policy));
        assert_eq!(kept_names(&entries, &plan), ["app", "lib", "libc"]);
        assert_eq!(plan.young, 0);
    }

    #[test]
    fn young_unreadable_and_named_paths_stay_whatever_the_policy() {
        let mut unreadable = entry("garbled", &[], 10);
        unreadable.info = None;
        let entries = vec![
            entry("fresh", &["dep"], 100), // written within the grace period
            entry("dep", &[], 10),
            unreadable,
            entry("pinned", &[], 10),
            entry("unused", &[], 10),
        ];
        let mut opts = opts(Policy::OlderThan(Duration::from_secs(DAY)));
        opts.keep = vec![path("pinned")];
        let plan = plan(&entries, &Usage::new(), &sizes(&entries, 1), &opts);
        assert_eq!(kept_names(&entries[..2], &plan), ["dep", "fresh"]);
        assert!(plan.kept[2], "an unreadable narinfo stays");
        assert!(plan.kept[3], "--keep");
        assert!(!plan.kept[4]);
        assert_eq!(plan.young, 1);
    }

    #[test]
    fn a_size_budget_keeps_the_newest_closures_that_fit_and_nothing_older() {
        // Each NAR is 10 bytes; the budget holds three of them.
        let entries = vec![
            entry("newest", &["shared"], 10),
            entry("shared", &[], 10),
            entry("middle", &["big-dep"], 10),
            entry("big-dep", &[], 10),
            entry("oldest", &[], 10),
        ];
        let usage = used(&[("newest", 90), ("middle", 80), ("oldest", 70)]);
        let plan = plan(
            &entries,
            &usage,
            &sizes(&entries, 10),
            &opts(Policy::MaxSize(30)),
        );
        // newest+shared (20) fit; middle+big-dep (40) would not, and what is older goes too,
        // though "oldest" alone would fit.
        assert_eq!(kept_names(&entries, &plan), ["newest", "shared"]);
    }

    #[test]
    fn a_job_that_started_after_the_listing_keeps_what_it_used() {
        let entries = vec![entry("app", &["lib"], 10), entry("lib", &[], 10)];
        let policy = Policy::OlderThan(Duration::from_secs(DAY));
        let mut plan = plan(&entries, &Usage::new(), &sizes(&entries, 1), &opts(policy));
        assert_eq!(plan.doomed(), [0, 1]);
        plan.keep_used(&used(&[("app", 100)]));
        assert!(plan.doomed().is_empty(), "app and its reference stay");
    }

    /// A log stays with a path its derivation built that stays; one of no such path (a failed
    /// build, a deleted path) goes once it is as old as an unused path may be, and under a
    /// size budget once the grace period is over.
    #[test]
    fn a_build_log_goes_with_its_path_or_when_old() {
        let log = |drv: &str| crate::nix::layout::log_key(&path(drv));
        let kept_drv = HashPart::of(&path("app.drv"));
        let derivers: HashSet<HashPart> = [kept_drv].into();
        let logs = [
            (log("app.drv"), Some(at(10 * DAY))),
            (log("failed-old.drv"), Some(at(NOW - 31 * DAY))),
            (log("failed-recent.drv"), Some(at(NOW - 5 * DAY))),
            (log("failed-today.drv"), Some(at(NOW - 3600))),
            (log("unknown-age.drv"), None),
            ("log/not-a-derivation".to_owned(), Some(at(0))),
        ];
        let listed = || logs.iter().map(|(k, t)| (k.as_str(), *t));
        let month = opts(Policy::OlderThan(Duration::from_secs(30 * DAY)));
        assert_eq!(
            doomed_logs(listed(), &derivers, &month),
            [log("failed-old.drv"), "log/not-a-derivation".to_owned()]
        );
        let budget = opts(Policy::MaxSize(1 << 30));
        assert_eq!(
            doomed_logs(listed(), &derivers, &budget),
            [
                log("failed-old.drv"),
                log("failed-recent.drv"),
                "log/not-a-derivation".to_owned()
            ]
        );
    }

    /// A realisation goes with the narinfo of the path it names, once past the grace period;
    /// one that could not be read stays.
    #[test]
    fn a_realisation_goes_with_its_path() {
        let live: HashSet<HashPart> = [HashPart::of(&path("kept"))].into();
        let realisation = |key: &str, day: u64, names: Option<&str>| {
            (
                key.to_owned(),
                Some(at(day * DAY)),
                names.map(|n| HashPart::of(&path(n))),
            )
        };
        let listed = [
            realisation("realisations/kept", 10, Some("kept")),
            realisation("realisations/gone", 10, Some("gone")),
            realisation("realisations/gone-today", NOW / DAY, Some("gone")),
            realisation("realisations/unreadable", 10, None),
        ];
        let month = opts(Policy::OlderThan(Duration::from_secs(30 * DAY)));
        assert_eq!(
            doomed_with_their_paths(listed.iter(), &live, &month),
            ["realisations/gone"]
        );
    }
}
