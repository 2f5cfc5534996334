//! The job as CI runners run it: a root nix-daemon, and the job as an unprivileged user that
//! the daemon trusts or does not. setup, build, push and substitution, for a `file://` cache
//! and an `s3://` one (through `serve`: the daemon has no AWS credentials). The test script
//! runs this binary on every Nix version, one test at a time (they diff the shared store).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::machine::{Machine, set_mode};
use common::nix::{derivation, nonce, query_closure};
use common::s3::S3Server;
use common::store::S3Store;
use common::{assert_fails, assert_ok, keygen, run, stderr, stdout};

const BASE_CONF: &str = common::NIX_CONFIG;

/// A job that runs as `nobody` on a [`Machine`], with an environment of its own.
struct Job {
    machine: Machine,
    env: Vec<(String, String)>,
}

impl std::ops::Deref for Job {
    type Target = Machine;

    fn deref(&self) -> &Machine {
        &self.machine
    }
}

impl Job {
    /// `nixbucket serve` processes of this job still running (`ps` lines; empty if none),
    /// known by the address file under this job's folder on their command line: a server another
    /// test left behind does not count here.
    fn servers(&self) -> String {
        let ready = format!(
            "serve .*{}/.*nixbucket-serve.addr",
            self.tmp.path().display()
        );
        let found = run(Command::new("pgrep").args(["-f", &ready]));
        let pids = stdout(&found)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(",");
        if pids.is_empty() {
            return String::new();
        }
        stdout(&run(Command::new("ps").args([
            "-o",
            "pid,user,etime,args",
            "-p",
            &pids,
        ])))
    }

    fn new(daemon_conf: &str) -> Job {
        Job {
            machine: Machine::new(daemon_conf),
            env: Vec::new(),
        }
    }

    /// `program` as `nobody`, through the daemon, with only the job's own environment.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = self.command_as("nobody", program);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn nixbucket(&self, args: &[&str]) -> Output {
        let state = self.home.join("state.json");
        run(self
            .command(&self.binary)
            .args(args)
            .arg("--state-file")
            .arg(state))
    }

    fn build(&self, expr: &Path) -> Output {
        run(self
            .command(Path::new("/usr/bin/nix-build"))
            .arg("--no-out-link")
            .arg(expr))
    }
}

/// An expression for dep → top, two paths new to the store.
fn two_paths(job: &Job) -> PathBuf {
    let tag = nonce();
    let expr = format!(
        "let dep = {}; in {}",
        derivation(&format!("dep-{tag}"), "echo dep > $out"),
        derivation(&format!("top-{tag}"), "echo ${dep} > $out")
    );
    job.give(&format!("{tag}.nix"), &expr)
}

fn delete_from_store(paths: &[String]) {
    let out = run(common::nix::nix_command("nix-store")
        .arg("--delete")
        .args(paths));
    assert_ok(&out);
}

/// An earlier, trusted job (root, outside the daemon) built two paths and pushed them to `url`
/// with `env`; they are gone from the store now. The expression and the top path.
fn pushed_by_an_earlier_job(
    job: &Job,
    url: &str,
    secret: &Path,
    env: &[(String, String)],
) -> (PathBuf, String) {
    let expr = two_paths(job);
    let built = run(common::nix::nix_command("nix-build")
        .arg("--no-out-link")
        .arg(&expr));
    assert_ok(&built);
    let top = stdout(&built).trim().to_owned();
    assert_ok(&run(common::nixbucket()
        .envs(env.iter().cloned())
        .args(["push", "--cache", url, "--signing-key-file"])
        .arg(secret)
        .arg(&top)));
    delete_from_store(&outputs(&top));
    (expr, top)
}

/// The outputs among the closure of `top`, not the derivations.
fn outputs(top: &str) -> Vec<String> {
    query_closure(top)
        .into_iter()
        .filter(|p| !p.ends_with(".drv"))
        .collect()
}

/// One job and the next, as `nobody` through the daemon: setup, build, push (2 paths); then the
/// paths are gone, setup again, and the build substitutes them from a substituter whose URL
/// starts with `from` instead of building; the second push finds nothing new.
fn two_jobs(job: &Job, setup: &[&str], cache: &str, from: &str) {
    let (secret, _) = keygen(job.tmp.path(), "ours-1");
    let secret = job.give("key.sec", &std::fs::read_to_string(secret).unwrap());
    let key = [
        "--cache",
        cache,
        "--signing-key-file",
        secret.to_str().unwrap(),
    ];
    let setup: Vec<&str> = setup.iter().chain(&key).copied().collect();
    let push: Vec<&str> = ["push"].iter().chain(&key).copied().collect();
    let push_reports = |count: usize| {
        let out = job.nixbucket(&push);
        assert_ok(&out);
        let log = stderr(&out);
        assert!(log.contains(&format!("pushed {count} paths")), "{log}");
    };

    assert_ok(&job.nixbucket(&setup));
    if setup.contains(&"--serve") {
        assert_ne!(
            job.servers(),
            "",
            "the probe finds the server setup started"
        );
    }
    let expr = two_paths(job);
    let built = job.build(&expr);
    assert_ok(&built);
    let top = stdout(&built).trim().to_owned();
    push_reports(2);

    delete_from_store(&outputs(&top));
    assert_ok(&job.nixbucket(&setup));
    let again = job.build(&expr);
    assert_ok(&again);
    let log = stderr(&again);
    assert!(
        log.contains(&format!("copying path '{top}' from '{from}")),
        "{log}"
    );
    assert!(!log.contains("building '"), "built instead:\n{log}");
    push_reports(0);
    assert_eq!(job.servers(), "", "push left a server of this job running");
}

#[test]
fn a_trusted_job_sets_up_builds_pushes_and_substitutes_from_a_file_cache() {
    let job = Job::new(&format!("{BASE_CONF}trusted-users = root nobody\n"));
    let cache_dir = job.home.join("cache-dir");
    let url = format!("file://{}", cache_dir.display());
    two_jobs(&job, &["setup"], &url, &format!("{url}'"));
    // setup laid the cache out as the job's user, so the root daemon that read it created
    // nothing there, and every NAR is the job's.
    for entry in [
        "nix-cache-info",
        "nar",
        "log",
        "realisations",
        "build-trace-v2",
    ] {
        let meta = std::fs::metadata(cache_dir.join(entry)).unwrap();
        assert_eq!(meta.uid(), job.uid, "{entry} is not the job's");
    }
    for nar in std::fs::read_dir(cache_dir.join("nar")).unwrap() {
        let nar = nar.unwrap();
        assert_eq!(nar.metadata().unwrap().uid(), job.uid, "{:?}", nar.path());
    }
}

#[test]
fn a_trusted_job_pushes_to_s3_and_the_daemon_substitutes_through_serve() {
    let mut job = Job::new(&format!("{BASE_CONF}trusted-users = root nobody\n"));
    let s3 = S3Server::start();
    // Only the job has credentials: the daemon's environment has none (start_daemon). Plain
    // setup chooses the server itself.
    job.env = s3.env();
    two_jobs(
        &job,
        &["setup", "--no-restore"],
        &s3.cache_url(),
        "http://127.0.0.1:",
    );
}

/// What earlier jobs left in the bucket for the next one: main's last job used `small` and
/// `big`, a NAR over the restore's size limit; a job of another branch pushed `other`. All three
/// are gone from the store again. Returns [small, big, other].
fn left_by_earlier_jobs(job: &Job, s3: &S3Server, secret: &Path) -> [String; 3] {
    let tag = nonce();
    let build_as_root = |expr: String| {
        let file = job.give(&format!("{}.nix", nonce()), &expr);
        let built = run(common::nix::nix_command("nix-build")
            .arg("--no-out-link")
            .arg(&file));
        assert_ok(&built);
        stdout(&built).trim().to_owned()
    };
    let small = build_as_root(derivation(&format!("small-{tag}"), "echo small > $out"));
    // Random bytes: zstd cannot shrink them under the restore's limit either.
    let big = build_as_root(derivation(
        &format!("big-{tag}"),
        "head -c 36000000 /dev/urandom > $out",
    ));
    let other = build_as_root(derivation(&format!("other-{tag}"), "echo other > $out"));
    let push_on = |branch: &str, paths: &[&String]| {
        assert_ok(&run(common::nixbucket()
            .envs(s3.env())
            .env("NIXBUCKET_BRANCH", branch)
            .args(["push", "--cache", &s3.cache_url(), "--signing-key-file"])
            .arg(secret)
            .args(paths)));
    };
    push_on("main", &[&small, &big]);
    push_on("feature", &[&other]);
    delete_from_store(&[small.clone(), big.clone(), other.clone()]);
    [small, big, other]
}

/// The job (through the daemon) realises what [`left_by_earlier_jobs`] left: `small` from the
/// restore's mirror, `big` and `other` through the server on loopback, none of them built.
fn substitutes_what_the_restore_left(job: &Job, [small, big, other]: &[String; 3]) {
    let realised = run(job
        .command(Path::new("/usr/bin/nix-store"))
        .arg("--realise")
        .args([small, big, other]));
    assert_ok(&realised);
    let log = stderr(&realised);
    assert!(
        log.contains(&format!("copying path '{small}' from 'file://")),
        "the restored path did not come from the mirror:\n{log}"
    );
    for path in [big, other] {
        assert!(
            log.contains(&format!("copying path '{path}' from 'http://127.0.0.1:")),
            "{path} did not come through the server:\n{log}"
        );
    }
    assert!(!log.contains("building '"), "built instead:\n{log}");
}

/// The shape users start from: the standard installers give the job a root nix-daemon with no
/// AWS credentials, and the job runs `setup` with no flags against a store that takes only
/// signed requests. The restore takes what main's last job used, but not a NAR over its size
/// limit nor a path another branch pushed: the daemon substitutes those through the server
/// setup chose to start, and builds none of them.
#[test]
fn default_setup_lets_a_daemon_without_credentials_substitute_what_the_restore_left() {
    let mut job = Job::new(&format!("{BASE_CONF}trusted-users = root nobody\n"));
    let s3 = S3Server::start();
    job.env = s3.env();
    job.env.push(("NIXBUCKET_BRANCH".into(), "main".into()));
    let (secret, _) = keygen(job.tmp.path(), "ours-1");
    let secret = job.give("key.sec", &std::fs::read_to_string(secret).unwrap());
    let paths = left_by_earlier_jobs(&job, &s3, &secret);

    let key = [
        "--cache",
        &s3.cache_url(),
        "--signing-key-file",
        secret.to_str().unwrap(),
    ];
    let setup: Vec<&str> = ["setup"].iter().chain(&key).copied().collect();
    let setup = job.nixbucket(&setup);
    assert_ok(&setup);
    let log = stderr(&setup);
    assert!(
        log.contains("through a nixbucket serve of this job")
            && log.contains("serve: auto, the nix-daemon"),
        "setup did not say it serves the daemon, and why:\n{log}"
    );
    assert!(log.contains("restored 1 of "), "{log}");
    substitutes_what_the_restore_left(&job, &paths);
    let push: Vec<&str> = ["push"].iter().chain(&key).copied().collect();
    assert_ok(&job.nixbucket(&push));
    assert_eq!(job.servers(), "", "push left a server of this job running");
}

/// The inputs of action.yml with their defaults, as the runner sets them (`INPUT_NAME`, empty
/// where there is no default), read from the action's own file.
fn action_defaults() -> Vec<(String, String)> {
    let action =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/action.yml")).unwrap();
    let mut inputs: Vec<(String, String)> = Vec::new();
    let mut in_inputs = false;
    for line in action.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_inputs = line == "inputs:";
            continue;
        }
        if !in_inputs {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if !name.starts_with(' ') {
                inputs.push((format!("INPUT_{}", name.to_uppercase()), String::new()));
            }
        } else if let Some(value) = line.strip_prefix("    default: ") {
            inputs.last_mut().unwrap().1 = value.trim_matches('"').to_owned();
        }
    }
    assert!(inputs.len() > 10, "{inputs:?}");
    inputs
}

/// The same shape through the GitHub Action: its main and post steps run by node as the
/// unprivileged job, with the defaults of action.yml and only `cache` and `signing-key` given,
/// static AWS keys in the job's environment and none in the daemon's.
#[test]
fn the_action_with_default_inputs_lets_a_daemon_without_credentials_substitute_what_the_restore_left()
 {
    let job = Job::new(&format!("{BASE_CONF}trusted-users = root nobody\n"));
    let s3 = S3Server::start();
    let (secret, _) = keygen(job.tmp.path(), "ours-1");
    let key_text = std::fs::read_to_string(&secret).unwrap().trim().to_owned();
    let secret = job.give("key.sec", &key_text);
    let paths = left_by_earlier_jobs(&job, &s3, &secret);

    // The action's files where the job can read them (the checkout may be under a 0700 folder).
    let action = job.tmp.path().join("action");
    std::fs::create_dir(&action).unwrap();
    for file in ["main.js", "post.js", "shim.js", "release-digests.json"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("action")
                .join(file),
            action.join(file),
        )
        .unwrap();
    }
    set_mode(&action, 0o755);
    let runner_temp = job.home.join("runner-temp");
    std::fs::create_dir(&runner_temp).unwrap();
    assert_ok(&run(Command::new("chown")
        .arg("nobody:nogroup")
        .arg(&runner_temp)));
    let event = job.give("event.json", r#"{"repository":{"default_branch":"main"}}"#);
    // Node where this machine has it (a Debian root of the test script binds it elsewhere).
    let node = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
        .expect("node is not on PATH: run scripts/install-ci-tools.sh");
    let step = |phase: &str, state: &[(String, String)]| {
        let files: Vec<PathBuf> = ["state", "output", "summary", "env"]
            .iter()
            .map(|name| job.give(&format!("{phase}-{name}"), ""))
            .collect();
        let mut env = action_defaults();
        env.retain(|(k, _)| {
            !["INPUT_CACHE", "INPUT_SIGNING-KEY", "INPUT_BINARY"].contains(&k.as_str())
        });
        env.extend([
            ("INPUT_CACHE".to_owned(), s3.cache_url()),
            ("INPUT_SIGNING-KEY".to_owned(), key_text.clone()),
            ("INPUT_BINARY".to_owned(), job.binary.display().to_string()),
        ]);
        let path = |p: &Path| p.display().to_string();
        env.extend(
            [
                ("GITHUB_ACTIONS", "true".to_owned()),
                ("GITHUB_STATE", path(&files[0])),
                ("GITHUB_OUTPUT", path(&files[1])),
                ("GITHUB_STEP_SUMMARY", path(&files[2])),
                ("GITHUB_ENV", path(&files[3])),
                ("GITHUB_EVENT_NAME", "push".to_owned()),
                ("GITHUB_EVENT_PATH", path(&event)),
                ("GITHUB_REF_TYPE", "branch".to_owned()),
                ("GITHUB_REF_NAME", "main".to_owned()),
                ("GITHUB_REPOSITORY", "org/app".to_owned()),
                ("GITHUB_RUN_ID", "7".to_owned()),
                ("RUNNER_TEMP", path(&runner_temp)),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env.extend(s3.env());
        env.extend(state.iter().map(|(k, v)| (format!("STATE_{k}"), v.clone())));
        let out = run(job
            .command(&node)
            .arg(action.join(format!("{phase}.js")))
            .current_dir(&job.home)
            .envs(env));
        let read = |i: usize| std::fs::read_to_string(&files[i]).unwrap();
        (out, read(0), read(1), read(3))
    };

    let (main, state, _, env_file) = step("main", &[]);
    assert_ok(&main);
    let log = format!("{}{}", stdout(&main), stderr(&main));
    assert!(
        log.contains("through a nixbucket serve of this job")
            && log.contains("serve: auto, the nix-daemon"),
        "the main step did not say it serves the daemon, and why:\n{log}"
    );
    assert!(log.contains("restored 1 of "), "{log}");
    assert!(
        !env_file.contains("AWS_"),
        "credentials handed to later steps:\n{env_file}"
    );
    assert_ne!(
        job.servers(),
        "",
        "no server of this job after the main step"
    );
    // The server outlives the step, and later steps can read its environment: the signing key
    // the step was given is not there.
    let state: Vec<(String, String)> = common::parse_step_file(&state).into_iter().collect();
    let state_file = &state
        .iter()
        .find(|(k, _)| k == "nixbucket-state-file")
        .unwrap()
        .1;
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state_file).unwrap()).unwrap();
    let pid = recorded["serve"]["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("INPUT_CACHE="),
        "not the server's environment: {environ}"
    );
    let base64 = key_text.split_once(':').unwrap().1;
    assert!(
        !environ.contains(base64)
            && !environ
                .split('\0')
                .any(|v| v.starts_with("INPUT_SIGNING-KEY=")),
        "the signing key is in the server's environment"
    );
    substitutes_what_the_restore_left(&job, &paths);

    let (post, _, outputs, _) = step("post", &state);
    assert_ok(&post);
    let outputs = common::parse_step_file(&outputs);
    assert_eq!(
        outputs.get("pushed-paths").map(String::as_str),
        Some("0"),
        "{outputs:?}"
    );
    assert_eq!(
        job.servers(),
        "",
        "the post step left a server of this job running"
    );
    // Only the runner's mask commands may carry it: the runner hides them.
    let base64 = key_text.split_once(':').unwrap().1;
    for out in [&main, &post] {
        let printed = format!("{}{}", stdout(out), stderr(out));
        assert!(
            !printed
                .lines()
                .filter(|l| !l.starts_with("::add-mask::"))
                .any(|l| l.contains(base64)),
            "the signing key was printed:\n{printed}"
        );
    }
}

#[test]
fn a_trusted_job_restores_into_a_mirror_the_daemon_substitutes_from() {
    let mut job = Job::new(&format!("{BASE_CONF}trusted-users = root nobody\n"));
    let s3 = S3Server::start();
    job.env = s3.env();
    // The job (nobody) writes the mirror in its home; the root daemon reads it.
    let mirror = format!("file://{}/nixbucket-mirror-", job.home.display());
    two_jobs(&job, &["setup", "--serve"], &s3.cache_url(), &mirror);
}

#[test]
fn an_untrusted_job_skips_the_restore_and_substitutes_from_the_cache_the_admin_allowed() {
    let s3 = S3Server::start();
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "ours-1");
    // The admin lists the bucket's public endpoint, not a mirror whose name changes per job.
    let http = s3.anon_http_url();
    let mut job = Job::new(&format!(
        "{BASE_CONF}trusted-substituters = {http}\ntrusted-public-keys = {public}\n"
    ));
    job.env = s3.env();
    let (expr, top) = pushed_by_an_earlier_job(&job, &s3.cache_url(), &secret, &s3.env());

    let setup = job.nixbucket(&[
        "setup",
        "--cache",
        &s3.cache_url(),
        "--substituter",
        &http,
        "--public-key",
        &public,
    ]);
    assert_ok(&setup);
    let log = stderr(&setup);
    assert!(
        log.contains("restore: skipped: the nix-daemon does not trust user nobody"),
        "{log}"
    );
    assert!(!log.contains("restored"), "{log}");
    let again = job.build(&expr);
    assert_ok(&again);
    assert!(
        stderr(&again).contains(&format!("copying path '{top}' from '{http}'")),
        "{}",
        stderr(&again)
    );
}

#[test]
fn an_untrusted_job_is_told_why_for_s3_too_and_leaves_no_server_running() {
    let mut job = Job::new(BASE_CONF);
    let s3 = S3Server::start();
    job.env = s3.env();
    let (_, public) = keygen(job.tmp.path(), "ours-1");
    let out = job.nixbucket(&[
        "setup",
        "--serve",
        "--cache",
        &s3.cache_url(),
        "--public-key",
        &public,
    ]);
    let err = assert_fails(&out);
    assert!(err.contains("does not trust user \"nobody\""), "{err}");
    assert!(
        err.contains("extra-substituters = http://127.0.0.1:"),
        "{err}"
    );
    let state: serde_json::Value = match std::fs::read_to_string(job.home.join("state.json")) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(_) => serde_json::Value::Null,
    };
    assert!(state["serve"].is_null(), "a server was recorded: {state}");
    assert_eq!(job.servers(), "", "a server of this job is still running");
}

#[test]
fn an_untrusted_job_uses_a_cache_the_admin_allowed() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "ours-1");
    let cache_root = tempfile::tempdir().unwrap();
    let url = format!("file://{}", cache_root.path().join("cache").display());
    // The daemon's owner lists the cache and its key, so the job's own settings are honoured.
    let job = Job::new(&format!(
        "{BASE_CONF}trusted-substituters = {url}\ntrusted-public-keys = {public}\n"
    ));
    let (expr, top) = pushed_by_an_earlier_job(&job, &url, &secret, &[]);

    let setup = job.nixbucket(&["setup", "--cache", &url, "--public-key", &public]);
    assert_ok(&setup);
    assert!(
        stderr(&setup).contains(&job.home.join("nix.conf").display().to_string()),
        "setup wrote elsewhere than the job's own nix.conf:\n{}",
        stderr(&setup)
    );
    let again = job.build(&expr);
    assert_ok(&again);
    assert!(
        stderr(&again).contains(&format!("copying path '{top}' from '{url}'")),
        "{}",
        stderr(&again)
    );
}

/// The profile `teammate` in the job's ~/.aws, with the server's keys.
fn give_profile(job: &Job, s3: &S3Server) {
    let aws = job.home.join(".aws");
    std::fs::create_dir(&aws).unwrap();
    assert_ok(&run(Command::new("chown").arg("nobody:nogroup").arg(&aws)));
    job.give(
        ".aws/credentials",
        &format!(
            "[teammate]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key(),
            s3.secret_key()
        ),
    );
}

/// A teammate's machine: a root nix-daemon with no AWS credentials, and the teammate, whom it
/// trusts, with an AWS profile of their own in ~/.aws and nothing in the environment. `use`
/// starts the server with that profile, points Nix at it, and proves a fetch through the
/// daemon; the teammate's next build substitutes the rest; `use --remove` undoes it all.
#[test]
fn use_lets_a_teammate_pull_through_the_daemon_with_their_own_profile() {
    let job = Job::new(&format!("{BASE_CONF}trusted-users = root nobody\n"));
    let s3 = S3Server::start();
    let (secret, public) = keygen(job.tmp.path(), "team-1");
    let (expr, top) = pushed_by_an_earlier_job(&job, &s3.cache_url(), &secret, &s3.env());
    give_profile(&job, &s3);
    let config = job.home.join("xdg-config");
    let use_cache = |args: &[&str]| {
        run(job
            .command(&job.binary)
            .env("XDG_CONFIG_HOME", &config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["use", "--cache", &s3.cache_url(), "--service", "none"])
            .args(args))
    };

    let used = use_cache(&["--public-key", &public, "--profile", "teammate"]);
    assert_ok(&used);
    let out = stdout(&used);
    assert!(out.contains("with the AWS profile teammate"), "{out}");
    // The smaller of the two paths the earlier job pushed came through the daemon.
    let fetched = out
        .lines()
        .find_map(|l| l.strip_prefix("use: Nix fetched "))
        .and_then(|l| l.strip_suffix(" from the cache: it works"))
        .unwrap_or_else(|| panic!("no fetch proven:\n{out}\n{}", stderr(&used)));
    let tag = top.rsplit('-').next().unwrap();
    assert!(
        fetched.ends_with(&format!("-dep-{tag}")) || fetched == top,
        "{fetched} is not one of the paths pushed"
    );
    let conf = std::fs::read_to_string(job.home.join("nix.conf")).unwrap();
    assert!(conf.contains("http://127.0.0.1:37"), "{conf}");
    assert!(conf.contains(&public), "{conf}");

    // The server reads the bucket with the profile: no key in its environment or arguments.
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(config.join("nixbucket/use/nixbucket-test.json")).unwrap(),
    )
    .unwrap();
    let pid = record["pid"].as_u64().expect("the server's pid");
    // Whatever fails below, the server this test started does not outlive it.
    struct StopOnDrop(u64);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.to_string()).status();
        }
    }
    let _server = StopOnDrop(pid);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    for secret in [s3.secret_key(), s3.access_key()] {
        for (what, bytes) in [("environment", &environ), ("arguments", &cmdline)] {
            assert!(
                !String::from_utf8_lossy(bytes).contains(secret),
                "the server's {what} hold an AWS key"
            );
        }
    }

    // The teammate's build substitutes what is left instead of building it.
    let build = job.build(&expr);
    assert_ok(&build);
    let log = stderr(&build);
    assert!(
        log.contains(&format!("copying path '{top}' from 'http://127.0.0.1:")),
        "{log}"
    );
    assert!(!log.contains("building '"), "built instead:\n{log}");

    let removed = use_cache(&["--remove"]);
    assert_ok(&removed);
    let conf = std::fs::read_to_string(job.home.join("nix.conf")).unwrap();
    assert!(!conf.contains("127.0.0.1"), "use --remove left {conf}");
    // A server that was stopped may stay a zombie until whichever process adopted it reaps
    // it; a zombie has no command line.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(cmdline.is_empty(), "use --remove left the server running");
    assert!(!config.join("nixbucket/use/nixbucket-test.json").exists());
    let again = use_cache(&["--remove"]);
    assert_ok(&again);
    assert!(
        stdout(&again).contains("nothing to remove"),
        "{}",
        stdout(&again)
    );
}

/// A teammate the daemon does not trust, and no sudo to write the system's nix.conf with: one
/// error that names the lines to add and where, and nothing left running or recorded.
#[test]
fn use_by_an_untrusted_teammate_without_sudo_says_what_to_add_and_leaves_nothing() {
    let job = Job::new(BASE_CONF);
    let s3 = S3Server::start();
    let (_, public) = keygen(job.tmp.path(), "team-2");
    give_profile(&job, &s3);
    let config = job.home.join("xdg-config");
    let used = run(job
        .command(&job.binary)
        .env("XDG_CONFIG_HOME", &config)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["use", "--cache", &s3.cache_url(), "--service", "none"])
        .args(["--public-key", &public, "--profile", "teammate"]));
    common::assert_fails(&used);
    let err = stderr(&used);
    assert!(err.contains("does not trust user \"nobody\""), "{err}");
    assert!(
        err.contains("extra-substituters = http://127.0.0.1:37"),
        "{err}"
    );
    assert!(
        err.contains(&format!("extra-trusted-public-keys = {public}")),
        "{err}"
    );
    assert!(err.contains("the server is stopped"), "{err}");
    assert!(!config.join("nixbucket/use/nixbucket-test.json").exists());
    let left =
        run(Command::new("pgrep")
            .args(["-f", "serve --cache s3://nixbucket-test.*profile=teammate"]));
    assert_eq!(stdout(&left), "", "a server was left running");
}
