//! Glue between nixbucket and the CI systems it runs in. GitHub Actions needs code of its own
//! (inputs, workflow commands, step files, OIDC, check runs); GitLab and Travis are served by
//! shell templates in `ci-templates/` that call the ordinary subcommands.

pub mod github;
