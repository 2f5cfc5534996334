//! Glue between nixbucket and the CI systems it runs in. GitHub Actions needs code of its own
//! (inputs, workflow commands, step files, OIDC, check runs); GitLab and Travis are served by
//! shell templates in `ci-templates/` that call the ordinary subcommands.

pub mod github;

/// The branch this job builds, and the project's default branch where the CI system says it:
/// what `push` tags its usage record with and what `setup` restores by. `NIXBUCKET_BRANCH`
/// overrides the detection (any CI, or none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Branches {
    pub current: Option<String>,
    pub default: Option<String>,
}

impl Branches {
    /// From the process environment.
    pub fn detect() -> Branches {
        Branches::from_env(|name| std::env::var(name).ok())
    }

    /// From `env`, which returns a variable's value. A pull or merge request counts as its
    /// source branch: the next push to it wants what this job built.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Branches {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let current = var("NIXBUCKET_BRANCH")
            .or_else(|| var("GITHUB_HEAD_REF"))
            .or_else(|| {
                (var("GITHUB_REF_TYPE").as_deref() == Some("branch"))
                    .then(|| var("GITHUB_REF_NAME"))
                    .flatten()
            })
            .or_else(|| var("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"))
            .or_else(|| var("CI_COMMIT_BRANCH"))
            .or_else(|| var("TRAVIS_PULL_REQUEST_BRANCH"))
            .or_else(|| var("TRAVIS_BRANCH"));
        let default = var("NIXBUCKET_DEFAULT_BRANCH")
            .or_else(|| var("CI_DEFAULT_BRANCH"))
            .or_else(|| {
                let event = github::read_event(std::path::Path::new(&var("GITHUB_EVENT_PATH")?));
                event
                    .ok()?
                    .pointer("/repository/default_branch")?
                    .as_str()
                    .map(str::to_owned)
            });
        Branches { current, default }
    }

    /// The branches to restore from, best first, without repeats.
    pub fn in_order(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for b in [&self.current, &self.default].into_iter().flatten() {
            if !out.contains(b) {
                out.push(b.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn branches_come_from_each_ci_system() {
        let github_push = env(&[("GITHUB_REF_TYPE", "branch"), ("GITHUB_REF_NAME", "dev")]);
        assert_eq!(
            Branches::from_env(github_push).current.as_deref(),
            Some("dev")
        );
        let github_pr = env(&[
            ("GITHUB_HEAD_REF", "feature/x"),
            ("GITHUB_REF_TYPE", "branch"),
            ("GITHUB_REF_NAME", "42/merge"),
        ]);
        assert_eq!(
            Branches::from_env(github_pr).current.as_deref(),
            Some("feature/x")
        );
        let github_tag = env(&[("GITHUB_REF_TYPE", "tag"), ("GITHUB_REF_NAME", "v1")]);
        assert_eq!(Branches::from_env(github_tag).current, None);
        let gitlab = env(&[("CI_COMMIT_BRANCH", "dev"), ("CI_DEFAULT_BRANCH", "main")]);
        assert_eq!(
            Branches::from_env(gitlab),
            Branches {
                current: Some("dev".into()),
                default: Some("main".into())
            }
        );
        let travis_pr = env(&[
            ("TRAVIS_BRANCH", "main"),
            ("TRAVIS_PULL_REQUEST_BRANCH", "fix"),
        ]);
        assert_eq!(
            Branches::from_env(travis_pr).current.as_deref(),
            Some("fix")
        );
        let travis_push = env(&[
            ("TRAVIS_BRANCH", "main"),
            ("TRAVIS_PULL_REQUEST_BRANCH", ""),
        ]);
        assert_eq!(
            Branches::from_env(travis_push).current.as_deref(),
            Some("main")
        );
        let ours = env(&[("NIXBUCKET_BRANCH", "b"), ("CI_COMMIT_BRANCH", "dev")]);
        assert_eq!(Branches::from_env(ours).current.as_deref(), Some("b"));
        assert_eq!(Branches::from_env(env(&[])), Branches::default());
    }

    #[test]
    fn the_order_is_current_then_default_without_repeats() {
        let b = |c: Option<&str>, d: Option<&str>| Branches {
            current: c.map(Into::into),
            default: d.map(Into::into),
        };
        assert_eq!(b(Some("dev"), Some("main")).in_order(), ["dev", "main"]);
        assert_eq!(b(Some("main"), Some("main")).in_order(), ["main"]);
        assert_eq!(b(None, Some("main")).in_order(), ["main"]);
        assert!(b(None, None).in_order().is_empty());
    }
}
