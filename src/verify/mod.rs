//! Whether a cache is whole, the way a consumer relies on it: every narinfo parses, is signed
//! by a trusted key, names a NAR that exists with the stated size, and every reference has a
//! narinfo. Deep checks also download each NAR and compare its hash. Problems are collected,
//! not fatal.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::cache::Cache;
use crate::nix::hash::Hasher;
use crate::nix::layout::{self, HashPart};
use crate::nix::{Compression, NarInfo, PublicKey};

#[derive(Debug, Default)]
pub struct Report {
    pub narinfos: usize,
    /// Realisations checked: each parses, is named by its id, and names a path the cache has.
    pub realisations: usize,
    pub problems: Vec<String>,
}

/// Checks every narinfo in the cache; problems are collected, not fatal.
pub async fn verify(
    cache: &Cache,
    keys: &[PublicKey],
    deep: bool,
    jobs: usize,
) -> anyhow::Result<Report> {
    let listing = cache.list_level(&layout::store_prefixes(), jobs).await?;
    let mut nars = HashMap::new();
    let mut narinfos = Vec::new();
    for object in listing {
        if let Some(hash) = HashPart::of_narinfo_key(&object.key) {
            narinfos.push(hash);
        }
        if layout::is_nar_key(&object.key) {
            nars.insert(object.key.clone(), object.size);
        }
    }
    let hashes: HashSet<HashPart> = narinfos.iter().copied().collect();
    let (nars, hashes) = (&nars, &hashes);
    let checks = futures::stream::iter(
        narinfos
            .iter()
            .map(|&hash| async move { check_one(cache, hash, keys, nars, hashes, deep).await }),
    )
    .buffer_unordered(jobs);
    let mut problems: Vec<String> = checks.flat_map(futures::stream::iter).collect().await;
    let (realisations, more) = check_realisations(cache, hashes, keys, jobs).await?;
    problems.extend(more);
    problems.sort();
    Ok(Report {
        narinfos: narinfos.len(),
        realisations,
        problems,
    })
}

/// Every realisation: read, named by its id, signed by a trusted key (when keys are given),
/// and naming a path whose narinfo is here.
async fn check_realisations(
    cache: &Cache,
    hashes: &HashSet<HashPart>,
    keys: &[PublicKey],
    jobs: usize,
) -> anyhow::Result<(usize, Vec<String>)> {
    use crate::push::realisations;
    let mut listed = cache.list(realisations::DIR).await?;
    listed.extend(cache.list(realisations::BUILD_TRACE_DIR).await?);
    let count = listed.len();
    let checks = futures::stream::iter(listed.into_iter().map(|o| async move {
        let bytes = match cache.get(&o.key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Some(format!("{}: listed but gone", o.key)),
            Err(e) => return Some(format!("{}: could not read: {e}", o.key)),
        };
        match realisations::read(&o.key, &bytes) {
            Err(why) => Some(format!("{}: not a valid realisation: {why}", o.key)),
            Ok(r) if !hashes.contains(&HashPart::of(&r.out_path)) => Some(format!(
                "{}: names {}, which has no narinfo in the cache",
                o.key, r.out_path
            )),
            Ok(r) if !keys.is_empty() && !r.verify(keys) => {
                Some(format!("{}: no valid signature by a trusted key", o.key))
            }
            Ok(_) => None,
        }
    }))
    .buffer_unordered(jobs);
    let problems: Vec<String> = checks.filter_map(|p| async move { p }).collect().await;
    Ok((count, problems))
}

async fn check_one(
    cache: &Cache,
    hash: HashPart,
    keys: &[PublicKey],
    nars: &HashMap<String, u64>,
    hashes: &HashSet<HashPart>,
    deep: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let key = hash.narinfo_key();
    let text = match cache.get(&key).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return vec![format!("{key}: listed but gone (deleted while checking?)")],
        Err(e) => return vec![format!("{key}: could not read: {e}")],
    };
    let info = match layout::read_narinfo(&text, None) {
        Ok(info) => info,
        Err(e) => return vec![format!("{key}: not a valid narinfo: {e}")],
    };
    let path = info.path.to_absolute();
    if HashPart::of(&info.path) != hash {
        problems.push(format!(
            "{key}: describes {path}, whose narinfo would have another name"
        ));
    }
    if !keys.is_empty() && !info.verify(keys) {
        problems.push(format!("{path}: no valid signature by a trusted key"));
    }
    // The listing covers `nar/<hash>…`; a NAR stored elsewhere is looked up by itself.
    let found = match nars.get(&info.url) {
        Some(size) => Ok(Some(*size)),
        None => cache.head(&info.url).await.map(|o| o.map(|o| o.size)),
    };
    match found {
        Err(e) => problems.push(format!(
            "{path}: could not look up its NAR {}: {e}",
            info.url
        )),
        Ok(None) => problems.push(format!("{path}: its NAR {} is missing", info.url)),
        Ok(Some(size)) if info.file_size.is_some_and(|f| f != size) => problems.push(format!(
            "{path}: its NAR {} has {size} bytes, the narinfo says {}",
            info.url,
            info.file_size.unwrap_or_default()
        )),
        Ok(Some(_)) if deep => {
            // A download cut short says nothing about the cache; only a NAR read whole and
            // found wrong (or unreadable every time) is a problem.
            let mut attempt = 1;
            loop {
                match check_nar(cache, &info).await {
                    Ok(()) => break,
                    Err(NarCheck::Mismatch(e)) => {
                        problems.push(format!("{path}: {e:#}"));
                        break;
                    }
                    Err(NarCheck::Unreadable(e)) if attempt >= DEEP_ATTEMPTS => {
                        problems.push(format!("{path}: {e:#} (tried {attempt} times)"));
                        break;
                    }
                    Err(NarCheck::Unreadable(_)) => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
                    }
                }
            }
        }
        Ok(Some(_)) => {}
    }
    for reference in &info.references {
        if reference != &info.path && !hashes.contains(&HashPart::of(reference)) {
            problems.push(format!("{path}: its reference {reference} has no narinfo"));
        }
    }
    problems
}

/// How often `--deep` reads a NAR whose download failed before calling it unreadable.
const DEEP_ATTEMPTS: u64 = 3;

enum NarCheck {
    /// Read whole, and not what the narinfo says: the cache is wrong.
    Mismatch(anyhow::Error),
    /// Could not be read or decompressed: a network fault, or a damaged object.
    Unreadable(anyhow::Error),
}

/// Streams the NAR through its decompressor and a hasher; constant memory.
async fn check_nar(cache: &Cache, info: &NarInfo) -> Result<(), NarCheck> {
    let unreadable = |e: anyhow::Error| NarCheck::Unreadable(e);
    let Some((_, stream)) = cache
        .get_stream(&info.url)
        .await
        .map_err(|e| unreadable(e.into()))?
    else {
        return Err(NarCheck::Mismatch(anyhow::anyhow!(
            "its NAR {} vanished",
            info.url
        )));
    };
    let compression = info.compression.clone();
    let reader = tokio_util::io::SyncIoBridge::new(stream);
    let (hash, size) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(reader),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
            Compression::Xz => Box::new(liblzma::read::XzDecoder::new(reader)),
            other => bail!("cannot check NARs compressed with {}", other.as_str()),
        };
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .context("could not read or decompress the NAR")?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hasher.finish(), size))
    })
    .await
    .map_err(|e| unreadable(e.into()))?
    .map_err(unreadable)?;
    if hash != info.nar_hash || size != info.nar_size {
        return Err(NarCheck::Mismatch(anyhow::anyhow!(
            "its NAR {} unpacks to {hash} ({size} bytes), the narinfo says {} ({} bytes)",
            info.url,
            info.nar_hash,
            info.nar_size
        )));
    }
    Ok(())
}
