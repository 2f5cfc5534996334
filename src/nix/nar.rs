//! NAR (Nix ARchive) serialisation: the byte stream whose SHA-256 is a store path's NarHash.
//!
//! [`NarWriter`] hands out one [`Node`] at a time and each node can be written once, as a file,
//! a symlink or a directory, so the grammar is kept by the types; what the types cannot see
//! (a node dropped unwritten, directory entries out of order) is checked at run time in every
//! build, because a malformed NAR in a cache is found only when a client tries to unpack it.
//!
//! All output goes through one fixed buffer: tokens are appended to it and file contents are
//! read straight into it, so the inner writer sees large writes whether the tree holds one big
//! file or ten thousand small ones, and no file is ever held in memory whole.

use std::ffi::OsString;
use std::fs::{self, File, FileType};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use thiserror::Error;

/// Size of the one buffer a [`NarWriter`] allocates.
pub const BUFFER_SIZE: usize = 256 * 1024;

/// Below this much free room the buffer is flushed before reading file contents into it, so
/// reads stay large.
const MIN_READ: usize = 64 * 1024;

const MAGIC: &[u8] = b"nix-archive-1";
const ZEROS: [u8; 8] = [0; 8];

#[derive(Debug, Error)]
pub enum NarError {
    #[error("cannot {action} {path}: {source}")]
    Read {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "{path} is a {kind}; a NAR (and so the Nix store) holds only regular files, symlinks and directories"
    )]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    #[error(
        "{path} changed while being archived: its size was {expected} bytes but {read} could be read"
    )]
    FileChanged {
        path: PathBuf,
        expected: u64,
        read: u64,
    },
    #[error("{path} was replaced by something other than a regular file while being archived")]
    Replaced { path: PathBuf },
    #[error("cannot write the NAR stream: {0}")]
    Write(#[source] io::Error),
    #[error("NAR file contents are {declared} bytes long but {written} were given")]
    ContentsLength { declared: u64, written: u64 },
    #[error(
        "NAR directory entry {name:?} is invalid: names must be non-empty, not . or .., and hold no '/' or NUL"
    )]
    InvalidEntryName { name: String },
    #[error(
        "NAR directory entry {name:?} comes after {previous:?}: entries must be unique and sorted bytewise"
    )]
    EntryOrder { previous: String, name: String },
    #[error("NAR writer misuse: {0}")]
    Misuse(&'static str),
}

/// Where the stream stands: what must be written next for the NAR to stay well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Nothing,
    Node,
    Contents,
}

/// The listing Nix writes beside a NAR with `write-nar-listing` (`<hash>.ls`): each node's
/// type; a regular file's size, executable bit and where its contents start in the NAR
/// (`narOffset`); a symlink's target; a directory's entries by name.
#[derive(Default)]
struct Listing {
    /// Open directories: the name of the entry each sits under (none for the root), and its
    /// entries so far.
    open: Vec<(Option<String>, Map<String, Value>)>,
    /// The name of the entry whose node comes next.
    name: Option<String>,
    root: Option<Value>,
}

impl Listing {
    fn node(&mut self, node: Value) {
        match self.open.last_mut() {
            Some((_, entries)) => {
                entries.insert(self.name.take().unwrap_or_default(), node);
            }
            None => self.root = Some(node),
        }
    }

    fn open_directory(&mut self) {
        let name = self.name.take();
        self.open.push((name, Map::new()));
    }

    fn close_directory(&mut self) {
        if let Some((name, entries)) = self.open.pop() {
            self.name = name;
            self.node(json!({"type": "directory", "entries": entries}));
        }
    }
}

struct Sink<W> {
    out: W,
    /// Kept only when asked for ([`NarWriter::listed`]).
    listing: Option<Listing>,
    buf: Box<[u8]>,
    len: usize,
    flushed: u64,
    due: Due,
    /// Directories opened and not yet closed.
    depth: usize,
}

impl<W: Write> Sink<W> {
    fn flush_buf(&mut self) -> Result<(), NarError> {
        self.out
            .write_all(&self.buf[..self.len])
            .map_err(NarError::Write)?;
        self.flushed += self.len as u64;
        self.len = 0;
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        if bytes.len() > self.buf.len() - self.len {
            self.flush_buf()?;
            if bytes.len() > self.buf.len() {
                self.out.write_all(bytes).map_err(NarError::Write)?;
                self.flushed += bytes.len() as u64;
                return Ok(());
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }

    fn token(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        self.put(&(bytes.len() as u64).to_le_bytes())?;
        self.put(bytes)?;
        self.put(&ZEROS[..padding(bytes.len() as u64)])
    }

    fn tokens(&mut self, tokens: &[&[u8]]) -> Result<(), NarError> {
        tokens.iter().try_for_each(|t| self.token(t))
    }

    fn require(&self, due: Due, what: &'static str) -> Result<(), NarError> {
        if self.due == due {
            Ok(())
        } else {
            Err(NarError::Misuse(what))
        }
    }
}

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Writes one NAR to `out`. Call [`root`](Self::root) once, write the node it returns, then
/// [`finish`](Self::finish): bytes still in the buffer reach `out` only then.
#[must_use = "a NAR is incomplete until finish() is called"]
pub struct NarWriter<W: Write> {
    sink: Sink<W>,
    root_taken: bool,
}

impl<W: Write> NarWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            sink: Sink {
                out,
                listing: None,
                buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
                len: 0,
                flushed: 0,
                due: Due::Nothing,
                depth: 0,
            },
            root_taken: false,
        }
    }

    /// The top node of the archive.
    pub fn root(&mut self) -> Result<Node<'_, W>, NarError> {
        if self.root_taken {
            return Err(NarError::Misuse("root() called twice"));
        }
        self.root_taken = true;
        self.sink.token(MAGIC)?;
        self.sink.due = Due::Node;
        Ok(Node {
            sink: &mut self.sink,
        })
    }

    /// A writer that also keeps the NAR's listing, for [`finish_listed`](Self::finish_listed).
    pub fn listed(out: W) -> Self {
        let mut writer = Self::new(out);
        writer.sink.listing = Some(Listing::default());
        writer
    }

    /// [`finish`](Self::finish), with the listing as Nix writes it to `<hash>.ls`:
    /// `{"version": 1, "root": …}` (null from a writer made with `new`).
    pub fn finish_listed(mut self) -> Result<(W, u64, Value), NarError> {
        let root = self.sink.listing.take().and_then(|l| l.root);
        let (out, len) = self.finish()?;
        let listing = root.map_or(Value::Null, |root| json!({"version": 1, "root": root}));
        Ok((out, len, listing))
    }

    /// Writes out what is buffered (without flushing `out` itself, so a compressor behind it
    /// is not forced to end a block) and returns `out` with the NAR's length in bytes.
    pub fn finish(mut self) -> Result<(W, u64), NarError> {
        if !self.root_taken {
            return Err(NarError::Misuse(
                "finish() called before root() was written",
            ));
        }
        self.sink.require(
            Due::Nothing,
            "finish() called while a node or file contents were due",
        )?;
        if self.sink.depth != 0 {
            return Err(NarError::Misuse(
                "finish() called with a directory left open",
            ));
        }
        self.sink.flush_buf()?;
        Ok((self.sink.out, self.sink.flushed))
    }
}

/// A place in the archive that must be filled by exactly one file, symlink or directory.
#[must_use = "a NAR node must be written"]
pub struct Node<'a, W: Write> {
    sink: &'a mut Sink<W>,
}

impl<'a, W: Write> Node<'a, W> {
    /// Starts a regular file of exactly `len` bytes; write them through the returned
    /// [`Contents`] and call its `finish`.
    pub fn regular(self, executable: bool, len: u64) -> Result<Contents<'a, W>, NarError> {
        let sink = self.sink;
        if executable {
            sink.tokens(&[b"(", b"type", b"regular", b"executable", b"", b"contents"])?;
        } else {
            sink.tokens(&[b"(", b"type", b"regular", b"contents"])?;
        }
        sink.put(&len.to_le_bytes())?;
        let offset = sink.flushed + sink.len as u64;
        if let Some(listing) = &mut sink.listing {
            let mut node = json!({"type": "regular", "size": len, "narOffset": offset});
            if executable {
                node["executable"] = Value::Bool(true);
            }
            listing.node(node);
        }
        sink.due = Due::Contents;
        Ok(Contents {
            sink,
            declared: len,
            remaining: len,
        })
    }

    /// A regular file whose contents are already in memory.
    pub fn regular_bytes(self, executable: bool, contents: &[u8]) -> Result<(), NarError> {
        let mut file = self.regular(executable, contents.len() as u64)?;
        file.sink.put(contents)?;
        file.remaining = 0;
        file.finish()
    }

    /// A symlink; `target` is stored as given, relative or absolute.
    pub fn symlink(self, target: &[u8]) -> Result<(), NarError> {
        self.sink
            .tokens(&[b"(", b"type", b"symlink", b"target", target, b")"])?;
        if let Some(listing) = &mut self.sink.listing {
            let target = String::from_utf8_lossy(target);
            listing.node(json!({"type": "symlink", "target": target}));
        }
        self.sink.due = Due::Nothing;
        Ok(())
    }

    pub fn directory(self) -> Result<Directory<'a, W>, NarError> {
        self.sink.tokens(&[b"(", b"type", b"directory"])?;
        if let Some(listing) = &mut self.sink.listing {
            listing.open_directory();
        }
        self.sink.due = Due::Nothing;
        self.sink.depth += 1;
        let depth = self.sink.depth;
        Ok(Directory {
            sink: self.sink,
            depth,
            previous: None,
            entry_open: false,
        })
    }
}

/// The contents of a regular file being written. Either fill the writer's buffer directly
/// ([`spare`](Self::spare) then [`commit`](Self::commit), which saves a copy) or use `Write`.
#[must_use = "file contents must be finished"]
pub struct Contents<'a, W: Write> {
    sink: &'a mut Sink<W>,
    declared: u64,
    remaining: u64,
}

impl<W: Write> Contents<'_, W> {
    /// Bytes still to be written.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Free room in the buffer for the next bytes of the file, never more than are still due.
    /// Empty only when nothing is due.
    pub fn spare(&mut self) -> Result<&mut [u8], NarError> {
        let room = self.sink.buf.len() - self.sink.len;
        if room < MIN_READ && (room as u64) < self.remaining {
            self.sink.flush_buf()?;
        }
        let start = self.sink.len;
        let room = self.sink.buf.len() - start;
        let take = usize::try_from(self.remaining).map_or(room, |r| r.min(room));
        Ok(&mut self.sink.buf[start..start + take])
    }

    /// Marks the first `n` bytes of the last [`spare`](Self::spare) slice as written.
    ///
    /// # Panics
    /// If `n` is larger than that slice: that is a bug in the caller, not bad data.
    pub fn commit(&mut self, n: usize) {
        assert!(
            n as u64 <= self.remaining && self.sink.len + n <= self.sink.buf.len(),
            "Contents::commit({n}) beyond the spare slice"
        );
        self.sink.len += n;
        self.remaining -= n as u64;
    }

    /// Ends the file: checks that exactly the declared length was written and pads it.
    pub fn finish(self) -> Result<(), NarError> {
        if self.remaining != 0 {
            return Err(NarError::ContentsLength {
                declared: self.declared,
                written: self.declared - self.remaining,
            });
        }
        self.sink.put(&ZEROS[..padding(self.declared)])?;
        self.sink.token(b")")?;
        self.sink.due = Due::Nothing;
        Ok(())
    }
}

impl<W: Write> Write for Contents<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more bytes than the file's declared length",
            ));
        }
        let spare = self.spare().map_err(|err| match err {
            NarError::Write(io) => io,
            other => io::Error::other(other.to_string()),
        })?;
        let n = spare.len().min(data.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An open directory. Entries must come in strictly increasing bytewise order of name.
#[must_use = "a directory must be closed"]
pub struct Directory<'a, W: Write> {
    sink: &'a mut Sink<W>,
    depth: usize,
    previous: Option<Vec<u8>>,
    entry_open: bool,
}

impl<W: Write> Directory<'_, W> {
    /// Adds an entry called `name`; write its node before the next call.
    pub fn entry(&mut self, name: &[u8]) -> Result<Node<'_, W>, NarError> {
        self.end_entry()?;
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(NarError::InvalidEntryName {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        if let Some(previous) = &self.previous {
            if previous.as_slice() >= name {
                return Err(NarError::EntryOrder {
                    previous: String::from_utf8_lossy(previous).into_owned(),
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
        self.previous = Some(name.to_vec());
        self.sink
            .tokens(&[b"entry", b"(", b"name", name, b"node"])?;
        if let Some(listing) = &mut self.sink.listing {
            listing.name = Some(String::from_utf8_lossy(name).into_owned());
        }
        self.entry_open = true;
        self.sink.due = Due::Node;
        Ok(Node { sink: self.sink })
    }

    pub fn close(mut self) -> Result<(), NarError> {
        self.end_entry()?;
        self.sink.token(b")")?;
        if let Some(listing) = &mut self.sink.listing {
            listing.close_directory();
        }
        self.sink.depth -= 1;
        Ok(())
    }

    fn end_entry(&mut self) -> Result<(), NarError> {
        self.sink
            .require(Due::Nothing, "a directory entry's node was not written")?;
        if self.sink.depth != self.depth {
            return Err(NarError::Misuse("a subdirectory was not closed"));
        }
        if self.entry_open {
            self.sink.token(b")")?;
            self.entry_open = false;
        }
        Ok(())
    }
}

/// Serialises the file, symlink or directory at `path` as a NAR into `out`, exactly as
/// `nix-store --dump` does, and returns the number of bytes written.
pub fn dump_path<W: Write>(path: &Path, out: &mut W) -> Result<u64, NarError> {
    let mut nar = NarWriter::new(out);
    dump_root(&mut nar, path)?;
    let (_, len) = nar.finish()?;
    Ok(len)
}

/// [`dump_path`], with the NAR's listing as Nix writes it beside the NAR (`<hash>.ls`).
pub fn dump_path_listed<W: Write>(path: &Path, out: &mut W) -> Result<(u64, Value), NarError> {
    let mut nar = NarWriter::listed(out);
    dump_root(&mut nar, path)?;
    let (_, len, listing) = nar.finish_listed()?;
    Ok((len, listing))
}

fn dump_root<W: Write>(nar: &mut NarWriter<W>, path: &Path) -> Result<(), NarError> {
    let file_type = fs::symlink_metadata(path)
        .map_err(read_error(path, "inspect"))?
        .file_type();
    let mut path = path.to_path_buf();
    dump_node(nar.root()?, &mut path, file_type)
}

fn read_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> NarError {
    move |source| NarError::Read {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// `path` is the node's location; it is extended and restored while descending, so one
/// `PathBuf` serves the whole walk.
fn dump_node<W: Write>(
    node: Node<'_, W>,
    path: &mut PathBuf,
    file_type: FileType,
) -> Result<(), NarError> {
    if file_type.is_file() {
        dump_file(node, path)
    } else if file_type.is_symlink() {
        let target = fs::read_link(&*path).map_err(read_error(path, "read the symlink"))?;
        node.symlink(target.as_os_str().as_bytes())
    } else if file_type.is_dir() {
        let mut entries = fs::read_dir(&*path)
            .and_then(|dir| {
                dir.map(|entry| {
                    let entry = entry?;
                    Ok((entry.file_name(), entry.file_type()?))
                })
                .collect::<io::Result<Vec<(OsString, FileType)>>>()
            })
            .map_err(read_error(path, "list the directory"))?;
        entries.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
        let mut dir = node.directory()?;
        for (name, file_type) in entries {
            path.push(&name);
            dump_node(dir.entry(name.as_bytes())?, path, file_type)?;
            path.pop();
        }
        dir.close()
    } else {
        let kind = if file_type.is_fifo() {
            "named pipe (FIFO)"
        } else if file_type.is_socket() {
            "socket"
        } else if file_type.is_block_device() {
            "block device"
        } else if file_type.is_char_device() {
            "character device"
        } else {
            "file of unknown type"
        };
        Err(NarError::UnsupportedFileType {
            path: path.clone(),
            kind,
        })
    }
}

fn dump_file<W: Write>(node: Node<'_, W>, path: &Path) -> Result<(), NarError> {
    let mut file = File::open(path).map_err(read_error(path, "open"))?;
    // Metadata of the open file, not of the name, so size and mode describe what is read.
    let meta = file.metadata().map_err(read_error(path, "inspect"))?;
    if !meta.is_file() {
        return Err(NarError::Replaced {
            path: path.to_path_buf(),
        });
    }
    // Nix keeps only the owner's execute bit.
    let executable = meta.permissions().mode() & 0o100 != 0;
    let len = meta.len();
    let mut contents = node.regular(executable, len)?;
    while contents.remaining() > 0 {
        let spare = contents.spare()?;
        let n = match file.read(spare) {
            Ok(0) => {
                return Err(NarError::FileChanged {
                    path: path.to_path_buf(),
                    expected: len,
                    read: len - contents.remaining(),
                });
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(read_error(path, "read")(err)),
        };
        contents.commit(n);
    }
    contents.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    fn write(path: &Path, contents: &[u8], mode: u32) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn small_file_bytes_are_exact() {
        // The NAR of a file holding "hi\n", spelled out token by token.
        let mut expected = Vec::new();
        for token in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hi\n",
            b")",
        ] {
            expected.extend_from_slice(&(token.len() as u64).to_le_bytes());
            expected.extend_from_slice(token);
            expected.resize(expected.len().div_ceil(8) * 8, 0);
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("hi");
        write(&path, b"hi\n", 0o644);
        let mut nar = Vec::new();
        assert_eq!(dump_path(&path, &mut nar).unwrap(), expected.len() as u64);
        assert_eq!(nar, expected);
        assert_eq!(nar.len(), 120); // NarSize of a "hi\n" file in the narinfo Nix wrote
    }

    /// Makes the tree scripts/capture-nix-fixtures.sh dumps with `nix-store --dump`.
    fn golden_tree(root: &Path) {
        fs::create_dir_all(root.join("sub/deep")).unwrap();
        write(&root.join("B"), b"upper\n", 0o755);
        write(&root.join("a"), b"lower", 0o644);
        write(&root.join("empty"), b"", 0o644);
        symlink("a", root.join("link")).unwrap();
        symlink("../nowhere", root.join("dangling")).unwrap();
        write(&root.join("sub/eight"), b"eight by", 0o644);
        write(&root.join("sub/odd"), b"thirteen byte", 0o644);
        write(
            &root.join("name with spaces \u{e9}"),
            "\u{e9}\n".as_bytes(),
            0o644,
        );
    }

    macro_rules! golden {
        ($version:literal, $file:literal) => {
            include_bytes!(concat!("../../tests/fixtures/nix/", $version, "/", $file)).as_slice()
        };
    }

    /// What `nix-store --dump` of each Nix wrote for the tree, a lone executable and a lone
    /// symlink.
    #[rstest]
    #[case::tree_2_8(golden!("2.8.0", "tree.nar"), "")]
    #[case::tree_2_26(golden!("2.26.3", "tree.nar"), "")]
    #[case::tree_2_34(golden!("2.34.8", "tree.nar"), "")]
    #[case::tree_2_35(golden!("2.35.2", "tree.nar"), "")]
    #[case::file_2_8(golden!("2.8.0", "file.nar"), "B")]
    #[case::file_2_34(golden!("2.34.8", "file.nar"), "B")]
    #[case::file_2_35(golden!("2.35.2", "file.nar"), "B")]
    #[case::symlink_2_8(golden!("2.8.0", "symlink.nar"), "link")]
    #[case::symlink_2_34(golden!("2.34.8", "symlink.nar"), "link")]
    #[case::symlink_2_35(golden!("2.35.2", "symlink.nar"), "link")]
    fn dump_path_writes_the_bytes_nix_writes(#[case] golden: &[u8], #[case] entry: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        golden_tree(&root);
        let mut nar = Vec::new();
        let size = dump_path(&root.join(entry), &mut nar).unwrap();
        assert_eq!(size, golden.len() as u64);
        assert!(nar == golden, "the NAR of {entry:?} differs from Nix's");
    }

    /// Drops `"executable": false` wherever it stands, as Nix before 2.35 writes a listing.
    fn without_executable_false(listing: &mut Value) {
        match listing {
            Value::Object(map) => {
                if map.get("executable") == Some(&Value::Bool(false)) {
                    map.remove("executable");
                }
                map.values_mut().for_each(without_executable_false);
            }
            Value::Array(items) => items.iter_mut().for_each(without_executable_false),
            _ => {}
        }
    }

    /// The listing `nix copy` wrote with write-nar-listing=true for the same tree: 2.26 and
    /// 2.34 write these bytes (sorted keys); 2.8 the same JSON in another key order; 2.35 also
    /// says `"executable": false` of every plain file, which the others leave out (and so do
    /// we: a reader takes a missing one as false).
    #[rstest]
    #[case::nix_2_8(nix_fixture!("2.8.0", "tree.ls"), false)]
    #[case::nix_2_26(nix_fixture!("2.26.3", "tree.ls"), true)]
    #[case::nix_2_34(nix_fixture!("2.34.8", "tree.ls"), true)]
    #[case::nix_2_35(nix_fixture!("2.35.2", "tree.ls"), false)]
    fn the_listing_is_the_one_nix_writes(#[case] nix: &str, #[case] same_bytes: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        golden_tree(&root);
        let (len, listing) = dump_path_listed(&root, &mut io::sink()).unwrap();
        assert_eq!(len, dump_path(&root, &mut io::sink()).unwrap());
        let mut theirs: Value = serde_json::from_str(nix).unwrap();
        without_executable_false(&mut theirs);
        assert_eq!(listing, theirs);
        let written = serde_json::to_string(&listing).unwrap();
        assert_eq!(written == nix.trim(), same_bytes);
        // A lone file and a lone symlink are roots of their own: the file's contents start
        // where Nix's NAR of it has them.
        let (_, file) = dump_path_listed(&root.join("B"), &mut io::sink()).unwrap();
        let nar = golden!("2.8.0", "file.nar");
        let at = nar.windows(6).position(|w| w == b"upper\n").unwrap();
        let mut expected = theirs["root"]["entries"]["B"].clone();
        expected["narOffset"] = Value::from(at);
        assert_eq!(file["root"], expected);
        let (_, link) = dump_path_listed(&root.join("link"), &mut io::sink()).unwrap();
        assert_eq!(link["root"], theirs["root"]["entries"]["link"]);
    }

    #[test]
    fn missing_path_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("not-there");
        let err = dump_path(&missing, &mut io::sink()).unwrap_err();
        assert!(matches!(&err, NarError::Read { path, .. } if *path == missing));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot inspect {}: ", missing.display())),
            "{text}"
        );
    }

    #[test]
    fn fifo_and_socket_are_refused_with_their_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let fifo = root.join("pipe");
        let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let err = dump_path(&root, &mut io::sink()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a named pipe (FIFO); a NAR (and so the Nix store) holds only regular files, symlinks and directories",
                fifo.display()
            )
        );
        fs::remove_file(&fifo).unwrap();

        let socket = root.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = dump_path(&root, &mut io::sink()).unwrap_err();
        assert!(
            matches!(&err, NarError::UnsupportedFileType { path, kind: "socket" } if *path == socket),
            "{err}"
        );
    }

    #[test]
    fn write_errors_are_not_blamed_on_the_tree() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        write(&path, &vec![b'x'; BUFFER_SIZE * 2], 0o644);
        let err = dump_path(&path, &mut Full).unwrap_err();
        assert_eq!(err.to_string(), "cannot write the NAR stream: disk full");
    }

    fn nar_of(
        build: impl FnOnce(Node<'_, &mut Vec<u8>>) -> Result<(), NarError>,
    ) -> Result<Vec<u8>, NarError> {
        let mut out = Vec::new();
        let mut nar = NarWriter::new(&mut out);
        build(nar.root()?)?;
        nar.finish()?;
        Ok(out)
    }

    #[test]
    fn writer_builds_what_dump_path_builds() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        write(&root.join("B"), b"upper", 0o755);
        write(&root.join("a"), b"lower", 0o644);
        symlink("a", root.join("link")).unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        let mut expected = Vec::new();
        dump_path(&root, &mut expected).unwrap();

        let built = nar_of(|node| {
            let mut dir = node.directory()?;
            dir.entry(b"B")?.regular_bytes(true, b"upper")?;
            let mut file = dir.entry(b"a")?.regular(false, 5)?;
            file.write_all(b"lo").map_err(NarError::Write)?;
            let spare = file.spare()?;
            spare[..3].copy_from_slice(b"wer");
            file.commit(3);
            file.finish()?;
            dir.entry(b"link")?.symlink(b"a")?;
            dir.entry(b"sub")?.directory()?.close()?;
            dir.close()
        })
        .unwrap();
        assert_eq!(built, expected);
    }

    #[rstest]
    #[case::unsorted(&["b", "a"], "comes after \"b\"")]
    #[case::upper_after_lower(&["a", "B"], "comes after \"a\"")]
    #[case::duplicate(&["a", "a"], "comes after \"a\"")]
    #[case::empty(&[""], "is invalid")]
    #[case::dot(&["."], "is invalid")]
    #[case::dot_dot(&[".."], "is invalid")]
    #[case::slash(&["a/b"], "is invalid")]
    #[case::nul(&["a\0"], "is invalid")]
    fn writer_rejects_bad_entries(#[case] names: &[&str], #[case] message: &str) {
        let err = nar_of(|node| {
            let mut dir = node.directory()?;
            for name in names {
                dir.entry(name.as_bytes())?.regular_bytes(false, b"")?;
            }
            dir.close()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(message), "{err:?} should contain {message:?}");
    }

    #[test]
    fn writer_catches_misuse_at_run_time() {
        let dropped_node = nar_of(|node| {
            let mut dir = node.directory()?;
            let _ = dir.entry(b"a")?;
            dir.close()
        });
        assert!(
            matches!(dropped_node, Err(NarError::Misuse(m)) if m.contains("node was not written"))
        );

        let unclosed_subdir = nar_of(|node| {
            let mut dir = node.directory()?;
            let sub = dir.entry(b"a")?.directory()?;
            std::mem::forget(sub);
            dir.close()
        });
        assert!(matches!(unclosed_subdir, Err(NarError::Misuse(m)) if m.contains("not closed")));

        let short = nar_of(|node| {
            let mut file = node.regular(false, 10)?;
            file.write_all(b"12345").map_err(NarError::Write)?;
            file.finish()
        });
        assert!(matches!(
            short,
            Err(NarError::ContentsLength {
                declared: 10,
                written: 5
            })
        ));

        let long = nar_of(|node| {
            let mut file = node.regular(false, 3)?;
            file.write_all(b"12345").map_err(NarError::Write)?;
            file.finish()
        });
        assert!(matches!(long, Err(NarError::Write(e)) if e.kind() == io::ErrorKind::InvalidInput));

        let mut out = Vec::new();
        let mut nar = NarWriter::new(&mut out);
        let _ = nar.root().unwrap();
        assert!(matches!(nar.finish(), Err(NarError::Misuse(_))));
    }
}
