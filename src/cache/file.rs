//! A cache in a local directory (`file:///dir`), laid out exactly as Nix's `file://` store
//! reads it. Every write goes to a `.tmp-<random>` file in the destination's own directory and
//! is renamed (or hard-linked, for put-if-absent) into place, so a reader sees either nothing or
//! the whole object, and a crash leaves at most an unlisted temp file.

use crate::nix::layout;
use std::fs::File;
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{CacheError, ObjectInfo, TEMP_PREFIX};

/// Large writes mean few syscalls for multi-GiB NARs; 1 MiB is still small next to S3 parts.
const WRITE_BUFFER: usize = 1024 * 1024;

pub(crate) struct FileCache {
    root: PathBuf,
}

/// The folders Nix creates in a `file://` cache whenever it opens one, as a substituter too.
/// What Nix creates when it opens a `file://` cache: `build-trace-v2/` is where Nix 2.35 and
/// later keep realisations, `realisations/` where earlier ones did.
const LAYOUT_DIRS: [&str; 4] = ["nar", "log", "realisations", "build-trace-v2"];

/// Lays out a `file://` cache as Nix would: its folders and `nix-cache-info`. `setup` does this
/// before the build, so that a root nix-daemon that substitutes from the cache finds them and
/// does not create them as root, which would leave the job's own `push` unable to write.
pub fn prepare_layout(root: &Path) -> Result<(), CacheError> {
    create_layout_dirs(root)?;
    let info = root.join(layout::CACHE_INFO_KEY);
    let tmp = write_temp(&info, layout::CACHE_INFO.as_bytes())?;
    link_into_place(&tmp, &info)?;
    Ok(())
}

fn create_layout_dirs(root: &Path) -> Result<(), CacheError> {
    for dir in LAYOUT_DIRS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CacheError::io("create cache directory", &dir, e))?;
    }
    Ok(())
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(CacheError::UploadInterrupted {
            key: String::new(),
            detail: format!("filesystem task failed: {e}"),
        }),
    }
}

fn temp_path(dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut rnd = [0u8; 8];
    // Uniqueness only matters within one directory; pid and a counter cover a failing RNG.
    let n = match getrandom::fill(&mut rnd) {
        Ok(()) => u64::from_le_bytes(rnd),
        Err(_) => u64::from(std::process::id()) << 32 | COUNTER.fetch_add(1, Ordering::Relaxed),
    };
    dir.join(format!("{TEMP_PREFIX}{n:016x}"))
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Writes `body` to a fresh temp file next to `dest`, synced to disk, and returns its path.
fn write_temp(dest: &Path, body: &[u8]) -> Result<PathBuf, CacheError> {
    let dir = parent_of(dest);
    std::fs::create_dir_all(dir).map_err(|e| CacheError::io("create directory", dir, e))?;
    let tmp = temp_path(dir);
    let result = (|| {
        let mut f = File::create_new(&tmp)?;
        f.write_all(body)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(CacheError::io("write", tmp, e));
    }
    Ok(tmp)
}

fn info(key: String, meta: &std::fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key,
        size: meta.len(),
        last_modified: meta.modified().ok(),
    }
}

impl FileCache {
    pub(crate) async fn open(root: PathBuf) -> Result<FileCache, CacheError> {
        blocking(move || {
            create_layout_dirs(&root)?;
            Ok(FileCache { root })
        })
        .await
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Like a read, never through a symbolic link: a planted link would otherwise make a push
    /// count as present a NAR that every read then refuses.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, CacheError> {
        let (root, key) = (self.root.clone(), key.to_owned());
        blocking(move || Ok(Self::open_object(&root, &key)?.map(|(_, meta)| info(key, &meta))))
            .await
    }

    pub(crate) async fn touch(&self, key: &str) -> Result<bool, CacheError> {
        let path = self.path(key);
        let key = key.to_owned();
        blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let file = match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(CacheError::Symlink { key });
                }
                Err(e) => return Err(CacheError::io("open", path, e)),
            };
            let now = std::fs::FileTimes::new().set_modified(std::time::SystemTime::now());
            file.set_times(now)
                .map_err(|e| CacheError::io("set the time of", &path, e))?;
            Ok(true)
        })
        .await
    }

    /// Opens an object for reading, never through a symbolic link: the cache's own folders
    /// and the object must be what they seem, so a link planted in a shared cache directory
    /// cannot make `serve` or `verify` read a file outside it. `None` if there is no such
    /// regular file.
    fn open_object(
        root: &Path,
        key: &str,
    ) -> Result<Option<(File, std::fs::Metadata)>, CacheError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = root.join(key);
        // The folders between the root and the object (`nar/`, `usage/`, `log/`); the root
        // itself is the user's choice and may be a link.
        let mut dir = root.to_path_buf();
        for part in key
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(CacheError::Symlink {
                        key: key.to_owned(),
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(CacheError::io("read metadata of", dir, e)),
            }
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(CacheError::Symlink {
                    key: key.to_owned(),
                });
            }
            Err(e) => return Err(CacheError::io("open", path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| CacheError::io("read metadata of", &path, e))?;
        Ok(meta.is_file().then_some((file, meta)))
    }

    /// The object and its version: inode, mtime and size (every put renames a new file in);
    /// over `limit` bytes, an error before it is read.
    pub(crate) async fn get_versioned(
        &self,
        key: &str,
        limit: u64,
    ) -> Result<Option<(Bytes, String)>, CacheError> {
        let (root, key) = (self.root.clone(), key.to_owned());
        blocking(move || {
            let Some((mut file, meta)) = Self::open_object(&root, &key)? else {
                return Ok(None);
            };
            if meta.len() > limit {
                return Err(CacheError::TooLarge {
                    key,
                    size: meta.len(),
                    limit,
                });
            }
            let mut body = Vec::with_capacity(meta.len() as usize);
            std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut file, limit.saturating_add(1)),
                &mut body,
            )
            .map_err(|e| CacheError::io("read", root.join(&key), e))?;
            if body.len() as u64 > limit {
                return Err(CacheError::TooLarge {
                    size: body.len() as u64,
                    key,
                    limit,
                });
            }
            Ok(Some((Bytes::from(body), file_version(&meta))))
        })
        .await
    }

    /// Replaces the object if it is still at `version`. The new file is written first, so only
    /// a check and a rename remain between reading the version and replacing it; that is not
    /// atomic against a writer on the same machine in those microseconds.
    pub(crate) async fn put_if_version(
        &self,
        key: &str,
        body: Bytes,
        version: &str,
    ) -> Result<bool, CacheError> {
        let dest = self.path(key);
        let version = version.to_owned();
        blocking(move || {
            let tmp = write_temp(&dest, &body)?;
            let current = match std::fs::metadata(&dest) {
                Ok(m) => Ok(file_version(&m) == version),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(CacheError::io("stat", &dest, e)),
            };
            if current.as_ref().is_ok_and(|same| *same) {
                if let Err(e) = std::fs::rename(&tmp, &dest) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(CacheError::io("rename into place", &dest, e));
                }
                return Ok(true);
            }
            let _ = std::fs::remove_file(&tmp);
            current
        })
        .await
    }

    pub(crate) async fn put(&self, key: &str, body: Bytes) -> Result<(), CacheError> {
        let dest = self.path(key);
        blocking(move || {
            let tmp = write_temp(&dest, &body)?;
            std::fs::rename(&tmp, &dest).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                CacheError::io("rename into place", &dest, e)
            })
        })
        .await
    }

    pub(crate) async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, CacheError> {
        let dest = self.path(key);
        blocking(move || {
            let tmp = write_temp(&dest, &body)?;
            link_into_place(&tmp, &dest)
        })
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::io("delete", path, e)),
        }
    }

    /// `one_level`: only objects in the prefix's own directory, as S3 lists with delimiter `/`.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        one_level: bool,
    ) -> Result<Vec<ObjectInfo>, CacheError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            // Only the directory named by the prefix's complete segments can hold matches.
            let start = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let mut out = Vec::new();
            let mut dirs = vec![(root.join(start), start.to_owned())];
            while let Some((dir, rel)) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == ErrorKind::NotFound && dir != root => continue,
                    Err(e) => return Err(CacheError::io("list", dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| CacheError::io("list", &dir, e))?;
                    // Names that are not UTF-8 cannot be S3-style keys; they are not ours.
                    let Ok(name) = entry.file_name().into_string() else {
                        continue;
                    };
                    if name.starts_with(TEMP_PREFIX) {
                        continue;
                    }
                    let key = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    let path = entry.path();
                    let ft = entry
                        .file_type()
                        .map_err(|e| CacheError::io("list", &path, e))?;
                    if ft.is_dir() {
                        // Descend only where a match can still be found.
                        if !one_level && key.starts_with(&prefix)
                            || prefix.starts_with(&format!("{key}/"))
                        {
                            dirs.push((path, key));
                        }
                        continue;
                    }
                    if !key.starts_with(&prefix) {
                        continue;
                    }
                    // Follows symlinks; a dangling one is skipped like any non-object.
                    match std::fs::metadata(&path) {
                        Ok(m) if m.is_file() => out.push(info(key, &m)),
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(CacheError::io("read metadata of", path, e)),
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    #[allow(clippy::type_complexity)]
    pub(crate) async fn get_stream(
        &self,
        key: &str,
    ) -> Result<Option<(u64, Pin<Box<dyn tokio::io::AsyncRead + Send>>)>, CacheError> {
        let (root, key) = (self.root.clone(), key.to_owned());
        let opened = blocking(move || Self::open_object(&root, &key)).await?;
        Ok(opened.map(|(file, meta)| {
            let file: Pin<Box<dyn tokio::io::AsyncRead + Send>> =
                Box::pin(tokio::fs::File::from_std(file));
            (meta.len(), file)
        }))
    }

    pub(crate) fn writer(&self, key: &str) -> FileWriter {
        FileWriter {
            dest: self.path(key),
            tmp: None,
            size: 0,
        }
    }
}

/// Streams into a temp file beside the destination; created on first write so that making
/// a writer never blocks the async caller.
pub(crate) struct FileWriter {
    dest: PathBuf,
    tmp: Option<(PathBuf, BufWriter<File>)>,
    size: u64,
}

impl FileWriter {
    fn ensure_tmp(&mut self) -> Result<(), CacheError> {
        if self.tmp.is_none() {
            let dir = parent_of(&self.dest);
            std::fs::create_dir_all(dir).map_err(|e| CacheError::io("create directory", dir, e))?;
            let path = temp_path(dir);
            let f = File::create_new(&path).map_err(|e| CacheError::io("create", &path, e))?;
            self.tmp = Some((path, BufWriter::with_capacity(WRITE_BUFFER, f)));
        }
        Ok(())
    }

    fn interrupted(&self) -> CacheError {
        CacheError::UploadInterrupted {
            key: self.dest.display().to_string(),
            detail: "temp file vanished".into(),
        }
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.ensure_tmp().map_err(std::io::Error::other)?;
        let Some((_, w)) = &mut self.tmp else {
            return Err(std::io::Error::other(self.interrupted()));
        };
        let n = w.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    /// Makes the file visible: its size, or `None` when `if_absent` found one there (link(2)
    /// refuses an existing name, atomically).
    pub(crate) fn commit(mut self, if_absent: bool) -> Result<Option<u64>, CacheError> {
        self.ensure_tmp()?;
        let Some((path, w)) = self.tmp.take() else {
            return Err(self.interrupted());
        };
        let result = (|| {
            let f = w
                .into_inner()
                .map_err(|e| CacheError::io("write", &path, e.into_error()))?;
            f.sync_all()
                .map_err(|e| CacheError::io("write", &path, e))?;
            if if_absent {
                return link_into_place(&path, &self.dest);
            }
            std::fs::rename(&path, &self.dest)
                .map(|()| true)
                .map_err(|e| CacheError::io("rename into place", &self.dest, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result.map(|landed| landed.then_some(self.size))
    }

    pub(crate) fn abort(self) {
        drop(self)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if let Some((path, w)) = self.tmp.take() {
            // Skip flushing what is about to be deleted.
            let (f, _) = w.into_parts();
            drop(f);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn file_version(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}-{}.{}-{}",
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len()
    )
}

/// Gives the complete file `tmp` the name `dest` unless `dest` exists (link(2) refuses an
/// existing name: an atomic create-if-absent on any POSIX file system), and removes `tmp`.
/// `true`: `dest` is now this file.
fn link_into_place(tmp: &Path, dest: &Path) -> Result<bool, CacheError> {
    let linked = std::fs::hard_link(tmp, dest);
    let _ = std::fs::remove_file(tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(CacheError::io("link into place", dest, e)),
    }
}
