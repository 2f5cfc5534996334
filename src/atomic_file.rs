//! Whole files written under a temporary name in their folder and renamed into place, so a
//! reader never sees half of one: the state file, the server's address, the hook script,
//! nix.conf. And files that must never replace another: a secret key.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `path` through `fill`. The file is created 0600 (a hook script holds a token) and
/// gets `mode` before it becomes visible, if one is given. The folder is created if missing.
pub fn write_with(
    path: &Path,
    mode: Option<u32>,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    fill(tmp.as_file_mut())?;
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes `bytes` to `path` as [`write_with`] does.
pub fn write(path: &Path, mode: Option<u32>, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, mode, |out| out.write_all(bytes))
}

/// Creates `path` with `mode` from the start, so a secret is never readable by others even for
/// an instant, and refuses to replace an existing file (losing a key breaks every cache that
/// trusts it). The bytes are synced before it returns.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
