//! Through Nix itself: the misses Nix remembers that now hide hits, and a sample path fetched
//! by the Nix that will build.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::keys::Sampled;
use super::local::{Facts, Via, daemon_credentials_fix};
use super::{Check, Options};
use crate::cache::CacheUrl;
use crate::cache::s3::probe::Probe;
use crate::store;

/// The largest path the fetch check downloads.
const FETCH_MAX: u64 = 64 << 20;

/// How long the fetch may take before it counts as hung: 64 MiB at a slow 1 MiB/s, and more.
const FETCH_DEADLINE: Duration = Duration::from_secs(120);

/// The bytes of a child's pipe, read to its end on a thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// `nix-store --realise PATH`, its output; `None` if it had not ended by the deadline (it is
/// then stopped).
fn realise(path: &str) -> std::io::Result<Option<std::process::Output>> {
    let mut child = store::child_command("nix-store")
        .args(["--realise", path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drained on threads of their own, so that a chatty Nix never blocks on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > FETCH_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    Ok(status.map(|status| std::process::Output {
        status,
        stdout,
        stderr,
    }))
}

/// Misses of the cache's substituter in Nix's narinfo cache (SQLite, read with the `sqlite3`
/// program where it is installed) whose narinfo the cache holds now: Nix does not ask again
/// until `narinfo-cache-negative-ttl` (an hour by default) has passed.
pub async fn stale_misses(facts: &Facts, opts: &Options, probe: Option<&Probe>) -> Check {
    const NAME: &str = "stale-misses";
    let (Some(via), Some(env), Some(url)) = (&facts.via, &facts.env, &opts.url) else {
        return Check::skipped(NAME, "not checked: Nix does not read the cache");
    };
    if env.daemon && !env.is_root {
        return Check::skipped(
            NAME,
            "not checked: the nix-daemon keeps its own narinfo cache (root's ~/.cache/nix), \
             which only root can read",
        );
    }
    let Some(db) = narinfo_cache() else {
        return Check::ok(
            NAME,
            "Nix has no narinfo cache here yet: it remembers no miss",
        );
    };
    let rows = match misses(&db) {
        Ok(rows) => rows,
        Err(why) => return Check::skipped(NAME, format!("not checked: {why}")),
    };
    let base = |u: &str| {
        let base = u.split_once('?').map_or(u, |(b, _)| b);
        base.trim_end_matches('/').to_owned()
    };
    let ours = base(via.url());
    let hashes: Vec<&str> = rows
        .iter()
        .filter(|(u, _)| base(u) == ours)
        .map(|(_, h)| h.as_str())
        .take(200)
        .collect();
    if hashes.is_empty() {
        return Check::ok(NAME, format!("Nix remembers no miss of {ours}"));
    }
    let mut hidden = 0;
    for hash in &hashes {
        let key = format!("{hash}.narinfo");
        let present = match (url, probe) {
            (CacheUrl::File { root, .. }, _) => root.join(&key).is_file(),
            (_, Some(probe)) => probe.get(&key).await.0.is_success(),
            _ => false,
        };
        hidden += usize::from(present);
    }
    let clear = format!(
        "sqlite3 {} \"DELETE FROM NARs WHERE present = 0\"",
        db.display()
    );
    match hidden {
        0 => Check::ok(
            NAME,
            format!(
                "none of the {} misses Nix remembers of {ours} is in the cache now",
                hashes.len()
            ),
        ),
        n => Check::warn(
            NAME,
            format!(
                "{n} of the {} misses Nix remembers of {ours} are in the cache now: Nix will \
                 not ask for them again until narinfo-cache-negative-ttl (1 hour by default) \
                 has passed",
                hashes.len()
            ),
            format!(
                "make Nix forget its misses: `{clear}` (or build with `--option \
                 narinfo-cache-negative-ttl 0`)"
            ),
        ),
    }
}

/// This user's narinfo cache: the newest `binary-cache-v*.sqlite` under `$XDG_CACHE_HOME/nix`
/// (else ~/.cache/nix).
fn narinfo_cache() -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("nix");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name
                .strip_prefix("binary-cache-v")?
                .strip_suffix(".sqlite")?
                .parse()
                .ok()?;
            Some((version, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, path)| path)
}

/// (substituter URL, hash part) of each miss in the narinfo cache.
fn misses(db: &Path) -> Result<Vec<(String, String)>, String> {
    let out = store::child_command("sqlite3")
        .args(["-readonly", "-separator", " "])
        .arg(db)
        .arg(
            "SELECT c.url, n.hashPart FROM NARs n JOIN BinaryCaches c ON n.cache = c.id \
             WHERE n.present = 0 LIMIT 5000",
        )
        .output()
        .map_err(|e| {
            format!("the sqlite3 program, which reads Nix's narinfo cache, could not run ({e})")
        })?;
    if !out.status.success() {
        return Err(format!(
            "sqlite3 could not read {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (url, hash) = l.rsplit_once(' ')?;
            Some((url.to_owned(), hash.to_owned()))
        })
        .collect())
}

/// The smallest sampled path the store lacks, fetched with `nix-store --realise` by the Nix
/// that builds (through the daemon where there is one), then deleted again.
pub fn end_to_end(facts: &Facts, opts: &Options, sample: &[Sampled]) -> Check {
    const NAME: &str = "fetch";
    if opts.no_fetch {
        return Check::skipped(NAME, "not tried (--no-fetch)");
    }
    let (Some(via), Some(env), Some(_)) = (&facts.via, &facts.env, &opts.url) else {
        return Check::skipped(NAME, "not tried: Nix does not read the cache");
    };
    let candidate = sample
        .iter()
        .filter_map(|s| s.narinfo.as_ref().ok())
        .filter(|n| n.nar_size <= FETCH_MAX)
        .filter(|n| std::fs::symlink_metadata(n.path.to_string()).is_err())
        .min_by_key(|n| n.nar_size);
    let Some(narinfo) = candidate else {
        return Check::skipped(
            NAME,
            "not tried: every sampled path is in the store already (or larger than 64 MiB)",
        );
    };
    let path = narinfo.path.to_string();
    let out = match realise(&path) {
        Ok(Some(out)) => out,
        Ok(None) => {
            return Check::fail(
                NAME,
                format!(
                    "Nix did not fetch {path} within {} s: a substituter that does not answer \
                     holds every build up",
                    FETCH_DEADLINE.as_secs()
                ),
                "see the checks above (the server, the region, the network)",
            );
        }
        Err(e) => return Check::skipped(NAME, format!("nix-store could not run: {e}")),
    };
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let who = match (via, env.daemon) {
        (Via::Serve { port, .. }, _) => {
            format!("the nix-daemon and a nixbucket serve on port {port}")
        }
        (_, true) => "the nix-daemon".to_owned(),
        (_, false) => "this user's Nix".to_owned(),
    };
    if out.status.success() {
        let from = log
            .lines()
            .find_map(|l| {
                l.split_once(" from '")
                    .map(|(_, f)| f.trim_end_matches(['\'', '.']))
            })
            .unwrap_or(via.url())
            .to_owned();
        // Leave the store as it was; a path something else now uses stays.
        let _ = store::child_command("nix-store")
            .args(["--delete", &path])
            .output();
        return Check::ok(
            NAME,
            format!(
                "{who} fetched {path} ({} bytes) from {from}",
                narinfo.nar_size
            ),
        );
    }
    let said = log
        .lines()
        .filter(|l| l.contains("error") || l.contains("warning"))
        .collect::<Vec<_>>()
        .join(" / ");
    let said = match said.is_empty() {
        true => log.trim().to_owned(),
        false => said,
    };
    let setup = opts.setup_command();
    let fix = if log.contains("untrusted substituter") {
        format!(
            "as root, add `trusted-users = {}` to {} and restart the nix-daemon",
            env.user,
            store::system_conf_path().display()
        )
    } else if log.contains("don't know how to open Nix store") {
        format!(
            "this Nix cannot read that store: run `{setup}`, which points Nix at a \
             nixbucket serve on 127.0.0.1 that it reads over HTTP"
        )
    } else if log.contains("signature") {
        "trust the cache's public key in nix.conf (see keys)".to_owned()
    } else {
        match via {
            Via::Bucket(_) if env.daemon => daemon_credentials_fix(&setup),
            Via::Serve { .. } => format!("run `{setup}` again"),
            _ => "see the checks above".to_owned(),
        }
    };
    Check::fail(
        NAME,
        format!("{who} could not fetch {path} from the cache: {said}"),
        fix,
    )
}
