//! `nixbucket use`: a teammate's machine pulls from the cache. The bucket is read with the
//! teammate's own AWS profile by a `nixbucket serve` kept running as a user service; Nix
//! (the daemon, with no credentials of its own) reads that server. `use --remove` undoes it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cache::{CacheUrl, OpenOptions};
use crate::nix::conf::Markers;
use crate::nix::{NarInfo, PublicKey, StorePath};
use crate::store::configure::{self, Settings};
use crate::store::{self, NixEnv};
use crate::workstation::{Manager, Record, Service, nixos_lines, nixos_managed, port_for};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The cache: `s3://BUCKET?region=…` (as `nixbucket init` printed it).
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// The cache's public key (`NAME:BASE64`, as `nixbucket init` printed it); Nix accepts
    /// what the cache serves only with it.
    #[arg(
        long,
        value_name = "KEY",
        required_unless_present = "remove",
        env = "NIXBUCKET_PUBLIC_KEY"
    )]
    pub public_key: Option<String>,
    /// The AWS profile the server reads the bucket with [default: $AWS_PROFILE, else the
    /// URL's `profile`, else the default chain as the service sees it: ~/.aws, not this
    /// shell's environment].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// The loopback port of the server [default: a port from 37000 to 37999 fixed by the
    /// bucket's name].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// What keeps the server running [default: systemd (a user unit) on Linux where the user
    /// has a systemd manager, launchd on macOS, else none: started now, not after a reboot].
    #[arg(long, value_enum, env = "NIXBUCKET_SERVICE_MANAGER")]
    pub service: Option<Manager>,
    /// Undo what `use` did for this cache: its nix.conf settings, and its service.
    #[arg(long)]
    pub remove: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let CacheUrl::S3 { bucket, .. } = &url else {
        bail!(
            "use reads s3:// caches through a server; Nix reads a file:// cache itself: add it \
             to extra-substituters"
        );
    };
    let config = super::config_dir()?;
    let record_path = Record::path(&config, bucket);
    if args.remove {
        return remove(&record_path, bucket);
    }
    let key_text = args.public_key.as_deref().unwrap_or_default();
    let key = PublicKey::parse(key_text)
        .with_context(|| format!("--public-key {key_text:?} is not a Nix public key"))?;
    // The service gets none of this shell's environment: the profile goes into the URL it
    // reads, where nixbucket takes it as the only source of credentials, as Nix does.
    let mut url = url.clone();
    if let CacheUrl::S3 { profile, .. } = &mut url {
        if let Some(named) = args
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
        {
            *profile = Some(named);
        }
    }
    let profile = match &url {
        CacheUrl::S3 { profile, .. } => profile.clone(),
        CacheUrl::File { .. } => None,
    };
    if profile.is_none() && std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        eprintln!(
            "warning: AWS_ACCESS_KEY_ID is set here, but the service does not get this shell's \
             environment: it reads ~/.aws with the default profile. Name a profile with --profile"
        );
    }
    // Reading the bucket as the service will, before anything is installed or replaced.
    super::open_cache(&url, OpenOptions::default()).await?;
    if let Some(old) = Record::load(&record_path)? {
        println!("use: {} is set up already; setting it up again", old.cache);
        for problem in old.stop_service() {
            eprintln!("warning: {problem}");
        }
    }

    let manager = args.service.unwrap_or_else(Manager::detect);
    let port = args.port.unwrap_or_else(|| port_for(bucket));
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")?;
    let exe = std::env::current_exe().context("could not find the nixbucket binary")?;
    if exe.starts_with(crate::nix::STORE_DIR) {
        eprintln!(
            "warning: the service runs {}, which is in the Nix store: a garbage collection or \
             an upgrade removes it and the service stops; install nixbucket outside the store \
             (e.g. `nix profile install`, then run `nixbucket use` from the profile's bin) or \
             run `nixbucket use` again after an upgrade",
            exe.display()
        );
    }
    let service = Service {
        name: format!("nixbucket-{bucket}"),
        exe,
        cache: url.to_string(),
        port,
        log: cache_dir(&home).join(format!("use/{bucket}.log")),
    };
    let file = service.file(manager, &home, &config.join(".."));
    // Recorded before it starts, so that `use --remove` finds a service that never answered.
    let mut record = Record {
        cache: url.to_string(),
        port,
        manager,
        service_file: file.clone(),
        service_name: service.name.clone(),
        pid: None,
        nix_conf: None,
    };
    record.save(&record_path)?;
    match service.start(manager, file.as_deref()) {
        Ok(pid) => record.pid = pid,
        Err(err) => {
            for problem in record.stop_service() {
                eprintln!("warning: {problem}");
            }
            let _ = std::fs::remove_file(&record_path);
            return Err(err);
        }
    }
    record.save(&record_path)?;
    println!(
        "use: the server reads {url} {} on 127.0.0.1:{port}, kept running by {}",
        profile
            .as_deref()
            .map_or("with the default AWS credentials".to_owned(), |p| format!(
                "with the AWS profile {p}"
            )),
        match (manager, &file) {
            (Manager::None, _) =>
                "nothing: it does not come back after a reboot; run `nixbucket use` again then"
                    .to_owned(),
            (_, Some(file)) => file.display().to_string(),
            (_, None) => "its manager".to_owned(),
        }
    );

    let substituter = format!("http://127.0.0.1:{port}");
    let system_conf = store::system_conf_path();
    if nixos_managed(&system_conf) {
        println!(
            "use: NixOS generates {}; add this to your configuration and rebuild:\n{}",
            system_conf.display(),
            nixos_lines(&substituter, &key.to_string())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let env = NixEnv::detect().context("could not ask Nix how it is set up")?;
    if env.daemon && !env.trusted && !env.is_root {
        println!(
            "use: the nix-daemon does not trust {}, so the cache goes into the system's nix.conf \
             ({}) and the daemon is restarted; sudo asks for your password once",
            env.user,
            system_conf.display()
        );
        if std::io::stdin().is_terminal() {
            let ok = store::child_command("sudo")
                .arg("-v")
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("sudo refused: nothing written to {}", system_conf.display());
            }
        }
    }
    let keys = [key.clone()];
    let configured = match configure::configure(
        &substituter,
        None,
        Settings {
            also: &[],
            keys: &keys,
            extra: vec![("fallback", vec!["true".to_owned()])],
            markers: Markers::use_of(bucket),
        },
    ) {
        Ok(configured) => configured,
        Err(err) => {
            // Nothing half-done stays: a server no Nix reads would only hold the port.
            for problem in record.stop_service() {
                eprintln!("warning: {problem}");
            }
            let _ = std::fs::remove_file(&record_path);
            return Err(err.context("nothing is left of this `use`: the server is stopped"));
        }
    };
    record.nix_conf = Some(configured.conf.clone());
    record.save(&record_path)?;
    if configured.restarted {
        println!(
            "use: restarted the nix-daemon, which reads {} at its start",
            configured.conf.display()
        );
    }

    match prove_a_fetch(&url, &key).await? {
        Proof::Fetched(path) => println!("use: Nix fetched {path} from the cache: it works"),
        Proof::NothingNew => println!(
            "use: every path sampled from the cache is in this store already, so no fetch was \
             tried; Nix will take the next one from the cache"
        ),
        Proof::Empty => println!("use: the cache is empty: nothing to fetch yet"),
        Proof::NoneSigned(read) => bail!(
            "none of the {read} narinfos read from the cache is signed by a key named {}: \
             is --public-key the cache's key? Nix refuses what it serves; `nixbucket use --remove --cache URL`, then use again with the right key",
            key.name()
        ),
    }
    println!("use: `nixbucket use --remove --cache '{url}'` undoes this");
    Ok(ExitCode::SUCCESS)
}

fn remove(record_path: &std::path::Path, bucket: &str) -> anyhow::Result<ExitCode> {
    let Some(record) = Record::load(record_path)? else {
        println!("use: this cache is not set up here: nothing to remove");
        return Ok(ExitCode::SUCCESS);
    };
    let mut failed = false;
    if let Some(conf) = &record.nix_conf {
        match configure::unconfigure(conf, &Markers::use_of(bucket)) {
            Ok(true) => println!("use: took the cache out of {}", conf.display()),
            Ok(false) => println!("use: {} had nothing of nixbucket's", conf.display()),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed = true;
            }
        }
    }
    for problem in record.stop_service() {
        eprintln!("warning: {problem}");
    }
    println!("use: stopped the server of {}", record.cache);
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    std::fs::remove_file(record_path)
        .with_context(|| format!("could not remove {}", record_path.display()))?;
    Ok(ExitCode::SUCCESS)
}

enum Proof {
    Fetched(StorePath),
    NothingNew,
    Empty,
    /// Narinfos read, none signed by the key's name.
    NoneSigned(usize),
}

/// Fetches the smallest of a few paths the cache has and this store lacks, through the Nix
/// that builds (the daemon, if there is one): the proof that the daemon takes the server,
/// the key and what the bucket holds.
async fn prove_a_fetch(url: &CacheUrl, key: &PublicKey) -> anyhow::Result<Proof> {
    const SAMPLE: usize = 16;
    let cache = super::open_cache(url, OpenOptions::default()).await?;
    let mut infos = Vec::new();
    let mut read = 0;
    // A listing per first character of the hash, until there are enough: a cache of a
    // million paths is not listed whole.
    for c in crate::nix::base32::ALPHABET {
        let listed = cache.list_level(&[char::from(*c).to_string()], 1).await?;
        for object in listed
            .iter()
            .filter(|o| o.key.ends_with(".narinfo"))
            .take(SAMPLE)
        {
            if let Some(bytes) = cache.get(&object.key).await? {
                read += 1;
                if let Ok(info) = NarInfo::parse(&String::from_utf8_lossy(&bytes)) {
                    if info.signatures.iter().any(|s| s.key_name == key.name()) {
                        infos.push(info);
                    }
                }
            }
        }
        if infos.len() >= SAMPLE || read >= 4 * SAMPLE {
            break;
        }
    }
    if infos.is_empty() {
        return Ok(if read == 0 {
            Proof::Empty
        } else {
            Proof::NoneSigned(read)
        });
    }
    let paths: Vec<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
    let present: Vec<StorePath> =
        tokio::task::spawn_blocking(move || store::query_valid_path_info(&paths))
            .await??
            .into_iter()
            .map(|i| i.path)
            .collect();
    let Some(smallest) = infos
        .iter()
        .filter(|i| !present.contains(&i.path))
        .min_by_key(|i| i.nar_size)
    else {
        return Ok(Proof::NothingNew);
    };
    let path = smallest.path.clone();
    let out = store::child_command("nix-store")
        .arg("--realise")
        .arg(path.to_absolute())
        .output()
        .context("could not run nix-store")?;
    if !out.status.success() {
        bail!(
            "the server answers, but Nix could not fetch {path} from it: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Proof::Fetched(path))
}

/// `$XDG_CACHE_HOME/nixbucket`, else `~/.cache/nixbucket`.
fn cache_dir(home: &std::path::Path) -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map_or_else(|| home.join(".cache"), PathBuf::from)
        .join("nixbucket")
}
