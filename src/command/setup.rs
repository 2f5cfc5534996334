//! `nixbucket setup`: before the build, make the Nix that runs it substitute from the cache,
//! and record the store so `push` can tell what the job added.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, bail};

use crate::cache::{CacheUrl, OpenOptions, same_store_url};
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
    /// Do not restore. By default, with an s3:// cache, setup fetches what the last job of this
    /// branch (else of the default branch, else any) used into a local mirror that Nix reads
    /// first, many requests at a time: the build then substitutes at local speed. `push`
    /// removes the mirror.
    #[arg(long, env = "NIXBUCKET_NO_RESTORE")]
    pub no_restore: bool,
    /// Restore at most this much (NARs as stored, compressed): `500MiB`, `4GiB`.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = parse_size)]
    pub restore_max_size: u64,
    /// Restore what the newest job of these branches used, the first branch that has one
    /// [default: the job's branch, then the default branch, as the CI system names them].
    #[arg(long = "restore-branch", value_name = "BRANCH")]
    pub restore_branches: Vec<String>,
    /// The mirror directory [default: beside the state file].
    #[arg(long, value_name = "DIR")]
    pub mirror: Option<PathBuf>,
    /// Requests in flight while restoring. Each small path costs two requests (narinfo, NAR),
    /// so a round trip away this sets how many paths arrive per round trip.
    #[arg(long, value_name = "N", default_value_t = RESTORE_JOBS, value_parser = clap::value_parser!(u16).range(1..))]
    pub restore_jobs: u16,
}

/// Requests in flight while restoring: S3 serves thousands a second per prefix, and with
/// 600 small paths (1,200 requests) at 40 ms a round trip, 256 in flight finish in about 5
/// round trips where 64 need 19.
pub const RESTORE_JOBS: u16 = 256;

fn parse_size(text: &str) -> Result<u64, String> {
    crate::gc::units::parse_size(text).map_err(|e| e.to_string())
}

/// What to restore into the mirror before the build, and where (see [`crate::restore`]).
#[derive(Clone, Debug)]
pub struct Restore {
    pub mirror: PathBuf,
    pub branches: Vec<String>,
    pub max_size: u64,
    pub jobs: usize,
    /// How to open the cache: the Action's role credentials, where it assumed one.
    pub open: OpenOptions,
}

/// The default budget: a runner's free disk holds this compressed and the store unpacked.
pub const RESTORE_MAX_SIZE: u64 = 4 << 30;

impl Restore {
    /// Restoring with the default settings and the branches the CI system names, for a cache
    /// where it pays: an S3 bucket (a `file://` cache is a local directory already).
    pub fn default_for(url: &CacheUrl, state_path: &Path, open: OpenOptions) -> Option<Restore> {
        let limits = (RESTORE_MAX_SIZE, RESTORE_JOBS.into());
        let mut restore = Restore::for_cache(url, state_path, None, Vec::new(), limits)?;
        restore.open = open;
        Some(restore)
    }

    fn for_cache(
        url: &CacheUrl,
        state_path: &Path,
        mirror: Option<PathBuf>,
        branches: Vec<String>,
        (max_size, jobs): (u64, usize),
    ) -> Option<Restore> {
        if matches!(url, CacheUrl::File { .. }) {
            return None;
        }
        let branches = if branches.is_empty() {
            crate::ci::Branches::detect().in_order()
        } else {
            branches
        };
        let mirror = mirror.unwrap_or_else(|| {
            let mut rnd = [0u8; 6];
            let _ = getrandom::fill(&mut rnd);
            let suffix: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
            // A fresh name per job: Nix's narinfo disk cache, keyed by the substituter's URL,
            // never answers for an older mirror.
            state_path.with_file_name(format!("nixbucket-mirror-{suffix}"))
        });
        // An absolute path: nix.conf's file:// URL is read by a daemon whose working directory
        // is not ours, and push removes the mirror from a later step's.
        let mirror = match std::path::absolute(&mirror) {
            Ok(path) => path,
            Err(e) => {
                eprintln!("restore: skipped: the mirror {}: {e}", mirror.display());
                return None;
            }
        };
        // The path goes into a space-separated list of URLs.
        let text = mirror.to_string_lossy();
        if text.contains(|c: char| c.is_whitespace() || "?#%".contains(c)) {
            eprintln!(
                "restore: skipped: the mirror {text:?} would not read back as a file:// \
                 substituter (it has a space, '?', '#' or '%'); give --mirror another directory"
            );
            return None;
        }
        Some(Restore {
            mirror,
            branches,
            max_size,
            jobs,
            open: OpenOptions::default(),
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let state_path = args.state_file.clone().unwrap_or_else(state::default_path);
    let keys = public_keys(&args)?;
    if !args.serve {
        let substituter = (!args.no_configure)
            .then(|| args.substituter.clone().unwrap_or_else(|| url.to_string()));
        let restore = restore_of(&args, &url, &state_path);
        setup_job(
            &url,
            substituter.as_deref(),
            &keys,
            &state_path,
            restore.as_ref(),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    prepare_cache(&url);
    let background = serve::start_background(
        &url.to_string(),
        &state_path,
        args.signing_key_file.as_deref(),
    )?;
    let mut restore = restore_of(&args, &url, &state_path);
    if !args.no_configure {
        let configured = configure_served(&args, &keys, &state_path, &background, restore.as_ref());
        match configured {
            Ok(mirrored) => restore = restore.filter(|_| mirrored),
            Err(err) => {
                let _ = serve::stop(background.state.pid);
                return Err(err);
            }
        }
    }
    let store_paths = store::read_store_dir(Path::new(STORE_DIR))?;
    let mirror = restore.map(|r| run_restore(&url, &r, &store_paths));
    record_store(
        &url,
        &keys,
        &state_path,
        store_paths,
        Some(background.state),
        mirror,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn restore_of(args: &Args, url: &CacheUrl, state_path: &Path) -> Option<Restore> {
    if args.no_restore || args.no_configure {
        return None;
    }
    Restore::for_cache(
        url,
        state_path,
        args.mirror.clone(),
        args.restore_branches.clone(),
        (args.restore_max_size, args.restore_jobs.into()),
    )
}

/// What `run` does once the arguments are resolved: point Nix at `substituter` trusting `keys`
/// (unless it is `None`), restore into a mirror ahead of it (with `restore`), then record the
/// store for `push` in `state_path`. The GitHub Action calls this with what it read from its
/// inputs.
pub fn setup_job(
    url: &CacheUrl,
    substituter: Option<&str>,
    keys: &[PublicKey],
    state_path: &Path,
    restore: Option<&Restore>,
) -> anyhow::Result<()> {
    prepare_cache(url);
    let mut restore = restore.filter(|_| substituter.is_some());
    if let Some(substituter) = substituter {
        let mirrored = configure(substituter, restore, keys, Vec::new())?;
        restore = restore.filter(|_| mirrored);
    }
    let store_paths = store::read_store_dir(Path::new(STORE_DIR))?;
    let mirror = restore.map(|r| run_restore(url, r, &store_paths));
    record_store(url, keys, state_path, store_paths, None, mirror)
}

/// Fills the mirror `configure` listed (see [`crate::restore`]) and returns it. A restore that
/// fails is a warning: the cache itself is still a substituter, only a slower one.
fn run_restore(url: &CacheUrl, restore: &Restore, store_paths: &[String]) -> PathBuf {
    let have = store_paths
        .iter()
        .filter_map(|name| name.get(..32).map(str::to_owned))
        .collect();
    let opts = crate::restore::Options {
        mirror: restore.mirror.clone(),
        branches: restore.branches.clone(),
        max_size: restore.max_size,
        jobs: restore.jobs,
        have,
        progress: Some(std::time::Duration::from_secs(5)),
    };
    // On a thread of its own: setup runs inside the CLI's runtime and the Action's blocking
    // pool, where a runtime cannot be entered again.
    let restored = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<crate::restore::Report> {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let cache = crate::cache::Cache::open_with(url, restore.open.clone()).await?;
                Ok(crate::restore::restore(&cache, &opts).await?)
            })
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the restore stopped unexpectedly")))
    });
    match restored {
        Ok(report) => eprintln!("{}", report.summary()),
        Err(err) => eprintln!(
            "warning: could not restore into {}: {err:#}; Nix substitutes from {url} directly",
            restore.mirror.display()
        ),
    }
    restore.mirror.clone()
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
    paths: Vec<String>,
    served: Option<ServeState>,
    mirror: Option<PathBuf>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let count = paths.len();
    let mut state = State::new(
        url.to_string(),
        paths,
        keys.iter().map(ToString::to_string).collect(),
    );
    state.serve = served;
    state.mirror = mirror;
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
    restore: Option<&Restore>,
) -> anyhow::Result<bool> {
    let mut extra = vec![("fallback", vec!["true".to_owned()])];
    if args.push_during_build {
        let hook = serve::install_hook_script(state_path, served)?;
        extra.push(("post-build-hook", vec![hook.display().to_string()]));
    }
    configure(
        &format!("http://127.0.0.1:{}", served.state.port),
        restore,
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

/// Points Nix at `substituter`, behind the mirror of `restore` if there is one and the Nix
/// that builds will read it; true if it will.
fn configure(
    substituter: &str,
    restore: Option<&Restore>,
    keys: &[PublicKey],
    extra: Vec<(&str, Vec<String>)>,
) -> anyhow::Result<bool> {
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
    let mut substituters = vec![substituter.to_owned()];
    let user_conf = store::user_conf_path();
    let mut mirrored = false;
    if let Some(restore) = restore {
        let mirror = format!("file://{}", restore.mirror.display());
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
        } else if let Err(err) = crate::restore::prepare_mirror(&restore.mirror) {
            eprintln!("restore: skipped: {err}");
        } else {
            substituters.insert(0, mirror);
            mirrored = true;
        }
    }
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
    Ok(mirrored)
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

    #[test]
    fn the_mirror_is_an_absolute_path_that_reads_back_as_a_url() {
        let s3: CacheUrl = "s3://b?region=x".parse().unwrap();
        let limits = (1, 1);
        let at = |dir: &str| {
            Restore::for_cache(
                &s3,
                Path::new("/s/state.json"),
                Some(dir.into()),
                vec![],
                limits,
            )
        };
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(at("m").unwrap().mirror, cwd.join("m"));
        assert_eq!(at("/x/m").unwrap().mirror, Path::new("/x/m"));
        for bad in ["/x/a b", "/x/a?b", "/x/a%20", "/x/a#b"] {
            assert!(at(bad).is_none(), "{bad}");
        }
        let default = Restore::for_cache(&s3, Path::new("/s/state.json"), None, vec![], limits);
        let default = default.unwrap().mirror;
        assert!(
            default
                .to_string_lossy()
                .starts_with("/s/nixbucket-mirror-"),
            "{default:?}"
        );
        let file: CacheUrl = "file:///c".parse().unwrap();
        assert!(
            Restore::default_for(&file, Path::new("/s/state.json"), OpenOptions::default())
                .is_none()
        );
    }

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
