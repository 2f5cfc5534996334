//! moto's S3 server for tests: AWS's behaviour and AWS's own error codes (NoSuchUpload,
//! InvalidAccessKeyId, PreconditionFailed…), on a free 127.0.0.1 port, one per test, in memory.
//!
//! The test bucket has a policy that lets anyone read objects, as a public cache would, so
//! that Nix substitutes from it over plain HTTP. [`MotoServer::start_with_auth`] makes moto check
//! every request against IAM as AWS does, with keys it issued; without it moto takes any keys.
//!
//! A missing `moto_server` is a loud failure, never a skip: install it with
//! scripts/install-deps.sh.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::s3::{free_port, register_secret};
use super::store::{Admin, REGION, S3Kind, S3Store};

/// What a read-only key may do: read objects and list, nothing else. moto names the
/// permissions of HEAD requests `s3:HeadObject` and `s3:HeadBucket`, where AWS counts them as
/// `s3:GetObject` and `s3:ListBucket`.
const READ_ONLY: &[&str] = &[
    "s3:GetObject",
    "s3:HeadObject",
    "s3:ListBucket",
    "s3:HeadBucket",
];

pub struct MotoServer {
    logs: tempfile::TempDir,
    port: u16,
    bucket: String,
    access_key: String,
    secret_key: String,
    /// With [`MotoServer::start_with_auth`]: keys that may only read.
    reader: Option<(String, String)>,
    /// With [`MotoServer::start_with_auth`]: keys that may do anything in any service.
    admin: Option<(String, String)>,
    /// With [`MotoServer::start_with_auth_and`]: the keys of further users, by name.
    users: Vec<(String, (String, String))>,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("moto_server"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "moto_server not found (not on PATH, MOTO_SERVER unset): the moto tests need it. \
                 Run scripts/install-deps.sh or `pip install 'moto[server]'`"
            )
        })
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("getrandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Anyone may read objects of `bucket` (both names of the permission, see [`READ_ONLY`]).
fn public_read_policy(bucket: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":["s3:GetObject","s3:HeadObject"],"Resource":"arn:aws:s3:::{bucket}/*"}}]}}"#
    )
}

fn policy_allowing(actions: &[&str]) -> String {
    let actions: Vec<String> = actions.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":[{}],"Resource":"*"}}]}}"#,
        actions.join(",")
    )
}

/// The text between `<tag>` and `</tag>` in an XML answer.
fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].to_owned())
}

impl MotoServer {
    /// A server that takes any keys, with the test bucket in it.
    pub fn start() -> MotoServer {
        let access_key = format!("AKTEST{}", random_hex().to_uppercase());
        let secret_key = format!("secret-{}", random_hex());
        register_secret(&secret_key);
        let s = MotoServer::spawn_on_free_port(access_key, secret_key);
        s.create_bucket(&s.bucket.clone());
        s
    }

    /// A server that checks every request as AWS does: signed by a key its IAM issued, and
    /// allowed by that key's policy. `access_key()` may do anything in S3; `reader()` may
    /// only read. Anonymous reads are refused here (nothing is set up for them).
    pub fn start_with_auth() -> MotoServer {
        MotoServer::start_with_auth_and(&[])
    }

    /// [`MotoServer::start_with_auth`], with IAM users of these names allowed these actions
    /// (keys by [`MotoServer::keys_of`]).
    pub fn start_with_auth_and(users: &[(&str, &[&str])]) -> MotoServer {
        // Keys for the setup requests below, which moto does not check yet.
        let mut s = MotoServer::spawn_on_free_port("AKSETUP".into(), "setup".into());
        s.admin().create_bucket(&s.bucket);
        (s.access_key, s.secret_key) = s.iam_user("nixbucket-writer", &["s3:*"]);
        s.reader = Some(s.iam_user("nixbucket-reader", READ_ONLY));
        s.admin = Some(s.iam_user("nixbucket-admin", &["*"]));
        for (name, actions) in users {
            let keys = s.iam_user(name, actions);
            s.users.push(((*name).to_owned(), keys));
        }
        // From the next request on, moto checks them all.
        s.moto_api("reset-auth", "0");
        s
    }

    /// The keys of [`MotoServer::start_with_auth`] that may do anything, in every service
    /// (IAM, STS, SSM as well as S3): an account's administrator.
    pub fn admin_keys(&self) -> (&str, &str) {
        let (k, s) = self.admin.as_ref().expect("a server started with auth");
        (k, s)
    }

    /// Lets the next request through without checking it, then checks again. For requests
    /// that AWS takes unsigned and moto does not (AssumeRoleWithWebIdentity: moto answers an
    /// unsigned query-protocol request with HTTP 500 once it checks signatures).
    pub fn let_the_next_request_through(&self) {
        self.moto_api("reset-auth", "1");
    }

    /// The keys of a user of [`MotoServer::start_with_auth_and`].
    pub fn keys_of(&self, name: &str) -> (&str, &str) {
        let (_, (k, s)) = self
            .users
            .iter()
            .find(|(n, _)| n == name)
            .expect("a user made at the start");
        (k, s)
    }

    /// The read-only keys of [`MotoServer::start_with_auth`].
    pub fn reader(&self) -> (&str, &str) {
        let (k, s) = self.reader.as_ref().expect("a server started with auth");
        (k, s)
    }

    fn spawn_on_free_port(access_key: String, secret_key: String) -> MotoServer {
        let logs = tempfile::tempdir().expect("temp dir for moto's log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn(&logs.path().join(format!("moto-{port}.log")), port) {
                Ok(child) => {
                    return MotoServer {
                        logs,
                        port,
                        bucket: "nixbucket-test".to_owned(),
                        access_key,
                        secret_key,
                        reader: None,
                        admin: None,
                        users: Vec::new(),
                        child: Some(child),
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("moto_server did not start: {last}");
    }

    /// A POST to moto's own control API (`/moto-api/NAME`), which takes a plain-text body.
    fn moto_api(&self, name: &str, body: &str) -> String {
        let answer = self.http_post(&format!("/moto-api/{name}"), "text/plain", &[], body);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "moto-api/{name}: {answer}"
        );
        answer
    }

    /// An IAM user with an access key and an inline policy allowing `actions`: its keys.
    fn iam_user(&self, name: &str, actions: &[&str]) -> (String, String) {
        let policy = policy_allowing(actions);
        self.iam(&[("Action", "CreateUser"), ("UserName", name)]);
        let answer = self.iam(&[("Action", "CreateAccessKey"), ("UserName", name)]);
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "nixbucket-test"),
            ("PolicyDocument", &policy),
        ]);
        let key = xml_field(&answer, "AccessKeyId").expect(&answer);
        let secret = xml_field(&answer, "SecretAccessKey").expect(&answer);
        register_secret(&secret);
        (key, secret)
    }

    /// One IAM query-API call, before moto checks signatures: the Authorization header only
    /// tells moto which service the request is for.
    fn iam(&self, params: &[(&str, &str)]) -> String {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .append_pair("Version", "2010-05-08")
            .finish();
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKSETUP/20260101/{REGION}/iam/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        let answer = self.http_post(
            "/",
            "application/x-www-form-urlencoded",
            &[("Authorization", &auth)],
            &body,
        );
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "IAM {params:?}: {answer}"
        );
        answer
    }

    fn http_post(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).expect("send to moto");
        s.write_all(body.as_bytes()).expect("send to moto");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read moto's answer");
        answer
    }

    fn log_path(&self) -> PathBuf {
        self.logs.path().join(format!("moto-{}.log", self.port))
    }
}

/// Starts moto_server on `port` and waits until it accepts connections.
fn spawn(log_path: &Path, port: u16) -> Result<Child, String> {
    let log = std::fs::File::create(log_path).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(binary())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("AWS_DEFAULT_REGION", REGION)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run moto_server ({}): {e}", binary().display()));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(format!(
                "moto_server on port {port} exited with {status}: {log}"
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(format!(
                "moto_server on port {port} did not answer within 30s: {log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl S3Store for MotoServer {
    fn kind(&self) -> S3Kind {
        S3Kind::Moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn access_key(&self) -> &str {
        &self.access_key
    }

    fn secret_key(&self) -> &str {
        &self.secret_key
    }

    fn anon_http_url_for(&self, bucket: &str) -> String {
        format!("{}/{bucket}", self.endpoint())
    }

    fn create_bucket(&self, name: &str) {
        let admin: Admin = self.admin();
        admin.create_bucket(name);
        admin.put_bucket_policy(name, &public_read_policy(name));
    }

    fn pending_uploads(&self) -> Vec<String> {
        let admin = self.admin();
        let mut all: Vec<String> = admin
            .buckets()
            .iter()
            .flat_map(|b| {
                admin
                    .uploads(b)
                    .into_iter()
                    .map(move |(key, id)| format!("{b}/{key} (upload {id})"))
            })
            .collect();
        all.sort();
        all
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Everything moto held goes with it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
    }
}
