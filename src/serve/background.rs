//! The server `setup --serve` starts in the background, and its end in `push`: started as a
//! detached process that outlives `setup`, its address and hand-over token given to Nix's
//! post-build hook, then drained of uploads, asked for its counters and stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{StatsSnapshot, TOKEN_ENV, client};
use crate::state::ServeState;

/// How long `setup` waits for the background server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Files of the background server, next to the state file.
fn sibling(state_path: &Path, name: &str) -> PathBuf {
    state_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(name)
}

/// A server `setup` started: what goes in the state, and the token only the hook gets.
pub struct Background {
    pub state: ServeState,
    token: zeroize::Zeroizing<String>,
}

/// Starts `nixbucket serve` for `cache` (and the read-only `extra_caches` after it) as a
/// detached process that outlives `setup`: its own
/// process group (a CI step's end or Ctrl-C does not reach it), output to a log file next to
/// the state file. Fixed `credentials` (a role the Action assumed) reach it on its standard
/// input, never in its environment or arguments; the signing key only when it `signs` the
/// hook's hand-overs. Returns once it answers.
pub fn start(
    cache: &str,
    extra_caches: &[String],
    state_path: &Path,
    signing_key_file: Option<&Path>,
    signs: bool,
    credentials: Option<&aws_credential_types::Credentials>,
) -> anyhow::Result<Background> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("could not find the nixbucket binary")?;
    let log_path = sibling(state_path, "nixbucket-serve.log");
    let ready = sibling(state_path, "nixbucket-serve.addr");
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("could not create {}", log_path.display()))?;
    let log2 = log.try_clone().context("could not share the log file")?;
    let mut random = [0u8; 24];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
    let token = zeroize::Zeroizing::new(random.iter().map(|b| format!("{b:02x}")).collect());
    let mut cmd = Command::new(&exe);
    // The server outlives setup, and a later step of the job, running as the same user, can
    // read its environment: none of the secrets the step was given go there (the Action's
    // signing key and tokens); the signing key only when the server signs hand-overs with it
    // and no key file names it. AWS credentials of the job's own environment stay: the later
    // steps have them already, and the server reads the bucket with them.
    for var in crate::store::SECRET_VARS {
        if !var.starts_with("AWS_") {
            cmd.env_remove(var);
        }
    }
    if let (Some(key), true) = (std::env::var_os(crate::command::SIGNING_KEY_ENV), signs) {
        if signing_key_file.is_none() {
            cmd.env(crate::command::SIGNING_KEY_ENV, key);
        }
    }
    if credentials.is_some() {
        // Fixed credentials come on the pipe below: none from the environment may stand in.
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            cmd.env_remove(var);
        }
    }
    cmd.env(TOKEN_ENV, &*token);
    cmd.args(["serve", "--cache", cache, "--ready-file"])
        .arg(&ready)
        .stdin(if credentials.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    if let Some(file) = signing_key_file {
        cmd.arg("--signing-key-file").arg(file);
    }
    for extra in extra_caches {
        cmd.args(["--extra-cache", extra]);
    }
    if credentials.is_some() {
        cmd.arg("--credentials-stdin");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {} serve", exe.display()))?;
    if let (Some(creds), Some(mut stdin)) = (credentials, child.stdin.take()) {
        let text = zeroize::Zeroizing::new(crate::cache::credentials_json(creds));
        // The server reads to the end: dropping stdin closes it.
        if let Err(e) = std::io::Write::write_all(&mut stdin, text.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("could not hand nixbucket serve its credentials: {e}");
        }
    }
    let pid = child.id();
    let log_tail = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "nixbucket serve exited at start ({status}); its log ({}):\n{}",
                log_path.display(),
                log_tail()
            );
        }
        if let Ok(url) = std::fs::read_to_string(&ready) {
            let addr = client::parse_addr(url.trim())?;
            if client::stats(addr, Duration::from_secs(2)).is_ok() {
                return Ok(Background {
                    state: ServeState {
                        pid,
                        port: addr.port(),
                    },
                    token,
                });
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "nixbucket serve did not answer within {}s; its log ({}):\n{}",
                START_TIMEOUT.as_secs(),
                log_path.display(),
                log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes the post-build-hook script Nix runs after each build. It hands the outputs to the
/// server and exits 0 whatever happens: a missing binary, a dead server or a bad answer must
/// never fail the build (the job-end push uploads whatever the hook did not). It holds the
/// hand-over token, so only its owner (and root, who runs it for the daemon) may read it.
pub fn install_hook_script(state_path: &Path, served: &Background) -> anyhow::Result<PathBuf> {
    let port = served.state.port;
    let exe = std::env::current_exe().context("could not find the nixbucket binary")?;
    let exe = exe
        .to_str()
        .context("the nixbucket binary's path is not UTF-8")?;
    let script = hook_script_path(state_path);
    // Nix 2.8's nix-build does not show a hook's output, so it goes to a log of its own.
    let log = sibling(state_path, "nixbucket-hook.log");
    let log = log
        .to_str()
        .context("the state directory's path is not UTF-8")?;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let text = format!(
        "#!/bin/sh\n# Written by `nixbucket setup --push-during-build`: hands what Nix built to \
         `nixbucket serve`.\n# It never fails the build; `nixbucket push` uploads what it missed.\n\
         {}={} {} hook --server http://127.0.0.1:{port} 2>>{} || true\nexit 0\n",
        TOKEN_ENV,
        &*served.token,
        quote(exe),
        quote(log),
    );
    let text = zeroize::Zeroizing::new(text);
    // Created 0600, so the token is never readable by others, then made executable.
    crate::atomic_file::write(&script, Some(0o700), text.as_bytes())
        .with_context(|| format!("could not write {}", script.display()))?;
    Ok(script)
}

/// Where [`install_hook_script`] writes the hook for a state file.
pub fn hook_script_path(state_path: &Path) -> PathBuf {
    sibling(state_path, "nixbucket-post-build-hook")
}

/// Whether `pid` is still a `nixbucket serve` process (and not a process that got its pid
/// after it ended). A zombie counts as gone. Linux answers from /proc; macOS, which has no
/// /proc, from `ps`.
fn is_our_server(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let zombie = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if zombie {
            return false;
        }
        let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        return args
            .first()
            .is_some_and(|a| a.ends_with(b"nixbucket") || a.ends_with(b"nixbucket (deleted)"))
            && args.get(1).is_some_and(|a| *a == b"serve");
    }
    let Ok(out) = crate::store::child_command("ps")
        .args(["-o", "stat=,command=", "-p", &pid.to_string()])
        .output()
    else {
        return false;
    };
    serves(&String::from_utf8_lossy(&out.stdout))
}

/// Whether a `ps -o stat=,command=` line is a live `nixbucket serve`: not a zombie (`Z`),
/// and its command a nixbucket binary followed by `serve`.
fn serves(ps_line: &str) -> bool {
    let line = ps_line.trim();
    let Some((stat, command)) = line.split_once(char::is_whitespace) else {
        return false;
    };
    let mut words = command.split_whitespace();
    !stat.starts_with('Z')
        && words.next().is_some_and(|exe| exe.ends_with("nixbucket"))
        && words.next() == Some("serve")
}

/// Whether the server `setup` recorded as `pid` still runs (and is that server).
pub fn running(pid: u32) -> bool {
    is_our_server(pid)
}

/// Stops the server `setup` started: SIGTERM to the recorded pid only, if it still is ours.
pub fn stop(pid: u32) -> anyhow::Result<()> {
    if !is_our_server(pid) {
        return Ok(());
    }
    let status = crate::store::child_command("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("could not run `kill`")?;
    if !status.success() && is_our_server(pid) {
        bail!("`kill {pid}` failed ({status})");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while is_our_server(pid) {
        if Instant::now() > deadline {
            bail!("nixbucket serve (pid {pid}) did not stop within 15s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// How long `push` waits for uploads the hook queued before it diffs the store itself.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// For `push`, the server `setup --serve` started (`served`): wait until its upload queue is
/// empty, read its counters and (unless `keep_running`) stop it. Problems are warnings: the
/// push itself does not depend on the server.
pub fn finish(served: &ServeState, keep_running: bool) -> Option<StatsSnapshot> {
    let addr = SocketAddr::from(([127, 0, 0, 1], served.port));
    let stats = if keep_running {
        client::stats(addr, Duration::from_secs(5)).map_err(anyhow::Error::from)
    } else {
        drain(addr)
    };
    let stats = match stats {
        Ok(s) => Some(s),
        Err(err) => {
            eprintln!(
                "warning: no counters from nixbucket serve ({err:#}); pushing everything the job added"
            );
            None
        }
    };
    if !keep_running {
        if let Err(err) = stop(served.pid) {
            eprintln!("warning: could not stop nixbucket serve: {err:#}");
        }
    }
    stats
}

fn drain(addr: SocketAddr) -> anyhow::Result<StatsSnapshot> {
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let stats = client::stats(addr, Duration::from_secs(10))?;
        if stats.upload.pending == 0 {
            return Ok(stats);
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!(
                "{} hand-overs still queued after {}s",
                stats.upload.pending,
                DRAIN_TIMEOUT.as_secs()
            );
        }
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "waiting for nixbucket serve to finish uploading ({} builds' outputs queued)",
                stats.upload.pending
            );
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ps_line_tells_a_live_server_from_a_zombie_or_another_program() {
        assert!(serves(
            "Ss   /usr/local/bin/nixbucket serve --cache s3://c\n"
        ));
        assert!(!serves(
            "Z    /usr/local/bin/nixbucket serve --cache s3://c"
        ));
        assert!(!serves("S    /usr/local/bin/nixbucket push"));
        assert!(!serves("S    /bin/sleep serve"));
        assert!(!serves(""));
    }
}
