//! `nixbucket serve`: the cache as an HTTP substituter on loopback. `setup --serve` starts it
//! in the background and `push` stops it ([`crate::serve::background`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;

use super::{CompressionArg, KeyArgs};
use crate::cache::OpenOptions;
use crate::push::job::{Upstream, upstream_keys};
use crate::push::select::Filters;
use crate::push::{ProgressMode, PushOptions};
use crate::serve::{self, Server, UploadConfig, Uploader, Uploads};

/// Attempts per request to the bucket while serving Nix.
const SERVE_ATTEMPTS: u32 = 3;

#[derive(clap::Args, Debug)]
#[command(mut_arg("signing_key_file", |a| a.help(
    "Key to sign the paths `nixbucket hook` hands over during the build (else the key's text \
     from $NIXBUCKET_SIGNING_KEY). Hand-overs also need the token in $NIXBUCKET_SERVE_TOKEN, \
     which `setup --serve` gives the server and the hook. Without a key or a token the server \
     uploads nothing and `push` uploads everything at the end"
)))]
pub struct Args {
    /// The binary cache to serve, in Nix's URL syntax: `s3://BUCKET?region=…` or
    /// `file:///some/dir`. It is read with this process's credentials.
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// Address to listen on (loopback only). Port 0 picks a free port; the address is printed
    /// when the server is ready.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Once listening, write the server's URL (`http://127.0.0.1:PORT`) to this file.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// How NARs uploaded during the build are compressed [default: the URL's `compression`
    /// parameter, else zstd].
    #[arg(long, env = "NIXBUCKET_COMPRESSION", value_enum)]
    pub compression: Option<CompressionArg>,
    /// How many paths upload at once during the build (the build needs the CPU too).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub jobs: usize,
    /// A read-only cache (`s3://…` or `file://…`) to serve what the cache lacks from, after it
    /// (repeatable; asked in the order given).
    #[arg(long = "extra-cache", value_name = "URL")]
    pub extra_caches: Vec<String>,
    /// Read the S3 credentials for the caches from standard input, as `setup` writes them for
    /// a role it assumed, instead of the default AWS chain.
    #[arg(long, hide = true)]
    pub credentials_stdin: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let compression = super::resolve_compression(args.compression, &url)?;
    let signing_key = args.key.load()?;
    // Nix waits on every answer and falls back to building, so a failing bucket should be
    // reported in seconds rather than retried for a minute.
    let mut open = OpenOptions {
        max_attempts: Some(SERVE_ATTEMPTS),
        ..OpenOptions::default()
    };
    if args.credentials_stdin {
        let mut text = zeroize::Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("could not read the credentials on standard input")?;
        let creds = crate::cache::credentials_from_json(&text)
            .map_err(|why| anyhow::anyhow!("--credentials-stdin: {why}"))?;
        open.credentials = Some(creds);
    }
    let cache = super::open_cache(&url, open.clone()).await?;
    let mut extra = Vec::new();
    for text in &args.extra_caches {
        let extra_url = super::parse_cache_url(text).context("--extra-cache")?;
        extra.push(super::open_cache(&extra_url, open.clone()).await?);
    }
    let listener = serve::bind(args.listen).await?;
    let addr = listener
        .local_addr()
        .context("could not read the address the server listens on")?;

    let token = std::env::var(serve::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .map(zeroize::Zeroizing::new);
    // Hand-overs are taken only with a key, a token and Nix's trusted keys; else why not.
    let uploads = match (signing_key, token) {
        (None, _) => Err("no signing key"),
        (Some(_), None) => Err("no hand-over token in $NIXBUCKET_SERVE_TOKEN"),
        (Some(key), Some(token)) => {
            let our_name = key.name().to_owned();
            let filters = tokio::task::spawn_blocking(move || upstream_filters(&our_name))
                .await
                .context("the Nix query stopped unexpectedly")?;
            match filters {
                None => Err("Nix's trusted keys unknown"),
                Some(filters) => {
                    let options = PushOptions {
                        compression,
                        tuning: Default::default(),
                        nar_listing: super::nar_listing(false, &url),
                        jobs: args.jobs.max(1),
                        signing_key: Some(key),
                        progress: ProgressMode::None,
                        cancel: Arc::new(AtomicBool::new(false)),
                    };
                    let config = UploadConfig { options, filters };
                    Ok(Uploads {
                        uploader: Uploader::start(cache.clone(), config),
                        token,
                    })
                }
            }
        }
    };
    let read_only = uploads.as_ref().err().copied();
    let server = Arc::new(Server::new(cache, uploads.ok()).with_extra(extra));

    let served = format!("http://{addr}");
    if let Some(file) = &args.ready_file {
        crate::atomic_file::write(file, None, served.as_bytes())
            .with_context(|| format!("could not write {}", file.display()))?;
    }
    println!(
        "nixbucket serve: serving {url}{} at {served} ({})",
        args.extra_caches
            .iter()
            .map(|u| format!(", then {u}"))
            .collect::<String>(),
        match read_only {
            None => "uploading paths handed over by `nixbucket hook`".to_owned(),
            Some(why) => format!("read-only: {why}"),
        }
    );

    let stop = crate::signal::interrupted().context("could not watch for SIGINT and SIGTERM")?;
    serve::run(listener, server.clone(), stop).await;
    eprintln!("nixbucket serve: stopping");
    server.shutdown(Duration::from_secs(10)).await;
    Ok(ExitCode::SUCCESS)
}

/// What counts as served upstream for hand-overs, decided as `push` decides it. If Nix cannot
/// be asked, the server uploads nothing during the build: `push` decides at the job's end.
fn upstream_filters(our_name: &str) -> Option<Filters> {
    match upstream_keys(&Upstream::TrustedByNix, Some(our_name)) {
        Ok(upstream_keys) => Some(Filters {
            upstream_keys,
            ..Default::default()
        }),
        Err(err) => {
            eprintln!(
                "nixbucket serve: warning: could not read Nix's trusted keys ({err}); uploading \
                 nothing during the build, `nixbucket push` will"
            );
            None
        }
    }
}
