//! Making the Nix that runs the build read a substituter: the nix.conf whose settings take
//! effect (the user's, or the system's for a daemon that does not trust the user, through a
//! non-interactive sudo), the daemon restarted when it must be, and the result read back
//! through Nix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};

use crate::cache::same_store_url;
use crate::nix::{PublicKey, conf};
use crate::store::{self, NixEnv};

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
    substituters: &[String],
    keys: &[String],
    user_conf: Option<PathBuf>,
) -> Target {
    let daemon_accepts_ours = !env.daemon
        || env.trusted
        || (substituters.iter().all(|ours| {
            env.trusted_substituters
                .iter()
                .any(|s| same_store_url(s, ours))
        }) && keys.iter().all(|k| env.trusted_public_keys.contains(k)));
    match user_conf {
        Some(path) if daemon_accepts_ours => Target::User(path),
        _ => Target::System {
            path: store::system_conf_path(),
            restart_daemon: env.daemon,
        },
    }
}

/// A directory Nix reads before the cache, and what lays it out once Nix is known to read it.
pub struct Mirror<'a> {
    pub dir: &'a Path,
    pub prepare: &'a dyn Fn(&Path) -> anyhow::Result<()>,
}

/// What else goes into nix.conf beside the substituter.
pub struct Settings<'a> {
    /// Substituters after ours (other teams' caches), in order.
    pub also: &'a [String],
    /// Every key Nix is to trust for them all.
    pub keys: &'a [PublicKey],
    /// Other settings (`fallback`, `post-build-hook`).
    pub extra: Vec<(&'a str, Vec<String>)>,
    /// The block of nix.conf they go in: setup's, or one `use` keeps for a cache.
    pub markers: conf::Markers,
}

/// What [`configure`] did.
pub struct Configured {
    /// The nix.conf that holds the settings.
    pub conf: PathBuf,
    /// Nix reads the mirror.
    pub mirrored: bool,
    /// The file changed and the daemon was restarted to read it.
    pub restarted: bool,
}

/// Points Nix at `substituter`, behind the `mirror` directory if there is one and the Nix
/// that builds will read it (the mirror is laid out then).
pub fn configure(
    substituter: &str,
    mirror: Option<Mirror<'_>>,
    settings: Settings<'_>,
) -> anyhow::Result<Configured> {
    let Settings {
        also,
        keys,
        extra,
        markers,
    } = settings;
    let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
    let env = NixEnv::detect().context("could not ask Nix how it is set up")?;
    if substituter.starts_with("s3://") {
        if let Some(why) = s3_substituter_risk(&env, store::nix_version()?) {
            eprintln!(
                "warning: {why}; `setup` without --no-serve reads the bucket through a server of \
                 this job, which needs no credentials in the daemon, or point Nix at a public \
                 https:// endpoint (--substituter)"
            );
        }
    }
    let mut substituters = vec![substituter.to_owned()];
    let user_conf = store::user_conf_path();
    let mut mirrored = false;
    if let Some(Mirror { dir, prepare }) = mirror {
        let mirror = format!("file://{}", dir.display());
        let with_mirror = [mirror.clone(), substituter.to_owned()];
        // A daemon that takes the cache from this user's nix.conf but would ignore a mirror it
        // was not told of: restoring would mean the system nix.conf and a daemon restart.
        if choose_target(&env, &with_mirror, &keys, user_conf.clone())
            != choose_target(&env, &substituters, &keys, user_conf.clone())
        {
            eprintln!(
                "restore: skipped: the nix-daemon does not trust user {} and would ignore a \
                 mirror it does not list in trusted-substituters; add the user to trusted-users, \
                 or give a fixed --mirror DIR and list file://DIR there",
                env.user
            );
        } else if let Err(err) = prepare(dir) {
            eprintln!("restore: skipped: {err:#}");
        } else {
            substituters.insert(0, mirror);
            mirrored = true;
        }
    }
    substituters.extend(also.iter().cloned());
    let mut settings = vec![
        ("extra-substituters", substituters.clone()),
        ("extra-trusted-public-keys", keys.clone()),
    ];
    settings.extend(extra);
    let target = choose_target(&env, &substituters, &keys, user_conf);
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
    let after = conf::set_block(&before, &markers, &settings)
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
    Ok(Configured {
        conf: path,
        mirrored,
        restarted: changed && restart,
    })
}

/// Takes the block between `markers` out of `path` (written by [`configure`]), restarting the
/// daemon when it reads that file. True if there was something to take out.
pub fn unconfigure(path: &Path, markers: &conf::Markers) -> anyhow::Result<bool> {
    let env = NixEnv::detect().context("could not ask Nix how it is set up")?;
    let before = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
    };
    let after =
        conf::set_block(&before, markers, &[]).with_context(|| format!("in {}", path.display()))?;
    if after == before {
        return Ok(false);
    }
    write_conf(path, &after, &env)?;
    let system = Some(path) != store::user_conf_path().as_deref();
    if system && env.daemon {
        restart_daemon(&env).with_context(|| {
            format!(
                "took the cache out of {}, but restarting the nix-daemon failed; restart it yourself",
                path.display()
            )
        })?;
    }
    Ok(true)
}

/// Why Nix may not read an `s3://` substituter with the job's credentials, if it may not: a
/// daemon reads it with its own, and an older Nix may have no S3 store at all.
pub fn s3_substituter_risk(env: &NixEnv, version: &store::NixVersion) -> Option<String> {
    if env.daemon {
        return Some(
            "the nix-daemon, not this job, fetches from the bucket, and it does not have this \
             job's AWS credentials"
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
    // The file keeps its mode; a new one is world-readable, as Nix reads it as any user.
    let mode = std::fs::metadata(path).map_or(0o644, |meta| meta.permissions().mode() & 0o7777);
    let direct = crate::atomic_file::write(path, Some(mode), text.as_bytes());
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
        let pick =
            |env: &NixEnv| choose_target(env, &["file:///c".to_owned()], &keys, Some(user.clone()));
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
            choose_target(&env(false, false), &["file:///c".to_owned()], &keys, None),
            Target::System {
                restart_daemon: false,
                ..
            }
        ));
    }
}
