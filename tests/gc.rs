//! `nixbucket gc` on a real S3-compatible server and on `file://`, judged by `verify` and by
//! what the real Nix can still substitute. "Days later" is the hidden `--now` flag; "used by a
//! job" is a usage record written with the library's own writer at a chosen time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cache::{Backend, TestCache};
use common::nix::{build, build_closure, copy_into_fresh_store, derivation, nonce};
use common::store::S3Kind;
use common::{assert_fails, assert_ok, hash_part, keygen, run, stderr, stdout};
use nixbucket::nix::HashPart;
use nixbucket::push::usage;
use rstest::rstest;

const DAY: u64 = 86_400;

/// A new small path, built and pushed: (secret key file, public key, store path).
fn push_small(target: &TestCache, dir: &Path, name: &str) -> (PathBuf, String, String) {
    let (secret, public) = keygen(dir, "gc-test-1");
    let tag = nonce();
    let path = build(
        dir,
        &derivation(&format!("{name}-{tag}"), &format!("echo {tag} > $out")),
    );
    target.push(&secret, &path);
    (secret, public, path)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn substitutes(target: &TestCache, public: &str, store: &Path, path: &str) -> bool {
    copy_into_fresh_store(&target.nix_url, public, store, path)
        .status
        .success()
}

/// Two unrelated closures are pushed "today"; ten days later one app was used yesterday by a
/// job. gc --older-than 7d must keep that app's whole closure (its lib and data were never
/// recorded themselves) and delete the other closure, narinfos and NARs.
fn recently_used_closure_survives(target: &TestCache, tmp: &Path) {
    let [old_app, old_lib, old_data] = build_closure(tmp, &nonce());
    let [app, lib, data] = build_closure(tmp, &nonce());
    let (secret, public) = keygen(tmp, "gc-test-1");
    target.push(&secret, &old_app);
    target.push(&secret, &app);
    let old_nars: Vec<String> = [&old_app, &old_lib, &old_data]
        .iter()
        .map(|p| target.nar_of(p))
        .collect();
    let old_logs: Vec<String> = [&old_app, &old_lib, &old_data]
        .iter()
        .map(|p| target.log_of(p))
        .collect();
    let logs: Vec<String> = [&app, &lib, &data]
        .iter()
        .map(|p| target.log_of(p))
        .collect();
    let t0 = now_secs();
    target.record_use(t0 + 9 * DAY, &[&app]);
    let later = (t0 + 10 * DAY).to_string();

    // A dry run names what would go and changes nothing, byte for byte and time for time.
    let before = target.snapshot();
    let dry = target.gc(&["--older-than", "7d", "--now", &later, "--dry-run"]);
    assert_ok(&dry);
    for p in [&old_app, &old_lib, &old_data] {
        assert!(
            stdout(&dry).contains(&format!("would delete {p}")),
            "{p} not listed:\n{}",
            stdout(&dry)
        );
    }
    for p in [&app, &lib, &data] {
        assert!(!stdout(&dry).contains(p.as_str()), "{}", stdout(&dry));
    }
    assert!(
        stderr(&dry).contains("would delete 3 of 6 paths and 3 NARs (and 3 build logs)"),
        "{}",
        stderr(&dry)
    );
    assert_eq!(target.snapshot(), before, "a dry run changed the cache");

    let out = target.gc(&["--older-than", "7d", "--now", &later]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("deleted 3 of 6 paths and 3 NARs (and 3 build logs)"),
        "{}",
        stderr(&out)
    );
    let keys = target.keys();
    // Build logs go with the paths their derivations built, and stay with the kept ones.
    for log in &old_logs {
        assert!(!keys.contains(log), "{log} survived: {keys:?}");
    }
    for log in &logs {
        assert!(keys.contains(log), "{log} was deleted: {keys:?}");
    }
    for p in [&old_app, &old_lib, &old_data] {
        assert!(!target.has_narinfo(p), "{p} survived");
    }
    for nar in &old_nars {
        assert!(!keys.contains(nar), "{nar} survived: {keys:?}");
    }
    for p in [&app, &lib, &data] {
        assert!(target.has_narinfo(p), "{p} was deleted");
        assert!(keys.contains(&target.nar_of(p)), "NAR of {p} was deleted");
    }
    assert!(keys.contains(&"nix-cache-info".to_owned()), "{keys:?}");

    // Three records (two pushes, one job) became one, which remembers only what is left.
    let records = target.usage_records();
    assert_eq!(records.len(), 1, "{records:?}");
    let merged = &records[0].1;
    assert_eq!(
        merged.last_used(&HashPart::parse(hash_part(&app)).unwrap()),
        Some(t0 + 9 * DAY)
    );
    assert_eq!(
        merged.last_used(&HashPart::parse(hash_part(&old_app)).unwrap()),
        None
    );

    assert_ok(&target.verify(&public));
    assert!(substitutes(target, &public, &tmp.join("fresh"), &app));
    assert!(
        tmp.join("fresh").join(&data[1..]).exists(),
        "the kept closure did not arrive whole"
    );
    assert!(
        !substitutes(target, &public, &tmp.join("fresh2"), &old_app),
        "a deleted path is still substitutable"
    );
}

/// On moto, narinfos and usage records go in DeleteObjects as the SDK sends it to AWS.
#[rstest]
#[case::file(Backend::File)]
#[case::s3(Backend::S3sFs)]
#[case::moto(Backend::Moto)]
fn gc_keeps_recently_used_closures_and_deletes_the_rest(#[case] backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    recently_used_closure_survives(&TestCache::new(backend, tmp.path()), tmp.path());
}

/// Compaction merges every record, and leaves the newest of each branch whole as well: setup
/// restores by it after a gc too.
#[test]
fn compaction_leaves_the_newest_record_of_each_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::file(tmp.path());
    let (_, _, app) = push_small(&target, tmp.path(), "branches");
    let t0 = now_secs();
    target.record_use_on(t0 - 3 * DAY, &[&app], Some("dev"));
    target.record_use_on(t0 - 2 * DAY, &[&app], Some("dev"));
    target.record_use_on(t0 - DAY, &[&app], Some("main"));
    assert_ok(&target.gc(&["--older-than", "30d"]));
    let records = target.usage_records();
    let tagged: Vec<(&str, u64)> = records
        .iter()
        .filter_map(|(k, u)| Some((usage::record_branch_tag(k)?, u.newest()?)))
        .collect();
    let (dev, main) = (usage::branch_tag("dev"), usage::branch_tag("main"));
    assert_eq!(
        tagged,
        [(dev.as_str(), t0 - 2 * DAY), (main.as_str(), t0 - DAY)],
        "{records:?}"
    );
    // The merged record (the push's own, dev's older one and the two kept) is the third.
    assert_eq!(records.len(), 3, "{records:?}");
}

#[test]
fn push_records_paths_it_uploads_and_paths_it_finds_present() {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::s3();
    let closure = build_closure(tmp.path(), &nonce());
    let (secret, public) = keygen(tmp.path(), "gc-test-1");
    let start = now_secs();
    target.push(&secret, &closure[0]);
    let again = target.push(&secret, &closure[0]);
    assert!(
        stderr(&again).contains("pushed 0 paths"),
        "{}",
        stderr(&again)
    );
    let records = target.usage_records();
    assert_eq!(records.len(), 2, "one record per push: {records:?}");
    for (key, u) in &records {
        assert_eq!(u.len(), 3, "{key}");
        for p in &closure {
            let t = u
                .last_used(&HashPart::parse(hash_part(p)).unwrap())
                .unwrap_or_else(|| panic!("{p} not in {key}"));
            assert!(t >= start && t <= now_secs(), "{key}: {t}");
        }
    }
    // Nix ignores the records: the cache is still what Nix expects.
    assert!(substitutes(
        &target,
        &public,
        &tmp.path().join("fresh"),
        &closure[0]
    ));
}

#[test]
fn max_size_deletes_least_recently_used_closures_first() {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::file(tmp.path());
    let (secret, public) = keygen(tmp.path(), "gc-test-1");
    let a = build_closure(tmp.path(), &nonce());
    let b = build_closure(tmp.path(), &nonce());
    let c = build_closure(tmp.path(), &nonce());
    for closure in [&a, &b, &c] {
        target.push(&secret, &closure[0]);
    }
    let t0 = now_secs();
    // c used most recently, then b, then a. Only c's app is recorded: its closure comes along.
    target.record_use(t0 + 3 * DAY, &[&c[0]]);
    target.record_use(t0 + 2 * DAY, &[&b[0]]);
    target.record_use(t0 + DAY, &[&a[0]]);
    let size_of = |closure: &[String; 3]| -> u64 {
        closure
            .iter()
            .map(|p| {
                std::fs::metadata(target.objects().join(target.nar_of(p)))
                    .unwrap()
                    .len()
            })
            .sum()
    };
    // Room for c and b, not for a as well.
    let budget = size_of(&c) + size_of(&b) + size_of(&a) / 2;
    let out = target.gc(&[
        "--max-size",
        &budget.to_string(),
        "--now",
        &(t0 + 4 * DAY).to_string(),
    ]);
    assert_ok(&out);
    for p in &a {
        assert!(!target.has_narinfo(p), "{p} kept:\n{}", stderr(&out));
    }
    for p in b.iter().chain(&c) {
        assert!(target.has_narinfo(p), "{p} deleted:\n{}", stderr(&out));
    }
    assert_ok(&target.verify(&public));

    // A budget below the newest closure deletes everything old enough.
    let out = target.gc(&["--max-size", "1", "--now", &(t0 + 4 * DAY).to_string()]);
    assert_ok(&out);
    assert!(
        target
            .keys()
            .iter()
            .all(|k| !k.ends_with(".narinfo") && !k.starts_with("nar/")),
        "{:?}",
        target.keys()
    );
}

#[test]
fn keep_and_grace_protect_paths_whatever_their_use() {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::file(tmp.path());
    let (secret, public) = keygen(tmp.path(), "gc-test-1");
    let kept = build_closure(tmp.path(), &nonce());
    let young = build_closure(tmp.path(), &nonce());
    let old = build_closure(tmp.path(), &nonce());
    for closure in [&kept, &young, &old] {
        target.push(&secret, &closure[0]);
    }
    // Everything unused for a day; `young`'s objects were written 10 minutes ago.
    let ancient: Vec<String> = target
        .keys()
        .into_iter()
        .filter(|k| k.ends_with(".narinfo") || k.starts_with("nar/"))
        .collect();
    target.age(&ancient, 2 * DAY);
    let young_keys: Vec<String> = young
        .iter()
        .flat_map(|p| [format!("{}.narinfo", hash_part(p)), target.nar_of(p)])
        .collect();
    target.age(&young_keys, 600);
    target.forget_usage();
    // NARs no narinfo names: one left by a push interrupted long ago, one a push is writing.
    let stale = "nar/0000000000000000000000000000000000000000000000000000.nar.zst".to_owned();
    let in_flight = "nar/1111111111111111111111111111111111111111111111111111.nar.zst".to_owned();
    std::fs::write(target.objects().join(&stale), b"stale").unwrap();
    std::fs::write(target.objects().join(&in_flight), b"uploading").unwrap();
    target.age(std::slice::from_ref(&stale), 2 * DAY);

    let out = target.gc(&["--older-than", "1d", "--keep", &kept[0]]);
    assert_ok(&out);
    for p in kept.iter().chain(&young) {
        assert!(target.has_narinfo(p), "{p} deleted:\n{}", stderr(&out));
    }
    for p in &old {
        assert!(!target.has_narinfo(p), "{p} kept:\n{}", stderr(&out));
    }
    let keys = target.keys();
    assert!(!keys.contains(&stale), "an old orphan NAR survived");
    assert!(keys.contains(&in_flight), "a young NAR was deleted");
    assert!(
        stderr(&out).contains("younger than the grace period"),
        "{}",
        stderr(&out)
    );
    assert_ok(&target.verify(&public));

    // With no grace, `young` (ten minutes unused) goes under --older-than 5m.
    let out = target.gc(&["--older-than", "5m", "--grace", "0s", "--keep", &kept[0]]);
    assert_ok(&out);
    for p in &young {
        assert!(!target.has_narinfo(p), "{p} kept:\n{}", stderr(&out));
    }
    assert!(target.has_narinfo(&kept[2]));
}

#[test]
fn a_push_running_alongside_gc_lands_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::s3();
    let (secret, public) = keygen(tmp.path(), "gc-test-1");
    let old = build_closure(tmp.path(), &nonce());
    target.push(&secret, &old[0]);
    let aged: Vec<String> = target.keys();
    target.age(&aged, 2 * DAY);
    target.forget_usage();
    // A closure that takes a few seconds to push: 8 MiB of noise through xz.
    let tag = nonce();
    let big = derivation(
        &format!("noise-{tag}"),
        "mkdir $out; for i in 1 2 3 4; do head -c 2097152 /dev/urandom > $out/n$i; done",
    );
    let top = build(
        tmp.path(),
        &format!(
            "let big = {big}; in {}",
            derivation(&format!("top-{tag}"), "echo ${big} > $out")
        ),
    );
    let mut push = target
        .cmd()
        .args([
            "push",
            "--compression",
            "xz",
            "-j",
            "1",
            "--cache",
            &target.url,
        ])
        .arg("--signing-key-file")
        .arg(&secret)
        .arg(&top)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut during = 0;
    loop {
        let out = target.gc(&["--older-than", "1d"]);
        assert_ok(&out);
        if push.try_wait().unwrap().is_none() {
            during += 1;
        } else {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pushed = common::finish(push);
    assert_ok(&pushed);
    assert!(during >= 1, "no gc finished while the push ran");
    for p in &old {
        assert!(!target.has_narinfo(p), "{p} survived");
    }
    assert!(target.has_narinfo(&top));
    assert_ok(&target.verify(&public));
    let fresh = tmp.path().join("fresh");
    assert_ok(&copy_into_fresh_store(
        &target.nix_url,
        &public,
        &fresh,
        &top,
    ));
    assert!(fresh.join(&top[1..]).exists());
}

#[test]
fn gc_errors_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::file(tmp.path());
    let err = assert_fails(&target.gc(&[]));
    assert!(
        err.contains("--older-than") && err.contains("--max-size"),
        "{err}"
    );
    let err = assert_fails(&target.gc(&["--older-than", "1d", "--max-size", "1G"]));
    assert!(err.contains("cannot be used with"), "{err}");
    let err = assert_fails(&target.gc(&["--older-than", "30"]));
    assert!(err.contains("\"30\" is not a duration"), "{err}");
    let err = assert_fails(&target.gc(&["--max-size", "lots"]));
    assert!(err.contains("\"lots\" is not a size"), "{err}");
    // A usage record gc cannot read stops it: guessing could delete what a job relies on.
    std::fs::create_dir_all(target.objects().join("usage")).unwrap();
    std::fs::write(target.objects().join("usage/000000000001-00.zst"), b"junk").unwrap();
    let err = assert_fails(&target.gc(&["--older-than", "1d"]));
    assert!(
        err.contains("usage/000000000001-00.zst") && err.contains("zstd"),
        "{err}"
    );
}

#[test]
fn a_narinfo_gc_cannot_read_is_kept_with_its_nar() {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::file(tmp.path());
    let (secret, _) = keygen(tmp.path(), "gc-test-1");
    let closure = build_closure(tmp.path(), &nonce());
    target.push(&secret, &closure[0]);
    // Written by some other tool, in a form our parser refuses (no NarHash).
    let odd = "0000000000000000000000000000000a.narinfo".to_owned();
    let odd_nar = "nar/0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.nar.xz".to_owned();
    std::fs::write(
        target.objects().join(&odd),
        format!("StorePath: /nix/store/0000000000000000000000000000000a-odd\nURL: {odd_nar}\n"),
    )
    .unwrap();
    std::fs::write(target.objects().join(&odd_nar), b"xz").unwrap();
    let all = target.keys();
    target.age(&all, 30 * DAY);
    target.forget_usage();
    let out = target.gc(&["--older-than", "1d"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains(&format!("warning: kept {odd}")) && stderr(&out).contains("NarHash"),
        "{}",
        stderr(&out)
    );
    let keys = target.keys();
    assert!(keys.contains(&odd) && keys.contains(&odd_nar), "{keys:?}");
    for p in &closure {
        assert!(!target.has_narinfo(p), "{p} survived");
    }
}

/// A push that finds a path's NAR already in the cache (an interrupted push left it, or gc
/// deleted only the narinfo so far) touches the NAR, so that gc's grace period covers it.
/// Where the test can, the NAR is made to look a month old first; on moto, whose objects
/// cannot be aged, the push comes a second later instead.
#[rstest]
#[case::file(Backend::File)]
#[case::s3(Backend::S3sFs)]
#[case::moto(Backend::Moto)]
fn a_push_reusing_a_nar_touches_it(#[case] backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::new(backend, tmp.path());
    let (secret, _) = keygen(tmp.path(), "gc-test-1");
    let tag = nonce();
    let path = build(
        tmp.path(),
        &derivation(&format!("reused-{tag}"), &format!("echo {tag} > $out")),
    );
    target.push(&secret, &path);
    let nar = target.nar_of(&path);
    target.remove(&format!("{}.narinfo", hash_part(&path)));
    if target.dir.is_some() {
        target.age(std::slice::from_ref(&nar), 30 * DAY);
    } else {
        std::thread::sleep(Duration::from_millis(1100));
    }
    let (before, modified_before) = (target.read(&nar).unwrap(), target.modified(&nar));
    let out = target.push(&secret, &path);
    assert!(target.has_narinfo(&path), "{}", stderr(&out));
    let modified = target.modified(&nar);
    assert!(
        modified > modified_before,
        "not touched: {modified:?} <= {modified_before:?}"
    );
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(600), "the NAR is {age:?} old");
    assert_eq!(target.read(&nar).unwrap(), before);
}

/// An old NAR whose narinfo is gone (an orphan), and a gc started through a proxy that holds
/// every `op` request for 5 s, once `count` of them have arrived: a push made now lands
/// between gc's plan and its deletion every time.
struct OrphanRace {
    _tmp: tempfile::TempDir,
    target: TestCache,
    secret: PathBuf,
    public: String,
    path: String,
    nar: String,
    _proxy: common::fault_proxy::FaultProxy,
    gc: Option<std::process::Child>,
}

fn orphan_race(op: &'static str, count: u64) -> OrphanRace {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::s3();
    let (secret, public, path) = push_small(&target, tmp.path(), "orphan");
    let nar = target.nar_of(&path);
    std::fs::remove_file(
        target
            .objects()
            .join(format!("{}.narinfo", hash_part(&path))),
    )
    .unwrap();
    target.forget_usage();
    target.age(&target.keys(), 30 * DAY);
    let (proxy, via_proxy) = target.proxy(op, common::fault_proxy::Fault::Delay);
    let mut gc = target.spawn_gc(&via_proxy);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.stats().requests.get(op).copied().unwrap_or(0) < count {
        assert!(
            std::time::Instant::now() < deadline && gc.try_wait().unwrap().is_none(),
            "gc never sent {count} {op}: {:?}",
            proxy.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    OrphanRace {
        _tmp: tmp,
        target,
        secret,
        public,
        path,
        nar,
        _proxy: proxy,
        gc: Some(gc),
    }
}

impl OrphanRace {
    /// The push that reuses the orphan NAR, while gc waits; then gc's output.
    fn push_then_finish_gc(&mut self) -> Output {
        self.target.push(&self.secret, &self.path);
        let mut gc = self.gc.take().expect("gc runs once");
        assert!(
            gc.try_wait().unwrap().is_none(),
            "gc finished before the push: the test proves nothing"
        );
        let out = common::finish(gc);
        assert_ok(&out);
        out
    }
}

/// The race the touch is for: gc planned to delete an orphan NAR, and before it does, a push
/// reuses that NAR. gc looks at the NAR again right before deleting it, sees the touch, and
/// leaves it. The proxy holds gc's HEAD requests (HeadBucket when gc opens the cache, then
/// the look at the doomed NAR).
#[test]
fn gc_leaves_a_nar_that_a_push_reused_after_the_plan() {
    let mut race = orphan_race("Head", 2);
    let out = race.push_then_finish_gc();
    let report = stderr(&out);
    assert!(
        report.contains("deleted 0 of 0 paths and 0 NARs"),
        "{report}"
    );
    assert!(
        race.target.objects().join(&race.nar).exists(),
        "gc deleted the reused NAR"
    );
    assert_ok(&race.target.verify(&race.public));
}

/// The other order of the same race: gc has looked at the orphan NAR and found it old, and
/// its DELETE is on its way (held by the proxy) when a push reuses the NAR, touches it,
/// writes the narinfo and finds the NAR still there. The DELETE then lands. gc lists the
/// narinfos once more, finds the one naming the NAR it deleted, and removes it: the cache
/// holds no narinfo without its NAR, and the next push puts the path back.
#[test]
fn a_narinfo_written_for_a_nar_gc_was_deleting_is_unlinked() {
    let mut race = orphan_race("DeleteObject", 1);
    let out = race.push_then_finish_gc();
    let (target, path, nar) = (&race.target, &race.path, &race.nar);
    assert!(
        stdout(&out).contains(&format!("unlinked {path}")),
        "{}",
        stdout(&out)
    );
    assert!(
        !target.objects().join(nar).exists(),
        "the DELETE did not land"
    );
    assert!(
        !target.has_narinfo(path),
        "a narinfo without its NAR stayed"
    );
    assert_ok(&target.verify(&race.public));
    target.push(&race.secret, path);
    assert!(target.has_narinfo(path) && target.objects().join(nar).exists());
    assert_ok(&target.verify(&race.public));
}

/// gc deletes narinfos, usage records and build logs a thousand to a request, in a
/// DeleteObjects as the SDK sends it: both servers take that, so nothing of theirs goes one at
/// a time (NARs always do, each looked at right before). The logs of the deleted paths go with
/// them. A month later rather than aged objects: moto's cannot be.
#[rstest]
#[case::s3s_fs(S3Kind::S3sFs)]
#[case::moto(S3Kind::Moto)]
fn gc_deletes_narinfos_with_delete_objects(#[case] kind: S3Kind) {
    use common::fault_proxy::{FaultConfig, FaultProxy};
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::of(kind);
    let (secret, public) = keygen(tmp.path(), "gc-test-1");
    let closure = build_closure(tmp.path(), &nonce());
    target.push(&secret, &closure[0]);
    let server = target.server.as_ref().unwrap();
    let proxy = FaultProxy::start(&server.endpoint(), FaultConfig::mixed(0.0, 1));
    let via_proxy = server.cache_url_via(&proxy.endpoint(), server.bucket());
    let later = (now_secs() + 30 * DAY).to_string();
    let out = run(target.cmd().args([
        "gc",
        "--older-than",
        "1d",
        "--now",
        &later,
        "--cache",
        &via_proxy,
    ]));
    assert_ok(&out);
    assert!(
        stderr(&out).contains("deleted 3 of 3 paths and 3 NARs (and 3 build logs)"),
        "{}",
        stderr(&out)
    );
    let requests = proxy.stats().requests;
    eprintln!("{requests:?}");
    // narinfos, usage records, logs.
    assert_eq!(requests.get("DeleteObjects"), Some(&3), "{requests:?}");
    assert_eq!(requests.get("DeleteObject"), Some(&3), "{requests:?}");
    for p in &closure {
        assert!(!target.has_narinfo(p), "{p} survived");
    }
    let keys = target.keys();
    assert!(
        keys.iter()
            .all(|k| !k.starts_with("nar/") && !k.starts_with("log/") && !k.ends_with(".narinfo")),
        "{keys:?}"
    );
    assert_ok(&target.verify(&public));
}

/// gc deletes narinfos a thousand to a request (DeleteObjects); a store that does not have
/// that call gets one DeleteObject per key instead, and the result is the same. So does a
/// key that DeleteObjects answered with an error of its own.
#[rstest]
#[case::refused(common::fault_proxy::Fault::NotImplemented)]
#[case::key_errors(common::fault_proxy::Fault::KeyErrors)]
fn gc_deletes_one_by_one_where_delete_objects_does_not(#[case] fault: common::fault_proxy::Fault) {
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::s3();
    let (_, public, path) = push_small(&target, tmp.path(), "old");
    target.forget_usage();
    // Only the narinfo is to go in a DeleteObjects (its build log would be a second one).
    for log in target.keys().iter().filter(|k| k.starts_with("log/")) {
        target.remove(log);
    }
    target.age(&target.keys(), 30 * DAY);
    let (proxy, via_proxy) = target.proxy("DeleteObjects", fault);
    let out = run(target
        .cmd()
        .args(["gc", "--older-than", "1d", "--cache", &via_proxy]));
    assert_ok(&out);
    let (requests, faults) = (proxy.stats().requests, proxy.stats().faults);
    assert_eq!(requests.get("DeleteObjects"), Some(&1), "{requests:?}");
    assert_eq!(faults.len(), 1, "{faults:?}");
    // The narinfo after the refusal or its error, then the NAR (NARs always go one at a time).
    assert_eq!(requests.get("DeleteObject"), Some(&2), "{requests:?}");
    assert!(
        stderr(&out).contains("deleted 1 of 1 paths and 1 NARs"),
        "{}",
        stderr(&out)
    );
    assert!(!target.has_narinfo(&path));
    assert!(
        target
            .keys()
            .iter()
            .all(|k| !k.starts_with("nar/") && !k.starts_with("log/")),
        "{:?}",
        target.keys()
    );
    assert_ok(&target.verify(&public));
}

/// gc's write-back: a push lands between gc's plan and its deletions and builds on a path gc
/// is deleting. The proxy holds gc's DELETEs for seconds, so the push always lands there: it
/// still finds the dependency's narinfo, pushes only the new path, and gc must put the
/// dependency's narinfo back.
#[test]
fn gc_puts_back_a_path_that_a_push_built_on_during_gc() {
    use common::fault_proxy::Fault;
    let tmp = tempfile::tempdir().unwrap();
    let target = TestCache::s3();
    let (secret, public) = keygen(tmp.path(), "gc-test-1");
    let tag = nonce();
    let dep = derivation(&format!("dep-{tag}"), &format!("echo {tag} > $out"));
    let dep_path = build(tmp.path(), &dep);
    target.push(&secret, &dep_path);
    target.forget_usage();
    target.age(&target.keys(), 30 * DAY);
    let top = build(
        tmp.path(),
        &format!(
            "let dep = {dep}; in {}",
            derivation(&format!("top-{tag}"), "echo ${dep} > $out")
        ),
    );

    let (proxy, via_proxy) = target.proxy("DeleteObjects", Fault::Delay);
    let gc = target.spawn_gc(&via_proxy);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !proxy.stats().requests.contains_key("DeleteObjects") {
        assert!(
            std::time::Instant::now() < deadline,
            "gc deleted nothing: {:?}",
            proxy.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pushed = target.push(&secret, &top);
    assert!(
        stderr(&pushed).contains("1 already in the cache"),
        "the push did not build on the path gc is deleting: {}",
        stderr(&pushed)
    );
    let out = common::finish(gc);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!(
            "kept {dep_path}: a push running alongside needs it"
        )),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(target.has_narinfo(&dep_path));
    // The narinfo went in a DeleteObjects (s3s-fs has it), and its NAR stayed.
    let requests = proxy.stats().requests;
    assert_eq!(requests.get("DeleteObjects"), Some(&1), "{requests:?}");
    assert_eq!(requests.get("DeleteObject"), None, "{requests:?}");
    assert_ok(&target.verify(&public));
    let fresh = tmp.path().join("fresh");
    assert_ok(&copy_into_fresh_store(
        &target.nix_url,
        &public,
        &fresh,
        &top,
    ));
    assert!(fresh.join(&dep_path[1..]).exists());
}
