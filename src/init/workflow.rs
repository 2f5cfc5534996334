//! The GitHub workflow `init` writes: check out, install Nix with the standard installer, the
//! Action with the cache's role (or the store's keys, as secrets, where there is no IAM), and
//! the build. Every action is pinned to a commit, as zizmor asks.

use std::fmt::Write as _;

/// Where `init` writes the workflow, relative to the checkout.
pub const WORKFLOW_PATH: &str = ".github/workflows/nix.yml";

const CHECKOUT: &str = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1";
const INSTALL_NIX: &str =
    "cachix/install-nix-action@630ae543ea3a38a9a4166f03376c02c50f408342 # v31.11.0";

/// How the job reaches the bucket and its signing key.
pub enum Access<'a> {
    /// AWS: the role the job assumes with its OIDC token, and the parameter the role reads
    /// the signing key from. Nothing secret lives in GitHub.
    Role {
        role_arn: &'a str,
        region: &'a str,
        key_parameter: &'a str,
    },
    /// A store without IAM: its keys and the signing key are repository secrets.
    Secrets,
}

pub struct Workflow<'a> {
    pub cache_url: &'a str,
    pub public_key: &'a str,
    /// `nixbucket/nixbucket@<commit> # <tag>`: the Action, pinned.
    pub action: &'a str,
    pub access: Access<'a>,
}

impl Workflow<'_> {
    /// The whole file.
    pub fn file(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# Written by `nixbucket init`: builds with Nix, pulling from the private cache and\n\
             # pushing what the build added when the job ends. Change the build step to yours.\n\
             name: Nix\n\
             \n\
             on:\n  push:\n  pull_request:\n\
             \n\
             permissions: {}\n\
             \n\
             jobs:\n  build:\n    runs-on: ubuntu-24.04\n",
        );
        out.push_str(&self.permissions(4));
        out.push_str("    steps:\n");
        out.push_str(&self.steps(6));
        out
    }

    /// The lines to merge into an existing workflow's job: its permissions and the steps
    /// before and including the build.
    pub fn job_lines(&self) -> String {
        format!("{}    steps:\n{}", self.permissions(4), self.steps(6))
    }

    fn permissions(&self, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut out = format!("{pad}permissions:\n{pad}  contents: read\n");
        if matches!(self.access, Access::Role { .. }) {
            let _ = writeln!(
                out,
                "{pad}  id-token: write # to assume the cache's role with the job's OIDC token"
            );
        }
        out
    }

    fn steps(&self, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut out = String::new();
        let _ = write!(
            out,
            "{pad}- uses: {CHECKOUT}\n{pad}  with:\n{pad}    persist-credentials: false\n\
             {pad}- uses: {INSTALL_NIX}\n\
             {pad}- uses: {}\n{pad}  with:\n{pad}    cache: {}\n{pad}    public-keys: {}\n",
            self.action, self.cache_url, self.public_key
        );
        match &self.access {
            Access::Role {
                role_arn,
                region,
                key_parameter,
            } => {
                let _ = write!(
                    out,
                    "{pad}    aws-role-arn: {role_arn}\n{pad}    aws-region: {region}\n\
                     {pad}    signing-key-parameter: {key_parameter}\n"
                );
            }
            Access::Secrets => {
                let _ = write!(
                    out,
                    "{pad}    signing-key: ${{{{ secrets.NIXBUCKET_SIGNING_KEY }}}}\n\
                     {pad}  env:\n\
                     {pad}    AWS_ACCESS_KEY_ID: ${{{{ secrets.NIXBUCKET_AWS_ACCESS_KEY_ID }}}}\n\
                     {pad}    AWS_SECRET_ACCESS_KEY: ${{{{ secrets.NIXBUCKET_AWS_SECRET_ACCESS_KEY }}}}\n"
                );
            }
        }
        let _ = writeln!(out, "{pad}- run: nix build --print-build-logs");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTION: &str = "nixbucket/nixbucket@0123456789abcdef0123456789abcdef01234567 # v0.1.0";

    #[test]
    fn the_role_workflow_names_the_role_and_the_parameter_and_asks_for_a_token() {
        let file = Workflow {
            cache_url: "s3://cache?region=eu-west-1",
            public_key: "cache-1:AAAA",
            action: ACTION,
            access: Access::Role {
                role_arn: "arn:aws:iam::123456789012:role/nixbucket-o-r",
                region: "eu-west-1",
                key_parameter: "/nixbucket/cache/signing-key",
            },
        }
        .file();
        for line in [
            "      id-token: write",
            "          aws-role-arn: arn:aws:iam::123456789012:role/nixbucket-o-r",
            "          signing-key-parameter: /nixbucket/cache/signing-key",
            "          public-keys: cache-1:AAAA",
            "      - uses: nixbucket/nixbucket@0123456789abcdef0123456789abcdef01234567 # v0.1.0",
            "permissions: {}",
        ] {
            assert!(file.contains(line), "no {line:?} in\n{file}");
        }
        assert!(!file.contains("secrets."), "{file}");
    }

    #[test]
    fn the_secrets_workflow_asks_for_no_token() {
        let file = Workflow {
            cache_url: "s3://cache?endpoint=https://x.r2.cloudflarestorage.com&region=auto",
            public_key: "cache-1:AAAA",
            action: ACTION,
            access: Access::Secrets,
        }
        .file();
        assert!(!file.contains("id-token"), "{file}");
        assert!(
            file.contains("signing-key: ${{ secrets.NIXBUCKET_SIGNING_KEY }}"),
            "{file}"
        );
    }
}
