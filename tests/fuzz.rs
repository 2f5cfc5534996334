//! Property-based fuzzing of the parsers that read what users and buckets hand us: narinfo
//! text, signing keys, nix.conf editing, cache URLs. Each target runs for a bounded time
//! (`NIXBUCKET_FUZZ_SECS`, default 10) with a fresh random seed it prints; `scripts/fuzz.sh`
//! runs them. They are `#[ignore]`d so the ordinary suite skips them.
//! Replay a failure with `NIXBUCKET_FUZZ_SEED=<seed>`.

use std::time::{Duration, Instant};

use nixbucket::cache::CacheUrl;
use nixbucket::nix::conf::{managed_settings, set_managed_block};
use nixbucket::nix::{NarInfo, PublicKey, SecretKey, Signature};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Runs `test` on values of `strategy` until the time budget is spent; panics with the
/// minimal failing input and the seed on the first failure.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let secs = std::env::var("NIXBUCKET_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut seed = [0u8; 32];
    match std::env::var("NIXBUCKET_FUZZ_SEED") {
        Ok(hex) => {
            for (i, b) in seed.iter_mut().enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
            }
        }
        Err(_) => getrandom::fill(&mut seed).expect("random seed"),
    }
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let mut cases = 0u64;
    while Instant::now() < deadline {
        let mut batch_seed = [0u8; 32];
        rng.fill_bytes(&mut batch_seed);
        let config = Config {
            cases: 512,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(
            config,
            TestRng::from_seed(RngAlgorithm::ChaCha, &batch_seed),
        );
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}: {e}\nreplay with NIXBUCKET_FUZZ_SEED={hex}");
        }
        cases += 512;
    }
    eprintln!("{name}: {cases} cases in {secs}s, no failure (NIXBUCKET_FUZZ_SEED={hex})");
}

const NARINFO: &str = "StorePath: /nix/store/1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h-hello-test
URL: nar/1ljmvwqa7rvcf261pzfl3z2ibazfbvvfvrfmp5jdc89ddgmrb3fa.nar.zst
Compression: zstd
FileHash: sha256:1ljmvwqa7rvcf261pzfl3z2ibazfbvvfvrfmp5jdc89ddgmrb3fa
FileSize: 250
NarHash: sha256:1ig8hwv1z7pbwg539a60k8wjx89j8p86kp9jv36i721h3a7mdbjk
NarSize: 880
References: 5qn9lblnzjgza2vb23kwaclrcxnska2z-dep 1d5i1r8ldqmbfsb2q3i52hbk3a4kbg9h-hello-test
Deriver: 9hrx6sfj6vcdi0bncs1vycvmc0z3bs0v-hello-test.drv
Sig: test-cache-1:eaga4LC8LljBbo111n/y7VZQ5//zVQkYJ8hL8pKj5wtImZHPFqwU3l63SARmnkx556yQYGc4kqCMm/LbcOiiBw==
CA: fixed:r:sha256:1ig8hwv1z7pbwg539a60k8wjx89j8p86kp9jv36i721h3a7mdbjk
";

/// Line-level edits of a valid text: drop, duplicate, swap, replace a value, insert junk.
fn mutated_lines(seed: &'static str) -> impl Strategy<Value = String> {
    let lines: Vec<String> = seed.lines().map(str::to_owned).collect();
    let n = lines.len();
    let edit = prop_oneof![
        (0..n).prop_map(Edit::Drop),
        (0..n).prop_map(Edit::Duplicate),
        (0..n, 0..n).prop_map(|(a, b)| Edit::Swap(a, b)),
        (0..n, ".{0,80}").prop_map(|(i, v)| Edit::Value(i, v)),
        (0..n, "[ -~\t\r]{0,60}").prop_map(|(i, v)| Edit::Insert(i, v)),
        (0..n, 0usize..100).prop_map(|(i, c)| Edit::Cut(i, c)),
    ];
    proptest::collection::vec(edit, 0..6).prop_map(move |edits| {
        let mut l = lines.clone();
        for e in edits {
            let len = l.len().max(1);
            match e {
                Edit::Drop(i) if !l.is_empty() => {
                    l.remove(i % len);
                }
                Edit::Duplicate(i) if !l.is_empty() => {
                    let x = l[i % len].clone();
                    l.insert(i % len, x);
                }
                Edit::Swap(a, b) if !l.is_empty() => l.swap(a % len, b % len),
                Edit::Value(i, v) if !l.is_empty() => {
                    let key = l[i % len].split(':').next().unwrap_or("").to_owned();
                    l[i % len] = format!("{key}: {v}");
                }
                Edit::Insert(i, v) => l.insert(i % (l.len() + 1), v),
                Edit::Cut(i, c) if !l.is_empty() => {
                    let s = &mut l[i % len];
                    let mut at = c.min(s.len());
                    while !s.is_char_boundary(at) {
                        at -= 1;
                    }
                    s.truncate(at);
                }
                _ => {}
            }
        }
        let mut text = l.join("\n");
        text.push('\n');
        text
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Value(usize, String),
    Insert(usize, String),
    Cut(usize, usize),
}

#[test]
#[ignore = "fuzzing: run by scripts/fuzz.sh"]
fn fuzz_narinfo_parser() {
    let input = prop_oneof![any::<String>(), mutated_lines(NARINFO)];
    fuzz("narinfo", input, |text| {
        if let Ok(info) = NarInfo::parse(&text) {
            // What we accept, we write back in a form we read as the same narinfo.
            let written = info.to_string();
            let again = NarInfo::parse(&written)
                .map_err(|e| TestCaseError::fail(format!("re-parse of {written:?}: {e}")))?;
            // References are written sorted, as Nix writes them; their order carries no meaning.
            // A repeated signature is written once.
            let mut info = info;
            info.references.sort();
            let mut sigs = Vec::new();
            for sig in info.signatures.drain(..) {
                if !sigs.contains(&sig) {
                    sigs.push(sig);
                }
            }
            info.signatures = sigs;
            prop_assert_eq!(&again, &info);
            prop_assert_eq!(again.to_string(), written);
        }
        Ok(())
    });
}

#[test]
#[ignore = "fuzzing: run by scripts/fuzz.sh"]
fn fuzz_key_parsers() {
    let secret = SecretKey::generate("fuzz-key-1")
        .unwrap()
        .to_nix_string()
        .to_string();
    let public = SecretKey::parse(&secret).unwrap().to_public().to_string();
    let leaked: &'static str = Box::leak(secret.clone().into_boxed_str());
    let input = prop_oneof![
        any::<String>(),
        "[a-z0-9.-]{0,12}:[A-Za-z0-9+/=]{0,100}",
        mutated_chars(leaked),
        Just(public),
    ];
    fuzz("keys", input, |text| {
        for err in [
            SecretKey::parse(&text).err().map(|e| e.to_string()),
            PublicKey::parse(&text).err().map(|e| e.to_string()),
            Signature::parse(&text).err().map(|e| e.to_string()),
        ]
        .into_iter()
        .flatten()
        {
            // An error names the key, never its bytes.
            if let Some((_, material)) = text.split_once(':') {
                prop_assert!(
                    material.len() < 8 || !err.contains(material),
                    "error {:?} shows the key material of {:?}",
                    err,
                    text
                );
            }
        }
        if let Ok(k) = SecretKey::parse(&text) {
            prop_assert_eq!(
                SecretKey::parse(&k.to_nix_string()).unwrap().to_public(),
                k.to_public()
            );
            let shown = format!("{:?}", k);
            let material = text.split_once(':').map_or("", |x| x.1);
            prop_assert!(!shown.contains(material), "Debug shows the key: {}", shown);
        }
        Ok(())
    });
}

/// Character-level edits of a valid string: flip, cut, insert.
fn mutated_chars(seed: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec((0usize..200, any::<char>(), 0u8..3), 0..4).prop_map(move |edits| {
        let mut c: Vec<char> = seed.chars().collect();
        for (at, ch, kind) in edits {
            let i = at % (c.len() + 1);
            match kind {
                0 if i < c.len() => c[i] = ch,
                1 if i < c.len() => c.truncate(i),
                _ => c.insert(i, ch),
            }
        }
        c.into_iter().collect()
    })
}

fn conf_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(nixbucket::nix::conf::BEGIN.to_owned()),
        Just(nixbucket::nix::conf::END.to_owned()),
        Just("substituters = https://cache.nixos.org".to_owned()),
        Just("extra-substituters = s3://b".to_owned()),
        Just("# a comment".to_owned()),
        Just("!include /etc/nix/other.conf".to_owned()),
        Just(String::new()),
        "[ -~\t]{0,40}",
    ]
}

#[test]
#[ignore = "fuzzing: run by scripts/fuzz.sh"]
fn fuzz_nix_conf_editing() {
    let text = (
        proptest::collection::vec(conf_line(), 0..12),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lines, crlf, final_newline)| {
            let mut t = lines.join(if crlf { "\r\n" } else { "\n" });
            if final_newline {
                t.push('\n');
            }
            t
        });
    let settings = proptest::collection::vec(
        (
            prop_oneof![
                Just("extra-substituters"),
                Just("extra-trusted-public-keys"),
                Just("netrc-file")
            ],
            proptest::collection::vec("[!-~]{1,20}", 1..4),
        ),
        0..3,
    );
    fuzz("nix.conf", (text, settings), |(text, settings)| {
        let Ok(out) = set_managed_block(&text, &settings) else {
            return Ok(());
        };
        // Setting the same block again changes nothing.
        prop_assert_eq!(set_managed_block(&out, &settings).unwrap(), out.clone());
        // Removing our block gives the same text whether or not we had set it before, except
        // for the newline that ends a last line the block was appended to.
        let removed = set_managed_block(&out, &[]).unwrap();
        let original = set_managed_block(&text, &[]).unwrap();
        prop_assert!(
            removed == original || removed == format!("{original}\n"),
            "{:?} became {:?}",
            original,
            removed
        );
        // What we wrote reads back.
        let read = managed_settings(&out).unwrap();
        let names: Vec<&str> = settings.iter().map(|(n, _)| *n).collect();
        for (name, values) in &read {
            prop_assert!(names.contains(&name.as_str()), "{name} in {read:?}");
            prop_assert!(!values.is_empty());
        }
        Ok(())
    });
}

#[test]
#[ignore = "fuzzing: run by scripts/fuzz.sh"]
fn fuzz_cache_url_parser() {
    let param = prop_oneof![
        "(region|endpoint|scheme|profile|compression|secret-key|priority|regoin|x)=[ -~]{0,20}",
        "[ -~]{0,12}",
    ];
    let structured = (
        prop_oneof![
            Just("s3://"),
            Just("file://"),
            Just("file:///"),
            Just("http://"),
            Just("")
        ],
        "[ -~]{0,20}",
        proptest::collection::vec(param, 0..4),
    )
        .prop_map(|(scheme, rest, params)| {
            let mut u = format!("{scheme}{rest}");
            if !params.is_empty() {
                u.push('?');
                u.push_str(&params.join("&"));
            }
            u
        });
    let input = prop_oneof![any::<String>(), structured];
    fuzz("cache URL", input, |text| {
        if let Ok(url) = text.parse::<CacheUrl>() {
            // The canonical form parses back to the same URL.
            let shown = url.to_string();
            let again: CacheUrl = shown
                .parse()
                .map_err(|e| TestCaseError::fail(format!("{text:?} -> {shown:?}: {e}")))?;
            prop_assert_eq!(again, url);
        }
        Ok(())
    });
}
