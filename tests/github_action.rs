//! The GitHub Action end to end: its JavaScript (`action/main.js`, `action/post.js`) with the
//! environment the runner gives a step, the built nixbucket, the real Nix and a real S3 server.
//! The post step diffs the shared /nix/store against what main recorded, so the test script runs
//! this binary with the serial group (see scripts/test.sh).
//!
//! Most tests play the runner's part themselves and start each step as the runner does, `node
//! action/<phase>.js`. One runs the same job under `@github/local-action` (installed by
//! scripts/install-ci-tools.sh; the test fails when it is missing), which loads the entry point
//! as a module and awaits its exported `run()`. What local-action needs from the project is a
//! package.json at the action's root with tsx and an `@actions` toolkit package that `npm ls`
//! finds (devDependencies the action itself never loads). Either way each step gets fresh
//! GITHUB_STATE/GITHUB_OUTPUT/GITHUB_STEP_SUMMARY files, and main's state entries reach post as
//! `STATE_<name>`: under local-action through each step's dotenv file, since local-action keeps
//! `saveState` in memory and does not hand state from one step to the next.

mod common;

use common::hash_part;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::nix::{build_closure, copy_into_fresh_store, nonce};
use common::s3::S3Server;
use common::store::S3Store;
use common::{
    assert_ok, keygen, list_files, nixbucket, parse_step_file, register_secret, run, stderr, stdout,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files and directories one simulated job uses.
struct Job {
    tmp: tempfile::TempDir,
    inputs: BTreeMap<&'static str, String>,
    extra_env: Vec<(String, String)>,
}

/// What one step left behind.
struct Step {
    out: Output,
    state: String,
    output: String,
    summary: String,
    env_file: String,
}

impl Step {
    /// Everything the step showed or wrote where a user or a later step could read it.
    fn everything(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            stdout(&self.out),
            stderr(&self.out),
            self.state,
            self.output,
            self.summary,
            self.env_file
        )
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}\nstate:\n{}\noutput:\n{}\nsummary:\n{}",
            self.out.status,
            stdout(&self.out),
            stderr(&self.out),
            self.state,
            self.output,
            self.summary
        )
    }
}

impl Job {
    fn new(cache: &str, signing_key: &str) -> Job {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["runner-temp", "conf/etc", "conf/user", "steps"] {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        std::fs::write(tmp.path().join("conf/etc/nix.conf"), common::NIX_CONFIG).unwrap();
        // As the runner does: every input of action.yml is present, empty when not given.
        let mut inputs: BTreeMap<&'static str, String> = [
            "cache",
            "signing-key",
            "signing-key-parameter",
            "public-keys",
            "compression",
            "jobs",
            "include",
            "exclude",
            "skip-push",
            "restore",
            "serve",
            "build-logs",
            "extra-caches",
            "pricing",
            "aws-role-arn",
            "aws-region",
            "github-token",
            "binary",
        ]
        .into_iter()
        .map(|k| (k, String::new()))
        .collect();
        inputs.insert("cache", cache.to_owned());
        inputs.insert("signing-key", signing_key.to_owned());
        inputs.insert("compression", "zstd".to_owned());
        inputs.insert("skip-push", "false".to_owned());
        inputs.insert("binary", env!("CARGO_BIN_EXE_nixbucket").to_owned());
        let job = Job {
            tmp,
            inputs,
            extra_env: Vec::new(),
        };
        job.set_event("push", &serde_json::json!({}));
        job
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn set_event(&self, _name: &str, payload: &serde_json::Value) {
        std::fs::write(self.path("event.json"), payload.to_string()).unwrap();
    }

    fn env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_owned(), value.to_owned()));
    }

    fn user_conf(&self) -> PathBuf {
        self.path("conf/user/nix.conf")
    }

    /// Runs `action/<phase>.js` with node as the runner would, with `state` as STATE_* variables.
    fn step(&self, phase: &str, event_name: &str, state: &BTreeMap<String, String>) -> Step {
        self.step_with(Runner::Node, phase, event_name, state)
    }

    /// The environment the runner gives the step `phase`: the inputs as INPUT_*, main's state as
    /// STATE_*, fresh GITHUB_STATE/GITHUB_OUTPUT/GITHUB_STEP_SUMMARY/GITHUB_ENV files, and a Nix
    /// configuration of the job's own.
    fn step_env(
        &self,
        phase: &str,
        event_name: &str,
        state: &BTreeMap<String, String>,
    ) -> Vec<(String, String)> {
        let files = |name: &str| self.step_file(phase, name).display().to_string();
        let path = |rel: &str| self.path(rel).display().to_string();
        let mut env: Vec<(String, String)> = Vec::new();
        for (name, value) in &self.inputs {
            env.push((format!("INPUT_{}", name.to_uppercase()), value.clone()));
        }
        for (name, value) in state {
            env.push((format!("STATE_{name}"), value.clone()));
        }
        for (key, value) in [
            ("NIX_CONF_DIR", path("conf/etc")),
            (
                "NIX_USER_CONF_FILES",
                self.user_conf().display().to_string(),
            ),
            ("GITHUB_ACTIONS", "true".into()),
            ("GITHUB_STATE", files("state")),
            ("GITHUB_OUTPUT", files("output")),
            ("GITHUB_STEP_SUMMARY", files("summary")),
            ("GITHUB_ENV", files("env")),
            ("GITHUB_EVENT_NAME", event_name.into()),
            ("GITHUB_EVENT_PATH", path("event.json")),
            ("GITHUB_WORKSPACE", self.tmp.path().display().to_string()),
            ("GITHUB_REPOSITORY", "org/app".into()),
            (
                "GITHUB_SHA",
                "0123456789abcdef0123456789abcdef01234567".into(),
            ),
            ("GITHUB_RUN_ID", "42".into()),
            ("RUNNER_TEMP", path("runner-temp")),
        ] {
            env.push((key.to_owned(), value));
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }

    fn step_file(&self, phase: &str, name: &str) -> PathBuf {
        self.path(&format!("steps/{phase}-{name}"))
    }

    /// Runs the step `phase` the way `runner` does, with `state` as STATE_* variables, and
    /// collects what it wrote to its step files.
    fn step_with(
        &self,
        runner: Runner,
        phase: &str,
        event_name: &str,
        state: &BTreeMap<String, String>,
    ) -> Step {
        for name in ["state", "output", "summary", "env"] {
            std::fs::write(self.step_file(phase, name), "").unwrap();
        }
        let env = self.step_env(phase, event_name, state);
        let entry_point = format!("action/{phase}.js");
        let mut cmd = match runner {
            Runner::Node => {
                let mut cmd = Command::new("node");
                cmd.arg(repo().join(&entry_point))
                    .envs(env)
                    .current_dir(self.tmp.path());
                cmd
            }
            Runner::LocalAction => {
                // local-action takes the step's environment from a dotenv file, which it loads
                // over its own before it loads the entry point.
                let dotenv = self.path(&format!("steps/{phase}.env"));
                std::fs::write(&dotenv, dotenv_text(&env)).unwrap();
                let mut cmd = Command::new(local_action());
                // Run from the action's root, where its package.json is: local-action runs its
                // TypeScript through the project's tsx and asks `npm ls` there for the toolkit.
                cmd.arg("run")
                    .arg(repo())
                    .arg(&entry_point)
                    .arg(&dotenv)
                    .current_dir(repo());
                cmd
            }
        };
        // Nothing from the test's own environment may stand in for what the step is given.
        for (key, _) in std::env::vars() {
            if [
                "NIXBUCKET_",
                "AWS_",
                "INPUT_",
                "GITHUB_",
                "STATE_",
                "RUNNER_",
                "ACTIONS_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
            {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("NIX_CONFIG");
        let out = run(&mut cmd);
        let read = |name: &str| std::fs::read_to_string(self.step_file(phase, name)).unwrap();
        Step {
            state: read("state"),
            output: read("output"),
            summary: read("summary"),
            env_file: read("env"),
            out,
        }
    }
}

/// Who runs a step's JavaScript.
#[derive(Clone, Copy, Debug)]
enum Runner {
    /// `node action/<phase>.js`, as the GitHub runner starts a `node24` action's step.
    Node,
    /// `local-action run <action> action/<phase>.js <dotenv>`: @github/local-action loads the
    /// entry point as a module and awaits its exported `run()`.
    LocalAction,
}

/// `local-action` from PATH, or a panic that says how to install it: the test must not pass
/// quietly without it.
fn local_action() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("local-action"))
            .find(|candidate| candidate.is_file())
    });
    let Some(program) = found else {
        panic!("local-action is not on PATH: run scripts/install-ci-tools.sh");
    };
    // local-action runs `npm exec tsx` and `npm ls` in the action's root; without the test-only
    // packages there, npm would fetch an unpinned tsx or local-action would stop.
    for needed in [
        "node_modules/.bin/tsx",
        "node_modules/@actions/core/package.json",
    ] {
        assert!(
            repo().join(needed).exists(),
            "{needed} is missing: run scripts/install-ci-tools.sh (it runs `npm ci` in {})",
            repo().display()
        );
    }
    program
}

/// A dotenv file that sets exactly `env`. Values are single-quoted, which dotenv takes
/// literally (newlines included); none of ours holds a single quote.
fn dotenv_text(env: &[(String, String)]) -> String {
    let mut text = String::new();
    for (key, value) in env {
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "dotenv cannot name {key}"
        );
        assert!(
            !value.contains('\''),
            "dotenv cannot quote the value of {key}"
        );
        text.push_str(&format!("{key}='{value}'\n"));
    }
    text
}

/// The `::notice::` lines a step printed.
fn notices(step: &Step) -> Vec<String> {
    stdout(&step.out)
        .lines()
        .filter(|l| l.starts_with("::notice::"))
        .map(str::to_owned)
        .collect()
}

fn key_text(secret_file: &Path) -> String {
    std::fs::read_to_string(secret_file)
        .unwrap()
        .trim()
        .to_owned()
}

/// The secret must appear nowhere but in the `::add-mask::` lines that hide it.
#[track_caller]
fn assert_secret_hidden(step: &Step, secret: &str) {
    let base64 = secret.split_once(':').unwrap().1;
    for line in step.everything().lines() {
        if line.starts_with("::add-mask::") {
            continue;
        }
        assert!(
            !line.contains(base64),
            "the secret leaked in: {line}\n{}",
            step.describe()
        );
    }
}

/// Each value is masked by the binary before it prints anything of its own (an annotation or a
/// `nixbucket:` line), and shows nowhere but in its `::add-mask::` line.
#[track_caller]
fn assert_masked_first(step: &Step, values: &[&str]) {
    let out = stdout(&step.out);
    let lines: Vec<&str> = out.lines().collect();
    let first_other = lines.iter().position(|l| {
        (l.starts_with("::") && !l.starts_with("::add-mask::")) || l.starts_with("nixbucket:")
    });
    for value in values {
        let mask = format!("::add-mask::{value}");
        let Some(at) = lines.iter().position(|l| *l == mask) else {
            panic!("no {mask} line\n{}", step.describe());
        };
        assert!(
            first_other.is_none_or(|first| at < first),
            "{mask} came after the binary printed something else\n{}",
            step.describe()
        );
        for line in step.everything().lines() {
            assert!(
                line.starts_with("::add-mask::") || !line.contains(value),
                "{value} shows unmasked in: {line}\n{}",
                step.describe()
            );
        }
    }
}

fn narinfos(s3: &S3Server) -> Vec<String> {
    list_files(&s3.root().join(s3.bucket()))
        .into_iter()
        .filter(|f| f.ends_with(".narinfo"))
        .collect()
}

fn narinfo_field(s3: &S3Server, key: &str, field: &str) -> String {
    let text = std::fs::read_to_string(s3.object_path(key)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("{key} has no {field}: {text}"))
        .to_owned()
}

/// The store paths in the summary's "Slowest paths" table, in its order.
fn slowest_paths(summary: &str) -> Vec<String> {
    let Some((_, table)) = summary.split_once("#### Slowest paths") else {
        panic!("no slowest paths table: {summary}");
    };
    table
        .lines()
        .map_while(|l| (l.is_empty() || l.starts_with('|')).then_some(l))
        .filter_map(|l| l.strip_prefix("| `/nix/store/"))
        .filter_map(|l| {
            l.split_once('`')
                .map(|(rest, _)| format!("/nix/store/{rest}"))
        })
        .collect()
}

/// Whether a nix.conf makes Nix substitute from the test bucket as the main step said it would
/// (the `serve: auto` line): itself (setup writes the URL with its parameters in its own order),
/// or through a server of the job on loopback.
fn substitutes_from(conf: &str, s3: &S3Server, main: &Step) -> bool {
    let log = stderr(&main.out);
    let served = log.contains("through a nixbucket serve of this job");
    assert!(
        served
            || log.contains(&format!("setup: Nix reads {} itself", s3.cache_url()))
            || log.contains("setup: Nix reads s3://"),
        "the main step does not say how Nix reads the cache:\n{}",
        main.describe()
    );
    conf.lines()
        .filter_map(|l| l.strip_prefix("extra-substituters = "))
        .flat_map(|list| list.split(' '))
        .any(|url| match served {
            true => url.starts_with("http://127.0.0.1:"),
            false => {
                url.starts_with(&format!("s3://{}?", s3.bucket()))
                    && url.contains(&format!("endpoint={}", s3.endpoint()))
            }
        })
}

/// The mirror setup restores into, listed ahead of the bucket, in the runner's temp folder.
fn mirror_first(conf: &str, job: &Job) -> bool {
    let mirror = format!(
        "extra-substituters = file://{}/nixbucket-mirror-",
        job.tmp.path().join("runner-temp").display()
    );
    conf.lines().any(|l| l.starts_with(&mirror))
}

fn s3_job(s3: &S3Server, secret: &str) -> Job {
    let mut job = Job::new(&s3.cache_url(), secret);
    for (k, v) in s3.env() {
        job.env(&k, &v);
    }
    job
}

#[test]
fn main_and_post_push_what_the_job_built_and_report_it() {
    push_what_the_job_built(Runner::Node, "gha-test-1");
}

/// The same job with the steps run by @github/local-action: it loads each entry point as a
/// module and awaits its `run()`, so this pins that requiring main.js or post.js starts nothing
/// by itself, that the step runs once, and that `run()` settles only when the binary is done.
/// As on the runner, each step gets step files of its own and post gets main's state as
/// STATE_*, here through the dotenv file (local-action keeps `saveState` in memory).
#[test]
fn main_and_post_under_local_action_push_what_the_job_built_and_report_it() {
    let (main, post) = push_what_the_job_built(Runner::LocalAction, "gha-local-1");
    for step in [&main, &post] {
        let out = stdout(&step.out);
        let running = out.find("Running Action");
        let done = out.find("Action Outputs");
        assert!(
            running.is_some() && done.is_some(),
            "not run by local-action:\n{}",
            step.describe()
        );
        // Everything the binary printed came after local-action started the step and before
        // it went on: run() settled when the binary had exited.
        let nixbucket = out.find("nixbucket: ").expect("the binary printed nothing");
        let last = out.rfind("nixbucket: ").unwrap();
        assert!(
            running < Some(nixbucket) && Some(last) < done,
            "{}",
            step.describe()
        );
    }
}

/// One job, main then a build then post, run by `runner`: post pushes exactly what the build
/// made, the step files hold what they should, and the secret shows nowhere.
fn push_what_the_job_built(runner: Runner, key_name: &str) -> (Step, Step) {
    let s3 = S3Server::start();
    let keys = tempfile::tempdir().unwrap();
    let (secret_file, public) = keygen(keys.path(), key_name);
    let secret = key_text(&secret_file);
    let mut job = s3_job(&s3, &secret);
    // s3s-fs has no price table of its own: the input names one.
    job.inputs.insert("pricing", "r2".to_owned());

    let main = job.step_with(runner, "main", "push", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    let first_command = stdout(&main.out)
        .lines()
        .find(|l| l.starts_with("::"))
        .unwrap_or("")
        .to_owned();
    assert_eq!(
        first_command,
        format!("::add-mask::{secret}"),
        "the mask must come first"
    );
    // One entry each: the step ran once.
    let entries: Vec<&str> = main
        .state
        .lines()
        .filter_map(|l| l.split_once(['=', '<']).map(|(name, _)| name))
        .collect();
    for name in [
        "nixbucket-mode",
        "nixbucket-state-file",
        "shim-binary",
        "shim-binary-sha256",
    ] {
        assert_eq!(
            entries.iter().filter(|e| **e == name).count(),
            1,
            "{name} in {}",
            main.describe()
        );
    }
    let state = parse_step_file(&main.state);
    assert_eq!(
        state.get("nixbucket-mode").map(String::as_str),
        Some("push"),
        "{}",
        main.describe()
    );
    let state_file = PathBuf::from(&state["nixbucket-state-file"]);
    assert!(
        state_file.starts_with(job.path("runner-temp")),
        "{state_file:?}"
    );
    assert!(state_file.is_file());
    // Main ran a private copy of the binary, which post runs if it is unchanged.
    let copy = PathBuf::from(&state["shim-binary"]);
    assert!(copy.starts_with(job.path("runner-temp")), "{copy:?}");
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(env!("CARGO_BIN_EXE_nixbucket")).unwrap(),
        "{copy:?} is not a copy of the binary given"
    );
    let digest = &state["shim-binary-sha256"];
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest}"
    );
    let conf = std::fs::read_to_string(job.user_conf()).unwrap();
    assert!(substitutes_from(&conf, &s3, &main), "{conf}");
    assert!(mirror_first(&conf, &job), "{conf}");
    assert!(
        conf.contains(&format!("extra-trusted-public-keys = {public}")),
        "{conf}"
    );
    assert!(
        !stdout(&main.out).contains("::notice::"),
        "{}",
        main.describe()
    );
    assert!(main.output.is_empty(), "{}", main.describe());

    let [app, lib, data] = build_closure(keys.path(), &nonce());

    let post = job.step_with(runner, "post", "push", &state);
    assert!(post.out.status.success(), "{}", post.describe());
    assert!(post.state.is_empty(), "{}", post.describe());
    assert!(!copy.exists(), "post left {copy:?} behind");
    assert!(
        !common::recorded_server_running(&state_file),
        "post left the server running"
    );
    let found = narinfos(&s3);
    for path in [&app, &lib, &data] {
        let key = format!("{}.narinfo", hash_part(path));
        assert!(found.contains(&key), "{path} not pushed: {found:?}");
    }
    let outputs = parse_step_file(&post.output);
    assert_eq!(
        outputs.keys().collect::<Vec<_>>(),
        ["pushed-bytes", "pushed-paths"],
        "{}",
        post.describe()
    );
    assert_eq!(
        outputs["pushed-paths"],
        found.len().to_string(),
        "{}",
        post.describe()
    );
    let uploaded: u64 = found
        .iter()
        .map(|k| narinfo_field(&s3, k, "FileSize").parse::<u64>().unwrap())
        .sum();
    assert_eq!(outputs["pushed-bytes"], uploaded.to_string());
    let nar_bytes: u64 = found
        .iter()
        .map(|k| narinfo_field(&s3, k, "NarSize").parse::<u64>().unwrap())
        .sum();
    let summary = &post.summary;
    assert!(
        summary.contains(&format!("| paths pushed | {} |", found.len())),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("({nar_bytes} bytes)")),
        "NAR bytes: {summary}"
    );
    assert!(summary.contains("| bytes uploaded (zstd) | "), "{summary}");
    assert!(
        summary.contains(" at Cloudflare R2 Standard prices |"),
        "the pricing input: {summary}"
    );
    assert!(
        summary.contains(&format!("({uploaded} bytes)")),
        "{summary}"
    );
    // The table lists the ten slowest uploads: ours are among them unless other builds on this
    // machine (tests share /nix/store) put more than ten new paths in the job's diff.
    let rows = slowest_paths(summary);
    assert_eq!(rows.len(), found.len().min(10), "{summary}");
    for row in &rows {
        let key = format!("{}.narinfo", hash_part(row));
        assert!(
            found.contains(&key),
            "{row} listed but not pushed: {summary}"
        );
    }
    if found.len() <= 10 {
        assert!(rows.contains(&app), "{summary}");
    }
    assert!(
        stdout(&post.out).contains(&format!("nixbucket: pushed {} paths", found.len())),
        "{}",
        post.describe()
    );

    // The bucket holds signed narinfos and NARs that match them, under our key alone...
    let verify = run(nixbucket().envs(s3.env()).args([
        "verify",
        "--deep",
        "--cache",
        &s3.cache_url(),
        "--public-key",
        &public,
    ]));
    assert_ok(&verify);
    assert!(
        stderr(&verify).contains(&format!(
            "checked {} narinfos and their NARs: 0 problems",
            found.len()
        )),
        "{}",
        stderr(&verify)
    );
    // ...and what landed is what Nix accepts from the bucket, trusting only our key.
    let store = keys.path().join("fresh-store");
    assert_ok(&copy_into_fresh_store(
        &s3.anon_http_url(),
        &public,
        &store,
        &app,
    ));

    assert_secret_hidden(&main, &secret);
    assert_secret_hidden(&post, &secret);
    // The bucket's static keys came from the step's environment, not from an input.
    for step in [&main, &post] {
        assert_masked_first(step, &[s3.access_key(), s3.secret_key()]);
    }
    (main, post)
}

fn fork_payload() -> serde_json::Value {
    serde_json::json!({
        "action": "synchronize",
        "number": 7,
        "pull_request": {
            "number": 7,
            "head": { "sha": "1111111111111111111111111111111111111111",
                      "repo": { "full_name": "mallory/app" } },
            "base": { "sha": "2222222222222222222222222222222222222222",
                      "repo": { "full_name": "org/app" } }
        },
        "repository": { "full_name": "org/app" }
    })
}

#[test]
fn a_fork_pull_request_pulls_and_pushes_nothing() {
    let s3 = S3Server::start();
    let keys = tempfile::tempdir().unwrap();
    let (secret_file, public) = keygen(keys.path(), "gha-fork-1");
    let secret = key_text(&secret_file);
    // Even with the key at hand (a misconfigured workflow), a fork's run must not write.
    let job = s3_job(&s3, &secret);
    job.set_event("pull_request", &fork_payload());

    let main = job.step("main", "pull_request", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    let notices = notices(&main);
    assert_eq!(notices.len(), 1, "{}", main.describe());
    assert!(
        notices[0].contains("pushes nothing") && notices[0].contains("fork mallory/app"),
        "{}",
        notices[0]
    );
    let state = parse_step_file(&main.state);
    assert_eq!(state["nixbucket-mode"], "pull-only");
    // Pulling still works: the substituter and the key are configured.
    let conf = std::fs::read_to_string(job.user_conf()).unwrap();
    assert!(substitutes_from(&conf, &s3, &main), "{conf}");
    assert!(conf.contains(&public), "{conf}");
    let state_file = PathBuf::from(&state["nixbucket-state-file"]);
    let served = stderr(&main.out).contains("through a nixbucket serve");
    assert_eq!(
        common::recorded_server_running(&state_file),
        served,
        "{}",
        main.describe()
    );

    let [app, ..] = build_closure(keys.path(), &nonce());
    let post = job.step("post", "pull_request", &state);
    assert!(post.out.status.success(), "{}", post.describe());
    assert!(
        narinfos(&s3).is_empty(),
        "a fork pushed: {:?}",
        narinfos(&s3)
    );
    let outputs = parse_step_file(&post.output);
    assert_eq!(outputs["pushed-paths"], "0");
    assert_eq!(outputs["pushed-bytes"], "0");
    assert!(
        post.summary.contains("Nothing was pushed") && post.summary.contains("fork mallory/app"),
        "{}",
        post.summary
    );
    assert!(
        stdout(&post.out).contains("nothing pushed"),
        "{}",
        post.describe()
    );
    assert!(!post.summary.contains(&app));
    assert!(
        !common::recorded_server_running(&state_file),
        "the post step of a run that pushes nothing left the server running"
    );
    assert_secret_hidden(&main, &secret);
    assert_secret_hidden(&post, &secret);
}

#[test]
fn an_empty_signing_key_pulls_with_one_notice() {
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = keygen(keys.path(), "gha-pull-1");
    let cache = keys.path().join("cache");
    let mut job = Job::new(&format!("file://{}", cache.display()), "");
    job.inputs.insert("public-keys", format!("{public}\n"));
    let main = job.step("main", "push", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    let notices = notices(&main);
    assert_eq!(notices.len(), 1, "{}", main.describe());
    assert!(
        notices[0].contains("signing-key is empty"),
        "{}",
        notices[0]
    );
    let conf = std::fs::read_to_string(job.user_conf()).unwrap();
    assert!(conf.contains(&public), "{conf}");
}

/// A run with aws-role-arn but no OIDC token to assume it with (a job without `id-token:
/// write`, or one Dependabot started) pulls and pushes nothing, with one notice that says why,
/// instead of failing the job.
#[test]
fn a_role_without_an_oidc_token_pulls_with_one_notice() {
    let keys = tempfile::tempdir().unwrap();
    let (secret_file, public) = keygen(keys.path(), "gha-notoken-1");
    let cache = keys.path().join("cache");
    let mut job = Job::new(&format!("file://{}", cache.display()), "");
    job.inputs.insert("public-keys", public.clone());
    job.inputs.insert(
        "signing-key-parameter",
        "/nixbucket/cache/signing-key".to_owned(),
    );
    job.inputs.insert(
        "aws-role-arn",
        "arn:aws:iam::123456789012:role/nixbucket-org-app".to_owned(),
    );
    let main = job.step("main", "push", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    let notices = notices(&main);
    assert_eq!(notices.len(), 1, "{}", main.describe());
    assert!(notices[0].contains("no OIDC token"), "{}", notices[0]);
    let state = parse_step_file(&main.state);
    let post = job.step("post", "push", &state);
    assert!(post.out.status.success(), "{}", post.describe());
    assert!(
        stdout(&post.out).contains("nothing pushed"),
        "{}",
        post.describe()
    );
    drop(secret_file);
}

#[test]
fn a_bad_signing_key_fails_main_and_is_never_printed() {
    let keys = tempfile::tempdir().unwrap();
    let cache = keys.path().join("cache");
    let secret = "broken-1:this-is-not-base64-but-very-secret!!";
    let job = Job::new(&format!("file://{}", cache.display()), secret);
    let main = job.step("main", "push", &BTreeMap::new());
    assert!(!main.out.status.success(), "{}", main.describe());
    let errors: Vec<_> = stdout(&main.out)
        .lines()
        .filter(|l| l.starts_with("::error::"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "{}", main.describe());
    assert!(
        errors[0].contains("signing-key is not a Nix secret key"),
        "{}",
        errors[0]
    );
    assert_secret_hidden(&main, secret);
}

/// Static AWS keys that the workflow puts in the step's environment (`env:`, not an input) are
/// masked in both steps before the binary prints anything else, like the signing key: the
/// README promises it for "any AWS credentials".
#[test]
fn aws_keys_from_the_environment_are_masked_before_anything_else() {
    let keys = tempfile::tempdir().unwrap();
    let (secret_file, _) = keygen(keys.path(), "gha-aws-env-1");
    let secret = key_text(&secret_file);
    let cache = keys.path().join("cache");
    let mut job = Job::new(&format!("file://{}", cache.display()), &secret);
    // Nothing to push: only what the steps print is under test.
    job.inputs.insert("skip-push", "true".into());
    let access_key = format!("AKIAENV{}", nonce().to_uppercase());
    let secret_key = format!("aws-env-secret-{}", nonce());
    let session_token = format!("aws-env-token-{}{}", nonce(), nonce());
    for value in [&access_key, &secret_key, &session_token] {
        register_secret(value);
    }
    job.env("AWS_ACCESS_KEY_ID", &access_key);
    job.env("AWS_SECRET_ACCESS_KEY", &secret_key);
    job.env("AWS_SESSION_TOKEN", &session_token);

    let main = job.step("main", "push", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    let post = job.step("post", "push", &parse_step_file(&main.state));
    assert!(post.out.status.success(), "{}", post.describe());
    for step in [&main, &post] {
        assert_masked_first(step, &[&access_key, &secret_key, &session_token]);
        assert_secret_hidden(step, &secret);
    }
}

/// The job's build runs between the two steps as the same user as the post step, which holds the
/// signing key. When the build writes a program of its own over the binary main ran, post refuses
/// to start it: one error naming both digests, a failed step, and the program never runs.
#[test]
fn post_refuses_a_binary_replaced_during_the_build() {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let (secret_file, _) = keygen(keys.path(), "gha-swap-1");
    let secret = key_text(&secret_file);
    let cache = keys.path().join("cache");
    let job = Job::new(&format!("file://{}", cache.display()), &secret);
    let main = job.step("main", "push", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    let state = parse_step_file(&main.state);
    let copy = PathBuf::from(&state["shim-binary"]);
    assert_ne!(
        copy,
        Path::new(env!("CARGO_BIN_EXE_nixbucket")),
        "main ran the binary in place, not a copy of its own"
    );

    let stolen = job.path("stolen-environment");
    let program = format!(
        "#!/bin/sh
env > '{}'
",
        stolen.display()
    );
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(&copy, &program).unwrap();
    let post = job.step("post", "push", &state);

    assert_eq!(post.out.status.code(), Some(1), "{}", post.describe());
    assert!(!stolen.exists(), "the replaced binary ran");
    let errors: Vec<_> = stdout(&post.out)
        .lines()
        .filter(|l| l.starts_with("::error::"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "{}", post.describe());
    let now: String = sha2::Sha256::digest(program.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        errors[0].starts_with(&format!(
            "::error::nixbucket: refusing to run {} in the post step: ",
            copy.display()
        )) && errors[0].contains(&format!(
            "has SHA-256 {now}, but the main step ran {}",
            state["shim-binary-sha256"]
        )) && errors[0].ends_with("it is not started and gets no signing key"),
        "{}",
        errors[0]
    );
    assert!(post.output.is_empty(), "{}", post.describe());
    assert_secret_hidden(&post, &secret);
}

#[test]
fn an_unreachable_cache_warns_and_keeps_the_job_green() {
    let mut s3 = S3Server::start();
    let keys = tempfile::tempdir().unwrap();
    let (secret_file, _) = keygen(keys.path(), "gha-down-1");
    let secret = key_text(&secret_file);
    let job = s3_job(&s3, &secret);
    let main = job.step("main", "push", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    build_closure(keys.path(), &nonce());
    s3.kill();
    let post = job.step("post", "push", &parse_step_file(&main.state));
    assert!(post.out.status.success(), "{}", post.describe());
    let warnings: Vec<_> = stdout(&post.out)
        .lines()
        .filter(|l| l.starts_with("::warning::"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{}", post.describe());
    assert!(
        warnings[0].contains("could not be reached"),
        "{}",
        warnings[0]
    );
    assert!(!stdout(&post.out).contains("::error::"));
    assert_eq!(parse_step_file(&post.output)["pushed-paths"], "0");
    assert!(post.summary.contains("The push to"), "{}", post.summary);
    assert_secret_hidden(&post, &secret);
}

/// One HTTP request as a loopback server received it.
struct Request {
    head: String,
    body: String,
}

/// Serves one request on 127.0.0.1 with `status` and `body`, and hands back what it received.
fn serve_once(status: &str, body: &str) -> (u16, std::thread::JoinHandle<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (status, body) = (status.to_owned(), body.to_owned());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut bytes = vec![0; length];
        reader.read_exact(&mut bytes).unwrap();
        let mut stream = reader.into_inner();
        write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        Request {
            head,
            body: String::from_utf8(bytes).unwrap(),
        }
    });
    (port, handle)
}

#[test]
fn a_github_token_posts_the_report_as_a_check_run() {
    let keys = tempfile::tempdir().unwrap();
    let (secret_file, _) = keygen(keys.path(), "gha-check-1");
    let secret = key_text(&secret_file);
    let cache = keys.path().join("cache");
    let mut job = Job::new(&format!("file://{}", cache.display()), &secret);
    let token = "ghs_loopbackTokenThatMustStayHidden";
    job.inputs.insert("skip-push", "true".into());
    job.inputs.insert("github-token", token.into());
    let (port, server) = serve_once("201 Created", r#"{"id":1}"#);
    job.env("GITHUB_API_URL", &format!("http://127.0.0.1:{port}"));

    let main = job.step("main", "push", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    let post = job.step("post", "push", &parse_step_file(&main.state));
    assert!(post.out.status.success(), "{}", post.describe());
    let request = server.join().unwrap();
    assert!(
        request
            .head
            .starts_with("POST /repos/org/app/check-runs HTTP/1.1"),
        "{}",
        request.head
    );
    assert!(
        request.head.to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}",
            token.to_ascii_lowercase()
        )),
        "{}",
        request.head
    );
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["name"], "nixbucket");
    assert_eq!(body["head_sha"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["conclusion"], "skipped");
    assert!(
        body["output"]["summary"]
            .as_str()
            .unwrap()
            .contains("skip-push is true"),
        "{body}"
    );
    assert!(stdout(&post.out).contains(&format!("::add-mask::{token}")));
    for line in post.everything().lines() {
        assert!(
            line.starts_with("::add-mask::") || !line.contains(token),
            "token leaked: {line}"
        );
    }
}

#[tokio::test]
async fn the_oidc_token_is_requested_with_the_sts_audience_and_bearer() {
    let (port, server) = serve_once("200 OK", r#"{"count":1,"value":"eyJ.header.payload"}"#);
    let url = format!("http://127.0.0.1:{port}/_apis/oidc/token?api-version=2.0");
    let token = nixbucket::ci::github::fetch_id_token(
        &url,
        &nixbucket::ci::github::Secret::new("request-token-xyz".into()),
        nixbucket::ci::github::AWS_AUDIENCE,
    )
    .await
    .unwrap();
    assert_eq!(token.expose(), "eyJ.header.payload");
    assert_eq!(format!("{token:?}"), "<redacted>");
    let request = server.join().unwrap();
    let first = request.head.lines().next().unwrap();
    assert_eq!(
        first,
        "GET /_apis/oidc/token?api-version=2.0&audience=sts.amazonaws.com HTTP/1.1"
    );
    assert!(
        request
            .head
            .to_ascii_lowercase()
            .contains("authorization: bearer request-token-xyz"),
        "{}",
        request.head
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    nixbucket::ci::github::write_token_file(&file, &token).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "eyJ.header.payload"
    );
}

/// The shape `nixbucket init` writes: no secret in GitHub. The job's OIDC token buys the
/// role's credentials (AssumeRoleWithWebIdentity, on moto), the post step reads the signing
/// key from its SSM parameter with them and pushes; the server reads the bucket with them in
/// between, and no later step of the job is handed them.
#[test]
fn on_moto_the_role_and_the_key_s_parameter_push_with_no_secret_in_the_workflow() {
    let moto = common::moto::MotoServer::start();
    let keys = tempfile::tempdir().unwrap();
    let (secret_file, public) = keygen(keys.path(), "role-1");
    let secret = key_text(&secret_file);
    let parameter = "/nixbucket/nixbucket-test/signing-key";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(moto.region().to_owned()))
            .endpoint_url(moto.endpoint())
            .credentials_provider(aws_credential_types::Credentials::new(
                moto.access_key(),
                moto.secret_key(),
                None,
                None,
                "admin",
            ))
            .load()
            .await;
        aws_sdk_ssm::Client::new(&sdk)
            .put_parameter()
            .name(parameter)
            .value(&secret)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .expect("the key's parameter");
    });
    let mut job = Job::new(&moto.cache_url(), "");
    job.inputs
        .insert("signing-key-parameter", parameter.to_owned());
    job.inputs.insert("public-keys", public.clone());
    job.inputs.insert(
        "aws-role-arn",
        "arn:aws:iam::123456789012:role/nixbucket-org-app".to_owned(),
    );
    job.inputs.insert("aws-region", moto.region().to_owned());
    // STS and SSM are moto's too; the step has no AWS keys of its own.
    job.env("AWS_ENDPOINT_URL", &moto.endpoint());
    job.env("AWS_EC2_METADATA_DISABLED", "true");
    job.env(
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "request-token-for-the-test",
    );
    let token = r#"{"value":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOm9yZy9hcHA6cmVmOnJlZnMvaGVhZHMvbWFpbiJ9.c2ln"}"#;

    let (port, asked) = serve_once("200 OK", token);
    job.env(
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        &format!("http://127.0.0.1:{port}/token?run=1"),
    );
    let main = job.step("main", "push", &BTreeMap::new());
    assert!(main.out.status.success(), "{}", main.describe());
    let asked = asked.join().unwrap();
    assert!(
        asked.head.contains("audience=sts.amazonaws.com"),
        "{}",
        asked.head
    );
    let state = parse_step_file(&main.state);
    assert_eq!(
        state.get("nixbucket-mode").map(String::as_str),
        Some("push")
    );
    assert!(
        !main.env_file.contains("AWS_"),
        "the role's credentials went to the job's later steps:\n{}",
        main.env_file
    );
    let conf = std::fs::read_to_string(job.user_conf()).unwrap();
    assert!(conf.contains("http://127.0.0.1:"), "not served: {conf}");

    let [app, ..] = build_closure(keys.path(), &nonce());

    let (port, _) = serve_once("200 OK", token);
    job.env(
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        &format!("http://127.0.0.1:{port}/token?run=1"),
    );
    let post = job.step("post", "push", &state);
    assert!(post.out.status.success(), "{}", post.describe());
    let pushed: usize = parse_step_file(&post.output)["pushed-paths"]
        .parse()
        .unwrap();
    assert!(pushed >= 3, "{}", post.describe());
    let verify = run(nixbucket().envs(moto.env()).args([
        "verify",
        "--cache",
        &moto.cache_url(),
        "--public-key",
        &public,
    ]));
    assert_ok(&verify);
    assert!(
        stderr(&verify).contains(&format!("checked {pushed} narinfos: 0 problems")),
        "{}",
        stderr(&verify)
    );
    let narinfo = moto
        .admin()
        .get(moto.bucket(), &format!("{}.narinfo", hash_part(&app)))
        .expect("the app's narinfo");
    assert!(
        String::from_utf8_lossy(&narinfo).contains("Sig: role-1:"),
        "{app} is not signed with the key from the parameter"
    );
    assert_secret_hidden(&main, &secret);
    assert_secret_hidden(&post, &secret);
    let base64 = secret.split_once(':').unwrap().1;
    assert!(
        stdout(&post.out).contains(&format!("::add-mask::{base64}")),
        "the key read from SSM is not masked: {}",
        post.describe()
    );
}
