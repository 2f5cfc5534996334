//! `init`: from an AWS account (or another S3-compatible store) to a private cache that CI
//! fills: the bucket, GitHub's OIDC provider, a role for CI that only this repository's
//! workflows can take, the signing key kept where only that role reads it, and the workflow.
//!
//! The pure parts live here: what the policies say, which repository a remote names, what a
//! plan holds and how it reads. [`aws`] looks at the account and changes it; [`workflow`]
//! writes the workflow file.

pub mod aws;
pub mod workflow;

use std::fmt;

use serde_json::{Value, json};

/// The host of GitHub Actions' OIDC tokens, and the provider's URL without its scheme: IAM
/// names the provider `arn:aws:iam::ACCOUNT:oidc-provider/<this>`.
pub const GITHUB_OIDC_HOST: &str = "token.actions.githubusercontent.com";
/// The audience the Action asks its token for, and the provider's client ID.
pub const AUDIENCE: &str = "sts.amazonaws.com";
/// The lifecycle rule `init` adds: parts of uploads a killed job never completed cost storage
/// until something aborts them.
pub const LIFECYCLE_RULE_ID: &str = "nixbucket-abort-incomplete-uploads";
/// Days after which the rule aborts an incomplete multipart upload. A push completes its
/// uploads within minutes; a day leaves room for the slowest.
pub const ABORT_AFTER_DAYS: i32 = 1;
/// The name of the role's inline policy for the cache in `bucket`: one a bucket, so that a
/// repository whose CI fills two caches has a policy for each.
pub fn role_policy_name(bucket: &str) -> String {
    format!("nixbucket-cache-{bucket}")
}

/// A GitHub repository, in the case GitHub spells it: a trust policy's `sub` condition
/// compares case-sensitively, so `my-org/My-Repo` is not `my-org/my-repo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GithubRepo {
    pub owner: String,
    pub name: String,
}

impl GithubRepo {
    /// `OWNER/REPO`, as `--github` takes it.
    pub fn parse(text: &str) -> Option<GithubRepo> {
        let (owner, name) = text.trim().split_once('/')?;
        let name = name.strip_suffix(".git").unwrap_or(name);
        let owner_ok = !owner.is_empty()
            && owner.len() <= 39
            && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        (owner_ok && name_ok).then(|| GithubRepo {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The repository a git remote URL points at on github.com, in any of the forms git
    /// takes: `https://github.com/O/R(.git)`, `git@github.com:O/R.git`,
    /// `ssh://git@github.com/O/R`. None for another host.
    pub fn from_remote(url: &str) -> Option<GithubRepo> {
        let url = url.trim();
        let rest = if let Some(rest) = url.strip_prefix("git@github.com:") {
            rest
        } else {
            let without_scheme = ["https://", "http://", "ssh://", "git://"]
                .iter()
                .find_map(|s| url.strip_prefix(s))?;
            let (host, path) = without_scheme.split_once('/')?;
            let host = host.rsplit('@').next().unwrap_or(host);
            let host = host.split(':').next().unwrap_or(host);
            if !host.eq_ignore_ascii_case("github.com")
                && !host.eq_ignore_ascii_case("www.github.com")
            {
                return None;
            }
            path
        };
        GithubRepo::parse(rest.trim_end_matches('/'))
    }

    /// The role name `init` gives this repository's CI: IAM allows 64 characters of
    /// `[A-Za-z0-9+=,.@_-]`, and a repository name may need all 100 it has.
    pub fn role_name(&self) -> String {
        let mut name = format!("nixbucket-{}-{}", self.owner, self.name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>();
        name.truncate(64);
        name
    }
}

impl fmt::Display for GithubRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// The ARN of GitHub's OIDC provider in `account`.
pub fn oidc_provider_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:oidc-provider/{GITHUB_OIDC_HOST}")
}

/// The SSM parameter that holds the signing key of the cache in `bucket`.
pub fn key_parameter_name(bucket: &str) -> String {
    format!("/nixbucket/{bucket}/signing-key")
}

/// The ARN of an SSM parameter (its name starts with `/`).
pub fn parameter_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:ssm:{region}:{account}:parameter{name}")
}

/// Who may take the role: workflows of `repo` that hold a token GitHub issued for AWS, on
/// any ref or event of that repository. A pull request from a fork gets no token (GitHub
/// grants `id-token: write` to no fork), and the Action does not assume the role in a
/// `pull_request_target` run, so code from outside the repository never holds the role.
pub fn trust_policy(account: &str, repo: &GithubRepo) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Federated": oidc_provider_arn(account) },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": { format!("{GITHUB_OIDC_HOST}:aud"): AUDIENCE },
                "StringLike": { format!("{GITHUB_OIDC_HOST}:sub"): format!("repo:{repo}:*") }
            }
        }]
    })
}

/// What CI may do, and nothing more: on this bucket, list it (setup's check, the restore,
/// gc), read, write and delete objects (push, restore, gc), and abort its own uploads;
/// read the one parameter that holds the signing key (`key_parameter_arn`), when there is one.
pub fn permissions_policy(bucket: &str, key_parameter_arn: Option<&str>) -> Value {
    let mut statements = vec![
        json!({
            "Sid": "ListTheCache",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": format!("arn:aws:s3:::{bucket}")
        }),
        json!({
            "Sid": "ReadAndWriteTheCache",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            "Resource": format!("arn:aws:s3:::{bucket}/*")
        }),
    ];
    if let Some(arn) = key_parameter_arn {
        statements.push(json!({
            "Sid": "ReadTheSigningKey",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": arn
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// Whether a policy document IAM returned (URL-encoded JSON, as GetRole and GetRolePolicy
/// give it) says the same as `want`: the same JSON, whatever its spacing or key order.
pub fn same_policy(returned: &str, want: &Value) -> bool {
    let decoded = percent_decode(returned);
    serde_json::from_str::<Value>(&decoded)
        .is_ok_and(|got| normalize(got) == normalize(want.clone()))
}

/// IAM writes a one-element list as a plain value on its way back; compare them as equal.
fn normalize(value: Value) -> Value {
    match value {
        Value::Array(items) if items.len() == 1 => {
            normalize(items.into_iter().next().unwrap_or_default())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        other => other,
    }
}

fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// One thing `init` sees to, and whether it is already so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub what: String,
    pub state: State,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Already as it should be: nothing to do.
    Done,
    /// To do: what the change is.
    Change(String),
    /// Not for `init` to do: the step the user takes, in words they can follow.
    Manual(String),
}

/// What `init` found and what it would change, in the order it changes things.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub items: Vec<Item>,
}

impl Plan {
    pub fn push(&mut self, what: impl Into<String>, state: State) {
        self.items.push(Item {
            what: what.into(),
            state,
        });
    }

    /// How many changes the plan makes.
    pub fn changes(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.state, State::Change(_)))
            .count()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            match &item.state {
                State::Done => writeln!(f, "  ok      {}", item.what)?,
                State::Change(how) => writeln!(f, "  change  {}: {how}", item.what)?,
                State::Manual(how) => writeln!(f, "  you     {}: {how}", item.what)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::https("https://github.com/My-Org/Widget.git", "My-Org/Widget")]
    #[case::https_no_suffix("https://github.com/my-org/widget", "my-org/widget")]
    #[case::https_with_user("https://x-access-token@github.com/o/r.git", "o/r")]
    #[case::scp("git@github.com:Acme/nix.tools.git", "Acme/nix.tools")]
    #[case::ssh("ssh://git@github.com/acme/r_1", "acme/r_1")]
    #[case::trailing_slash("https://github.com/acme/r/", "acme/r")]
    fn a_github_remote_names_its_repository_in_its_case(#[case] url: &str, #[case] want: &str) {
        assert_eq!(
            GithubRepo::from_remote(url).map(|r| r.to_string()),
            Some(want.to_owned())
        );
    }

    #[rstest]
    #[case::gitlab("https://gitlab.com/acme/r.git")]
    #[case::local("/srv/git/r.git")]
    #[case::no_repo("https://github.com/acme")]
    #[case::dotdot("https://github.com/acme/..")]
    #[case::bad_owner("https://github.com/ac me/r")]
    fn other_remotes_name_no_github_repository(#[case] url: &str) {
        assert_eq!(GithubRepo::from_remote(url), None);
    }

    #[test]
    fn a_role_name_fits_iam() {
        let repo = GithubRepo::parse(&format!("acme/{}", "r".repeat(100))).unwrap();
        let name = repo.role_name();
        assert_eq!(name.len(), 64);
        assert!(name.starts_with("nixbucket-acme-rrr"));
        let dotted = GithubRepo::parse("Acme/nix.tools").unwrap();
        assert_eq!(dotted.role_name(), "nixbucket-Acme-nix.tools");
    }

    #[test]
    fn the_trust_policy_names_exactly_this_repository_and_github_s_audience() {
        let repo = GithubRepo::parse("My-Org/Widget").unwrap();
        let policy = trust_policy("123456789012", &repo);
        let statement = &policy["Statement"][0];
        assert_eq!(
            statement["Principal"]["Federated"],
            "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
        );
        assert_eq!(statement["Action"], "sts:AssumeRoleWithWebIdentity");
        assert_eq!(
            statement["Condition"]["StringEquals"]["token.actions.githubusercontent.com:aud"],
            "sts.amazonaws.com"
        );
        let sub = &statement["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"];
        assert_eq!(sub, "repo:My-Org/Widget:*");
        // The wildcard covers refs and events of this repository only: IAM's StringLike
        // matches `*` within the string, and the `:` after the name ends it.
        for (token_sub, allowed) in [
            ("repo:My-Org/Widget:ref:refs/heads/main", true),
            ("repo:My-Org/Widget:pull_request", true),
            ("repo:My-Org/Widget:environment:prod", true),
            ("repo:my-org/widget:ref:refs/heads/main", false),
            ("repo:My-Org/Widget-fork:ref:refs/heads/main", false),
            ("repo:My-Org/Widgets:ref:refs/heads/main", false),
            ("repo:Evil/Widget:ref:refs/heads/main", false),
        ] {
            assert_eq!(
                string_like(sub.as_str().unwrap(), token_sub),
                allowed,
                "{token_sub}"
            );
        }
    }

    /// IAM's StringLike: case-sensitive, `*` any run of characters, `?` one character.
    fn string_like(pattern: &str, text: &str) -> bool {
        let regex = format!(
            "^{}$",
            pattern
                .chars()
                .map(|c| match c {
                    '*' => ".*".to_owned(),
                    '?' => ".".to_owned(),
                    c => regex::escape(&c.to_string()),
                })
                .collect::<String>()
        );
        regex::Regex::new(&regex).unwrap().is_match(text)
    }

    #[test]
    fn the_permissions_stay_on_this_bucket_and_this_parameter() {
        let arn = parameter_arn("eu-west-1", "123456789012", &key_parameter_name("cache"));
        assert_eq!(
            arn,
            "arn:aws:ssm:eu-west-1:123456789012:parameter/nixbucket/cache/signing-key"
        );
        let policy = permissions_policy("cache", Some(&arn));
        let statements = policy["Statement"].as_array().unwrap();
        let resources: Vec<&str> = statements
            .iter()
            .map(|s| s["Resource"].as_str().unwrap())
            .collect();
        assert_eq!(
            resources,
            ["arn:aws:s3:::cache", "arn:aws:s3:::cache/*", arn.as_str()]
        );
        let actions: Vec<String> = statements
            .iter()
            .flat_map(|s| match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
                _ => unreachable!(),
            })
            .collect();
        assert!(actions.iter().all(|a| !a.contains('*')), "{actions:?}");
        assert!(
            !actions
                .iter()
                .any(|a| a.starts_with("iam:") || a == "s3:PutBucketPolicy"),
            "{actions:?}"
        );
        assert_eq!(
            permissions_policy("cache", None)["Statement"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_returned_policy_compares_by_meaning() {
        let want = permissions_policy("cache", None);
        let encoded: String =
            url::form_urlencoded::byte_serialize(want.to_string().as_bytes()).collect();
        assert!(same_policy(&encoded, &want));
        assert!(same_policy(
            &serde_json::to_string_pretty(&want).unwrap(),
            &want
        ));
        assert!(!same_policy(
            &permissions_policy("other", None).to_string(),
            &want
        ));
        assert!(!same_policy("not json", &want));
    }

    #[test]
    fn a_plan_counts_its_changes_and_reads_a_line_each() {
        let mut plan = Plan::default();
        plan.push("bucket cache", State::Done);
        plan.push("role nixbucket-o-r", State::Change("create it".into()));
        plan.push(
            "an API token",
            State::Manual("create one in the dashboard".into()),
        );
        assert_eq!(plan.changes(), 1);
        assert_eq!(
            plan.to_string(),
            "  ok      bucket cache\n  change  role nixbucket-o-r: create it\n  you     an API token: create one in the dashboard\n"
        );
    }
}
