//! What the server counts while it runs, and the JSON snapshot `push` reads at job end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::push::human_bytes;

/// Paths remembered one by one for the hit rate; beyond this, lookups are counted as they come
/// (so memory stays bounded on a huge build).
const DISTINCT_PATHS: usize = 200_000;

/// Live counters, shared by every connection.
#[derive(Debug, Default)]
pub struct Stats {
    /// Per hash part: whether any lookup of it hit. Nix often asks twice for one path (a HEAD,
    /// then a GET), and the hit rate is about paths, not requests.
    looked_up: Mutex<HashMap<String, bool>>,
    overflow_hits: AtomicU64,
    overflow_misses: AtomicU64,
    pub(crate) narinfo_requests: AtomicU64,
    pub(crate) nar_requests: AtomicU64,
    pub(crate) nar_bytes: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One narinfo lookup of the path with hash part `hash`.
    pub(crate) fn lookup(&self, hash: &str, hit: bool) {
        Self::add(&self.narinfo_requests, 1);
        let mut seen = self.looked_up.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(was) = seen.get_mut(hash) {
            *was |= hit;
        } else if seen.len() < DISTINCT_PATHS {
            seen.insert(hash.to_owned(), hit);
        } else if hit {
            Self::add(&self.overflow_hits, 1);
        } else {
            Self::add(&self.overflow_misses, 1);
        }
    }

    pub fn snapshot(&self, upload: UploadSnapshot) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (hits, misses) = {
            let seen = self.looked_up.lock().unwrap_or_else(|e| e.into_inner());
            let hits = seen.values().filter(|hit| **hit).count() as u64;
            (hits, seen.len() as u64 - hits)
        };
        StatsSnapshot {
            narinfo_hits: hits + get(&self.overflow_hits),
            narinfo_misses: misses + get(&self.overflow_misses),
            narinfo_requests: get(&self.narinfo_requests),
            nar_requests: get(&self.nar_requests),
            nar_bytes: get(&self.nar_bytes),
            errors: get(&self.errors),
            upload,
        }
    }
}

/// The counters at one moment, as `GET /_nixbucket/stats` returns them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Paths Nix looked up (GET or HEAD of their narinfo) and found in the cache.
    pub narinfo_hits: u64,
    /// Paths Nix looked up and did not find: it builds them (or finds them elsewhere).
    pub narinfo_misses: u64,
    /// narinfo requests, repeats included.
    #[serde(default)]
    pub narinfo_requests: u64,
    pub nar_requests: u64,
    /// NAR (file) bytes sent to Nix.
    pub nar_bytes: u64,
    /// Requests answered with a 500.
    pub errors: u64,
    #[serde(default)]
    pub upload: UploadSnapshot,
}

/// What the post-build hook handed over and what became of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSnapshot {
    /// Whether the server uploads at all (it needs a signing key).
    pub enabled: bool,
    /// Store paths the hook handed over.
    pub received: u64,
    /// Hand-overs not yet processed; `push` waits until this is 0.
    pub pending: u64,
    /// Paths uploaded (closures included).
    pub pushed: u64,
    /// NAR bytes of those paths.
    pub pushed_nar_bytes: u64,
    /// Paths that could not be uploaded; the job-end push tries them again.
    pub failed: u64,
    /// Hand-overs refused because the queue was full; the job-end push picks them up.
    pub refused: u64,
}

impl StatsSnapshot {
    pub fn narinfo_lookups(&self) -> u64 {
        self.narinfo_hits + self.narinfo_misses
    }

    /// One line for the end of a CI log: the hit rate of this job.
    pub fn summary(&self) -> String {
        let lookups = self.narinfo_lookups();
        let mut line = if lookups == 0 {
            "cache: Nix asked for no paths".to_owned()
        } else {
            format!(
                "cache: {} of {} paths Nix asked for were in the cache ({:.0}% hit rate), {} of NARs served",
                self.narinfo_hits,
                lookups,
                self.narinfo_hits as f64 * 100.0 / lookups as f64,
                human_bytes(self.nar_bytes),
            )
        };
        if self.upload.received > 0 || self.upload.pushed > 0 {
            line.push_str(&format!(
                "; {} paths ({} NAR) uploaded during the build",
                self.upload.pushed,
                human_bytes(self.upload.pushed_nar_bytes)
            ));
        }
        if self.upload.failed > 0 {
            line.push_str(&format!(", {} failed then", self.upload.failed));
        }
        if self.errors > 0 {
            line.push_str(&format!(
                "; {} requests failed (see the serve log)",
                self.errors
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_gives_the_hit_rate_and_what_the_hook_uploaded() {
        let s = StatsSnapshot {
            narinfo_hits: 3,
            narinfo_misses: 1,
            nar_bytes: 2048,
            upload: UploadSnapshot {
                received: 2,
                pushed: 5,
                pushed_nar_bytes: 4096,
                ..Default::default()
            },
            ..Default::default()
        };
        let line = s.summary();
        assert!(line.contains("3 of 4 paths"), "{line}");
        assert!(line.contains("(75% hit rate)"), "{line}");
        assert!(line.contains("5 paths"), "{line}");
        assert!(!line.contains("failed"), "{line}");
        assert_eq!(
            StatsSnapshot::default().summary(),
            "cache: Nix asked for no paths"
        );
    }

    #[test]
    fn a_path_asked_for_twice_counts_once_and_a_later_hit_wins() {
        let stats = Stats::default();
        stats.lookup("a", false);
        stats.lookup("a", true);
        stats.lookup("a", false);
        stats.lookup("b", false);
        let s = stats.snapshot(UploadSnapshot::default());
        assert_eq!(
            (s.narinfo_hits, s.narinfo_misses, s.narinfo_requests),
            (1, 1, 4)
        );
    }

    #[test]
    fn an_older_server_without_upload_counters_still_parses() {
        let s: StatsSnapshot = serde_json::from_str(
            r#"{"narinfo_hits":1,"narinfo_misses":2,"nar_requests":1,"nar_bytes":9,"errors":0}"#,
        )
        .unwrap();
        assert_eq!(s.narinfo_lookups(), 3);
        assert_eq!(s.upload, UploadSnapshot::default());
    }
}
