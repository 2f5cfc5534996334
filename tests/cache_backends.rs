//! The cache storage layer against real backends: a temp directory and two real S3 servers on
//! 127.0.0.1, s3s-fs and moto (AWS's own answers). Every behaviour is checked on each, through
//! the same API.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::moto::MotoServer;
use common::s3::S3Server;
use common::store::{S3Kind, S3Store};
use nixbucket::cache::{Cache, CacheError, CacheUrl, OpenOptions};
use rstest::rstest;

const MIB: usize = 1024 * 1024;
/// The smallest part S3 allows; the tests use it to keep multipart objects small.
const PART: usize = 5 * MIB;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    /// s3s-fs
    S3,
    Moto,
}

/// A cache under test plus what keeps it alive, and a way to see leftovers of aborted writes.
struct Env {
    cache: Cache,
    dir: Option<tempfile::TempDir>,
    server: Option<Box<dyn S3Store>>,
}

fn s3_options(server: &dyn S3Store) -> OpenOptions {
    OpenOptions {
        part_size: PART,
        list_page_size: 2,
        ..OpenOptions::default()
    }
    .static_credentials(server.access_key(), server.secret_key())
}

async fn env(kind: Kind) -> Env {
    match kind {
        Kind::File => {
            let dir = tempfile::tempdir().unwrap();
            let url: CacheUrl = format!("file://{}/cache", dir.path().display())
                .parse()
                .unwrap();
            let cache = Cache::open(&url).await.unwrap();
            Env {
                cache,
                dir: Some(dir),
                server: None,
            }
        }
        Kind::S3 | Kind::Moto => {
            let server = if kind == Kind::S3 {
                S3Kind::S3sFs.start()
            } else {
                S3Kind::Moto.start()
            };
            let url: CacheUrl = server.cache_url().parse().unwrap();
            let cache = Cache::open_with(&url, s3_options(server.as_ref()))
                .await
                .unwrap_or_else(|e| panic!("open {url}: {e}\n{}", server.log()));
            Env {
                cache,
                dir: None,
                server: Some(server),
            }
        }
    }
}

impl Env {
    /// Traces of unfinished writes: temp files in the directory, or open multipart uploads.
    fn leftovers(&self) -> Vec<String> {
        if let Some(server) = &self.server {
            return server.pending_uploads();
        }
        let mut found = Vec::new();
        let mut dirs = vec![self.dir.as_ref().unwrap().path().to_owned()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    found.push(e.path().display().to_string());
                }
            }
        }
        found
    }

    /// Background aborts (on drop) finish shortly after; wait for them, with a limit.
    async fn wait_no_leftovers(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.leftovers().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            self.leftovers(),
            Vec::<String>::new(),
            "leftovers of an aborted write"
        );
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let list = self.cache.list(prefix).await.unwrap();
        list.into_iter().map(|o| o.key).collect()
    }
}

/// Deterministic bytes that differ at every offset, so a lost or reordered part shows.
fn pattern(len: usize) -> Vec<u8> {
    common::pseudo_random(len, 0x9e37_79b9_7f4a_7c15)
}

/// Streams `data` through a writer on a blocking thread, in odd-sized writes, and commits.
/// The error is the text a user would see, from `write` or from `commit`.
async fn write_object(cache: &Cache, key: &str, data: Vec<u8>) -> Result<u64, String> {
    let mut w = cache.writer(key, "application/x-nix-nar");
    tokio::task::spawn_blocking(move || {
        for chunk in data.chunks(1_000_003) {
            w.write_all(chunk).map_err(|e| e.to_string())?;
        }
        w.commit().map_err(|e: CacheError| e.to_string())
    })
    .await
    .unwrap()
}

#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_head_list_delete(#[case] kind: Kind) {
    let env = env(kind).await;
    let c = &env.cache;
    assert_eq!(c.get("abc.narinfo").await.unwrap(), None);
    assert_eq!(c.head("abc.narinfo").await.unwrap(), None);

    c.put(
        "abc.narinfo",
        Bytes::from_static(b"StorePath: x\n"),
        "text/x-nix-narinfo",
    )
    .await
    .unwrap();
    c.put(
        "nar/n1.nar.zst",
        Bytes::from_static(b"nar one"),
        "application/x-nix-nar",
    )
    .await
    .unwrap();
    c.put(
        "nar/n2.nar.zst",
        Bytes::from_static(b"nar two!"),
        "application/x-nix-nar",
    )
    .await
    .unwrap();

    assert_eq!(
        c.get("abc.narinfo").await.unwrap().as_deref(),
        Some(&b"StorePath: x\n"[..])
    );
    let head = c.head("nar/n2.nar.zst").await.unwrap().unwrap();
    assert_eq!((head.key.as_str(), head.size), ("nar/n2.nar.zst", 8));
    let age = head.last_modified.unwrap().elapsed().unwrap_or_default();
    assert!(age < Duration::from_secs(600), "last_modified {age:?} ago");

    // Overwrite replaces.
    c.put(
        "abc.narinfo",
        Bytes::from_static(b"v2"),
        "text/x-nix-narinfo",
    )
    .await
    .unwrap();
    assert_eq!(
        c.get("abc.narinfo").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );

    // With page size 2 on S3 this takes several ListObjectsV2 pages.
    assert_eq!(
        env.keys("").await,
        ["abc.narinfo", "nar/n1.nar.zst", "nar/n2.nar.zst"]
    );
    assert_eq!(env.keys("nar/").await, ["nar/n1.nar.zst", "nar/n2.nar.zst"]);
    assert_eq!(env.keys("nar/n2").await, ["nar/n2.nar.zst"]);
    assert_eq!(env.keys("zzz").await, Vec::<String>::new());
    let sizes: Vec<u64> = c
        .list("nar/")
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .collect();
    assert_eq!(sizes, [7, 8]);

    let (size, mut r) = c.get_stream("nar/n1.nar.zst").await.unwrap().unwrap();
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut buf)
        .await
        .unwrap();
    assert_eq!((size, buf.as_slice()), (7, &b"nar one"[..]));
    assert!(c.get_stream("nar/none").await.unwrap().is_none());

    c.delete("nar/n1.nar.zst").await.unwrap();
    c.delete("nar/n1.nar.zst").await.unwrap(); // absent: still fine
    assert_eq!(c.head("nar/n1.nar.zst").await.unwrap(), None);
    assert_eq!(env.keys("").await, ["abc.narinfo", "nar/n2.nar.zst"]);
}

#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_object_over_its_limit_is_refused_not_read(#[case] kind: Kind) {
    let env = env(kind).await;
    let c = &env.cache;
    let limit = nixbucket::cache::SMALL_OBJECT_MAX as usize;
    c.put(
        "big.narinfo",
        pattern(limit + 1).into(),
        "text/x-nix-narinfo",
    )
    .await
    .unwrap();
    c.put("ok.narinfo", pattern(limit).into(), "text/x-nix-narinfo")
        .await
        .unwrap();
    for result in [
        c.get("big.narinfo").await.map(|_| ()),
        c.get_versioned("big.narinfo").await.map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, CacheError::TooLarge { size, .. } if size == limit as u64 + 1),
            "{err}"
        );
        assert!(
            err.to_string().contains("'big.narinfo' is 1048577 bytes"),
            "{err}"
        );
    }
    assert_eq!(c.get("ok.narinfo").await.unwrap().unwrap().len(), limit);
    let bigger = c.get_up_to("big.narinfo", 2 * limit as u64).await.unwrap();
    assert_eq!(bigger.unwrap().len(), limit + 1);
}

/// A touch is a copy onto itself on S3, which S3 refuses above 5 GiB: a larger object is
/// left as it is (and reported present) rather than failing the push that reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_touches_only_what_it_may_copy() {
    let server = S3Server::start();
    let url: CacheUrl = server.cache_url().parse().unwrap();
    let opts = OpenOptions {
        copy_max: 100,
        ..s3_options(&server)
    };
    let c = Cache::open_with(&url, opts).await.unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(30 * 86400);
    let age = |key: &str| {
        let f = std::fs::File::options()
            .write(true)
            .open(server.object_path(key))
            .unwrap();
        f.set_modified(old).unwrap();
    };
    let modified = |key: &str| {
        std::fs::metadata(server.object_path(key))
            .unwrap()
            .modified()
            .unwrap()
    };
    for (key, len) in [("nar/small.nar", 100), ("nar/large.nar", 101)] {
        c.put(key, pattern(len).into(), "application/x-nix-nar")
            .await
            .unwrap();
        age(key);
        assert!(
            c.touch(key, "application/x-nix-nar", len as u64)
                .await
                .unwrap()
        );
        assert_eq!(c.get_up_to(key, 1000).await.unwrap().unwrap(), pattern(len));
    }
    assert!(
        modified("nar/small.nar") > old,
        "the small NAR was not touched"
    );
    assert_eq!(modified("nar/large.nar"), old, "the large NAR was copied");
    assert!(
        !c.touch("nar/none.nar", "application/x-nix-nar", 1)
            .await
            .unwrap()
    );
    assert!(
        !c.touch("nar/none.nar", "application/x-nix-nar", 1000)
            .await
            .unwrap()
    );
}

/// A link planted in a shared cache directory must not make serve or verify read a file
/// outside it: objects and the cache's folders are read only as what they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cache_reads_nothing_through_a_symlink() {
    let env = env(Kind::File).await;
    let c = &env.cache;
    let dir = env.dir.as_ref().unwrap().path();
    let secret = dir.join("outside.txt");
    std::fs::write(&secret, b"not the cache's").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("cache/abc.narinfo")).unwrap();
    std::fs::create_dir(dir.join("elsewhere")).unwrap();
    std::fs::write(dir.join("elsewhere/n.nar.zst"), b"not the cache's").unwrap();
    std::fs::remove_dir(dir.join("cache/log")).unwrap();
    std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("cache/log")).unwrap();

    for key in ["abc.narinfo", "log/n.nar.zst"] {
        let err = c.get(key).await.unwrap_err();
        assert!(matches!(err, CacheError::Symlink { .. }), "{key}: {err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = c.get_stream(key).await.err().expect("refused");
        assert!(matches!(err, CacheError::Symlink { .. }), "{key}: {err}");
        // Nor does a HEAD count it as present.
        let err = c.head(key).await.unwrap_err();
        assert!(matches!(err, CacheError::Symlink { .. }), "{key}: {err}");
    }
    // A touch sets no time on the file outside.
    let before = std::fs::metadata(&secret).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let err = c
        .touch("abc.narinfo", "text/x-nix-narinfo", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Symlink { .. }), "{err}");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().modified().unwrap(),
        before
    );
    // A cache whose root is itself a link (the user's choice) reads as usual.
    std::os::unix::fs::symlink(dir.join("cache"), dir.join("linked")).unwrap();
    let url: CacheUrl = format!("file://{}/linked", dir.display()).parse().unwrap();
    let linked = Cache::open(&url).await.unwrap();
    linked
        .put("ok.narinfo", Bytes::from_static(b"x"), "text/x-nix-narinfo")
        .await
        .unwrap();
    assert_eq!(
        linked.get("ok.narinfo").await.unwrap().as_deref(),
        Some(&b"x"[..])
    );
}

#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_many_objects(#[case] kind: Kind) {
    let env = env(kind).await;
    let mut want = Vec::new();
    for i in 0..9 {
        let key = format!("k{i:02}.narinfo");
        env.cache
            .put(&key, Bytes::from(vec![b'x'; i]), "text/x-nix-narinfo")
            .await
            .unwrap();
        want.push(key);
    }
    assert_eq!(env.keys("k").await, want);
}

/// The sharded listing finds every narinfo and every `nar/` object (through pages of 2 on
/// S3), and nothing deeper down or elsewhere.
#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_level_over_store_prefixes_finds_narinfos_and_nars(#[case] kind: Kind) {
    let env = env(kind).await;
    let alphabet = "0123456789abcdfghijklmnpqrsvwxyz";
    let mut want = Vec::new();
    // Every leading character, a few hashes each, so some shards take several pages.
    for (i, c) in alphabet.chars().enumerate() {
        for n in 0..(1 + i % 4) {
            let hash: String = std::iter::once(c)
                .chain(alphabet.chars().cycle().skip(i + n).take(31))
                .collect();
            want.push(format!("{hash}.narinfo"));
            want.push(format!("nar/{hash}.nar.zst"));
        }
    }
    // A hash that starts like the NAR directory.
    let narlike = format!("nar{}", &alphabet[..29]);
    want.push(format!("{narlike}.narinfo"));
    let elsewhere = [
        "nar/0aa/deeper.nar",
        "log/0abc.drv",
        "usage/000000000001-0000000000000001.zst",
        "realisations/sha256:00.doi",
    ];
    for key in want.iter().map(String::as_str).chain(elsewhere) {
        env.cache
            .put(key, Bytes::from_static(b"x"), "application/x-nix-nar")
            .await
            .unwrap();
    }
    env.cache
        .put(
            "nix-cache-info",
            Bytes::from_static(b"StoreDir: /nix/store\n"),
            "text/plain",
        )
        .await
        .unwrap();
    want.push("nix-cache-info".to_owned());
    want.sort();
    let got: Vec<String> = env
        .cache
        .list_level(&nixbucket::nix::layout::store_prefixes(), 8)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(got, want);
    let narinfos = got
        .iter()
        .filter(|k| nixbucket::nix::layout::is_narinfo_key(k));
    assert_eq!(
        narinfos.count(),
        want.iter().filter(|k| k.ends_with(".narinfo")).count()
    );
}

/// More keys than one DeleteObjects takes (1000), some of them absent: all named ones go,
/// the others stay. Not on moto: it does not hold DeleteObjects to 1000 keys either, and takes
/// 20 s to write them (gc's DeleteObjects on moto: tests/gc.rs).
#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_many_removes_every_key_named_and_no_other(#[case] kind: Kind) {
    use futures::{StreamExt, TryStreamExt};
    let env = env(kind).await;
    let doomed: Vec<String> = (0..2100).map(|i| format!("d/{i:05}")).collect();
    let kept: Vec<String> = (0..5).map(|i| format!("d/kept-{i}")).collect();
    futures::stream::iter(doomed.iter().chain(&kept))
        .map(|k| env.cache.put(k, Bytes::from_static(b"x"), "text/plain"))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let mut named = doomed.clone();
    named.push("d/never-written".to_owned());
    let failures = env.cache.delete_many(&named, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    let left: Vec<String> = env
        .cache
        .list("d/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(left, kept);
}

/// A conditional replace succeeds on the version read, and not after another write or a
/// deletion.
#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_if_version_replaces_only_the_version_read(#[case] kind: Kind) {
    let env = env(kind).await;
    let (key, ct) = ("v.narinfo", "text/plain");
    env.cache
        .put(key, Bytes::from_static(b"one"), ct)
        .await
        .unwrap();
    let (body, v1) = env.cache.get_versioned(key).await.unwrap().unwrap();
    assert_eq!(&body[..], b"one");
    assert!(
        env.cache
            .put_if_version(key, Bytes::from_static(b"two"), ct, &v1)
            .await
            .unwrap()
    );
    assert!(
        !env.cache
            .put_if_version(key, Bytes::from_static(b"three"), ct, &v1)
            .await
            .unwrap()
    );
    let (body, v2) = env.cache.get_versioned(key).await.unwrap().unwrap();
    assert_eq!(&body[..], b"two");
    assert_ne!(v1, v2);
    env.cache.delete(key).await.unwrap();
    assert!(
        !env.cache
            .put_if_version(key, Bytes::from_static(b"four"), ct, &v2)
            .await
            .unwrap()
    );
    assert_eq!(env.cache.get(key).await.unwrap(), None);
}

#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_if_absent_writes_once(#[case] kind: Kind) {
    let env = env(kind).await;
    let c = &env.cache;
    let ct = "text/x-nix-narinfo";
    assert!(
        c.put_if_absent("p.narinfo", Bytes::from_static(b"first"), ct)
            .await
            .unwrap()
    );
    assert!(
        !c.put_if_absent("p.narinfo", Bytes::from_static(b"second"), ct)
            .await
            .unwrap()
    );
    assert_eq!(
        c.get("p.narinfo").await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    assert!(
        c.put_if_absent("nar/q.nar", Bytes::new(), ct)
            .await
            .unwrap()
    );
    assert_eq!(c.head("nar/q.nar").await.unwrap().map(|o| o.size), Some(0));
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

#[rstest]
#[case::file_empty(Kind::File, 0)]
#[case::file_one_byte(Kind::File, 1)]
#[case::file_one_part(Kind::File, PART)]
#[case::file_3_5_parts(Kind::File, PART * 7 / 2)]
#[case::s3_empty(Kind::S3, 0)]
#[case::s3_one_byte(Kind::S3, 1)]
#[case::s3_one_part(Kind::S3, PART)]
#[case::s3_3_5_parts(Kind::S3, PART * 7 / 2)]
#[case::moto_one_part(Kind::Moto, PART)]
#[case::moto_3_5_parts(Kind::Moto, PART * 7 / 2)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_commits_exact_bytes(#[case] kind: Kind, #[case] len: usize) {
    let env = env(kind).await;
    let data = pattern(len);
    let key = "nar/big.nar";
    assert_eq!(
        write_object(&env.cache, key, data.clone()).await.unwrap(),
        len as u64
    );
    let got = env
        .cache
        .get_up_to(key, u64::MAX)
        .await
        .unwrap()
        .expect("object after commit");
    assert!(got == data, "content differs (len {} vs {len})", got.len());
    assert_eq!(env.cache.head(key).await.unwrap().unwrap().size, len as u64);
    assert_eq!(env.keys("").await, [key]);
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

/// A conditional commit lands where nothing is, and where something is it leaves that
/// object as it was and nothing of its own (no temp file, no open multipart upload).
#[rstest]
#[case::file_one_byte(Kind::File, 1)]
#[case::file_2_5_parts(Kind::File, PART * 5 / 2)]
#[case::s3_one_byte(Kind::S3, 1)]
#[case::s3_2_5_parts(Kind::S3, PART * 5 / 2)]
#[case::moto_one_byte(Kind::Moto, 1)]
#[case::moto_2_5_parts(Kind::Moto, PART * 5 / 2)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_if_absent_keeps_the_object_already_there(#[case] kind: Kind, #[case] len: usize) {
    let env = env(kind).await;
    let key = "nar/same-name.nar";
    let commit_if_absent = |data: Vec<u8>| {
        let mut w = env.cache.writer(key, "application/x-nix-nar");
        tokio::task::spawn_blocking(move || {
            w.write_all(&data).unwrap();
            w.commit_if_absent().unwrap()
        })
    };
    let first = pattern(len);
    assert_eq!(
        commit_if_absent(first.clone()).await.unwrap(),
        Some(len as u64)
    );
    let other: Vec<u8> = first.iter().map(|b| b ^ 0xff).collect();
    assert_eq!(commit_if_absent(other).await.unwrap(), None);
    let got = env.cache.get_up_to(key, u64::MAX).await.unwrap().unwrap();
    assert!(got == first, "the object there was replaced");
    assert_eq!(env.keys("").await, [key]);
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_or_aborted_writer_leaves_nothing(#[case] kind: Kind) {
    let env = env(kind).await;
    // 2.5 parts: on S3 a multipart upload exists, with parts, when the writer goes away.
    for abort in [false, true] {
        let mut w = env.cache.writer("nar/gone.nar", "application/x-nix-nar");
        let data = pattern(PART * 5 / 2);
        let seen = tokio::task::spawn_blocking(move || {
            w.write_all(&data).unwrap();
            if abort {
                w.abort();
            } else {
                drop(w);
            }
        });
        seen.await.unwrap();
        if abort {
            // abort() waits for AbortMultipartUpload itself.
            assert_eq!(env.leftovers(), Vec::<String>::new(), "after abort()");
        }
        env.wait_no_leftovers().await;
        assert_eq!(env.keys("").await, Vec::<String>::new());
        assert_eq!(env.cache.head("nar/gone.nar").await.unwrap(), None);
    }
}

#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_visible_before_commit(#[case] kind: Kind) {
    let env = env(kind).await;
    let cache = env.cache.clone();
    let mut w = env.cache.writer("nar/slow.nar", "application/x-nix-nar");
    let data = pattern(PART * 3);
    let w = tokio::task::spawn_blocking(move || {
        w.write_all(&data).unwrap();
        w
    })
    .await
    .unwrap();
    assert_eq!(cache.head("nar/slow.nar").await.unwrap(), None);
    assert_eq!(env.keys("").await, Vec::<String>::new());
    let size = tokio::task::spawn_blocking(move || w.commit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(size, (PART * 3) as u64);
    assert_eq!(env.keys("").await, ["nar/slow.nar"]);
}

#[rstest]
#[case::file(Kind::File)]
#[case::s3(Kind::S3)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused(#[case] kind: Kind) {
    let env = env(kind).await;
    let err = env
        .cache
        .put("../escape", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid cache key '../escape': '.' and '..' are not allowed"
    );
    let err = write_object(&env.cache, "/abs", vec![1]).await.unwrap_err();
    assert!(err.contains("invalid cache key '/abs'"), "{err}");
}

/// A multipart object's ETag ends in `-<number of parts>`; a PutObject one has no dash.
#[rstest]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_single_part_objects_use_put_object(#[case] kind: Kind) {
    let env = env(kind).await;
    let server = env.server.as_ref().unwrap();
    write_object(&env.cache, "one", pattern(PART))
        .await
        .unwrap();
    write_object(&env.cache, "many", pattern(PART * 7 / 2))
        .await
        .unwrap();
    let etag = |key: &str| server.admin().head(server.bucket(), key).expect(key).etag;
    assert!(!etag("one").contains('-'), "{}", etag("one"));
    assert!(etag("many").ends_with("-4\""), "{}", etag("many"));
}

/// What another client reads back is what was written.
#[rstest]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_object_bytes_land_in_the_bucket(#[case] kind: Kind) {
    let env = env(kind).await;
    let server = env.server.as_ref().unwrap();
    let data = pattern(PART * 2 + 17);
    write_object(&env.cache, "nar/x.nar", data.clone())
        .await
        .unwrap();
    let landed = server.admin().get(server.bucket(), "nar/x.nar").unwrap();
    assert!(landed == data, "{} bytes landed", landed.len());
}

#[rstest]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_anonymous_instance_serves_the_same_objects(#[case] kind: Kind) {
    let env = env(kind).await;
    let server = env.server.as_ref().unwrap();
    env.cache
        .put(
            "nix-cache-info",
            Bytes::from_static(b"StoreDir: /nix/store\n"),
            "text/plain",
        )
        .await
        .unwrap();
    // Plain HTTP/1.0 GET, as any substituter client would send, without signing.
    let addr = server.anon_http_url();
    let rest = addr.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let body = tokio::task::spawn_blocking({
        let host = host.to_owned();
        let path = path.to_owned();
        move || {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect(&host).unwrap();
            write!(
                s,
                "GET /{path}/nix-cache-info HTTP/1.0\r\nHost: {host}\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        }
    })
    .await
    .unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.ends_with("StoreDir: /nix/store\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_writer_reports_a_server_that_went_away() {
    let mut env = env(Kind::S3).await;
    let mut w = env.cache.writer("nar/cut.nar", "application/x-nix-nar");
    let first = pattern(PART * 2);
    let w = tokio::task::spawn_blocking(move || {
        w.write_all(&first).unwrap();
        w
    })
    .await
    .unwrap();
    env.server.as_mut().unwrap().kill();
    let err = tokio::task::spawn_blocking(move || {
        let mut w = w;
        let more = pattern(PART * 2);
        match w.write_all(&more) {
            Err(e) => e.to_string(),
            Ok(()) => match w.commit() {
                Err(e) => e.to_string(),
                Ok(n) => panic!("commit succeeded ({n} bytes) with the server down"),
            },
        }
    })
    .await
    .unwrap();
    eprintln!("user sees: error: {err}");
    let server = env.server.as_ref().unwrap();
    assert!(err.contains(&server.endpoint()), "{err}");
    assert!(!err.contains(server.secret_key()), "{err}");
}

// ----- error texts a user sees -----

async fn open_err(url: &str, opts: OpenOptions) -> String {
    let url: CacheUrl = url.parse().unwrap();
    match Cache::open_with(&url, opts).await {
        Ok(_) => panic!("opening {url} succeeded"),
        Err(e) => {
            eprintln!("user sees: error: {e}");
            e.to_string()
        }
    }
}

/// A server that checks credentials: s3s-fs always does; moto only when told to, with keys its
/// IAM issued.
fn checking_server(kind: Kind) -> Box<dyn S3Store> {
    match kind {
        Kind::S3 => Box::new(S3Server::start()),
        Kind::Moto => Box::new(MotoServer::start_with_auth()),
        Kind::File => unreachable!("a directory has no credentials"),
    }
}

#[rstest]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_named(#[case] kind: Kind) {
    let server = checking_server(kind);
    let opts = s3_options(server.as_ref());
    let err = open_err(&server.cache_url_for("no-such-bucket"), opts).await;
    assert_eq!(
        err,
        format!(
            "bucket 'no-such-bucket' does not exist at {}",
            server.endpoint()
        )
    );
}

#[rstest]
#[case::s3(Kind::S3)]
#[case::moto(Kind::Moto)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_says_what_s3_said(#[case] kind: Kind) {
    let server = checking_server(kind);
    let wrong = "wrong-secret-0123456789";
    let opts = OpenOptions::default().static_credentials(server.access_key(), wrong);
    let err = open_err(&server.cache_url(), opts).await;
    let want = format!(
        "S3 at {} refused the credentials from the static credentials given to nixbucket for bucket 'nixbucket-test' (ListObjectsV2): SignatureDoesNotMatch: ",
        server.endpoint()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(
        !err.contains(wrong) && !err.contains(server.secret_key()),
        "{err}"
    );
}

/// AWS (and moto) say InvalidAccessKeyId; s3s-fs says NotSignedUp. Both are credential
/// refusals, and the user reads what the store said.
#[rstest]
#[case::s3(Kind::S3, "NotSignedUp")]
#[case::moto(Kind::Moto, "InvalidAccessKeyId")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unknown_access_key_says_what_s3_said(#[case] kind: Kind, #[case] code: &str) {
    let server = checking_server(kind);
    let opts = OpenOptions::default().static_credentials("AKNOBODY", server.secret_key());
    let err = open_err(&server.cache_url(), opts).await;
    assert!(
        err.contains("refused the credentials from the static credentials"),
        "{err}"
    );
    assert!(
        err.contains(&format!(" (ListObjectsV2): {code}: ")),
        "{err}"
    );
    assert!(!err.contains(server.secret_key()), "{err}");
}

/// A key that may only read opens the cache (HeadBucket and listing are allowed) and then
/// hears, on its first write, that it lacks the permission, not that it was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_write_permission_is_told_so_on_write() {
    let server = MotoServer::start_with_auth();
    let (key, secret) = server.reader();
    let url: CacheUrl = server.cache_url().parse().unwrap();
    let opts = OpenOptions::default().static_credentials(key, secret);
    let cache = Cache::open_with(&url, opts).await.unwrap();
    assert_eq!(cache.get("x.narinfo").await.unwrap(), None);
    let err = cache
        .put("x.narinfo", Bytes::from_static(b"x"), "text/x-nix-narinfo")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::PermissionDenied { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "S3 at {} denied PutObject in bucket 'nixbucket-test' to the credentials from the \
             static credentials given to nixbucket: AccessDenied: Access Denied (the credentials \
             are valid; a policy of their user or role, or of the bucket, does not allow this)",
            server.endpoint()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_endpoint_is_named() {
    let port = common::s3::free_port();
    let url = format!("s3://b?endpoint=http://127.0.0.1:{port}&region=us-east-1");
    let opts = OpenOptions::default().static_credentials("AK", "topsecret-xyz");
    let err = open_err(&url, opts).await;
    let want = format!("cannot reach the S3 endpoint http://127.0.0.1:{port}: ");
    assert!(err.starts_with(&want), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(!err.contains("topsecret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_cache_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let url: CacheUrl = format!("file://{}/cache", blocker.display())
        .parse()
        .unwrap();
    let err = Cache::open(&url).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "cannot create cache directory '{}/cache/nar': Not a directory (os error 20)",
            blocker.display()
        )
    );
}

#[test]
fn bad_urls_are_explained() {
    let cases = [
        ("file://relative/dir", "needs an absolute directory"),
        (
            "ftp://host/x",
            "unsupported cache URL scheme in 'ftp://host/x'",
        ),
        ("s3://", "names no bucket"),
        (
            "s3://b?endpiont=http://x",
            "unknown parameter 'endpiont' (did you mean 'endpoint'?)",
        ),
    ];
    for (url, want) in cases {
        let err = url.parse::<CacheUrl>().unwrap_err().to_string();
        assert!(err.contains(want), "{url}: {err}");
    }
}

// ----- memory -----

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

/// Streams `total` bytes into a writer on a blocking thread, from one reused 1 MiB buffer.
async fn stream_bytes(cache: &Cache, key: &str, total: u64) -> (u64, Duration) {
    let mut w = cache.writer(key, "application/x-nix-nar");
    let start = Instant::now();
    let size = tokio::task::spawn_blocking(move || {
        let block = pattern(MIB);
        let mut left = total;
        while left > 0 {
            let n = left.min(MIB as u64) as usize;
            w.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        w.commit().unwrap()
    })
    .await
    .unwrap();
    (size, start.elapsed())
}

/// A peak-memory test must have its process to itself. nextest gives every test one; under
/// plain `cargo test` the test reruns itself alone in a child. `true`: measure here.
fn alone_in_process(test: &str) -> bool {
    if std::env::var_os("NEXTEST").is_some() || std::env::var_os("NIXBUCKET_ALONE").is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--include-ignored"])
        .env("NIXBUCKET_ALONE", "1")
        .output()
        .unwrap();
    common::log_output(std::ffi::OsStr::new("(this test, alone)"), &out);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} alone: {text}"
    );
    false
}

/// Memory must not grow with the object: 320 MiB through 5 MiB parts stays far below that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_writer_memory_is_bounded() {
    if !alone_in_process("s3_writer_memory_is_bounded") {
        return;
    }
    let env = env(Kind::S3).await;
    let total = 320 * MIB as u64;
    let (size, _) = stream_bytes(&env.cache, "nar/big.nar", total).await;
    assert_eq!(size, total);
    assert_eq!(
        env.cache.head("nar/big.nar").await.unwrap().unwrap().size,
        total
    );
    let peak = peak_rss_mib();
    assert!(
        peak < 150,
        "peak RSS {peak} MiB for a {} MiB object",
        total >> 20
    );
}

/// Many objects at once share one part budget: eight writers of 40 MiB through 5 MiB parts
/// with two places hold at most 8 filling + 2 queued parts (50 MiB), where each writer alone
/// could hold five (200 MiB). Seen: a peak of 113 MiB with two places, 234 MiB with a place
/// for every part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_writers_at_once_share_one_part_budget() {
    if !alone_in_process("s3_writers_at_once_share_one_part_budget") {
        return;
    }
    let server = S3Server::start();
    let url: CacheUrl = server.cache_url().parse().unwrap();
    let opts = OpenOptions {
        parts_queued: 2,
        ..s3_options(&server)
    };
    let cache = Cache::open_with(&url, opts).await.unwrap();
    let total = 40 * MIB as u64;
    let keys: Vec<String> = (0..8).map(|i| format!("nar/many-{i}.nar")).collect();
    let uploads = keys.iter().map(|key| stream_bytes(&cache, key, total));
    for (size, _) in futures::future::join_all(uploads).await {
        assert_eq!(size, total);
    }
    for key in &keys {
        assert_eq!(cache.head(key).await.unwrap().unwrap().size, total);
    }
    let peak = peak_rss_mib();
    assert!(peak < 170, "peak RSS {peak} MiB for 8 objects at once");
}

/// A budget of one place still lets every writer finish: a writer waits for a place holding
/// none, and each place comes back when its part is uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_writers_finish_on_a_budget_of_one_part() {
    let server = S3Server::start();
    let url: CacheUrl = server.cache_url().parse().unwrap();
    let opts = OpenOptions {
        parts_queued: 1,
        ..s3_options(&server)
    };
    let cache = Cache::open_with(&url, opts).await.unwrap();
    let data: Vec<Vec<u8>> = (0..4).map(|i| pattern(PART * 7 / 2 + i)).collect();
    let keys: Vec<String> = (0..data.len())
        .map(|i| format!("nar/one-{i}.nar"))
        .collect();
    let writes = keys
        .iter()
        .zip(&data)
        .map(|(key, d)| write_object(&cache, key, d.clone()));
    let all = futures::future::join_all(writes);
    let sizes = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("writers sharing one place got stuck");
    for (i, d) in data.iter().enumerate() {
        assert_eq!(sizes[i], Ok(d.len() as u64));
        let got = cache.get_up_to(&keys[i], u64::MAX).await;
        assert!(got.unwrap().unwrap() == *d, "object {i} differs");
    }
}

/// The push target: a 4 GiB NAR under 200 MiB RSS with the default 8 MiB parts. Slow (and
/// 8 GiB of scratch disk for s3s-fs), so run on demand:
/// `NIXBUCKET_BIG_BYTES=4294967296 cargo nextest run --run-ignored only s3_writer_big_object`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn s3_writer_big_object() {
    if !alone_in_process("s3_writer_big_object") {
        return;
    }
    let server = S3Server::start();
    let url: CacheUrl = server.cache_url().parse().unwrap();
    let opts = OpenOptions::default().static_credentials(server.access_key(), server.secret_key());
    let cache = Cache::open_with(&url, opts).await.unwrap();
    let total: u64 = std::env::var("NIXBUCKET_BIG_BYTES")
        .map(|v| v.parse().unwrap())
        .unwrap_or(4 << 30);
    let (size, took) = stream_bytes(&cache, "nar/huge.nar", total).await;
    assert_eq!(size, total);
    let peak = peak_rss_mib();
    eprintln!(
        "streamed {} MiB in {:.1}s ({:.0} MiB/s), peak RSS {peak} MiB",
        total >> 20,
        took.as_secs_f64(),
        (total >> 20) as f64 / took.as_secs_f64()
    );
    assert_eq!(
        std::fs::metadata(server.object_path("nar/huge.nar"))
            .unwrap()
            .len(),
        total
    );
    assert!(peak < 200, "peak RSS {peak} MiB");
}

/// put_if_absent relies on the store honouring `If-None-Match: *` (else it falls back to a
/// racy HEAD-then-PUT). Pin that s3s-fs does, on a raw SDK call, so the test above exercises
/// the conditional path and not the fallback.
#[test]
fn s3s_fs_honours_if_none_match() {
    let server = S3Server::start();
    let bucket = server.bucket();
    let status = server.admin().call(|c| async move {
        let put = || {
            c.put_object()
                .bucket(bucket)
                .key("k")
                .if_none_match("*")
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
                .send()
        };
        put().await.unwrap();
        let err = put().await.unwrap_err();
        err.raw_response().map(|r| r.status().as_u16())
    });
    assert_eq!(status, Some(412));
}

/// What moto answers, on raw SDK calls, where nixbucket's conditional writes and its recovery
/// of a lost CompleteMultipartUpload answer depend on the store: so that the tests on moto
/// exercise the conditional paths and not the fallbacks, and say which way a retry goes. The
/// admin client tries a 500 three times.
#[test]
fn moto_answers_conditional_writes_and_multipart_calls_as_aws_does() {
    use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    /// "ok", or the status and S3's error code.
    fn answer<T, E: ProvideErrorMetadata>(
        r: Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    ) -> String {
        match r {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!(
                "{} {}",
                e.raw_response().map_or(0, |r| r.status().as_u16()),
                e.code().unwrap_or("-")
            ),
        }
    }
    let server = MotoServer::start();
    let bucket = server.bucket();
    let answers = server.admin().call(|c| async move {
        let put = |key: &'static str,
                   body: &'static [u8],
                   if_none: Option<&str>,
                   if_match: Option<&str>| {
            c.put_object()
                .bucket(bucket)
                .key(key)
                .set_if_none_match(if_none.map(str::to_owned))
                .set_if_match(if_match.map(str::to_owned))
                .body(ByteStream::from_static(body))
                .send()
        };
        let mut answers = Vec::new();
        let first = put("k", b"one", Some("*"), None).await.unwrap();
        let again = put("k", b"two", Some("*"), None).await;
        answers.push(("put if absent, again", answer(again)));
        let stale = first.e_tag().unwrap().to_owned();
        put("k", b"three", None, None).await.unwrap();
        let stale_put = put("k", b"four", None, Some(&stale)).await;
        answers.push(("put if stale version", answer(stale_put)));
        let put_on_nothing = put("absent", b"five", None, Some(&stale)).await;
        answers.push(("put if version of nothing", answer(put_on_nothing)));

        // Two multipart uploads to "m": the first lands, the second may not replace it.
        let mut uploads = Vec::new();
        for _ in 0..2 {
            let created = c.create_multipart_upload().bucket(bucket).key("m");
            let id = created
                .send()
                .await
                .unwrap()
                .upload_id()
                .unwrap()
                .to_owned();
            let part = c
                .upload_part()
                .bucket(bucket)
                .key("m")
                .upload_id(&id)
                .part_number(1)
                .body(ByteStream::from_static(b"part"))
                .send()
                .await
                .unwrap();
            let part = CompletedPart::builder()
                .part_number(1)
                .e_tag(part.e_tag().unwrap())
                .build();
            let parts = CompletedMultipartUpload::builder().parts(part).build();
            uploads.push((id, parts));
        }
        let complete = |i: usize, if_absent: bool| {
            let (id, parts) = &uploads[i];
            c.complete_multipart_upload()
                .bucket(bucket)
                .key("m")
                .upload_id(id)
                .multipart_upload(parts.clone())
                .set_if_none_match(if_absent.then(|| "*".to_owned()))
                .send()
        };
        answers.push(("complete if absent", answer(complete(0, true).await)));
        answers.push((
            "complete if absent, retried",
            answer(complete(0, true).await),
        ));
        answers.push(("complete over another", answer(complete(1, true).await)));
        let abort = || {
            c.abort_multipart_upload()
                .bucket(bucket)
                .key("m")
                .upload_id(&uploads[1].0)
                .send()
        };
        answers.push(("abort", answer(abort().await)));
        answers.push(("abort, again", answer(abort().await)));
        answers.push((
            "complete the aborted upload",
            answer(complete(1, false).await),
        ));
        answers
    });
    let answers: Vec<(&str, &str)> = answers.iter().map(|(w, a)| (*w, a.as_str())).collect();
    assert_eq!(
        answers,
        [
            ("put if absent, again", "412 PreconditionFailed"),
            ("put if stale version", "412 PreconditionFailed"),
            ("put if version of nothing", "404 NoSuchKey"),
            ("complete if absent", "ok"),
            // A retry after a lost answer finds its own object and succeeds.
            ("complete if absent, retried", "ok"),
            ("complete over another", "412 PreconditionFailed"),
            ("abort", "ok"),
            ("abort, again", "404 NoSuchUpload"),
            // AWS says 404 NoSuchUpload; moto fails (so does its UploadPart). The tests of
            // NoSuchUpload on completion have the fault proxy say it (tests/faults.rs).
            ("complete the aborted upload", "500 -"),
        ]
    );
}
