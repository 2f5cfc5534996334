//! A machine as CI runners and developers' laptops have it: a root nix-daemon of the test's own
//! (no AWS credentials in its environment), reading a nix.conf of the test's; `nobody`, whom it
//! trusts or not, with a home of its own; and a copy of nixbucket anyone can run (the checkout
//! may sit under a 0700 folder).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::nix::{Daemon, start_daemon};
use super::{assert_ok, run, stdout};

pub struct Machine {
    pub tmp: tempfile::TempDir,
    pub daemon: Daemon,
    pub home: PathBuf,
    pub binary: PathBuf,
    pub uid: u32,
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Machine {
    /// The daemon reads `conf` as its nix.conf.
    pub fn new(conf: &str) -> Machine {
        let tmp = tempfile::tempdir().unwrap();
        set_mode(tmp.path(), 0o755);
        let etc = tmp.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        set_mode(&etc, 0o755);
        std::fs::write(etc.join("nix.conf"), conf).unwrap();
        let daemon = start_daemon(&etc, tmp.path());
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        assert_ok(&run(Command::new("chown").arg("nobody:nogroup").arg(&home)));
        let binary = tmp.path().join("nixbucket");
        std::fs::copy(env!("CARGO_BIN_EXE_nixbucket"), &binary).unwrap();
        set_mode(&binary, 0o755);
        let uid = stdout(&run(Command::new("id").args(["-u", "nobody"])))
            .trim()
            .parse()
            .unwrap();
        Machine {
            tmp,
            daemon,
            home,
            binary,
            uid,
        }
    }

    /// The daemon's nix.conf.
    pub fn conf_path(&self) -> PathBuf {
        self.tmp.path().join("etc/nix.conf")
    }

    /// `program` as `user` (`root` or `nobody`), through the daemon, with only the environment
    /// Nix needs: the home, the nix.conf files, the daemon's socket.
    pub fn command_as(&self, user: &str, program: &Path) -> Command {
        let mut cmd = match user {
            "root" => Command::new(program),
            _ => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                    .arg(program);
                c
            }
        };
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("NIX_CONF_DIR", self.tmp.path().join("etc"))
            .env("NIX_USER_CONF_FILES", self.home.join("nix.conf"))
            .env("XDG_CACHE_HOME", self.home.join("cache"))
            .env("NIX_REMOTE", "daemon")
            .env("NIX_DAEMON_SOCKET_PATH", &self.daemon.socket);
        cmd
    }

    /// A file only `nobody` and root read, in `nobody`'s home: a signing key, an expression.
    pub fn give(&self, name: &str, text: &str) -> PathBuf {
        let path = self.home.join(name);
        std::fs::write(&path, text).unwrap();
        assert_ok(&run(Command::new("chown").arg("nobody:nogroup").arg(&path)));
        path
    }
}
