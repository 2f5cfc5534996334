//! Build logs into the cache, where `nix log --store CACHE` finds them: `log/<derivation>`,
//! uncompressed, as Nix writes them when a cache's `log-compression` is unset. Nix reads a log
//! for an output path through its narinfo's `Deriver:`, and for a derivation directly, so the
//! logs of builds that failed, whose outputs do not exist, are readable too.
//!
//! Logs are not signed: Nix has no signature for them, and trusts the cache's access control.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;

use crate::cache::{Cache, CacheError};
use crate::nix::{StorePath, derivation, layout};
use crate::store;

/// How many logs go up at once: each is one small request.
const CONCURRENT: usize = 16;
/// What a read asks of a log file at a time.
const CHUNK: usize = 64 * 1024;

/// The build logs a push uploaded, and the builds that failed.
#[derive(Debug, Default)]
pub struct LogReport {
    pub uploaded: usize,
    pub bytes: u64,
    /// Logs over the size cap, uploaded as their last part.
    pub truncated: usize,
    /// Derivations this job built without success: a log, and not every output valid.
    pub failed_builds: Vec<StorePath>,
    /// Logs that could not be read or written, and why.
    pub errors: Vec<(StorePath, String)>,
}

impl LogReport {
    /// A clause for the push's summary line.
    pub fn summary(&self) -> String {
        let mut line = format!("{} build logs", self.uploaded);
        if self.truncated > 0 {
            line.push_str(&format!(" ({} cut to their end)", self.truncated));
        }
        if !self.errors.is_empty() {
            line.push_str(&format!(", {} NOT uploaded", self.errors.len()));
        }
        line
    }
}

/// The command that prints `drv`'s log from the cache at `url`.
pub fn read_command(url: &impl std::fmt::Display, drv: &StorePath) -> String {
    format!("nix log --store '{url}' {drv}")
}

/// Nix's log directory: `$NIX_LOG_DIR`, else `/nix/var/log/nix`.
pub fn log_dir() -> PathBuf {
    std::env::var_os("NIX_LOG_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/nix/var/log/nix"), PathBuf::from)
}

/// Where Nix keeps `drv`'s build log, if it kept one: `drvs/<2 chars>/<rest of the name>`,
/// bzip2-compressed (`.bz2`, Nix's default) or not.
pub fn local_log(log_dir: &Path, drv: &StorePath) -> Option<(PathBuf, bool)> {
    let base = drv.base_name();
    let plain = log_dir.join("drvs").join(&base[..2]).join(&base[2..]);
    let compressed = plain.with_file_name(format!("{}.bz2", &base[2..]));
    [(compressed, true), (plain, false)]
        .into_iter()
        .find(|(path, _)| path.is_file())
}

/// A log's text, bzip2 undone, and whether it was cut: one over `max` bytes keeps its last
/// `max` bytes (where a build's error is), after a line that says how much was left out.
pub fn read_log(path: &Path, bzip2: bool, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    read_log_within(path, bzip2, max, BZIP2_READ_MAX)
}

/// The most of a bzip2 log that is undone: a few kilobytes of bzip2 can stand for terabytes
/// of text, which would keep push busy for hours. Past it, the log ends where reading stopped.
const BZIP2_READ_MAX: u64 = 4 << 30;

fn read_log_within(
    path: &Path,
    bzip2: bool,
    max: u64,
    bzip2_read_max: u64,
) -> std::io::Result<(Vec<u8>, bool)> {
    let file = std::fs::File::open(path)?;
    let mut reader: Box<dyn Read> = if bzip2 {
        Box::new(bzip2::read::BzDecoder::new(file).take(bzip2_read_max))
    } else {
        Box::new(file)
    };
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    // The last `max` bytes, in a ring: memory stays at the cap and a chunk, however long the
    // log, and each byte is moved once.
    let (mut kept, mut total) = (std::collections::VecDeque::new(), 0u64);
    let mut chunk = vec![0; CHUNK];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        kept.extend(&chunk[..n]);
        if kept.len() > max {
            kept.drain(..kept.len() - max);
        }
    }
    let kept = Vec::from(kept);
    let stopped = bzip2 && total >= bzip2_read_max;
    if total <= max as u64 && !stopped {
        return Ok((kept, false));
    }
    let left_out = total - kept.len() as u64;
    let mut text = if stopped {
        format!(
            "[nixbucket: this log is over {total} bytes once bzip2 is undone, so reading \
             stopped there; of what was read, the first {left_out} bytes are left out, over \
             the cap of {max}]\n"
        )
    } else {
        format!(
            "[nixbucket: this log was {total} bytes; its first {left_out} are left out, \
             over the cap of {max}]\n"
        )
    }
    .into_bytes();
    text.extend_from_slice(&kept);
    Ok((text, true))
}

/// Of `drvs`, those whose build failed: a build log, and an output the derivation fixes that
/// is not valid. Outputs in `valid` are known to be; Nix is asked about the others only, so
/// a push whose logs are all of paths it pushes asks nothing. Outputs whose path is known
/// only after the build (content-addressed) tell nothing; a derivation that cannot be read
/// is not counted.
fn failed(
    drvs: &[StorePath],
    valid: &BTreeSet<StorePath>,
) -> Result<Vec<StorePath>, store::StoreError> {
    let mut unknown = Vec::new();
    for drv in drvs {
        let Ok(text) = std::fs::read_to_string(drv.to_absolute()) else {
            continue;
        };
        if let Ok(outs) = derivation::outputs(&text) {
            let outs = outs.into_iter().filter_map(|o| o.path);
            unknown.extend(outs.filter(|p| !valid.contains(p)).map(|p| (drv, p)));
        }
    }
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let paths: Vec<StorePath> = unknown.iter().map(|(_, p)| p.clone()).collect();
    let found_valid: BTreeSet<StorePath> = store::query_valid_path_info(&paths)?
        .into_iter()
        .map(|i| i.path)
        .collect();
    let failed: BTreeSet<&StorePath> = unknown
        .iter()
        .filter(|(_, out)| !found_valid.contains(out))
        .map(|(drv, _)| *drv)
        .collect();
    Ok(failed.into_iter().cloned().collect())
}

/// The local build logs a push uploads, and which of their builds failed.
#[derive(Debug, Default)]
pub struct Found {
    /// Derivation, its log file, and whether that is bzip2-compressed.
    pub logs: Vec<(StorePath, PathBuf, bool)>,
    pub failed: Vec<StorePath>,
}

/// The logs Nix kept of `drvs`, and which of those builds failed. `valid`: paths known to be
/// valid (the closure being pushed). Blocks: it reads the derivations that have a log, and
/// asks Nix about outputs not known to be valid.
pub fn find(
    drvs: BTreeSet<StorePath>,
    valid: &BTreeSet<StorePath>,
) -> Result<Found, store::StoreError> {
    let dir = log_dir();
    let logs: Vec<(StorePath, PathBuf, bool)> = drvs
        .into_iter()
        .filter_map(|drv| {
            let (path, bzip2) = local_log(&dir, &drv)?;
            Some((drv, path, bzip2))
        })
        .collect();
    let with_logs: Vec<StorePath> = logs.iter().map(|(d, _, _)| d.clone()).collect();
    let failed = failed(&with_logs, valid)?;
    Ok(Found { logs, failed })
}

/// Uploads the logs `found`, each cut to `max` bytes. Errors are in the report: a log that
/// does not go up never fails the push.
pub async fn push(cache: &Cache, found: Found, max: u64) -> LogReport {
    let mut report = LogReport {
        failed_builds: found.failed,
        ..LogReport::default()
    };
    let uploads = futures::stream::iter(found.logs.into_iter().map(|(drv, path, bzip2)| {
        let cache = cache.clone();
        async move {
            let result = upload(&cache, &drv, path, bzip2, max).await;
            (drv, result)
        }
    }))
    .buffer_unordered(CONCURRENT)
    .collect::<Vec<_>>()
    .await;
    for (drv, result) in uploads {
        match result {
            Ok((bytes, truncated)) => {
                report.uploaded += 1;
                report.bytes += bytes;
                report.truncated += usize::from(truncated);
            }
            Err(why) => report.errors.push((drv, why)),
        }
    }
    report.errors.sort();
    report
}

async fn upload(
    cache: &Cache,
    drv: &StorePath,
    path: PathBuf,
    bzip2: bool,
    max: u64,
) -> Result<(u64, bool), String> {
    let read = tokio::task::spawn_blocking(move || {
        read_log(&path, bzip2, max).map_err(|e| format!("could not read {}: {e}", path.display()))
    });
    let (text, truncated) = read.await.map_err(|e| e.to_string())??;
    let size = text.len() as u64;
    cache
        .put(&layout::log_key(drv), Bytes::from(text), layout::LOG_TYPE)
        .await
        .map_err(|e: CacheError| e.to_string())?;
    Ok((size, truncated))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Each Nix's own answer to where it keeps a build log (scripts/capture-nix-fixtures.sh).
    #[rstest::rstest]
    #[case::nix_2_8(include_str!("../../tests/fixtures/nix/2.8.0/build-log-path.txt"))]
    #[case::nix_2_26(include_str!("../../tests/fixtures/nix/2.26.3/build-log-path.txt"))]
    #[case::nix_2_34(include_str!("../../tests/fixtures/nix/2.34.8/build-log-path.txt"))]
    fn finds_a_log_where_nix_keeps_it(#[case] captured: &str) {
        // `drvs/1q/ac8f…-nixbucket-fixture-top.drv.bz2`: the first two characters of the
        // derivation's name are the folder.
        let captured = Path::new(captured.trim());
        let folder = captured.parent().unwrap().file_name().unwrap();
        let rest = captured.file_name().unwrap().to_string_lossy();
        let base = format!(
            "{}{}",
            folder.to_string_lossy(),
            rest.trim_end_matches(".bz2")
        );
        let drv = StorePath::from_base_name(&base).unwrap();
        assert_eq!(drv.name(), "nixbucket-fixture-top.drv");
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join(captured);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            local_log(tmp.path(), &drv),
            Some((file, rest.ends_with(".bz2")))
        );
    }

    #[test]
    fn reads_bzip2_and_plain_logs_and_cuts_a_long_one_to_its_end() {
        let tmp = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let plain = tmp.path().join("plain");
        std::fs::write(&plain, &text).unwrap();
        let compressed = tmp.path().join("log.bz2");
        let mut encoder = bzip2::write::BzEncoder::new(
            std::fs::File::create(&compressed).unwrap(),
            bzip2::Compression::fast(),
        );
        encoder.write_all(&text).unwrap();
        encoder.finish().unwrap();

        for (path, bzip2) in [(&plain, false), (&compressed, true)] {
            assert_eq!(
                read_log(path, bzip2, text.len() as u64).unwrap(),
                (text.clone(), false)
            );
            let (cut, truncated) = read_log(path, bzip2, 1000).unwrap();
            assert!(truncated);
            let (note, tail) = cut.split_at(cut.iter().position(|&b| b == b'\n').unwrap() + 1);
            assert_eq!(tail, &text[text.len() - 1000..]);
            let note = String::from_utf8_lossy(note);
            assert!(
                note.contains(&format!("this log was {} bytes", text.len())),
                "{note}"
            );
        }
        let drv = StorePath::from_base_name("1qac8f80gnqdnadi3k4smi34vfwqlra4-x.drv").unwrap();
        assert!(local_log(tmp.path(), &drv).is_none());

        // A bzip2 log that undoes into more than the reading limit stops there and says so,
        // keeping the end of what was read; a plain file has no such limit.
        let limit = 100_000;
        let (cut, truncated) = read_log_within(&compressed, true, 1000, limit).unwrap();
        assert!(truncated);
        let (note, tail) = cut.split_at(cut.iter().position(|&b| b == b'\n').unwrap() + 1);
        assert_eq!(tail, &text[limit as usize - 1000..limit as usize]);
        let note = String::from_utf8_lossy(note);
        assert!(
            note.contains(&format!("over {limit} bytes once bzip2 is undone")),
            "{note}"
        );
        let (whole, truncated) = read_log_within(&plain, false, text.len() as u64, limit).unwrap();
        assert_eq!((whole, truncated), (text, false));
    }
}
