//! The Nix side: which Nix, through a daemon or not, whether the substituter that reads the
//! cache is listed and whether the daemon takes it, a restart the daemon has not had, and who
//! fetches from the bucket with which credentials.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Check, Options};
use crate::cache::{CacheUrl, same_store_url};
use crate::store::{self, NixEnv, NixVersion};

/// The substituter through which Nix reads the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// The bucket's own `s3://` URL: whoever runs the substitution signs the requests.
    Bucket(String),
    /// A `nixbucket serve` on loopback, which reads the bucket with the credentials setup gave
    /// it.
    Serve { url: String, port: u16 },
    /// Another URL of the user's (`--substituter`), or a `file://` cache.
    Other(String),
}

impl Via {
    pub fn url(&self) -> &str {
        match self {
            Via::Bucket(url) | Via::Other(url) => url,
            Via::Serve { url, .. } => url,
        }
    }
}

/// The nix-daemon process, as far as this user can see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Daemon {
    pub pid: Option<u32>,
    pub started: Option<SystemTime>,
    /// Where its AWS credentials would come from (variable names, a credentials file); `None`
    /// when this user cannot read its environment (it is root's).
    pub credentials: Option<Vec<String>>,
}

/// A nix.conf and what it says, if it could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfFile {
    pub path: PathBuf,
    pub text: Option<String>,
    pub modified: Option<SystemTime>,
}

impl ConfFile {
    fn read(path: PathBuf) -> ConfFile {
        let text = std::fs::read_to_string(&path).ok();
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        ConfFile {
            path,
            text,
            modified,
        }
    }

    fn values(&self, names: &[&str]) -> Vec<String> {
        self.text
            .as_deref()
            .map_or_else(Vec::new, |t| conf_values(t, names))
    }
}

/// What the doctor learns of the local Nix before judging it.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub version: Option<NixVersion>,
    pub env: Option<NixEnv>,
    /// Why Nix could not be asked.
    pub nix_error: Option<String>,
    pub user_conf: Option<ConfFile>,
    /// The system nix.conf and, where it includes one, Determinate's nix.custom.conf.
    pub system_confs: Vec<ConfFile>,
    pub daemon: Option<Daemon>,
    pub via: Option<Via>,
    /// Whether the server `via` names answered for nix-cache-info.
    pub serve_answers: Option<bool>,
}

/// The key Nix trusts when nix.conf sets no `trusted-public-keys`.
const NIX_DEFAULT_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// Whether a nix.conf's text sets `name` (even to nothing).
fn sets(text: &str, name: &str) -> bool {
    text.lines()
        .map(|l| l.split_once('#').map_or(l, |(before, _)| before))
        .filter_map(|l| l.split_once('='))
        .any(|(n, _)| n.trim() == name)
}

/// Substituter settings, each as Nix reads them (`extra-` adds to the same list).
const SUBSTITUTERS: &[&str] = &["substituters", "extra-substituters"];
const TRUSTED_SUBSTITUTERS: &[&str] = &["trusted-substituters", "extra-trusted-substituters"];

impl Facts {
    pub fn gather(opts: &Options) -> Facts {
        let mut facts = Facts {
            user_conf: store::user_conf_path().map(ConfFile::read),
            ..Facts::default()
        };
        let system = store::system_conf_path();
        let main = system.with_file_name("nix.conf");
        if system != main {
            facts.system_confs.push(ConfFile::read(main));
        }
        facts.system_confs.push(ConfFile::read(system));
        match store::nix_version().cloned() {
            Ok(version) => facts.version = Some(version),
            Err(err) => {
                facts.nix_error = Some(err.to_string());
                return facts;
            }
        }
        match NixEnv::detect() {
            Ok(env) => facts.env = Some(env),
            Err(err) => {
                facts.nix_error = Some(err.to_string());
                return facts;
            }
        }
        if facts.env.as_ref().is_some_and(|env| env.daemon) {
            facts.daemon = Some(find_daemon());
        }
        facts.locate(opts);
        facts
    }

    /// Finds the substituter that reads the cache `opts` names, and whether a server there
    /// answers.
    pub fn locate(&mut self, opts: &Options) {
        let Some(env) = &self.env else {
            return;
        };
        self.via = find_via(env, opts);
        self.serve_answers = match &self.via {
            Some(Via::Serve { port, .. }) => Some(serve_answers(*port)),
            _ => None,
        };
    }

    /// The first `s3://` substituter Nix lists, for a doctor given no cache.
    pub fn s3_substituter(&self) -> Option<CacheUrl> {
        let env = self.env.as_ref()?;
        (env.substituters.iter())
            .filter(|s| s.starts_with("s3://"))
            .find_map(|s| s.parse().ok())
    }

    /// The keys the Nix that substitutes trusts: a daemon that does not trust this user takes
    /// only its own (the system nix.conf's), else what Nix's configuration says.
    pub fn trusted_keys(&self, opts: &Options) -> Vec<String> {
        if !opts.keys.is_empty() {
            return opts.keys.iter().map(ToString::to_string).collect();
        }
        let Some(env) = &self.env else {
            return Vec::new();
        };
        if env.daemon && !env.trusted {
            // The daemon ignores this user's keys: only its own nix.conf counts, where an unset
            // `trusted-public-keys` means Nix's default.
            let set: Vec<String> = (self.system_confs.iter())
                .flat_map(|c| c.values(&["trusted-public-keys"]))
                .collect();
            let declared = (self.system_confs.iter()).any(|c| {
                c.text
                    .as_deref()
                    .is_some_and(|t| sets(t, "trusted-public-keys"))
            });
            let mut own = match declared {
                true => set,
                false => vec![NIX_DEFAULT_KEY.to_owned()],
            };
            own.extend(
                (self.system_confs.iter()).flat_map(|c| c.values(&["extra-trusted-public-keys"])),
            );
            return own;
        }
        env.trusted_public_keys.clone()
    }

    /// Whether the daemon uses a substituter this user asks for: it trusts the user, or the
    /// system nix.conf lists it as a substituter or a trusted one.
    fn daemon_takes(&self, url: &str) -> bool {
        let Some(env) = &self.env else {
            return false;
        };
        let names: Vec<&str> = SUBSTITUTERS
            .iter()
            .chain(TRUSTED_SUBSTITUTERS)
            .copied()
            .collect();
        !env.daemon
            || env.trusted
            || (self.system_confs.iter())
                .flat_map(|c| c.values(&names))
                .any(|s| same_store_url(&s, url))
    }

    /// The files that list `url` as a substituter, for the report.
    fn listed_in(&self, url: &str) -> Vec<String> {
        let mut files: Vec<String> = (self.user_conf.iter())
            .chain(&self.system_confs)
            .filter(|c| {
                c.values(SUBSTITUTERS)
                    .iter()
                    .any(|s| same_store_url(s, url))
            })
            .map(|c| c.path.display().to_string())
            .collect();
        if std::env::var("NIX_CONFIG").is_ok_and(|t| {
            conf_values(&t, SUBSTITUTERS)
                .iter()
                .any(|s| same_store_url(s, url))
        }) {
            files.push("$NIX_CONFIG".to_owned());
        }
        files
    }

    /// The checks of the Nix side, in order.
    pub fn checks(&self, opts: &Options) -> Vec<Check> {
        let Some((version, env)) = self.version.as_ref().zip(self.env.as_ref()) else {
            let why = self.nix_error.as_deref().unwrap_or("not found");
            return vec![Check::fail(
                "nix",
                format!("could not ask Nix how it is set up: {why}"),
                "install Nix (the standard installer: https://nixos.org/download) and make sure \
                 `nix` is on PATH",
            )];
        };
        let mut checks = vec![nix_check(version, env, self.daemon.as_ref())];
        if let Some(url) = &opts.url {
            checks.push(self.substituter_check(env, url, opts));
        }
        if let Some(check) = self.restart_check() {
            checks.push(check);
        }
        if opts.url.is_some() {
            checks.push(self.fetcher_check(version, env, &opts.setup_command()));
        }
        checks
    }

    fn substituter_check(&self, env: &NixEnv, url: &CacheUrl, opts: &Options) -> Check {
        let Some(via) = &self.via else {
            let listed = match env.substituters.is_empty() {
                true => "none".to_owned(),
                false => env.substituters.join(" "),
            };
            return Check::fail(
                "substituter",
                format!(
                    "Nix does not list {url}, nor a nixbucket serve of it, among its substituters ({listed})"
                ),
                format!(
                    "run `{}`, or add `extra-substituters = {url}` and \
                     `extra-trusted-public-keys = {}` to {}",
                    opts.setup_command(),
                    opts.key_text(),
                    conf_to_edit(env, self).display()
                ),
            );
        };
        let sub = via.url();
        let files = self.listed_in(sub);
        let place = match files.is_empty() {
            true => "by Nix's configuration (an include, or a flag)".to_owned(),
            false => format!("in {}", files.join(", ")),
        };
        if !self.daemon_takes(sub) {
            let system = store::system_conf_path();
            return Check::fail(
                "substituter",
                format!(
                    "{sub} is listed {place}, but the nix-daemon ignores it: it does not trust \
                     user {:?} and its own nix.conf does not list it in trusted-substituters \
                     (Nix prints \"ignoring untrusted substituter\" and builds instead)",
                    env.user
                ),
                format!(
                    "as root, add `trusted-users = {}` (or `extra-trusted-substituters = {sub}` \
                     and the cache's key in `extra-trusted-public-keys`) to {}, then restart \
                     the nix-daemon (`sudo systemctl restart nix-daemon`)",
                    env.user,
                    system.display()
                ),
            );
        }
        let why = match (env.daemon, env.trusted) {
            (false, _) => "",
            (true, true) => "; the nix-daemon trusts this user, so it takes it",
            (true, false) => "; the nix-daemon's own nix.conf allows it",
        };
        Check::ok(
            "substituter",
            format!("Nix reads the cache from {sub}, listed {place}{why}"),
        )
    }

    /// A daemon started before a system nix.conf last changed has not read the change.
    fn restart_check(&self) -> Option<Check> {
        let started = self.daemon.as_ref()?.started?;
        let changed = (self.system_confs.iter())
            .filter(|c| {
                c.modified
                    .is_some_and(|m| m > started + Duration::from_secs(1))
            })
            .map(|c| c.path.display().to_string())
            .collect::<Vec<_>>();
        Some(match changed.is_empty() {
            true => Check::ok(
                "daemon-restart",
                "the nix-daemon started after the system nix.conf last changed",
            ),
            false => Check::warn(
                "daemon-restart",
                format!(
                    "{} changed after the nix-daemon started: it has not read the change",
                    changed.join(", ")
                ),
                RESTART,
            ),
        })
    }

    /// `setup` is the command that points Nix at the cache, for the fix lines.
    fn fetcher_check(&self, version: &NixVersion, env: &NixEnv, setup: &str) -> Check {
        const NAME: &str = "fetcher";
        match &self.via {
            None => Check::skipped(NAME, "Nix does not read the cache (see substituter)"),
            Some(Via::Other(sub)) => Check::ok(
                NAME,
                format!("Nix reads {sub} itself: no AWS credentials take part"),
            ),
            Some(Via::Serve { url: sub, port }) => match self.serve_answers {
                Some(true) => Check::ok(
                    NAME,
                    format!(
                        "a nixbucket serve on 127.0.0.1:{port} fetches from the bucket for Nix, \
                         with the credentials setup gave it; Nix needs none"
                    ),
                ),
                _ => Check::fail(
                    NAME,
                    format!(
                        "Nix reads {sub}, but nothing answers there: the nixbucket serve setup \
                         started has stopped"
                    ),
                    format!("run `{setup}` again: it starts a new server and points Nix at it"),
                ),
            },
            Some(Via::Bucket(sub)) if env.daemon => {
                let daemon = self.daemon.clone().unwrap_or_default();
                let who = match daemon.pid {
                    Some(pid) => format!("the nix-daemon (pid {pid})"),
                    None => "the nix-daemon".to_owned(),
                };
                let fix = daemon_credentials_fix(setup);
                match daemon.credentials {
                    Some(found) if !found.is_empty() => Check::ok(
                        NAME,
                        format!(
                            "{who} fetches {sub} itself, with its own credentials ({})",
                            found.join(", ")
                        ),
                    ),
                    Some(_) => Check::fail(
                        NAME,
                        format!(
                            "{who} fetches {sub} itself, not this user's Nix, and it has no AWS \
                             credentials: no AWS_* variables in its environment and no \
                             ~/.aws of its own"
                        ),
                        fix,
                    ),
                    None => Check::warn(
                        NAME,
                        format!(
                            "{who} fetches {sub} itself, with credentials of its own that user \
                             {:?} cannot see (the fetch check below tells whether it can; the \
                             doctor run as root sees them)",
                            env.user
                        ),
                        fix,
                    ),
                }
            }
            Some(Via::Bucket(sub)) => match store::configure::s3_substituter_risk(env, version) {
                Some(risk) => Check::warn(
                    NAME,
                    format!(
                        "this user's Nix fetches {sub} with this user's credentials, but {risk}"
                    ),
                    format!(
                        "run `{setup}`: Nix then reads the bucket through a nixbucket serve on \
                         127.0.0.1"
                    ),
                ),
                None => Check::ok(
                    NAME,
                    format!(
                        "this user's Nix fetches {sub} with this user's credentials (those the \
                         bucket checks below use)"
                    ),
                ),
            },
        }
    }
}

/// The restart of the daemon on each system.
const RESTART: &str = "restart the nix-daemon: `sudo systemctl restart nix-daemon` (macOS: `sudo \
                       launchctl kickstart -k system/org.nixos.nix-daemon`)";

/// What makes a daemon able to read the bucket: the server, or credentials of its own.
pub fn daemon_credentials_fix(setup: &str) -> String {
    format!(
        "run `{setup}` (without --no-serve): Nix then reads the bucket \
         through a nixbucket serve on 127.0.0.1 with your credentials. Or give the nix-daemon \
         credentials of its own (AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its \
         service's environment, or root's ~/.aws/credentials) and restart it"
    )
}

fn nix_check(version: &NixVersion, env: &NixEnv, daemon: Option<&Daemon>) -> Check {
    const NAME: &str = "nix";
    if !env.daemon {
        return Check::ok(
            NAME,
            format!(
                "{}, single-user: Nix runs as user {:?} and substitutes itself",
                version.text, env.user
            ),
        );
    }
    let pid = daemon
        .and_then(|d| d.pid)
        .map_or_else(String::new, |p| format!(" (pid {p})"));
    let trust = match env.trusted {
        true => format!("trusts user {:?}", env.user),
        false => format!("does not trust user {:?} (not in trusted-users)", env.user),
    };
    Check::ok(
        NAME,
        format!("{}, through a nix-daemon{pid} that {trust}", version.text),
    )
}

impl Facts {
    /// Where a trusted key goes for the Nix that substitutes, in words for a fix line.
    pub fn key_conf(&self) -> String {
        let Some(env) = &self.env else {
            return "nix.conf".to_owned();
        };
        let path = conf_to_edit(env, self);
        match env.daemon && path == store::system_conf_path() {
            true => format!("{} (as root; then restart the nix-daemon)", path.display()),
            false => path.display().to_string(),
        }
    }
}

/// The nix.conf a user would edit: their own where the daemon listens to them, else the
/// system's.
fn conf_to_edit(env: &NixEnv, facts: &Facts) -> PathBuf {
    match (&facts.user_conf, env.daemon && !env.trusted) {
        (Some(user), false) => user.path.clone(),
        _ => store::system_conf_path(),
    }
}

/// The substituter of Nix's list that reads the cache: the bucket itself, the URL the user
/// named, or a nixbucket serve on loopback (setup's recorded port, else any).
fn find_via(env: &NixEnv, opts: &Options) -> Option<Via> {
    let subs = &env.substituters;
    if let Some(url) = &opts.url {
        let text = url.to_string();
        if let Some(s) = subs.iter().find(|s| same_store_url(s, &text)) {
            return Some(match url {
                CacheUrl::S3 { .. } => Via::Bucket(s.clone()),
                CacheUrl::File { .. } => Via::Other(s.clone()),
            });
        }
    }
    if let Some(own) = &opts.substituter {
        if let Some(s) = subs.iter().find(|s| same_store_url(s, own)) {
            return Some(Via::Other(s.clone()));
        }
    }
    let served = subs.iter().filter_map(|s| Some((s, loopback_port(s)?)));
    let mut served: Vec<(&String, u16)> = served.collect();
    if let Some(port) = opts.served_port {
        served.retain(|(_, p)| *p == port);
    }
    served.first().map(|(s, port)| Via::Serve {
        url: (*s).clone(),
        port: *port,
    })
}

/// The port of an `http://127.0.0.1:PORT` substituter, as setup writes it.
fn loopback_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://127.0.0.1:")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether a server on loopback answers `GET /nix-cache-info` with 200 within 3 s.
fn serve_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let request = format!(
        "GET /nix-cache-info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// The values of the settings `names` in a nix.conf's text, in order.
pub fn conf_values(text: &str, names: &[&str]) -> Vec<String> {
    text.lines()
        .map(|l| l.split_once('#').map_or(l, |(before, _)| before))
        .filter_map(|l| l.split_once('='))
        .filter(|(name, _)| names.contains(&name.trim()))
        .flat_map(|(_, values)| values.split_whitespace().map(str::to_owned))
        .collect()
}

/// The daemon socket's listener: its pid (from the socket's peer credentials, else the one
/// nix-daemon process without a nix-daemon parent), its start, and its credentials if readable.
fn find_daemon() -> Daemon {
    let socket = std::env::var_os("NIX_DAEMON_SOCKET_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/nix/var/nix/daemon-socket/socket"));
    let pid = socket_peer(&socket)
        .filter(|pid| comm(*pid).as_deref() == Some("nix-daemon"))
        .or_else(only_main_daemon);
    let Some(pid) = pid else {
        return Daemon::default();
    };
    Daemon {
        pid: Some(pid),
        started: started(pid),
        credentials: credentials_of(pid),
    }
}

/// The pid of the process that listens on `socket` (Linux's SO_PEERCRED).
#[cfg(target_os = "linux")]
fn socket_peer(socket: &Path) -> Option<u32> {
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let cred = rustix::net::sockopt::socket_peercred(&stream).ok()?;
    u32::try_from(cred.pid.as_raw_nonzero().get()).ok()
}

/// Elsewhere the daemon is looked for by name only (macOS has no /proc: then not at all).
#[cfg(not(target_os = "linux"))]
fn socket_peer(_: &Path) -> Option<u32> {
    None
}

fn comm(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim().to_owned())
}

/// Field `n` (1-based, as proc(5) numbers them) of /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n - 3).map(str::to_owned)
}

/// The one nix-daemon whose parent is no nix-daemon (the workers are its children).
fn only_main_daemon() -> Option<u32> {
    let mains: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm(*pid).as_deref() == Some("nix-daemon"))
        .filter(|pid| {
            let parent = stat_field(*pid, 4).and_then(|p| p.parse::<u32>().ok());
            parent.and_then(comm).as_deref() != Some("nix-daemon")
        })
        .collect();
    match mains.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// When the process started: boot time plus its start in clock ticks.
#[cfg(target_os = "linux")]
fn started(pid: u32) -> Option<SystemTime> {
    let ticks: u64 = stat_field(pid, 22)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let since_boot = Duration::from_millis(ticks * 1000 / hz);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

#[cfg(not(target_os = "linux"))]
fn started(_: u32) -> Option<SystemTime> {
    None
}

/// The sources of AWS credentials in the process's environment and home (names only, never
/// values); `None` if its environment cannot be read.
fn credentials_of(pid: u32) -> Option<Vec<String>> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let vars: Vec<(String, String)> = environ
        .split(|b| *b == 0)
        .filter_map(|v| {
            let v = String::from_utf8_lossy(v);
            let (k, val) = v.split_once('=')?;
            Some((k.to_owned(), val.to_owned()))
        })
        .collect();
    Some(credential_sources(&vars, |p| p.is_file()))
}

/// Where a process with environment `vars` would take AWS credentials from.
fn credential_sources(vars: &[(String, String)], exists: impl Fn(&Path) -> bool) -> Vec<String> {
    const NAMES: &[&str] = &[
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_SHARED_CREDENTIALS_FILE",
    ];
    let get = |name: &str| vars.iter().find(|(k, v)| k == name && !v.is_empty());
    let mut found: Vec<String> = NAMES
        .iter()
        .filter(|n| get(n).is_some())
        .map(|n| (*n).to_owned())
        .collect();
    if let Some((_, home)) = get("HOME") {
        for file in [".aws/credentials", ".aws/config"] {
            let path = Path::new(home).join(file);
            if exists(&path) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn env(daemon: bool, trusted: bool, substituters: &[&str]) -> NixEnv {
        NixEnv {
            daemon,
            trusted,
            user: "runner".into(),
            substituters: substituters.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn facts_of(env: NixEnv, system_conf: &str, daemon: Option<Daemon>, opts: &Options) -> Facts {
        let via = find_via(&env, opts);
        Facts {
            version: NixVersion::parse("nix (Nix) 2.26.3"),
            env: Some(env),
            system_confs: vec![ConfFile {
                path: "/etc/nix/nix.conf".into(),
                text: Some(system_conf.to_owned()),
                modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1000)),
            }],
            daemon,
            via,
            ..Facts::default()
        }
    }

    const S3: &str = "s3://b?region=eu-west-1";

    fn opts() -> Options {
        Options {
            url: Some(S3.parse().unwrap()),
            ..Options::default()
        }
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn an_untrusted_user_s_substituter_is_ignored_and_the_fix_trusts_the_user() {
        let facts = facts_of(env(true, false, &[S3]), "", None, &opts());
        let checks = facts.checks(&opts());
        let check = find(&checks, "substituter");
        assert_eq!(check.status, Status::Fail, "{check}");
        assert!(check.detail.contains("ignores it"), "{check}");
        let fix = check.fix.as_deref().unwrap();
        assert!(fix.contains("trusted-users = runner"), "{fix}");
        assert!(fix.contains("restart the nix-daemon"), "{fix}");
        // The admin listed it: then the daemon takes it.
        let allowed = format!("trusted-substituters = {S3}\n");
        let facts = facts_of(env(true, false, &[S3]), &allowed, None, &opts());
        let checks = facts.checks(&opts());
        assert_eq!(find(&checks, "substituter").status, Status::Ok);
    }

    #[test]
    fn a_daemon_without_credentials_fetching_the_bucket_fails_with_the_serve_fix() {
        let daemon = Daemon {
            pid: Some(42),
            started: None,
            credentials: Some(Vec::new()),
        };
        let facts = facts_of(env(true, true, &[S3]), "", Some(daemon), &opts());
        let checks = facts.checks(&opts());
        let check = find(&checks, "fetcher");
        assert_eq!(check.status, Status::Fail, "{check}");
        assert!(check.detail.contains("no AWS credentials"), "{check}");
        assert!(
            check
                .fix
                .as_deref()
                .unwrap()
                .contains("(without --no-serve)")
        );
        // A daemon whose environment this user cannot read: a warning, with the same fix.
        let hidden = Daemon {
            credentials: None,
            ..Daemon::default()
        };
        let facts = facts_of(env(true, true, &[S3]), "", Some(hidden), &opts());
        let checks = facts.checks(&opts());
        assert_eq!(find(&checks, "fetcher").status, Status::Warn);
    }

    #[test]
    fn a_serve_on_loopback_is_found_and_a_dead_one_fails() {
        let served = "http://127.0.0.1:4711";
        let mut facts = facts_of(env(true, true, &["https://x", served]), "", None, &opts());
        assert_eq!(
            facts.via,
            Some(Via::Serve {
                url: served.into(),
                port: 4711
            })
        );
        facts.serve_answers = Some(false);
        let checks = facts.checks(&opts());
        let check = find(&checks, "fetcher");
        assert_eq!(check.status, Status::Fail, "{check}");
        assert!(
            check
                .fix
                .as_deref()
                .unwrap()
                .contains("nixbucket setup --cache")
        );
    }

    #[test]
    fn an_unlisted_cache_fails_with_the_setup_line() {
        let facts = facts_of(
            env(false, true, &["https://cache.nixos.org"]),
            "",
            None,
            &opts(),
        );
        let checks = facts.checks(&opts());
        let check = find(&checks, "substituter");
        assert_eq!(check.status, Status::Fail, "{check}");
        assert!(check.fix.as_deref().unwrap().contains(&format!(
            "nixbucket setup --cache {S3} --public-key NAME:PUBLIC-KEY"
        )));
    }

    #[test]
    fn a_conf_changed_after_the_daemon_started_wants_a_restart() {
        let daemon = |at: u64| Daemon {
            pid: Some(1),
            started: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(at)),
            credentials: None,
        };
        let before = facts_of(env(true, true, &[]), "", Some(daemon(500)), &opts());
        let check = before.restart_check().unwrap();
        assert_eq!(check.status, Status::Warn, "{check}");
        assert!(
            check
                .fix
                .as_deref()
                .unwrap()
                .contains("systemctl restart nix-daemon")
        );
        let after = facts_of(env(true, true, &[]), "", Some(daemon(2000)), &opts());
        assert_eq!(after.restart_check().unwrap().status, Status::Ok);
    }

    #[test]
    fn credential_sources_name_variables_and_files_never_values() {
        let vars = [
            ("HOME".to_owned(), "/root".to_owned()),
            ("AWS_ACCESS_KEY_ID".to_owned(), "AKIDSECRETISH".to_owned()),
            ("AWS_PROFILE".to_owned(), String::new()),
        ];
        let found = credential_sources(&vars, |p| p == Path::new("/root/.aws/credentials"));
        assert_eq!(found, ["AWS_ACCESS_KEY_ID", "/root/.aws/credentials"]);
        assert!(credential_sources(&[], |_| true).is_empty());
    }

    #[test]
    fn a_daemon_that_does_not_trust_the_user_takes_only_its_own_keys() {
        let mut user = env(true, false, &[S3]);
        user.trusted_public_keys = vec!["mine-1:AAAA".into()];
        let own = facts_of(
            user.clone(),
            "extra-trusted-public-keys = team-1:BBBB\n",
            None,
            &opts(),
        );
        assert_eq!(own.trusted_keys(&opts()), [NIX_DEFAULT_KEY, "team-1:BBBB"]);
        let set = facts_of(
            user.clone(),
            "trusted-public-keys = admin-1:CCCC\n",
            None,
            &opts(),
        );
        assert_eq!(set.trusted_keys(&opts()), ["admin-1:CCCC"]);
        user.trusted = true;
        let trusted = facts_of(user, "trusted-public-keys = admin-1:CCCC\n", None, &opts());
        assert_eq!(trusted.trusted_keys(&opts()), ["mine-1:AAAA"]);
    }

    #[test]
    fn conf_values_read_extra_settings_and_skip_comments() {
        let text = "substituters = a b # c\n# extra-substituters = d\nextra-substituters=e\n";
        assert_eq!(conf_values(text, SUBSTITUTERS), ["a", "b", "e"]);
        assert_eq!(loopback_port("http://127.0.0.1:8080/"), Some(8080));
        assert_eq!(loopback_port("https://127.0.0.1:8080"), None);
    }
}
