//! `use`: a developer's machine reads the cache with the developer's own AWS profile, through
//! a `nixbucket serve` on loopback kept running as a user service, so that the nix-daemon,
//! which does the fetching, needs no credentials. What `use` did is recorded, so that
//! `use --remove` undoes exactly that.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::serve::client;

/// Where the ports of `use` start: each bucket gets one of the thousand after it, always the
/// same, since nix.conf names it.
const PORT_BASE: u16 = 37_000;
/// How long `use` waits for the service to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The fixed loopback port of `bucket`'s server (FNV-1a of its name).
pub fn port_for(bucket: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bucket.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    PORT_BASE + (hash % 1000) as u16
}

/// What keeps the server running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// A systemd user unit (Linux).
    Systemd,
    /// A launchd agent (macOS).
    Launchd,
    /// None: started in the background now; it does not come back after a reboot.
    None,
}

impl Manager {
    /// launchd on macOS; systemd where the user has a systemd manager; else none.
    pub fn detect() -> Manager {
        if cfg!(target_os = "macos") {
            return Manager::Launchd;
        }
        let user_systemd = crate::store::child_command("systemctl")
            .args(["--user", "show-environment"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if user_systemd {
            Manager::Systemd
        } else {
            Manager::None
        }
    }
}

/// The server of one cache, as a user service.
pub struct Service {
    /// `nixbucket-<bucket>`: the unit's or agent's name.
    pub name: String,
    pub exe: PathBuf,
    pub cache: String,
    pub port: u16,
    /// Where the server's log goes when no manager keeps one.
    pub log: PathBuf,
}

impl Service {
    fn args(&self) -> Vec<String> {
        vec![
            self.exe.display().to_string(),
            "serve".into(),
            "--cache".into(),
            self.cache.clone(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
        ]
    }

    /// The systemd user unit. Arguments are quoted for systemd: a URL holds `&` and `?`.
    pub fn systemd_unit(&self) -> String {
        let exec = self
            .args()
            .iter()
            .map(|a| systemd_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        let mut unit = format!(
            "# Written by `nixbucket use`; `nixbucket use --remove` removes it.\n\
             [Unit]\n\
             Description=nixbucket: {} for Nix on 127.0.0.1:{}\n\
             \n\
             [Service]\n\
             ExecStart={exec}\n\
             Restart=on-failure\n\
             RestartSec=5\n",
            self.cache.replace('%', "%%"),
            self.port
        );
        unit.push_str("\n[Install]\nWantedBy=default.target\n");
        unit
    }

    /// The launchd agent.
    pub fn launchd_plist(&self) -> String {
        let args: String = self
            .args()
            .iter()
            .map(|a| format!("    <string>{}</string>\n", xml_escape(a)))
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <!-- Written by `nixbucket use`; `nixbucket use --remove` removes it. -->\n\
             <plist version=\"1.0\">\n<dict>\n\
             \x20 <key>Label</key>\n  <string>org.nixbucket.{}</string>\n\
             \x20 <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n\
             \x20 <key>RunAtLoad</key>\n  <true/>\n\
             \x20 <key>KeepAlive</key>\n  <true/>\n\
             \x20 <key>StandardErrorPath</key>\n  <string>{}</string>\n\
             </dict>\n</plist>\n",
            xml_escape(&self.name),
            xml_escape(&self.log.display().to_string())
        )
    }

    /// Where the unit or agent file goes.
    pub fn file(&self, manager: Manager, home: &Path, config: &Path) -> Option<PathBuf> {
        match manager {
            Manager::Systemd => Some(config.join(format!("systemd/user/{}.service", self.name))),
            Manager::Launchd => Some(home.join(format!(
                "Library/LaunchAgents/org.nixbucket.{}.plist",
                self.name
            ))),
            Manager::None => None,
        }
    }

    /// Installs and starts the service, and waits until it answers. Returns the pid of a
    /// server started without a manager.
    pub fn start(&self, manager: Manager, file: Option<&Path>) -> anyhow::Result<Option<u32>> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        if client::stats(addr, Duration::from_secs(1)).is_ok() {
            bail!(
                "something already answers on 127.0.0.1:{}: another `nixbucket use` of this \
                 cache, or `nixbucket serve`; run `nixbucket use --remove` for it, or give --port",
                self.port
            );
        }
        let pid = match (manager, file) {
            (Manager::Systemd, Some(file)) => {
                write_file(file, &self.systemd_unit())?;
                run_quietly("systemctl", &["--user", "daemon-reload"])?;
                run_quietly(
                    "systemctl",
                    &[
                        "--user",
                        "enable",
                        "--now",
                        &format!("{}.service", self.name),
                    ],
                )?;
                None
            }
            (Manager::Launchd, Some(file)) => {
                write_file(file, &self.launchd_plist())?;
                let domain = format!("gui/{}", rustix::process::getuid().as_raw());
                // An agent of the same label still loaded (an earlier `use`) makes bootstrap
                // fail: unload it first, whatever state it is in.
                let _ = run_quietly(
                    "launchctl",
                    &["bootout", &domain, &file.display().to_string()],
                );
                run_quietly(
                    "launchctl",
                    &["bootstrap", &domain, &file.display().to_string()],
                )?;
                None
            }
            _ => Some(self.spawn()?),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while client::stats(addr, Duration::from_secs(2)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the server did not answer on 127.0.0.1:{} within {}s; {}",
                    self.port,
                    START_TIMEOUT.as_secs(),
                    match manager {
                        Manager::Systemd => format!("see `journalctl --user -u {}`", self.name),
                        _ => format!("see {}", self.log.display()),
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(pid)
    }

    fn spawn(&self) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt;
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        let log = std::fs::File::create(&self.log)
            .with_context(|| format!("could not create {}", self.log.display()))?;
        let args = self.args();
        let mut cmd = crate::store::child_command(&args[0]);
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", args[0]))?;
        Ok(child.id())
    }
}

/// What `use` did, for `use --remove`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub cache: String,
    pub port: u16,
    pub manager: Manager,
    /// The unit or agent file written.
    pub service_file: Option<PathBuf>,
    pub service_name: String,
    /// The server started without a manager.
    pub pid: Option<u32>,
    /// The nix.conf that got the settings, if `use` wrote one.
    pub nix_conf: Option<PathBuf>,
}

impl Record {
    pub fn path(config: &Path, bucket: &str) -> PathBuf {
        config.join(format!("use/{bucket}.json"))
    }

    pub fn load(path: &Path) -> anyhow::Result<Option<Record>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is not a record of `nixbucket use`", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("could not describe the record")?;
        write_file(path, &text)
    }

    /// Stops and removes the service. Problems are reported, and the rest still done.
    pub fn stop_service(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (self.manager, &self.service_file) {
            (Manager::Systemd, Some(file)) => {
                let unit = format!("{}.service", self.service_name);
                if let Err(e) = run_quietly("systemctl", &["--user", "disable", "--now", &unit]) {
                    problems.push(format!("{e:#}"));
                }
                remove_file(file, &mut problems);
                let _ = run_quietly("systemctl", &["--user", "daemon-reload"]);
            }
            (Manager::Launchd, Some(file)) => {
                let domain = format!("gui/{}", rustix::process::getuid().as_raw());
                if let Err(e) = run_quietly(
                    "launchctl",
                    &["bootout", &domain, &file.display().to_string()],
                ) {
                    problems.push(format!("{e:#}"));
                }
                remove_file(file, &mut problems);
            }
            _ => {
                if let Some(pid) = self.pid {
                    if let Err(e) = crate::serve::background::stop(pid) {
                        problems.push(format!("{e:#}"));
                    }
                }
            }
        }
        problems
    }
}

fn remove_file(file: &Path, problems: &mut Vec<String>) {
    match std::fs::remove_file(file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("could not remove {}: {e}", file.display())),
    }
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    crate::atomic_file::write(path, Some(0o644), text.as_bytes())
        .with_context(|| format!("could not write {}", path.display()))
}

fn run_quietly(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = crate::store::child_command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One argument of a systemd `ExecStart=` or `Environment=`: double-quoted, with `\`, `"`,
/// `%` (a specifier) and `$` (a variable) escaped.
fn systemd_quote(arg: &str) -> String {
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Whether NixOS generates the system nix.conf (from `nix.settings`): `use` must not edit
/// it, and prints the module lines instead.
pub fn nixos_managed(system_conf: &Path) -> bool {
    let link = std::fs::read_link(system_conf)
        .is_ok_and(|target| target.starts_with("/etc/static") || target.starts_with("/nix/store"));
    link || std::fs::read_to_string(system_conf)
        .is_ok_and(|text| text.contains("generated from the nix.* options"))
}

/// The NixOS configuration that does what `use` would write to nix.conf.
pub fn nixos_lines(substituter: &str, key: &str) -> String {
    format!(
        "  nix.settings.extra-substituters = [ \"{substituter}\" ];\n  \
         nix.settings.extra-trusted-public-keys = [ \"{key}\" ];\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        Service {
            name: "nixbucket-cache".into(),
            exe: "/usr/local/bin/nixbucket".into(),
            cache: "s3://cache?region=eu-west-1&profile=me".into(),
            port: 37_123,
            log: "/home/me/.cache/nixbucket/use/cache.log".into(),
        }
    }

    #[test]
    fn a_port_is_fixed_per_bucket_and_in_range() {
        assert_eq!(port_for("cache"), port_for("cache"));
        assert_ne!(port_for("cache"), port_for("other-cache"));
        for name in ["a", "my-nix-cache", "x".repeat(63).as_str()] {
            assert!((37_000..38_000).contains(&port_for(name)));
        }
    }

    #[test]
    fn the_unit_runs_serve_on_the_port() {
        let unit = service().systemd_unit();
        assert!(
            unit.contains(
                "ExecStart=\"/usr/local/bin/nixbucket\" \"serve\" \"--cache\" \"s3://cache?region=eu-west-1&profile=me\" \"--listen\" \"127.0.0.1:37123\"\n"
            ),
            "{unit}"
        );
        assert!(unit.contains("WantedBy=default.target"), "{unit}");
    }

    #[test]
    fn systemd_specifiers_and_variables_in_an_argument_stay_literal() {
        assert_eq!(systemd_quote("a%b$c\"d\\e"), "\"a%%b$$c\\\"d\\\\e\"");
    }

    #[test]
    fn the_agent_escapes_the_url() {
        let plist = service().launchd_plist();
        assert!(
            plist.contains("<string>s3://cache?region=eu-west-1&amp;profile=me</string>"),
            "{plist}"
        );
        assert!(
            plist.contains("<string>org.nixbucket.nixbucket-cache</string>"),
            "{plist}"
        );
    }

    #[test]
    fn a_nix_conf_nixos_generates_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nix.conf");
        std::fs::write(&conf, "substituters = https://cache.nixos.org\n").unwrap();
        assert!(!nixos_managed(&conf));
        std::fs::write(
            &conf,
            "# WARNING: this file is generated from the nix.* options in\n# your NixOS configuration\n",
        )
        .unwrap();
        assert!(nixos_managed(&conf));
        let link = dir.path().join("linked.conf");
        std::os::unix::fs::symlink("/etc/static/nix/nix.conf", &link).unwrap();
        assert!(nixos_managed(&link));
    }
}
