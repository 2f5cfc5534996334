//! `setup` restoring what the last job used into a local mirror, judged by the real Nix: the
//! build substitutes from the mirror, with the bucket's narinfos gone, so nothing else could
//! have served it. These tests diff the shared /nix/store (push after setup), so the test
//! script runs this binary on its own, one test at a time (see scripts/test.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::nix::{NixConfig, derivation, nonce, query_closure};
use common::s3::S3Server;
use common::store::S3Store;
use common::{assert_ok, keygen, nixbucket, run, stderr, stdout};

const BASE_CONF: &str = "# base settings of the test machine\nsubstituters =\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group =\n";

/// A closure of `count` small paths (a top path naming the others), built, pushed on `branch`
/// and deleted from the store: what the next job wants back. Returns the expression file and
/// the closure.
fn pushed_and_deleted(
    s3: &dyn S3Store,
    dir: &Path,
    secret: &Path,
    branch: &str,
    count: usize,
) -> (PathBuf, Vec<String>) {
    pushed_and_deleted_made_by(s3, dir, secret, branch, count, |i| {
        format!("echo {i} > $out")
    })
}

/// [`pushed_and_deleted`], each of the `count - 1` paths below the top made by `script(i)`.
fn pushed_and_deleted_made_by(
    s3: &dyn S3Store,
    dir: &Path,
    secret: &Path,
    branch: &str,
    count: usize,
    script: impl Fn(usize) -> String,
) -> (PathBuf, Vec<String>) {
    let tag = nonce();
    let deps: Vec<String> = (0..count - 1)
        .map(|i| derivation(&format!("dep{i}-{tag}"), &script(i)))
        .collect();
    let names: Vec<String> = (0..deps.len()).map(|i| format!("d{i}")).collect();
    let lets: String = names
        .iter()
        .zip(&deps)
        .map(|(n, d)| format!("{n} = {d};"))
        .collect();
    let uses: String = names.iter().map(|n| format!("${{{n}}} ")).collect();
    let expr = format!(
        "let {lets} in {}",
        derivation(&format!("top-{tag}"), &format!("echo {uses} > $out"))
    );
    let file = dir.join(format!("{tag}.nix"));
    std::fs::write(&file, expr).unwrap();
    let built = run(common::nix::nix_command("nix-build")
        .arg("--no-out-link")
        .arg(&file));
    assert_ok(&built);
    let top = stdout(&built).trim().to_owned();
    let closure = query_closure(&top);
    assert_eq!(closure.len(), count, "{closure:?}");
    assert_ok(&run(nixbucket()
        .envs(s3.env())
        .env("NIXBUCKET_BRANCH", branch)
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(secret)
        .arg(&top)));
    assert_ok(&run(common::nix::nix_command("nix-store")
        .arg("--delete")
        .args(&closure)));
    (file, closure)
}

fn setup(s3: &dyn S3Store, conf: &NixConfig, dir: &Path, secret: &Path) -> Command {
    let mut cmd = conf.nixbucket();
    cmd.envs(s3.env())
        .env_remove("NIXBUCKET_BRANCH")
        .env_remove("NIXBUCKET_DEFAULT_BRANCH")
        .args(["setup", "--cache", &s3.cache_url(), "--substituter"])
        .arg(s3.anon_http_url())
        .arg("--signing-key-file")
        .arg(secret)
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .arg("--mirror")
        .arg(dir.join("mirror"));
    cmd
}

fn narinfo_key(store_path: &str) -> String {
    format!("{}.narinfo", &store_path["/nix/store/".len()..][..32])
}

fn mirrored(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = nixbucket::restore::mirrored(&dir.join("mirror"))
        .into_iter()
        .map(|h| h.to_string())
        .collect();
    v.sort();
    v
}

fn hash_parts(paths: &[String]) -> Vec<String> {
    let mut v: Vec<String> = paths
        .iter()
        .map(|p| p["/nix/store/".len()..][..32].to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn the_next_job_substitutes_the_last_jobs_closure_from_the_mirror() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "restore-1");
    let (expr, closure) = pushed_and_deleted(&s3, tmp.path(), &secret, "dev", 6);

    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let out = run(setup(&s3, &conf, tmp.path(), &secret).env("NIXBUCKET_BRANCH", "dev"));
    assert_ok(&out);
    let log = stderr(&out);
    assert!(
        log.contains("restored 6 of 6 paths") && log.contains("from the last job on dev"),
        "{log}"
    );
    assert_eq!(mirrored(tmp.path()), hash_parts(&closure));
    let mirror_url = format!("file://{}", tmp.path().join("mirror").display());
    let user_conf = std::fs::read_to_string(conf.user_conf()).unwrap();
    assert!(user_conf.contains(&mirror_url), "{user_conf}");

    // With the narinfos gone from the bucket, only the mirror can serve the closure.
    for path in &closure {
        s3.admin().delete(s3.bucket(), &narinfo_key(path));
    }
    let build = run(conf.nix("nix-build").arg("--no-out-link").arg(&expr));
    assert_ok(&build);
    let log = stderr(&build);
    assert!(
        !log.contains("building '"),
        "built instead of substituting:\n{log}"
    );
    for path in &closure {
        assert!(
            log.contains(&format!("copying path '{path}' from '{mirror_url}'")),
            "{path} not from the mirror:\n{log}"
        );
    }

    // push reports what the build took from the mirror, removes it, and uploads the narinfos
    // that were deleted above again (nothing in the bucket names them now).
    let push = run(nixbucket()
        .envs(s3.env())
        .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
        .arg(&secret)
        .arg("--state-file")
        .arg(tmp.path().join("state.json")));
    assert_ok(&push);
    let log = stderr(&push);
    assert!(
        log.contains("restore: the build took 6 of the 6 paths restored into"),
        "{log}"
    );
    assert!(log.contains("(removed)"), "{log}");
    assert!(!tmp.path().join("mirror").exists());
    for path in &closure {
        assert!(s3.admin().head(s3.bucket(), &narinfo_key(path)).is_some());
    }
}

#[test]
fn the_record_of_the_same_branch_then_the_default_branch_is_restored() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "restore-1");
    let (_, on_main) = pushed_and_deleted(&s3, tmp.path(), &secret, "main", 2);
    let (_, on_dev) = pushed_and_deleted(&s3, tmp.path(), &secret, "dev", 3);
    let (_, on_other) = pushed_and_deleted(&s3, tmp.path(), &secret, "other", 2);
    let conf = NixConfig::new(tmp.path(), BASE_CONF);

    let restore = |branch: Option<&str>, extra: &[&str]| {
        let _ = std::fs::remove_dir_all(tmp.path().join("mirror"));
        let mut cmd = setup(&s3, &conf, tmp.path(), &secret);
        cmd.env("NIXBUCKET_DEFAULT_BRANCH", "main").args(extra);
        if let Some(b) = branch {
            cmd.env("NIXBUCKET_BRANCH", b);
        }
        let out = run(&mut cmd);
        assert_ok(&out);
        (stderr(&out), mirrored(tmp.path()))
    };
    let (log, got) = restore(Some("dev"), &[]);
    assert_eq!(got, hash_parts(&on_dev), "{log}");
    let (log, got) = restore(Some("feature"), &[]);
    assert_eq!(got, hash_parts(&on_main), "{log}");
    assert!(log.contains("from the last job on main"), "{log}");
    let (log, got) = restore(Some("x"), &["--restore-branch", "other"]);
    assert_eq!(got, hash_parts(&on_other), "{log}");
    // A budget of one byte restores nothing, and says why.
    let (log, got) = restore(Some("dev"), &["--restore-max-size", "1"]);
    assert!(got.is_empty(), "{got:?}");
    assert!(
        log.contains("restored 0 of 3 paths") && log.contains("3 over the size budget"),
        "{log}"
    );
    // --no-restore makes no mirror and leaves it out of nix.conf altogether.
    let (log, _) = restore(Some("dev"), &["--no-restore"]);
    assert!(!tmp.path().join("mirror").exists(), "{log}");
    assert!(!log.contains("restored"), "{log}");
    let user_conf = std::fs::read_to_string(conf.user_conf()).unwrap();
    assert!(!user_conf.contains("mirror"), "{user_conf}");
}

#[test]
fn a_bucket_without_usage_records_restores_nothing_and_setup_goes_on() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "restore-1");
    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let out = run(&mut setup(&s3, &conf, tmp.path(), &secret));
    assert_ok(&out);
    assert!(
        stderr(&out).contains("the cache has no usage record yet; nothing to restore"),
        "{}",
        stderr(&out)
    );
    assert!(mirrored(tmp.path()).is_empty());
}

/// A store that stops answering after the bucket check (a hung endpoint; a throttled one
/// retried for minutes looks the same): the restore stops at its deadline, setup ends with the
/// build still pointed at the cache, and nothing half-written is in the mirror.
#[test]
fn a_hung_store_holds_setup_no_longer_than_the_restore_deadline() {
    use common::fault_proxy::{Fault, FaultConfig, FaultProxy};
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "restore-1");
    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let proxy = FaultProxy::start(
        &s3.endpoint(),
        FaultConfig {
            share: 1.0,
            faults: vec![Fault::Stall],
            stall: std::time::Duration::from_secs(120),
            spare_bucket_checks: true,
            ..FaultConfig::mixed(0.0, 5)
        },
    );
    let hung = s3.cache_url().replace(&s3.endpoint(), &proxy.endpoint());
    let started = std::time::Instant::now();
    let cmd = setup(&s3, &conf, tmp.path(), &secret);
    // The same setup, reading the bucket through the proxy.
    let args: Vec<std::ffi::OsString> = cmd
        .get_args()
        .map(|a| {
            if a == std::ffi::OsStr::new(&s3.cache_url()) {
                hung.clone().into()
            } else {
                a.to_owned()
            }
        })
        .collect();
    let mut cmd = conf.nixbucket();
    cmd.envs(s3.env())
        .env_remove("NIXBUCKET_BRANCH")
        .args(&args)
        .args(["--restore-deadline", "3"]);
    let out = run(&mut cmd);
    let took = started.elapsed();
    assert_ok(&out);
    let log = stderr(&out);
    assert!(
        log.contains("restore: stopped at its deadline of 3 s with 0 paths"),
        "{log}"
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "setup took {took:?}"
    );
    let user_conf = std::fs::read_to_string(conf.user_conf()).unwrap();
    assert!(user_conf.contains("extra-substituters = "), "{user_conf}");
    assert!(
        proxy.stats().faults_of(Fault::Stall) >= 1,
        "{:?}",
        proxy.stats()
    );
}

/// A NAR object larger than its narinfo's FileSize (one planted to fill the runner's disk) is
/// read to one byte past that size, refused, and left to the cache; the rest is restored.
#[test]
fn a_nar_larger_than_its_narinfo_says_is_read_one_byte_past_it_and_left_to_the_cache() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "restore-1");
    let (_, closure) = pushed_and_deleted(&s3, tmp.path(), &secret, "dev", 3);
    let narinfo = s3
        .admin()
        .get(s3.bucket(), &narinfo_key(&closure[0]))
        .unwrap();
    let narinfo = String::from_utf8(narinfo).unwrap();
    let field = |name: &str| {
        narinfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .to_owned()
    };
    let (url, size) = (field("URL: "), field("FileSize: ").parse::<u64>().unwrap());
    let object = s3.object_path(&url);
    let mut planted = std::fs::read(&object).unwrap();
    planted.resize(planted.len() + (8 << 20), 0);
    std::fs::write(&object, planted).unwrap();

    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let out = run(setup(&s3, &conf, tmp.path(), &secret).env("NIXBUCKET_BRANCH", "dev"));
    assert_ok(&out);
    let log = stderr(&out);
    assert!(
        log.contains(&format!("{url} has {} bytes, not {size}", size + 1)),
        "{log}"
    );
    assert!(log.contains("restored 2 of 3 paths"), "{log}");
    let temps: Vec<_> = std::fs::read_dir(tmp.path().join("mirror"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

/// A mirror on a small disk: the restore takes at most a quarter of what is free there, the
/// smallest paths first, and says so; the build gets the rest from the cache. The disk is a
/// 4 MiB tmpfs in a mount namespace of setup's own, gone when it ends.
#[test]
fn on_a_small_disk_the_restore_takes_a_quarter_of_what_is_free() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "restore-1");
    // Three paths of 700 KB of random bytes each (zstd cannot make them smaller) below a top.
    pushed_and_deleted_made_by(&s3, tmp.path(), &secret, "dev", 4, |i| {
        format!("head -c {} /dev/urandom > $out", 700_000 + i * 1000)
    });
    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let setup = setup(&s3, &conf, &small, &secret);
    // The mount must not reach the machine's namespace: private propagation, or where "/" is
    // no mount point (a Debian root of the test script, itself in a private namespace) the
    // propagation that namespace already has.
    let in_namespace = |propagation: &str| {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", propagation, "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size=4m tmpfs "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(&small)
            .arg(setup.get_program())
            .args(setup.get_args());
        for (key, value) in setup.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.env("NIXBUCKET_BRANCH", "dev");
        run(&mut cmd)
    };
    let mut out = in_namespace("private");
    if stderr(&out).contains("cannot change root filesystem propagation") {
        out = in_namespace("unchanged");
    }
    assert_ok(&out);
    let log = stderr(&out);
    assert!(
        log.contains("free where the mirror is; restoring at most 1"),
        "{log}"
    );
    // One blob fits in a quarter of 4 MiB, beside the small top path.
    assert!(log.contains("restored 2 of 4 paths"), "{log}");
}

/// A narinfo without FileSize gives no bound to read its NAR against: its path is left to Nix
/// as a large one, whatever its NarSize says.
#[test]
fn a_narinfo_without_file_size_is_left_to_nix() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(tmp.path(), "restore-1");
    let (_, closure) = pushed_and_deleted(&s3, tmp.path(), &secret, "dev", 3);
    let object = s3.object_path(&narinfo_key(&closure[0]));
    let narinfo = std::fs::read_to_string(&object).unwrap();
    let without: String = narinfo
        .lines()
        .filter(|l| !l.starts_with("FileSize: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, narinfo);
    std::fs::write(&object, without).unwrap();
    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let out = run(setup(&s3, &conf, tmp.path(), &secret).env("NIXBUCKET_BRANCH", "dev"));
    assert_ok(&out);
    let log = stderr(&out);
    assert!(
        log.contains("restored 2 of 3 paths") && log.contains("1 large, left to Nix"),
        "{log}"
    );
}
