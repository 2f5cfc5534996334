//! `nixbucket setup`: before the build, make the Nix that runs it substitute from the cache,
//! and record the store so `push` can tell what the job added.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, bail};

use crate::cache::{CacheUrl, same_store_url};
use crate::command::{serve, signing_key};
use crate::nix::conf;
use crate::nix::{PublicKey, STORE_DIR};
use crate::state::{self, ServeState, State};
use crate::store::{self, NixEnv};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The binary cache, in Nix's URL syntax: `s3://BUCKET?region=…` or `file:///some/dir`.
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// Public key(s) Nix should trust for the cache, `NAME:BASE64`. Without it, the public half
    /// of the signing key ($NIXBUCKET_SIGNING_KEY or --signing-key-file) is used.
    #[arg(
        long = "public-key",
        env = "NIXBUCKET_PUBLIC_KEYS",
        value_delimiter = ' ',
        value_name = "KEY"
    )]
    pub public_keys: Vec<String>,
    /// Secret key file to derive the public key from, when no --public-key is given.
    #[arg(long, env = "NIXBUCKET_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The URL Nix should read the cache from, when it differs from --cache (a public HTTPS
    /// endpoint or CDN in front of the bucket, say).
    #[arg(long, value_name = "URL")]
    pub substituter: Option<String>,
    /// Where to record the store for `push` [default: $RUNNER_TEMP/nixbucket-state.json on
    /// GitHub Actions, else ~/.cache/nixbucket/state.json].
    #[arg(long, env = "NIXBUCKET_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Only record the store; leave Nix's configuration alone.
    #[arg(long)]
    pub no_configure: bool,
    /// Start `nixbucket serve` in the background and make Nix substitute from it
    /// (`http://127.0.0.1:PORT`): the nix-daemon then needs no credentials of its own, and a Nix
    /// without S3 support works. `push` stops it and reports the job's cache hit rate.
    #[arg(long, conflicts_with = "substituter")]
    pub serve: bool,
    /// With --serve: upload each path as soon as Nix has built it (a post-build-hook hands it to
    /// the server), so `push` only uploads what remains.
    #[arg(long, requires = "serve")]
    pub push_during_build: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let state_path = args.state_file.clone().unwrap_or_else(state::default_path);
    let keys = public_keys(&args)?;
    if !args.serve {
        let substituter = (!args.no_configure)
            .then(|| args.substituter.clone().unwrap_or_else(|| url.to_string()));
        setup_job(&url, substituter.as_deref(), &keys, &state_path)?;
        return Ok(ExitCode::SUCCESS);
    }
    prepare_cache(&url);
    let background = serve::start_background(
        &url.to_string(),
        &state_path,
        args.signing_key_file.as_deref(),
    )?;
    if !args.no_configure {
        let configured = configure_served(&args, &keys, &state_path, &background);
        if configured.is_err() {
            let _ = serve::stop(background.state.pid);
        }
        configured?;
    }
    record_store(&url, &keys, &state_path, Some(background.state))?;
    Ok(ExitCode::SUCCESS)
}

/// What `run` does once the arguments are resolved: point Nix at `substituter` trusting `keys`
/// (unless it is `None`), then record the store for `push` in `state_path`. The GitHub Action
/// calls this with what it read from its inputs.
pub fn setup_job(
    url: &CacheUrl,
    substituter: Option<&str>,
    keys: &[PublicKey],
    state_path: &Path,
) -> anyhow::Result<()> {
    prepare_cache(url);
    if let Some(substituter) = substituter {
        configure(substituter, keys, Vec::new())?;
    }
    record_store(url, keys, state_path, None)
}

/// A `file://` cache is laid out now, by the job's user: a root nix-daemon substituting from
/// it would otherwise create its folders as root and the job's `push` could not write there.
/// A job that cannot write there (one that only pulls) is warned, not stopped.
fn prepare_cache(url: &CacheUrl) {
    if let CacheUrl::File { root, .. } = url {
        if let Err(err) = crate::cache::file::prepare_layout(root) {
            eprintln!(
                "warning: could not lay out the cache {url} ({err}); a nix-daemon that substitutes \
                 from it may create its folders as root, and `push` could not write there"
            );
        }
    }
}

/// Records the store as it is before the build, for `push` to diff against.
fn record_store(
    url: &CacheUrl,
    keys: &[PublicKey],
    state_path: &Path,
    served: Option<ServeState>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let paths = store::read_store_dir(Path::new(STORE_DIR))?;
    let count = paths.len();
    let mut state = State::new(
        url.to_string(),
        paths,
        keys.iter().map(ToString::to_string).collect(),
    );
    state.serve = served;
    state.save(state_path)?;
    eprintln!(
        "recorded {count} store paths in {} ({} ms)",
        state_path.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// With --serve, Nix reads the local server, falls back to building when it is gone
/// (`fallback`), and with --push-during-build runs the hook after each build.
fn configure_served(
    args: &Args,
    keys: &[PublicKey],
    state_path: &Path,
    served: &serve::Background,
) -> anyhow::Result<()> {
    let mut extra = vec![("fallback", vec!["true".to_owned()])];
    if args.push_during_build {
        let hook = serve::install_hook_script(state_path, served)?;
        extra.push(("post-build-hook", vec![hook.display().to_string()]));
    }
    configure(
        &format!("http://127.0.0.1:{}", served.state.port),
        keys,
        extra,
    )
}

fn public_keys(args: &Args) -> anyhow::Result<Vec<PublicKey>> {
    let mut keys = args
        .public_keys
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| {
            PublicKey::parse(k)
                .with_context(|| format!("--public-key {k:?} is not a Nix public key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if keys.is_empty() {
        if let Some(secret) = signing_key::load(args.signing_key_file.as_deref())? {
            keys.push(secret.to_public());
        }
    }
    if keys.is_empty() && !args.no_configure {
        bail!(
            "no public key for the cache: pass --public-key NAME:KEY, or give the signing key \
             (${} or --signing-key-file) to derive it from",
            signing_key::ENV
        );
    }
    Ok(keys)
}

/// Where the settings must go so that the Nix doing the build honours them.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The user's own nix.conf: single-user Nix, or a daemon that trusts this user.
    User(PathBuf),
    /// The system nix.conf, read by the daemon; it must be restarted to see the change.
    System { path: PathBuf, restart_daemon: bool },
}

fn choose_target(
    env: &NixEnv,
    substituter: &str,
    keys: &[String],
    user_conf: Option<PathBuf>,
) -> Target {
    let daemon_accepts_ours = !env.daemon
        || env.trusted
        || (env
            .trusted_substituters
            .iter()
            .any(|s| same_store_url(s, substituter))
            && keys.iter().all(|k| env.trusted_public_keys.contains(k)));
    match user_conf {
        Some(path) if daemon_accepts_ours => Target::User(path),
        _ => Target::System {
            path: store::system_conf_path(),
            restart_daemon: env.daemon,
        },
    }
}

fn configure(
    substituter: &str,
    keys: &[PublicKey],
    extra: Vec<(&str, Vec<String>)>,
) -> anyhow::Result<()> {
    let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
    let env = NixEnv::detect().context("could not ask Nix how it is set up")?;
    if substituter.starts_with("s3://") {
        if let Some(why) = s3_substituter_risk(&env, store::nix_version()?) {
            eprintln!(
                "warning: {why}; `setup --serve` works with any Nix and needs no credentials in \
                 the daemon, or point Nix at a public https:// endpoint (--substituter)"
            );
        }
    }
    let mut settings = vec![
        ("extra-substituters", vec![substituter.to_owned()]),
        ("extra-trusted-public-keys", keys.clone()),
    ];
    settings.extend(extra);
    let target = choose_target(&env, substituter, &keys, store::user_conf_path());
    let (path, restart) = match &target {
        Target::User(path) => (path.clone(), false),
        Target::System {
            path,
            restart_daemon,
        } => (path.clone(), *restart_daemon),
    };
    let before = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
    };
    let after = conf::set_managed_block(&before, &settings)
        .with_context(|| format!("in {}", path.display()))?;
    let changed = after != before;
    if changed {
        if let Err(err) = write_conf(&path, &after, &env) {
            bail!(
                "{}",
                explain_untrusted(&env, &path, substituter, &keys, &format!("{err:#}"))
            );
        }
        if restart {
            if let Err(err) = restart_daemon(&env) {
                bail!(
                    "wrote the cache settings to {}, but the nix-daemon must be restarted to use them \
                     and that failed: {err:#}. Restart it yourself (e.g. `sudo systemctl restart nix-daemon`).",
                    path.display()
                );
            }
        }
    }
    check_nix_sees(substituter, &path)?;
    eprintln!(
        "nix will substitute from {substituter} ({} {})",
        if changed {
            "configured in"
        } else {
            "already configured in"
        },
        path.display()
    );
    Ok(())
}

/// Why Nix may not read an `s3://` substituter with the job's credentials, if it may not: a
/// daemon reads it with its own, and an older Nix may have no S3 store at all.
fn s3_substituter_risk(env: &NixEnv, version: &store::NixVersion) -> Option<String> {
    if env.daemon {
        return Some(
            "the nix-daemon, not this job, will fetch from the bucket, so it needs AWS \
             credentials of its own"
                .to_owned(),
        );
    }
    (!version.has_curl_s3()).then(|| {
        format!(
            "{} reads s3:// only if it was built with the AWS SDK (Debian's is not)",
            version.text
        )
    })
}

fn write_conf(path: &Path, text: &str, env: &NixEnv) -> anyhow::Result<()> {
    let direct = (|| -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())?;
        if let Ok(meta) = std::fs::metadata(path) {
            tmp.as_file().set_permissions(meta.permissions())?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    })();
    match direct {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !env.is_root => {
            // Only a non-interactive sudo: a CI job must never hang on a password prompt.
            let mut child = store::child_command("sudo")
                .args(["-n", "tee"])
                .arg(path)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| {
                    format!(
                        "{} is not writable ({e}) and sudo could not be started",
                        path.display()
                    )
                })?;
            std::io::Write::write_all(child.stdin.as_mut().expect("piped stdin"), text.as_bytes())?;
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "{} is not writable ({e}) and `sudo -n` was refused: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("could not write {}", path.display())),
    }
}

fn restart_daemon(env: &NixEnv) -> anyhow::Result<()> {
    let sudo = |args: &[&str]| {
        let mut cmd = if env.is_root {
            store::child_command(args[0])
        } else {
            let mut c = store::child_command("sudo");
            c.arg("-n").arg(args[0]);
            c
        };
        cmd.args(&args[1..]).output()
    };
    let attempts: [&[&str]; 2] = if cfg!(target_os = "macos") {
        [
            &[
                "launchctl",
                "kickstart",
                "-k",
                "system/org.nixos.nix-daemon",
            ],
            &[
                "launchctl",
                "kickstart",
                "-k",
                "system/systems.determinate.nix-daemon",
            ],
        ]
    } else {
        [
            &["systemctl", "restart", "nix-daemon.service"],
            &["systemctl", "restart", "nix-daemon.socket"],
        ]
    };
    let mut last = String::new();
    for args in attempts {
        match sudo(args) {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => last = format!("{}: {e}", args[0]),
        }
    }
    bail!("{last}")
}

fn explain_untrusted(
    env: &NixEnv,
    path: &Path,
    substituter: &str,
    keys: &[String],
    why: &str,
) -> String {
    let mut text = format!("could not configure Nix to use the cache: {why}.\n");
    if env.daemon && !env.trusted {
        text.push_str(&format!(
            "The nix-daemon does not trust user {:?}, so it ignores substituters and keys that this \
             user sets (Nix would only print \"ignoring untrusted substituter\" and build everything).\n",
            env.user
        ));
    }
    text.push_str(&format!(
        "Add these lines to {} as root and restart the nix-daemon, then run setup again:\n  \
         extra-substituters = {substituter}\n  extra-trusted-public-keys = {}\n\
         (or add the user to `trusted-users` there)",
        path.display(),
        keys.join(" ")
    ));
    text
}

/// Reads the configuration back through Nix, so a setting that does not take effect (a typo'd
/// path, an overriding $NIX_CONFIG) is an error now rather than a silent cache miss later.
fn check_nix_sees(substituter: &str, path: &Path) -> anyhow::Result<()> {
    let env = NixEnv::detect()?;
    if !env
        .substituters
        .iter()
        .any(|s| same_store_url(s, substituter))
    {
        bail!(
            "wrote {substituter} to {}, but Nix does not list it among its substituters ({}); is \
             $NIX_CONFIG or $NIX_USER_CONF_FILES overriding that file?",
            path.display(),
            env.substituters.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(daemon: bool, trusted: bool) -> NixEnv {
        NixEnv {
            daemon,
            trusted,
            user: "runner".into(),
            ..Default::default()
        }
    }

    #[test]
    fn picks_the_conf_that_takes_effect() {
        let user = PathBuf::from("/home/runner/.config/nix/nix.conf");
        let keys = ["c-1:AAAA".to_owned()];
        let pick = |env: &NixEnv| choose_target(env, "file:///c", &keys, Some(user.clone()));
        assert_eq!(pick(&env(false, false)), Target::User(user.clone()));
        assert_eq!(pick(&env(true, true)), Target::User(user.clone()));
        assert!(matches!(
            pick(&env(true, false)),
            Target::System {
                restart_daemon: true,
                ..
            }
        ));
        let mut allowed = env(true, false);
        allowed.trusted_substituters = vec!["file:///c".into()];
        assert!(
            matches!(pick(&allowed), Target::System { .. }),
            "key not trusted yet"
        );
        allowed.trusted_public_keys = keys.to_vec();
        assert_eq!(pick(&allowed), Target::User(user.clone()));
        assert!(matches!(
            choose_target(&env(false, false), "file:///c", &keys, None),
            Target::System {
                restart_daemon: false,
                ..
            }
        ));
    }
}
