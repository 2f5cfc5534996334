//! The bucket, asked with the credentials a cache would use: who they are, the bucket's region,
//! the store's clock, what the credentials may do (list, read, write, telling 403 from 404),
//! whether anyone may read without credentials, and the lifecycle rule.

use std::time::{Duration, SystemTime};

use super::keys::Sampled;
use super::{Check, Options};
use crate::cache::s3::probe::{Answer, Identity, Probe};
use crate::cache::{CacheUrl, OpenOptions};
use crate::nix::NarInfo;

/// Narinfos read for the key check and the fetch.
const SAMPLE: usize = 8;

/// The prefix of the object the write probe puts and deletes.
pub const PROBE_PREFIX: &str = "nixbucket-doctor-probe-";

/// What the bucket checks found.
pub struct Found {
    pub checks: Vec<Check>,
    pub sample: Vec<Sampled>,
    pub probe: Option<Probe>,
}

/// The bucket's checks, then the sample of narinfos the key and fetch checks read. A bucket
/// that does not answer at all gets one line, not one timeout per probe.
pub async fn run(url: &CacheUrl, opts: &Options) -> Found {
    let probe = match Probe::new(url, OpenOptions::default()).await {
        Ok(probe) => probe,
        Err(err) => {
            return Found {
                checks: vec![Check::fail(
                    "bucket",
                    format!("could not make a client for {url}: {err}"),
                    "correct the cache URL (s3://BUCKET?region=REGION)",
                )],
                sample: Vec::new(),
                probe: None,
            };
        }
    };
    let mut checks = Vec::new();
    let identity = probe.identity().await;
    checks.push(credentials_check(
        probe.credential_source(),
        &identity,
        probe.is_aws(),
    ));
    let who = who(&identity, probe.credential_source());
    let bucket = probe.bucket().to_owned();
    let head = probe.head_bucket().await;
    if head.status.is_none() && !head.no_credentials {
        checks.push(region_check(
            url,
            &probe.region(),
            probe.endpoint(),
            &bucket,
            &head,
        ));
        return Found {
            checks,
            sample: Vec::new(),
            probe: None,
        };
    }
    let (list, keys) = probe.list_top(1000, None).await;
    let (info, body) = probe.get("nix-cache-info").await;
    let absent_key = format!("{PROBE_PREFIX}absent-{}.narinfo", random_hex());
    let (absent, _) = probe.get(&absent_key).await;
    let written = if opts.no_write {
        None
    } else {
        let key = format!("{PROBE_PREFIX}{}", random_hex());
        let put = probe
            .put(
                &key,
                "written by `nixbucket doctor`, which deletes it at once\n",
            )
            .await;
        let delete = match put.is_success() {
            true => Some(probe.delete(&key).await),
            false => None,
        };
        Some((key, put, delete))
    };
    let anonymous = probe.get_anonymously("nix-cache-info").await;
    let (lifecycle, days) = probe.abort_upload_rules().await;

    let signed: Vec<&Answer> = [&head, &list, &info, &absent, &lifecycle]
        .into_iter()
        .chain(
            written
                .iter()
                .flat_map(|(_, put, delete)| [Some(put), delete.as_ref()])
                .flatten(),
        )
        .collect();
    let no_credentials = signed.iter().any(|a| a.no_credentials);
    let redirected = signed.iter().any(|a| redirect(a));
    checks.push(region_check(
        url,
        &probe.region(),
        probe.endpoint(),
        &bucket,
        &head,
    ));
    checks.push(clock_check(&signed, SystemTime::now()));
    if no_credentials || redirected {
        let why = match no_credentials {
            true => "there are no credentials to sign requests with (see credentials)",
            false => "the bucket answers from another region (see region)",
        };
        checks.push(Check::skipped("permissions", format!("not probed: {why}")));
    } else {
        checks.push(list_check(&bucket, &who, &list, &absent));
        checks.push(get_check(&bucket, &who, &info, body.as_deref()));
        checks.push(match &written {
            None => Check::skipped("write", "not probed (--no-write)"),
            Some((key, put, delete)) => write_check(&bucket, &who, key, put, delete.as_ref()),
        });
    }
    checks.push(match redirect(&anonymous) {
        true => Check::skipped(
            "public",
            "not probed: the bucket answers from another region (see region)",
        ),
        false => public_check(&bucket, &anonymous, opts.public),
    });
    if !(no_credentials || redirected) {
        checks.push(lifecycle_check(&bucket, &lifecycle, &days));
    }
    let sample = sample(&probe, &keys).await;
    Found {
        checks,
        sample,
        probe: Some(probe),
    }
}

/// S3 sends the request elsewhere: the bucket is in another region than the one signed for.
fn redirect(answer: &Answer) -> bool {
    answer.status == Some(301) || answer.code.as_deref() == Some("PermanentRedirect")
}

/// Up to [`SAMPLE`] narinfos, spread over the listing, read and parsed.
async fn sample(probe: &Probe, keys: &[String]) -> Vec<Sampled> {
    let narinfos: Vec<&String> = keys.iter().filter(|k| k.ends_with(".narinfo")).collect();
    let step = narinfos.len().div_ceil(SAMPLE).max(1);
    let mut out = Vec::new();
    for key in narinfos.into_iter().step_by(step) {
        let (answer, body) = probe.get(key).await;
        let narinfo = match body {
            Some(body) => {
                NarInfo::parse(&String::from_utf8_lossy(&body)).map_err(|e| e.to_string())
            }
            None => Err(answer.summary()),
        };
        out.push(Sampled {
            key: key.clone(),
            narinfo,
        });
    }
    out
}

fn random_hex() -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The credentials' owner in words: the ARN, else where they come from.
fn who(identity: &Identity, source: &str) -> String {
    match &identity.arn {
        Ok(arn) => arn.clone(),
        Err(_) => format!("the credentials from {source}"),
    }
}

/// An access key id as AWS's own tools show it: its last four characters.
fn shortened(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

pub fn credentials_check(source: &str, identity: &Identity, aws: bool) -> Check {
    const NAME: &str = "credentials";
    let Some(key) = &identity.access_key_id else {
        let why = identity.arn.as_ref().err().cloned().unwrap_or_default();
        return Check::fail(
            NAME,
            format!("no AWS credentials could be loaded from {source}: {why}"),
            "give credentials: `aws configure` (or `aws sso login`), AWS_PROFILE, \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ?profile=NAME in the cache URL",
        );
    };
    let expiry = identity
        .expiry
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .map_or_else(String::new, |left| {
            format!(", temporary: {} min left", left.as_secs() / 60)
        });
    let key = shortened(key);
    match (&identity.arn, aws) {
        (Ok(arn), _) => Check::ok(
            NAME,
            format!("from {source}: access key {key}{expiry}, identity {arn}"),
        ),
        (Err(why), false) => Check::ok(
            NAME,
            format!(
                "from {source}: access key {key}{expiry} (the store does not say whose: {why})"
            ),
        ),
        (Err(why), true) => Check::fail(
            NAME,
            format!("from {source}: access key {key}{expiry}, which STS does not accept: {why}"),
            "renew or replace the credentials (`aws sso login`, a new access key, or the role \
             your CI assumes)",
        ),
    }
}

/// The cache URL with its `region` parameter set to `region`.
fn with_region(url: &CacheUrl, region: &str) -> String {
    let text = url.to_string();
    let (base, query) = text.split_once('?').unwrap_or((&text, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("region="))
        .map(str::to_owned)
        .collect();
    params.insert(0, format!("region={region}"));
    format!("{base}?{}", params.join("&"))
}

/// The region AWS names in an AuthorizationHeaderMalformed message ("… expecting 'eu-west-1'").
fn expected_region(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("expecting '")?;
    rest.split_once('\'').map(|(r, _)| r.to_owned())
}

pub fn region_check(
    url: &CacheUrl,
    signing: &str,
    endpoint: &str,
    bucket: &str,
    head: &Answer,
) -> Check {
    const NAME: &str = "region";
    let moved = head
        .bucket_region
        .clone()
        .filter(|r| r != signing)
        .or_else(|| {
            (head.code.as_deref() == Some("AuthorizationHeaderMalformed"))
                .then(|| expected_region(&head.message))
                .flatten()
        });
    if let Some(region) = moved {
        return Check::fail(
            NAME,
            format!(
                "bucket {bucket} is in region {region}, but requests are signed for {signing}: \
                 S3 redirects or refuses them"
            ),
            format!(
                "name the bucket's region in the cache URL (and where nix.conf lists it): {}",
                with_region(url, &region)
            ),
        );
    }
    match (head.status, head.code.as_deref()) {
        _ if redirect(head) => Check::fail(
            NAME,
            format!("S3 redirects requests for bucket {bucket}: it is not in region {signing}"),
            format!(
                "find its region (`aws s3api get-bucket-location --bucket {bucket}`) and add \
                 region=… to the cache URL"
            ),
        ),
        (_, Some("RequestTimeTooSkewed")) => {
            Check::skipped(NAME, "S3 refused the request's time (see clock)")
        }
        (Some(404), _) | (_, Some("NoSuchBucket")) => Check::fail(
            NAME,
            format!("there is no bucket {bucket} at {endpoint}"),
            format!(
                "create it (`aws s3 mb s3://{bucket} --region {signing}`), or correct the name \
                 in the cache URL"
            ),
        ),
        (None, _) if head.no_credentials => {
            Check::skipped(NAME, "not asked: no credentials to sign with")
        }
        (None, _) => Check::fail(
            NAME,
            format!("no answer from {endpoint}: {}", head.message),
            "check the network and the cache URL's endpoint (and `scheme`)",
        ),
        (Some(_), _) => {
            let seen = match &head.bucket_region {
                Some(r) => format!("region {r}"),
                None => format!("signed for {signing}"),
            };
            let note = match head.is_success() {
                true => String::new(),
                false => format!(
                    " (HeadBucket: {}; see the permission checks)",
                    head.summary()
                ),
            };
            Check::ok(NAME, format!("bucket {bucket} at {endpoint}, {seen}{note}"))
        }
    }
}

/// How far the store's clock is from ours, from the `Date` of its answers; S3 refuses requests
/// signed more than 15 minutes off.
pub fn clock_check(answers: &[&Answer], now: SystemTime) -> Check {
    const NAME: &str = "clock";
    const FIX: &str = "set this machine's clock right: `sudo timedatectl set-ntp true` (or start \
                       chronyd or ntpd); S3 refuses requests signed more than 15 minutes off";
    let skew = answers
        .iter()
        .filter_map(|a| a.date)
        .map(|date| match date.duration_since(now) {
            Ok(ahead) => (ahead, "ahead of"),
            Err(behind) => (behind.duration(), "behind"),
        })
        .max_by_key(|(d, _)| *d);
    let described = |(d, side): (Duration, &str)| {
        format!(
            "the store's clock is {} s {side} this machine's",
            d.as_secs()
        )
    };
    if answers
        .iter()
        .any(|a| a.code.as_deref() == Some("RequestTimeTooSkewed"))
    {
        let by = skew.map_or_else(String::new, |s| format!(" ({})", described(s)));
        return Check::fail(
            NAME,
            format!("S3 refused the requests: this machine's clock is too far off{by}"),
            FIX,
        );
    }
    match skew {
        None => Check::skipped(NAME, "no answer carried a Date to compare with"),
        Some(s) if s.0 > Duration::from_secs(15 * 60) => Check::fail(NAME, described(s), FIX),
        Some(s) if s.0 > Duration::from_secs(60) => Check::warn(NAME, described(s), FIX),
        Some(s) => Check::ok(NAME, described(s)),
    }
}

fn allow(action: &str, bucket: &str, objects: bool, who: &str) -> String {
    let resource = match objects {
        true => format!("arn:aws:s3:::{bucket}/*"),
        false => format!("arn:aws:s3:::{bucket}"),
    };
    format!("allow {action} on {resource} to {who} (in its IAM policy, or the bucket policy)")
}

pub fn list_check(bucket: &str, who: &str, list: &Answer, absent: &Answer) -> Check {
    const NAME: &str = "list";
    let fix = allow("s3:ListBucket", bucket, false, who);
    if list.is_success() {
        return match absent.status {
            Some(404) => Check::ok(
                NAME,
                "ListBucket allowed; a missing narinfo answers 404, as Nix expects",
            ),
            _ => Check::warn(
                NAME,
                format!(
                    "ListBucket allowed, but a missing narinfo answers {}, not 404: Nix takes \
                     that for an error, not a miss",
                    absent.summary()
                ),
                "look for a bucket policy that denies GetObject to these credentials",
            ),
        };
    }
    if list.status != Some(403) {
        return Check::fail(
            NAME,
            format!("listing the bucket failed: {}", list.summary()),
            "see the checks above (region, credentials, clock)",
        );
    }
    let missing = match absent.status {
        Some(403) => "and so a missing narinfo answers 403, not 404".to_owned(),
        _ => format!(
            "(this store answers {} for a missing narinfo all the same; AWS answers 403)",
            absent.summary()
        ),
    };
    Check::fail(
        NAME,
        format!(
            "ListBucket denied to {who} ({}) {missing}: without ListBucket, S3 answers 403 \
             instead of 404 for every path the cache lacks, and Nix takes that for an error, \
             not a miss",
            list.summary()
        ),
        fix,
    )
}

pub fn get_check(bucket: &str, who: &str, info: &Answer, body: Option<&[u8]>) -> Check {
    const NAME: &str = "read";
    if info.is_success() {
        let text = String::from_utf8_lossy(body.unwrap_or_default());
        return match text.lines().any(|l| l.trim() == "StoreDir: /nix/store") {
            true => Check::ok(
                NAME,
                "GetObject allowed: nix-cache-info reads, StoreDir /nix/store",
            ),
            false => Check::warn(
                NAME,
                format!("nix-cache-info reads, but does not say `StoreDir: /nix/store`: {text:?}"),
                "let `nixbucket push` write it again: delete nix-cache-info, then push",
            ),
        };
    }
    match info.status {
        Some(404) => Check::warn(
            NAME,
            "the bucket has no nix-cache-info yet, which Nix reads first",
            "`nixbucket push` writes it along with the first paths",
        ),
        Some(403) => Check::fail(
            NAME,
            format!(
                "GetObject of nix-cache-info denied to {who} ({})",
                info.summary()
            ),
            allow("s3:GetObject", bucket, true, who),
        ),
        _ => Check::fail(
            NAME,
            format!("reading nix-cache-info failed: {}", info.summary()),
            "see the checks above (region, credentials, clock)",
        ),
    }
}

pub fn write_check(
    bucket: &str,
    who: &str,
    key: &str,
    put: &Answer,
    delete: Option<&Answer>,
) -> Check {
    const NAME: &str = "write";
    if !put.is_success() {
        return Check::warn(
            NAME,
            format!(
                "PutObject denied to {who} ({}): enough to read the cache, not to push to it",
                put.summary()
            ),
            format!(
                "for the job that pushes, {}; gc also needs s3:DeleteObject",
                allow("s3:PutObject", bucket, true, who)
            ),
        );
    }
    match delete {
        Some(d) if d.is_success() => Check::ok(
            NAME,
            format!("PutObject and DeleteObject allowed (the probe {key} was written and deleted)"),
        ),
        Some(d) => Check::warn(
            NAME,
            format!(
                "wrote the probe {key} but could not delete it ({}): gc cannot delete",
                d.summary()
            ),
            format!(
                "delete it (`aws s3 rm s3://{bucket}/{key}`), and for gc {}",
                allow("s3:DeleteObject", bucket, true, who)
            ),
        ),
        None => Check::warn(
            NAME,
            format!("wrote the probe {key} and did not delete it"),
            format!("delete it: `aws s3 rm s3://{bucket}/{key}`"),
        ),
    }
}

pub fn public_check(bucket: &str, anonymous: &Answer, public: bool) -> Check {
    const NAME: &str = "public";
    let block = format!(
        "block public access: `aws s3api put-public-access-block --bucket {bucket} \
         --public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true,\
         BlockPublicPolicy=true,RestrictPublicBuckets=true`, and remove the bucket policy's \
         statements whose Principal is \"*\" (or pass --public if the cache is meant to be public)"
    );
    match (anonymous.is_success(), anonymous.status, public) {
        (true, _, true) => Check::ok(NAME, "anyone can read the cache, as --public says"),
        (true, _, false) => Check::fail(
            NAME,
            "an anonymous GET of nix-cache-info succeeds: anyone can read this cache",
            block,
        ),
        (false, Some(404), _) => Check::warn(
            NAME,
            "an anonymous GET of nix-cache-info answers 404, not 403: anyone may list the bucket",
            block,
        ),
        (false, Some(_), false) => Check::ok(
            NAME,
            format!(
                "an anonymous GET of nix-cache-info is refused ({}): the cache is private",
                anonymous.summary()
            ),
        ),
        (false, Some(_), true) => Check::warn(
            NAME,
            format!(
                "--public says anyone may read the cache, but an anonymous GET of \
                 nix-cache-info is refused ({})",
                anonymous.summary()
            ),
            "leave out --public, or allow s3:GetObject to Principal \"*\" in the bucket policy",
        ),
        (false, None, _) => Check::skipped(
            NAME,
            format!("an anonymous GET got no answer: {}", anonymous.message),
        ),
    }
}

pub fn lifecycle_check(bucket: &str, answer: &Answer, days: &[i32]) -> Check {
    const NAME: &str = "lifecycle";
    let rule = format!(
        "add the rule, keeping the bucket's others (this call replaces them all: list yours too): \
         `aws s3api put-bucket-lifecycle-configuration --bucket {bucket} \
         --lifecycle-configuration '{{\"Rules\":[{{\"ID\":\"abort-incomplete-uploads\",\
         \"Status\":\"Enabled\",\"Filter\":{{}},\"AbortIncompleteMultipartUpload\":\
         {{\"DaysAfterInitiation\":1}}}}]}}'`"
    );
    let missing = "no lifecycle rule aborts incomplete multipart uploads: the parts of an upload \
                   cut short (a cancelled job) stay, and are billed, until one does";
    if answer.is_success() {
        return match days.iter().min() {
            Some(d) => Check::ok(
                NAME,
                format!("incomplete multipart uploads are aborted after {d} day(s)"),
            ),
            None => Check::warn(NAME, missing, rule),
        };
    }
    match (answer.status, answer.code.as_deref()) {
        (_, Some("NoSuchLifecycleConfiguration")) => Check::warn(NAME, missing, rule),
        (Some(403), _) => Check::skipped(
            NAME,
            format!("could not read the lifecycle rules ({})", answer.summary()),
        ),
        (Some(501), _) | (_, Some("NotImplemented")) => {
            Check::skipped(NAME, "the store does not implement lifecycle rules")
        }
        _ => Check::skipped(
            NAME,
            format!("could not read the lifecycle rules ({})", answer.summary()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn answer(status: u16, code: Option<&str>, message: &str) -> Answer {
        Answer {
            status: Some(status),
            code: code.map(str::to_owned),
            message: message.to_owned(),
            ..Answer::default()
        }
    }

    #[test]
    fn a_bucket_in_another_region_fails_with_the_url_that_names_it() {
        let url: CacheUrl = "s3://b?region=us-east-1&profile=p".parse().unwrap();
        let head = Answer {
            bucket_region: Some("eu-west-1".into()),
            ..answer(301, None, "")
        };
        let check = region_check(&url, "us-east-1", "AWS S3", "b", &head);
        assert_eq!(check.status, Status::Fail, "{check}");
        assert!(
            check
                .fix
                .unwrap()
                .ends_with("s3://b?region=eu-west-1&profile=p")
        );
        // AWS's answer to a request signed for the wrong region names the right one.
        let malformed = answer(
            400,
            Some("AuthorizationHeaderMalformed"),
            "the region 'us-east-1' is wrong; expecting 'ap-south-1'",
        );
        let check = region_check(&url, "us-east-1", "AWS S3", "b", &malformed);
        assert!(check.fix.unwrap().contains("region=ap-south-1"));
        let missing = region_check(&url, "us-east-1", "AWS S3", "b", &answer(404, None, ""));
        assert!(missing.fix.unwrap().contains("aws s3 mb s3://b"));
        let fine = Answer {
            bucket_region: Some("us-east-1".into()),
            ..answer(200, None, "")
        };
        assert_eq!(
            region_check(&url, "us-east-1", "AWS S3", "b", &fine).status,
            Status::Ok
        );
    }

    #[test]
    fn the_clock_fails_past_fifteen_minutes_and_on_s3_s_refusal() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let dated = |secs: i64| Answer {
            date: Some(match secs >= 0 {
                true => now + Duration::from_secs(secs as u64),
                false => now - Duration::from_secs((-secs) as u64),
            }),
            ..answer(200, None, "")
        };
        assert_eq!(clock_check(&[&dated(2)], now).status, Status::Ok);
        assert_eq!(clock_check(&[&dated(-120)], now).status, Status::Warn);
        let far = clock_check(&[&dated(2), &dated(-3600)], now);
        assert_eq!(far.status, Status::Fail, "{far}");
        assert!(far.detail.contains("3600 s behind"), "{far}");
        let refused = answer(403, Some("RequestTimeTooSkewed"), "");
        assert_eq!(clock_check(&[&refused], now).status, Status::Fail);
        assert_eq!(clock_check(&[], now).status, Status::Skipped);
    }

    #[test]
    fn a_denied_listing_fails_and_says_what_a_miss_then_looks_like() {
        let denied = answer(403, Some("AccessDenied"), "Access Denied");
        let check = list_check(
            "b",
            "arn:x",
            &denied,
            &answer(403, Some("AccessDenied"), ""),
        );
        assert_eq!(check.status, Status::Fail, "{check}");
        assert!(check.detail.contains("403, not 404"), "{check}");
        assert!(
            check
                .fix
                .unwrap()
                .contains("s3:ListBucket on arn:aws:s3:::b to arn:x")
        );
        let other = list_check(
            "b",
            "arn:x",
            &answer(500, Some("InternalError"), ""),
            &denied,
        );
        assert!(!other.fix.unwrap().contains("s3:ListBucket"));
        let ok = list_check("b", "arn:x", &answer(200, None, ""), &answer(404, None, ""));
        assert_eq!(ok.status, Status::Ok);
    }

    #[test]
    fn reads_anyone_may_make_fail_unless_the_cache_is_public() {
        let read = answer(200, None, "");
        assert_eq!(public_check("b", &read, false).status, Status::Fail);
        assert_eq!(public_check("b", &read, true).status, Status::Ok);
        let refused = answer(403, Some("AccessDenied"), "");
        assert_eq!(public_check("b", &refused, false).status, Status::Ok);
        assert_eq!(public_check("b", &refused, true).status, Status::Warn);
    }

    #[test]
    fn a_missing_abort_rule_warns_with_the_rule() {
        let none = answer(404, Some("NoSuchLifecycleConfiguration"), "");
        let check = lifecycle_check("b", &none, &[]);
        assert_eq!(check.status, Status::Warn);
        assert!(
            check
                .fix
                .unwrap()
                .contains("AbortIncompleteMultipartUpload")
        );
        assert_eq!(
            lifecycle_check("b", &answer(200, None, ""), &[7, 1]).status,
            Status::Ok
        );
        let refused = answer(403, Some("AccessDenied"), "");
        assert_eq!(lifecycle_check("b", &refused, &[]).status, Status::Skipped);
    }

    #[test]
    fn an_access_key_is_shown_by_its_last_four_characters() {
        assert_eq!(shortened("AKIAIOSFODNN7EXAMPLE"), "…MPLE");
        assert_eq!(shortened("AB"), "…AB");
    }
}
