//! What a run's requests, and a cache's storage, cost: the requests the process sent
//! ([`crate::cache::meter`]) priced by a table. Three tables are built in, at the list prices
//! their providers published for 2025–26: AWS S3 Standard (us-east-1), Cloudflare R2 and
//! Backblaze B2. A user's own table (JSON, the same fields) replaces them, for another region,
//! a negotiated rate or a price change. Free tiers are left out: the estimate is what the run
//! adds to a bill past them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::cache::CacheUrl;
use crate::cache::meter::{self, Requests};

/// The table the user chose for this process (`--pricing`), if any.
static CHOSEN: OnceLock<Pricing> = OnceLock::new();

/// Prices this process's requests with the table `choice` names ([`Pricing::load`]) rather
/// than by the store's endpoint; the first choice made stands.
pub fn choose(choice: &str) -> anyhow::Result<()> {
    let _ = CHOSEN.set(Pricing::load(choice)?);
    Ok(())
}

/// The table for `url`: the one chosen (`--pricing`), else the one that fits its endpoint.
pub fn pricing_for(url: &CacheUrl) -> Option<Pricing> {
    CHOSEN.get().cloned().or_else(|| Pricing::for_url(url))
}

/// Storage before and after a gc, and what each costs a month, for `gc --dry-run`.
pub fn storage_line(before: u64, after: u64, pricing: Option<&Pricing>) -> String {
    let human = crate::push::human_bytes;
    let mut line = format!("storage: {} now, {} after", human(before), human(after));
    match pricing {
        Some(p) => line.push_str(&format!(
            "; about {} a month now, {} after, at {} prices",
            dollars(p.storage_cost(before)),
            dollars(p.storage_cost(after)),
            p.name
        )),
        None => line.push_str("; no price table for this store (--pricing)"),
    }
    line
}

/// The requests this process sent so far, priced by the chosen table, else by the one that
/// fits the first bucket it opened; none if it sent none.
pub fn so_far() -> Option<Report> {
    let requests = meter::requests();
    if requests.total() == 0 {
        return None;
    }
    let pricing = CHOSEN
        .get()
        .cloned()
        .or_else(|| meter::stores().first().and_then(Pricing::for_url));
    Some(Report::new(requests, pricing.as_ref()))
}

const GB: f64 = 1e9;

/// Prices in US dollars.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    pub name: String,
    /// Per 1,000 requests, by S3 operation (`PutObject`, `UploadPart`, `GetObject`, …).
    pub per_1000: BTreeMap<String, f64>,
    /// Per 1,000 requests of an operation `per_1000` does not name.
    pub other_per_1000: f64,
    /// Per GB (10^9 bytes) stored for a month.
    pub storage_gb_month: f64,
    /// Per GB downloaded (egress to the internet).
    pub egress_gb: f64,
}

/// Operations that write or list ("class A" on most price lists).
const WRITES: &[&str] = &[
    "PutObject",
    "CopyObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "ListObjectsV2",
    "ListMultipartUploads",
];
/// Operations that read ("class B").
const READS: &[&str] = &["GetObject", "HeadObject", "HeadBucket"];
/// Operations no built-in table charges for.
const DELETES: &[&str] = &["DeleteObject", "DeleteObjects", "AbortMultipartUpload"];

fn table(pairs: &[(&[&str], f64)]) -> BTreeMap<String, f64> {
    pairs
        .iter()
        .flat_map(|(ops, price)| ops.iter().map(move |op| ((*op).to_owned(), *price)))
        .collect()
}

impl Pricing {
    /// The built-in table called `name`: `aws`, `r2` or `b2`.
    pub fn builtin(name: &str) -> Option<Pricing> {
        Some(match name {
            "aws" => Pricing {
                name: "AWS S3 Standard, us-east-1".into(),
                per_1000: table(&[(WRITES, 0.005), (READS, 0.0004), (DELETES, 0.0)]),
                other_per_1000: 0.005,
                storage_gb_month: 0.023,
                egress_gb: 0.09,
            },
            "r2" => Pricing {
                name: "Cloudflare R2 Standard".into(),
                per_1000: table(&[(WRITES, 0.0045), (READS, 0.00036), (DELETES, 0.0)]),
                other_per_1000: 0.0045,
                storage_gb_month: 0.015,
                egress_gb: 0.0,
            },
            // Uploads and deletes are free (class A), reads class B, listings and copies
            // class C; egress is free up to three times what is stored, assumed here.
            "b2" => Pricing {
                name: "Backblaze B2".into(),
                per_1000: table(&[
                    (&["PutObject", "CreateMultipartUpload", "UploadPart"], 0.0),
                    (&["CompleteMultipartUpload"], 0.0),
                    (DELETES, 0.0),
                    (&["GetObject", "HeadObject"], 0.0004),
                    (
                        &["ListObjectsV2", "ListMultipartUploads", "CopyObject"],
                        0.004,
                    ),
                    (&["HeadBucket"], 0.004),
                ]),
                other_per_1000: 0.004,
                storage_gb_month: 0.006,
                egress_gb: 0.0,
            },
            _ => return None,
        })
    }

    /// `aws`, `r2`, `b2`, or a JSON file with the fields of [`Pricing`].
    pub fn load(choice: &str) -> anyhow::Result<Pricing> {
        if let Some(pricing) = Pricing::builtin(choice) {
            return Ok(pricing);
        }
        let path = Path::new(choice);
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "--pricing {choice:?} is neither aws, r2 nor b2, and not a readable file: {e}"
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a price table: {e}", path.display()))
    }

    /// The table that fits where `url` points, if one does: AWS for an `s3://` URL without an
    /// endpoint, R2 and B2 by their endpoints' host names. Other stores have no default.
    pub fn for_url(url: &CacheUrl) -> Option<Pricing> {
        let CacheUrl::S3 { endpoint, .. } = url else {
            return None;
        };
        match endpoint.as_deref() {
            None => Pricing::builtin("aws"),
            Some(e) if e.contains(".r2.cloudflarestorage.com") => Pricing::builtin("r2"),
            Some(e) if e.contains("backblazeb2.com") => Pricing::builtin("b2"),
            Some(_) => None,
        }
    }

    /// What `requests` cost.
    pub fn requests_cost(&self, requests: &Requests) -> f64 {
        let calls: f64 = requests
            .operations
            .iter()
            .map(|(op, n)| {
                let price = self.per_1000.get(op).copied();
                price.unwrap_or(self.other_per_1000) * *n as f64 / 1000.0
            })
            .sum();
        calls + self.egress_gb * requests.bytes_down as f64 / GB
    }

    /// What storing `bytes` costs a month.
    pub fn storage_cost(&self, bytes: u64) -> f64 {
        self.storage_gb_month * bytes as f64 / GB
    }
}

/// Dollars as a person reads them: cents and up to two places, smaller sums to three
/// significant figures.
pub fn dollars(amount: f64) -> String {
    if amount == 0.0 {
        "$0".to_owned()
    } else if amount >= 0.01 {
        format!("${amount:.2}")
    } else {
        let places = (-amount.log10()).ceil() as usize + 2;
        format!("${amount:.places$}")
    }
}

/// The requests of a run, by kind, for a summary line: `PUT 12, GET 3, …`.
pub fn by_kind(requests: &Requests) -> String {
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for (op, n) in &requests.operations {
        let kind = match op.as_str() {
            "PutObject" | "CopyObject" => "PUT",
            "UploadPart" => "part",
            "CreateMultipartUpload" | "CompleteMultipartUpload" | "AbortMultipartUpload" => {
                "multipart"
            }
            "GetObject" => "GET",
            "HeadObject" | "HeadBucket" => "HEAD",
            "ListObjectsV2" | "ListMultipartUploads" => "LIST",
            "DeleteObject" | "DeleteObjects" => "DELETE",
            _ => "other",
        };
        *kinds.entry(kind).or_default() += n;
    }
    kinds
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The run's requests and their estimated cost, as written for dashboards (`--report-json`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub requests: Requests,
    pub total_requests: u64,
    /// Absent when no price table applies.
    pub pricing: Option<String>,
    pub estimated_cost_usd: Option<f64>,
}

impl Report {
    pub fn new(requests: Requests, pricing: Option<&Pricing>) -> Report {
        Report {
            total_requests: requests.total(),
            estimated_cost_usd: pricing.map(|p| p.requests_cost(&requests)),
            pricing: pricing.map(|p| p.name.clone()),
            requests,
        }
    }

    /// One line for the end of a run.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "requests: {} ({}); {} up, {} down",
            self.total_requests,
            by_kind(&self.requests),
            crate::push::human_bytes(self.requests.bytes_up),
            crate::push::human_bytes(self.requests.bytes_down),
        );
        line.push_str("; ");
        line.push_str(&self.cost_text());
        line
    }

    /// The estimate, or why there is none.
    pub fn cost_text(&self) -> String {
        match (&self.pricing, self.estimated_cost_usd) {
            (Some(name), Some(cost)) => format!("about {} at {name} prices", dollars(cost)),
            _ => "no price table for this store (--pricing)".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(ops: &[(&str, u64)], down: u64) -> Requests {
        Requests {
            operations: ops.iter().map(|(o, n)| ((*o).to_owned(), *n)).collect(),
            bytes_up: 0,
            bytes_down: down,
        }
    }

    #[test]
    fn each_table_prices_by_operation_class() {
        // 2,000 writes, 10,000 reads, 500 deletes and 1 GB down.
        let run = requests(
            &[
                ("PutObject", 1500),
                ("UploadPart", 500),
                ("GetObject", 6000),
                ("HeadObject", 4000),
                ("DeleteObjects", 500),
            ],
            1_000_000_000,
        );
        let cost = |name| Pricing::builtin(name).unwrap().requests_cost(&run);
        assert!((cost("aws") - (2.0 * 0.005 + 10.0 * 0.0004 + 0.09)).abs() < 1e-9);
        assert!((cost("r2") - (2.0 * 0.0045 + 10.0 * 0.00036)).abs() < 1e-9);
        assert!((cost("b2") - 10.0 * 0.0004).abs() < 1e-9);
        let aws = Pricing::builtin("aws").unwrap();
        assert!((aws.storage_cost(50_000_000_000) - 1.15).abs() < 1e-9);
    }

    #[test]
    fn the_store_picks_its_table() {
        let table = |url: &str| Pricing::for_url(&url.parse().unwrap()).map(|p| p.name);
        assert_eq!(
            table("s3://b?region=eu-west-1").as_deref(),
            Some("AWS S3 Standard, us-east-1")
        );
        assert_eq!(
            table("s3://b?endpoint=https://acct.r2.cloudflarestorage.com").as_deref(),
            Some("Cloudflare R2 Standard")
        );
        assert_eq!(
            table("s3://b?endpoint=s3.us-west-004.backblazeb2.com").as_deref(),
            Some("Backblaze B2")
        );
        assert_eq!(table("s3://b?endpoint=minio.local:9000"), None);
        assert_eq!(table("file:///tmp/cache"), None);
    }

    #[test]
    fn a_users_table_is_read_and_a_bad_one_named() {
        let tmp = tempfile::tempdir().unwrap();
        let mine = Pricing {
            name: "mine".into(),
            per_1000: table(&[(&["PutObject"], 1.0)]),
            other_per_1000: 0.5,
            storage_gb_month: 0.01,
            egress_gb: 0.0,
        };
        let path = tmp.path().join("prices.json");
        std::fs::write(&path, serde_json::to_string(&mine).unwrap()).unwrap();
        assert_eq!(Pricing::load(path.to_str().unwrap()).unwrap(), mine);
        let run = requests(&[("PutObject", 2000), ("GetObject", 2000)], 0);
        assert!((mine.requests_cost(&run) - 3.0).abs() < 1e-9);

        std::fs::write(&path, r#"{"name": "typo", "per_thousand": {}}"#).unwrap();
        let err = Pricing::load(path.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a price table"), "{err}");
        let err = Pricing::load("azure").unwrap_err().to_string();
        assert!(err.contains("neither aws, r2 nor b2"), "{err}");
    }

    #[test]
    fn storage_before_and_after_is_priced_a_month() {
        let aws = Pricing::builtin("aws").unwrap();
        assert_eq!(
            storage_line(100_000_000_000, 40_000_000_000, Some(&aws)),
            "storage: 93.1 GiB now, 37.3 GiB after; about $2.30 a month now, $0.92 after, \
             at AWS S3 Standard, us-east-1 prices"
        );
        assert!(storage_line(1, 0, None).ends_with("(--pricing)"));
    }

    #[test]
    fn dollars_read_well_large_and_small() {
        assert_eq!(dollars(0.0), "$0");
        assert_eq!(dollars(12.345), "$12.35");
        assert_eq!(dollars(0.0123), "$0.01");
        assert_eq!(dollars(0.00123), "$0.00123");
        assert_eq!(dollars(0.0000456), "$0.0000456");
    }

    #[test]
    fn a_summary_names_kinds_bytes_and_cost() {
        let run = Requests {
            bytes_up: 3 << 20,
            ..requests(&[("PutObject", 3), ("HeadObject", 2), ("UploadPart", 4)], 0)
        };
        let aws = Pricing::builtin("aws").unwrap();
        let line = Report::new(run.clone(), Some(&aws)).summary();
        assert!(
            line.starts_with("requests: 9 (HEAD 2, PUT 3, part 4); 3.0 MiB up, 0 B down"),
            "{line}"
        );
        assert!(
            line.ends_with("at AWS S3 Standard, us-east-1 prices"),
            "{line}"
        );
        let line = Report::new(run, None).summary();
        assert!(
            line.ends_with("no price table for this store (--pricing)"),
            "{line}"
        );
    }
}
