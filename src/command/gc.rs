//! `nixbucket gc`: delete whole closures nobody used for a while (or beyond a size budget),
//! keeping the cache whole at every moment. The plan lives in [`crate::gc`].

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::cache::OpenOptions;
use crate::gc::units::{parse_duration, parse_size};
use crate::gc::{self, GcOptions, Policy};
use crate::push::human_bytes;
use crate::store;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("policy").required(true).multiple(false)))]
pub struct Args {
    /// The binary cache, in Nix's URL syntax.
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// Delete paths no job has pushed or found in the cache for this long (e.g. 30d, 2w, 12h),
    /// unless a kept path needs them.
    #[arg(long, value_name = "DURATION", group = "policy", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Delete the least recently used closures until the NARs take at most this much
    /// (e.g. 50G, 500M; powers of 1024).
    #[arg(long, value_name = "SIZE", group = "policy", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Store paths to keep whatever their age, with everything they reference.
    #[arg(long, value_name = "PATHS", num_args = 1..)]
    pub keep: Vec<std::path::PathBuf>,
    /// Never delete an object younger than this: a push may be writing it.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub grace: Duration,
    /// Say what would be deleted and how much that frees, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How many objects are read or deleted at once.
    #[arg(long, short = 'j', default_value_t = 64, value_name = "N")]
    pub jobs: usize,
    /// Unix time to take as now (for tests that need days to pass).
    #[arg(long, hide = true, value_name = "UNIX_SECONDS")]
    pub now: Option<u64>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let policy = match (args.older_than, args.max_size) {
        (Some(age), _) => Policy::OlderThan(age),
        (None, Some(size)) => Policy::MaxSize(size),
        (None, None) => anyhow::bail!("give --older-than DURATION or --max-size SIZE"),
    };
    let keep = args
        .keep
        .iter()
        .map(|p| store::resolve_store_path(p))
        .collect::<Result<Vec<_>, _>>()
        .context("--keep")?;
    let now = args.now.map_or_else(SystemTime::now, |secs| {
        UNIX_EPOCH + Duration::from_secs(secs)
    });
    let cache = super::open_cache(&url, OpenOptions::default()).await?;
    let opts = GcOptions {
        policy,
        keep,
        grace: args.grace,
        now,
        dry_run: args.dry_run,
        jobs: args.jobs,
    };
    let report = gc::collect(&cache, &opts)
        .await
        .with_context(|| format!("garbage collection of {url} stopped"))?;

    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for d in &report.deleted {
        println!("{verb} {} ({})", d.path, human_bytes(d.nar_bytes));
    }
    for path in &report.restored {
        println!("kept {path}: a push running alongside needs it");
    }
    for path in &report.unlinked {
        println!(
            "unlinked {path}: a push reused its NAR as gc deleted it; the next push puts it back"
        );
    }
    for (key, why) in &report.unreadable {
        eprintln!("warning: kept {key}, which cannot be read as a narinfo: {why}");
    }
    eprintln!(
        "{verb} {} of {} paths and {} NARs{}, freeing {} ({} NAR); kept {} paths ({} NAR){}{}",
        report.deleted.len(),
        report.narinfos,
        report.nars_deleted,
        beside_paths(&report),
        human_bytes(report.nar_bytes_freed + report.meta_bytes_freed),
        human_bytes(report.nar_bytes_freed),
        report.kept,
        human_bytes(report.nar_bytes_kept),
        if report.young > 0 {
            format!(
                "; {} objects younger than the grace period left alone",
                report.young
            )
        } else {
            String::new()
        },
        if report.usage_records_merged > 0 {
            format!(
                "; merged {} usage records into one",
                report.usage_records_merged
            )
        } else {
            String::new()
        },
    );
    if args.dry_run {
        // What the bucket holds that gc weighs: NARs, and the narinfos, logs and records it
        // would delete (the kept narinfos are small beside their NARs).
        let after = report.nar_bytes_kept;
        let before = after + report.nar_bytes_freed + report.meta_bytes_freed;
        let pricing = crate::cost::pricing_for(&url);
        eprintln!(
            "{}",
            crate::cost::storage_line(before, after, pricing.as_ref())
        );
    }
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|(name, took)| format!("{name} {:.1}s", took.as_secs_f64()))
        .collect();
    eprintln!("took {}", phases.join(", "));
    if let Policy::MaxSize(budget) = policy
        && report.nar_bytes_kept > budget
    {
        eprintln!(
            "warning: what must stay (young objects, --keep and their closures) takes {}, more than --max-size {}",
            human_bytes(report.nar_bytes_kept),
            human_bytes(budget)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What went with the paths, as " (and 2 build logs, 2 realisations)"; empty when nothing did.
fn beside_paths(report: &gc::GcReport) -> String {
    let counts = [
        (report.logs_deleted, "build logs"),
        (report.realisations_deleted, "realisations"),
        (report.listings_deleted, "NAR listings"),
    ];
    let said: Vec<String> = counts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    if said.is_empty() {
        String::new()
    } else {
        format!(" (and {})", said.join(", "))
    }
}
