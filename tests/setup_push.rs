//! `setup` → build → `push` with the real Nix. These tests diff the shared /nix/store, so the
//! test script runs this binary on its own, one test at a time (see scripts/test.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::nix::{NixConfig, build_closure, derivation, nonce, query_closure, start_daemon};
use common::{assert_fails, assert_ok, keygen, list_files, nixbucket, run, stderr, stdout};

const BASE_CONF: &str = "# base settings of the test machine\nsubstituters =\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group =\n";

fn write_expr(dir: &Path, expr: &str) -> PathBuf {
    let file = dir.join(format!("{}.nix", nonce()));
    std::fs::write(&file, expr).unwrap();
    file
}

fn pushed_store_paths(cache: &Path) -> Vec<String> {
    let mut paths: Vec<String> = list_files(cache)
        .iter()
        .filter(|f| f.ends_with(".narinfo"))
        .map(|f| {
            let text = std::fs::read_to_string(cache.join(f)).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("StorePath: "))
                .unwrap()
                .to_owned()
        })
        .collect();
    paths.sort();
    paths
}

/// One CI job's view: a Nix configuration of its own, a key, a `file://` cache and the state
/// file that `setup` writes and `push` reads.
struct Job {
    tmp: tempfile::TempDir,
    conf: NixConfig,
    secret: PathBuf,
    public: String,
    cache: PathBuf,
    url: String,
    state: PathBuf,
}

impl Job {
    fn new() -> Job {
        let tmp = tempfile::tempdir().unwrap();
        let conf = NixConfig::new(tmp.path(), BASE_CONF);
        let (secret, public) = keygen(tmp.path(), "ours-1");
        let cache = tmp.path().join("cache");
        let url = format!("file://{}", cache.display());
        let state = tmp.path().join("state.json");
        Job {
            tmp,
            conf,
            secret,
            public,
            cache,
            url,
            state,
        }
    }

    /// `nixbucket ACTION --cache URL --signing-key-file KEY --state-file STATE EXTRA…`.
    fn run(&self, action: &str, extra: &[&str]) -> std::process::Output {
        run(self
            .conf
            .nixbucket()
            .args([action, "--cache", &self.url, "--signing-key-file"])
            .arg(&self.secret)
            .arg("--state-file")
            .arg(&self.state)
            .args(extra))
    }

    fn setup(&self) -> std::process::Output {
        self.run("setup", &[])
    }

    fn push(&self, extra: &[&str]) -> std::process::Output {
        self.run("push", extra)
    }
}

#[test]
fn pushes_exactly_what_the_build_made_and_nothing_on_a_second_cycle() {
    let job = Job::new();
    let (tmp, cache) = (&job.tmp, &job.cache);
    let setup = || job.setup();
    let push = || job.push(&[]);

    assert_ok(&setup());
    let [app, lib, data] = build_closure(tmp.path(), &nonce());
    let out = push();
    assert_ok(&out);
    let mut expected = vec![app.clone(), lib, data];
    expected.sort();
    assert_eq!(pushed_store_paths(cache), expected, "{}", stderr(&out));

    assert_ok(&setup());
    let again = push();
    assert_ok(&again);
    assert!(
        stderr(&again).contains("pushed 0 paths"),
        "{}",
        stderr(&again)
    );
    assert_eq!(pushed_store_paths(cache).len(), 3);
}

#[test]
fn editing_nix_conf_is_idempotent_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let user_before = "# my own comment\nkeep-outputs = true\n";
    std::fs::write(conf.user_conf(), user_before).unwrap();
    let (_, public) = keygen(tmp.path(), "ours-1");
    let url = format!("file://{}", tmp.path().join("cache").display());
    let setup = || {
        run(conf
            .nixbucket()
            .args([
                "setup",
                "--cache",
                &url,
                "--public-key",
                &public,
                "--state-file",
            ])
            .arg(tmp.path().join("s.json")))
    };
    assert_ok(&setup());
    let once = std::fs::read_to_string(conf.user_conf()).unwrap();
    assert!(once.starts_with(user_before), "{once}");
    assert_eq!(once.matches(&url).count(), 1, "{once}");
    assert!(
        once.contains(&format!("extra-trusted-public-keys = {public}")),
        "{once}"
    );
    let second = setup();
    assert_ok(&second);
    assert!(
        stderr(&second).contains("already configured"),
        "{}",
        stderr(&second)
    );
    assert_eq!(std::fs::read_to_string(conf.user_conf()).unwrap(), once);
    assert_eq!(
        std::fs::read_to_string(conf.dir.join("etc/nix.conf")).unwrap(),
        BASE_CONF,
        "system conf touched"
    );

    let shown = run(conf.nix("nix").args(["show-config"]));
    assert!(
        stdout(&shown)
            .lines()
            .any(|l| l.starts_with("substituters = ") && l.contains(&url)),
        "{}",
        stdout(&shown)
    );
}

#[test]
fn a_path_substituted_from_another_cache_is_not_pushed() {
    let tmp = tempfile::tempdir().unwrap();
    let tag = nonce();
    // An "upstream" cache holding `base`, signed by a key that is not ours.
    let (up_secret, up_public) = keygen(tmp.path(), "upstream-1");
    let upstream = format!("file://{}", tmp.path().join("upstream").display());
    let base_expr = derivation(&format!("base-{tag}"), &format!("echo {tag} > $out"));
    let base = common::nix::build(tmp.path(), &base_expr);
    assert_ok(&run(nixbucket()
        .args(["push", "--cache", &upstream, "--signing-key-file"])
        .arg(&up_secret)
        .arg(&base)));
    assert_ok(&run(
        common::nix::nix_command("nix-store").args(["--delete", &base])
    ));

    let conf = NixConfig::new(
        tmp.path(),
        &format!("{BASE_CONF}extra-substituters = {upstream}\ntrusted-public-keys = {up_public}\n"),
    );
    let (secret, _) = keygen(tmp.path(), "ours-1");
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    let state = tmp.path().join("state.json");
    assert_ok(&run(conf
        .nixbucket()
        .args(["setup", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg("--state-file")
        .arg(&state)));

    let app_expr = format!(
        "let base = {base_expr}; in {}",
        derivation(&format!("app-{tag}"), "echo ${base} > $out")
    );
    let built = run(conf
        .nix("nix-build")
        .arg("--no-out-link")
        .arg(write_expr(tmp.path(), &app_expr)));
    assert_ok(&built);
    assert!(
        stderr(&built).contains(&format!("copying path '{base}' from '{upstream}'")),
        "{}",
        stderr(&built)
    );
    let app = stdout(&built).trim().to_owned();

    let dry = run(conf
        .nixbucket()
        .args(["push", "--dry-run", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg("--state-file")
        .arg(&state));
    assert_ok(&dry);
    assert!(
        stdout(&dry).contains(&format!(
            "skip {base}: served upstream (signed by upstream-1)"
        )),
        "{}",
        stdout(&dry)
    );
    assert!(
        stdout(&dry).contains(&format!("skip {}", app_drv(&app)))
            || stdout(&dry).contains(".drv: a derivation"),
        "{}",
        stdout(&dry)
    );

    let out = run(conf
        .nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg("--state-file")
        .arg(&state));
    assert_ok(&out);
    assert_eq!(pushed_store_paths(&cache), vec![app], "{}", stderr(&out));
}

fn app_drv(app: &str) -> String {
    let out = run(common::nix::nix_command("nix-store").args(["-q", "--deriver", app]));
    stdout(&out).trim().to_owned()
}

#[test]
fn a_store_configured_by_setup_alone_substitutes_instead_of_building() {
    let tmp = tempfile::tempdir().unwrap();
    let tag = nonce();
    let (secret, _) = keygen(tmp.path(), "ours-1");
    let url = format!("file://{}", tmp.path().join("cache").display());
    let expr_file = write_expr(
        tmp.path(),
        &format!(
            "let dep = {}; in {}",
            derivation(&format!("dep-{tag}"), "echo dep > $out"),
            derivation(&format!("top-{tag}"), "echo ${dep} > $out")
        ),
    );
    let first = run(common::nix::nix_command("nix-build")
        .arg("--no-out-link")
        .arg(&expr_file));
    assert_ok(&first);
    let top = stdout(&first).trim().to_owned();
    let closure = query_closure(&top);
    assert_ok(&run(nixbucket()
        .args(["push", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg(&top)));
    assert_ok(&run(common::nix::nix_command("nix-store")
        .arg("--delete")
        .args(&closure)));
    assert!(!Path::new(&top).exists());

    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    let setup = run(conf
        .nixbucket()
        .args(["setup", "--cache", &url, "--signing-key-file"])
        .arg(&secret)
        .arg("--state-file")
        .arg(tmp.path().join("s.json")));
    assert_ok(&setup);
    let rebuilt = run(conf.nix("nix-build").arg("--no-out-link").arg(&expr_file));
    assert_ok(&rebuilt);
    let log = stderr(&rebuilt);
    assert!(
        log.contains(&format!("copying path '{top}' from '{url}'")),
        "{log}"
    );
    assert!(
        !log.contains("building '"),
        "built instead of substituting:\n{log}"
    );
}

#[test]
fn an_untrusted_user_gets_told_why_and_what_to_add() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = NixConfig::new(tmp.path(), BASE_CONF);
    for dir in [conf.dir.clone(), conf.dir.join("etc")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    run(Command::new("chown")
        .args(["nobody:nogroup"])
        .arg(&home)
        .arg(conf.dir.join("user")));
    let daemon = start_daemon(&conf.system_conf_dir(), tmp.path());
    let (_, public) = keygen(tmp.path(), "ours-1");
    let url = format!("file://{}", tmp.path().join("cache").display());

    // A copy `nobody` can reach wherever the checkout lives (CI may clone under a 0700 dir).
    let binary = tmp.path().join("nixbucket");
    std::fs::copy(env!("CARGO_BIN_EXE_nixbucket"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut as_nobody = Command::new("setpriv");
    as_nobody
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(&binary);
    let out = run(conf
        .apply(&mut as_nobody)
        .env("NIX_REMOTE", "daemon")
        .env("NIX_DAEMON_SOCKET_PATH", &daemon.socket)
        .env("HOME", &home)
        .env("PATH", "/usr/bin:/bin")
        .args([
            "setup",
            "--cache",
            &url,
            "--public-key",
            &public,
            "--state-file",
        ])
        .arg(home.join("state.json")));
    let err = assert_fails(&out);
    assert!(err.contains("does not trust user \"nobody\""), "{err}");
    assert!(
        err.contains(&format!("extra-substituters = {url}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("extra-trusted-public-keys = {public}")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(conf.dir.join("etc/nix.conf")).unwrap(),
        BASE_CONF
    );
}

/// Builds the expression in `file`, which must fail; returns its derivation.
fn build_and_fail(file: &Path) -> String {
    let drv = stdout(&run(common::nix::nix_command("nix-instantiate").arg(file)))
        .trim()
        .to_owned();
    assert_fails(&run(common::nix::nix_command("nix-build")
        .arg("--no-out-link")
        .arg(file)));
    drv
}

/// The logs of the job's builds land in the cache, failed builds' too, where `nix log --store`
/// reads them: by the output of a build that succeeded (through its narinfo's Deriver), and by
/// the derivation of one that failed. `--no-build-logs` uploads none.
#[test]
fn build_logs_are_read_back_by_nix_log_for_outputs_and_failed_derivations() {
    let job = Job::new();
    let (tmp, cache, url) = (&job.tmp, &job.cache, &job.url);
    let cycle = |extra: &[&str]| {
        assert_ok(&job.setup());
        let tag = nonce();
        let built = common::nix::build(
            tmp.path(),
            &derivation(
                &format!("logged-{tag}"),
                &format!("echo built-{tag}-fine; echo {tag} > $out"),
            ),
        );
        let failing = write_expr(
            tmp.path(),
            &derivation(
                &format!("failing-{tag}"),
                &format!("echo failed-{tag}-because >&2; exit 1"),
            ),
        );
        let drv = build_and_fail(&failing);
        let push = job.push(extra);
        assert_ok(&push);
        (tag, built, drv, stderr(&push))
    };
    let nix_log =
        |path: &str| run(common::nix::nix_command("nix").args(["log", "--store", url, path]));

    let (tag, built, drv, pushed) = cycle(&[]);
    assert!(pushed.contains("2 build logs"), "{pushed}");
    assert!(
        pushed.contains(&format!(
            "build failed: {drv}; read its log with nix log --store '{url}' {drv}"
        )),
        "{pushed}"
    );
    let by_output = nix_log(&built);
    assert_ok(&by_output);
    assert!(
        stdout(&by_output).contains(&format!("built-{tag}-fine")),
        "{}",
        stdout(&by_output)
    );
    let by_drv = nix_log(&drv);
    assert_ok(&by_drv);
    assert!(
        stdout(&by_drv).contains(&format!("failed-{tag}-because")),
        "{}",
        stdout(&by_drv)
    );
    let base = &drv["/nix/store/".len()..];
    assert!(cache.join("log").join(base).is_file());

    let (_, _, drv, pushed) = cycle(&["--no-build-logs"]);
    assert!(!pushed.contains("build logs"), "{pushed}");
    assert!(!pushed.contains("build failed"), "{pushed}");
    assert!(!cache.join("log").join(&drv["/nix/store/".len()..]).exists());
}

/// Another team's cache given to setup with `--extra-cache URL KEY`: Nix substitutes from it
/// after ours (directly, or through the background server, which fronts it), and push leaves
/// out what it served.
#[rstest::rstest]
#[case::direct(false)]
#[case::served(true)]
fn another_teams_cache_is_read_after_ours_and_not_pushed_to(#[case] serve: bool) {
    let job = Job::new();
    let tmp = job.tmp.path();
    let tag = nonce();
    let (team_secret, team_public) = keygen(tmp, "team-1");
    let team = format!("file://{}", tmp.join("team").display());
    let base_expr = derivation(&format!("team-base-{tag}"), &format!("echo {tag} > $out"));
    let base = common::nix::build(tmp, &base_expr);
    assert_ok(&run(nixbucket()
        .args(["push", "--cache", &team, "--signing-key-file"])
        .arg(&team_secret)
        .arg(&base)));
    assert_ok(&run(
        common::nix::nix_command("nix-store").args(["--delete", &base])
    ));

    let extra = format!("{team} {team_public}");
    let mut setup = vec!["--extra-cache", &extra];
    if serve {
        setup.push("--serve");
    }
    assert_ok(&job.run("setup", &setup));
    let conf = std::fs::read_to_string(job.conf.user_conf()).unwrap_or_default()
        + &std::fs::read_to_string(job.conf.system_conf_dir().join("nix.conf")).unwrap();
    assert!(conf.contains(&team_public), "{conf}");
    assert_eq!(conf.contains(&team), !serve, "{conf}");

    let app_expr = format!(
        "let base = {base_expr}; in {}",
        derivation(&format!("team-app-{tag}"), "echo ${base} > $out")
    );
    let built = run(job
        .conf
        .nix("nix-build")
        .arg("--no-out-link")
        .arg(write_expr(tmp, &app_expr)));
    assert_ok(&built);
    assert!(
        stderr(&built).contains(&format!("copying path '{base}' from")),
        "{}",
        stderr(&built)
    );
    let app = stdout(&built).trim().to_owned();

    let out = job.push(&["--no-build-logs"]);
    assert_ok(&out);
    assert_eq!(
        pushed_store_paths(&job.cache),
        vec![app],
        "{}",
        stderr(&out)
    );
}

/// A content-addressed build pushed after setup carries the realisations of its derivations
/// as instantiated (what another job's Nix asks the cache about first) beside the resolved
/// ones, signed: `nix copy --from` the cache into a store that requires signatures finds
/// them all (it writes a realisation it misses to the cache), takes them when our key is
/// trusted, and refuses them when only another key is.
#[test]
fn content_addressed_builds_are_copied_back_through_signed_realisations() {
    let job = Job::new();
    let tmp = job.tmp.path();
    assert_ok(&job.setup());
    let tag = nonce();
    let ca = |name: &str, script: &str| {
        format!(
            r#"builtins.derivation {{ name = "{name}-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" ''{script}'']; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }}"#
        )
    };
    let file = write_expr(
        tmp,
        &format!(
            "let dep = {}; in {}",
            ca("ca-dep", &format!("echo {tag} > $out")),
            ca("ca-top", "echo ${dep} > $out")
        ),
    );
    let features = "experimental-features = nix-command ca-derivations";
    let built = run(job
        .conf
        .nix("nix-build")
        .env("NIX_CONFIG", features)
        .arg("--no-out-link")
        .arg(&file));
    assert_ok(&built);
    let top = stdout(&built).trim().to_owned();

    // A user of content-addressed derivations has the feature on for every Nix command.
    let pushed = run(job
        .conf
        .nixbucket()
        .env("NIX_CONFIG", features)
        .args(["push", "--cache", &job.url, "--signing-key-file"])
        .arg(&job.secret)
        .arg("--state-file")
        .arg(&job.state));
    assert_ok(&pushed);
    let realisations = || {
        list_files(&job.cache)
            .into_iter()
            .filter(|k| k.starts_with("realisations/") || k.starts_with("build-trace-v2/"))
            .collect::<Vec<_>>()
    };
    let before = realisations();
    // Up to Nix 2.34, three: the dependency has no inputs to resolve, so its two derivations
    // are one, and top's instantiated and resolved derivations each have one. From 2.35 on
    // (build-trace-v2/), Nix keys a realisation by the derivation it built alone: two.
    let expected = if before.iter().any(|k| k.starts_with("build-trace-v2/")) {
        2
    } else {
        3
    };
    assert!(
        stderr(&pushed).contains(&format!("; {expected} realisations")),
        "{}",
        stderr(&pushed)
    );
    assert_eq!(before.len(), expected, "{before:?}");

    let verify = run(job.conf.nixbucket().args([
        "verify",
        "--cache",
        &job.url,
        "--public-key",
        &job.public,
    ]));
    assert_ok(&verify);
    assert!(
        stderr(&verify).contains(&format!("and {expected} realisations: 0 problems")),
        "{}",
        stderr(&verify)
    );
    let copy = |trusted: &str, store: &str| {
        run(job
            .conf
            .nix("nix")
            .env("NIX_CONFIG", features)
            .args(["copy", "--from", &job.url, "--to"])
            .arg(tmp.join(store))
            .args(["--option", "require-sigs", "true"])
            .args(["--option", "trusted-public-keys", trusted, "-f"])
            .arg(&file))
    };
    assert_ok(&copy(&job.public, "copied"));
    assert!(tmp.join("copied").join(&top[1..]).exists());
    // Nix writes the derivations it evaluates to the `--from` store, and a realisation it
    // asked for and resolved itself; none of the latter means it found them all.
    assert_eq!(realisations(), before, "Nix added a realisation");
    let (_, other) = keygen(tmp, "other-1");
    let refused = copy(&other, "refused");
    assert!(
        !refused.status.success() && stderr(&refused).contains("cannot register realisation"),
        "{}",
        stderr(&refused)
    );
}

/// A build that fails with its checkout as a source (`src = ./.`), untracked `.env` and all:
/// push uploads its log, and neither the source nor the derivation that names it. Nix 2.8
/// then finds no log for the derivation in the cache (it wants the derivation there); 2.26
/// and later read the log by the derivation's name alone.
#[test]
fn a_failed_build_s_sources_never_reach_the_cache() {
    let job = Job::new();
    let (tmp, cache, url) = (&job.tmp, &job.cache, &job.url);
    assert_ok(&job.setup());
    let tag = nonce();
    let checkout = tmp.path().join(format!("checkout-{tag}"));
    std::fs::create_dir(&checkout).unwrap();
    let secret = format!("AWS_SECRET_ACCESS_KEY=never-in-the-cache-{tag}");
    std::fs::write(checkout.join(".env"), &secret).unwrap();
    std::fs::write(checkout.join("main.c"), "int main() {}").unwrap();
    let failing = write_expr(
        tmp.path(),
        &format!(
            r#"builtins.derivation {{ name = "failing-src-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; src = {}; args = ["-c" "echo failed-{tag}-here >&2; exit 1"]; }}"#,
            checkout.display()
        ),
    );
    let drv = build_and_fail(&failing);
    let push = job.push(&[]);
    assert_ok(&push);
    let pushed = stderr(&push);
    assert!(
        pushed.contains(&format!(
            "the derivation of the failed build {drv} is not pushed, only its log"
        )),
        "{pushed}"
    );
    for file in list_files(cache) {
        let bytes = std::fs::read(cache.join(&file)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&format!("never-in-the-cache-{tag}")),
            "{file} holds the secret"
        );
    }
    let base = &drv["/nix/store/".len()..];
    assert!(cache.join("log").join(base).is_file(), "no log of {drv}");
    assert!(!cache.join(format!("{}.narinfo", &base[..32])).exists());
    // What each Nix makes of a log whose derivation the cache lacks.
    let by_drv = run(common::nix::nix_command("nix").args(["log", "--store", url, &drv]));
    let version = run(common::nix::nix_command("nix").arg("--version"));
    eprintln!(
        "{}: nix log by the derivation: {:?}",
        stdout(&version).trim(),
        by_drv.status
    );
    // Measured: 2.8 fails; 2.26, 2.34 and 2.35 read the log.
    if stdout(&version).contains(" 2.8.") {
        assert!(!by_drv.status.success(), "{}", stdout(&by_drv));
    } else {
        assert_ok(&by_drv);
        assert!(stdout(&by_drv).contains(&format!("failed-{tag}-here")));
    }
}

/// Two failed builds that share an input derivation: each failed derivation goes up with its
/// input derivations, the shared one once (pushing it twice stopped the whole push).
#[test]
fn two_failed_builds_sharing_an_input_derivation_push_it_once() {
    let job = Job::new();
    let tmp = &job.tmp;
    assert_ok(&job.setup());
    let tag = nonce();
    let shared = derivation(&format!("shared-{tag}"), "echo shared > $out");
    let failing = |name: &str| {
        write_expr(
            tmp.path(),
            &format!(
                "let shared = {shared}; in {}",
                derivation(
                    &format!("{name}-{tag}"),
                    &format!("echo ${{shared}} {name}-failed >&2; exit 1")
                )
            ),
        )
    };
    let (one, two) = (failing("one"), failing("two"));
    let drvs = [build_and_fail(&one), build_and_fail(&two)];
    let push = job.push(&[]);
    assert_ok(&push);
    let pushed = stderr(&push);
    for drv in &drvs {
        assert!(pushed.contains(&format!("build failed: {drv}")), "{pushed}");
        let narinfo = job
            .cache
            .join(format!("{}.narinfo", &drv["/nix/store/".len()..][..32]));
        assert!(narinfo.is_file(), "{drv} was not pushed:\n{pushed}");
    }
}
