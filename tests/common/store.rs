//! The S3 servers the suite runs on, behind one face: s3s-fs (a directory served over S3, see
//! `s3.rs`) and moto (AWS's own behaviour and error codes, in memory, see `moto.rs`). A test of
//! behaviour that AWS decides takes an [`S3Kind`] and runs on both; what it checks in a bucket
//! it reads through the S3 API ([`Admin`]), so that the check means the same on either.
#![allow(dead_code)]

use std::future::Future;
use std::time::SystemTime;

use aws_sdk_s3::Client;

use super::moto::MotoServer;
use super::s3::S3Server;

/// The region every test bucket is in, and every client signs for.
pub const REGION: &str = "us-east-1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Kind {
    S3sFs,
    Moto,
}

impl S3Kind {
    /// A fresh server of this kind with the test bucket in it, readable anonymously.
    pub fn start(self) -> Box<dyn S3Store> {
        match self {
            S3Kind::S3sFs => Box::new(S3Server::start()),
            S3Kind::Moto => Box::new(MotoServer::start()),
        }
    }
}

/// One running S3 server with a test bucket, stopped when dropped.
pub trait S3Store {
    fn kind(&self) -> S3Kind;
    /// `http://127.0.0.1:PORT`, where signed requests go.
    fn endpoint(&self) -> String;
    fn bucket(&self) -> &str;
    fn access_key(&self) -> &str;
    fn secret_key(&self) -> &str;
    /// The bucket over plain anonymous HTTP, as a substituter: `nix copy --from <this>`.
    fn anon_http_url_for(&self, bucket: &str) -> String;
    /// A new empty bucket, readable like the test bucket.
    fn create_bucket(&self, name: &str);
    /// Multipart uploads started and neither completed nor aborted, in every bucket.
    fn pending_uploads(&self) -> Vec<String>;
    /// The server's log so far (for assertion messages).
    fn log(&self) -> String;
    /// Stops the server that signed requests go to, as a crash would.
    fn kill(&mut self);

    fn region(&self) -> &str {
        REGION
    }

    /// A cache URL for nixbucket and for Nix's own s3:// store.
    fn cache_url(&self) -> String {
        self.cache_url_for(self.bucket())
    }

    fn cache_url_for(&self, bucket: &str) -> String {
        self.cache_url_via(&self.endpoint(), bucket)
    }

    /// The cache URL of `bucket` reached through another endpoint (a fault proxy in front).
    fn cache_url_via(&self, endpoint: &str, bucket: &str) -> String {
        format!("s3://{bucket}?endpoint={endpoint}&region={REGION}")
    }

    fn anon_http_url(&self) -> String {
        self.anon_http_url_for(self.bucket())
    }

    /// Environment for a child process (nixbucket, nix) to reach the bucket with the test keys.
    /// IMDS is disabled so that nothing waits on a metadata service that is not there.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key()),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// A plain SDK client with the test keys, to look into the server's buckets.
    fn admin(&self) -> Admin {
        Admin {
            endpoint: self.endpoint(),
            access_key: self.access_key().to_owned(),
            secret_key: self.secret_key().to_owned(),
        }
    }
}

/// What HeadObject says of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    /// `x-amz-storage-class`, which stores send for classes other than STANDARD.
    pub storage_class: Option<String>,
}

/// A blocking S3 client independent of the code under test: each call runs on a thread and
/// runtime of its own, so it works from plain and from async tests alike. Panics on any error
/// but "not there", which it returns as `None`.
pub struct Admin {
    endpoint: String,
    access_key: String,
    secret_key: String,
}

impl Admin {
    fn client(&self) -> Client {
        let creds = aws_credential_types::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "test-admin",
        );
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        Client::from_conf(conf)
    }

    /// Runs `call` with a fresh client on a thread of its own, to completion.
    pub fn call<T, F>(&self, call: impl FnOnce(Client) -> F + Send) -> T
    where
        T: Send,
        F: Future<Output = T>,
    {
        let client = self.client();
        std::thread::scope(|s| {
            s.spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the admin client")
                    .block_on(call(client))
            })
            .join()
            .expect("the admin client's thread panicked")
        })
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.call(|c| async move { c.create_bucket().bucket(bucket).send().await })
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    }

    pub fn put_bucket_policy(&self, bucket: &str, policy: &str) {
        self.call(|c| async move {
            c.put_bucket_policy()
                .bucket(bucket)
                .policy(policy)
                .send()
                .await
        })
        .unwrap_or_else(|e| panic!("put the policy of {bucket}: {e:?}"));
    }

    /// An object's bytes, `None` if there is none under the key.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.call(|c| async move {
            match c.get_object().bucket(bucket).key(key).send().await {
                Ok(out) => Some(out.body.collect().await.map(|b| b.to_vec())),
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => None,
                Err(e) => panic!("get {bucket}/{key}: {e:?}"),
            }
        })
        .map(|body| body.unwrap_or_else(|e| panic!("read {bucket}/{key}: {e:?}")))
    }

    pub fn head(&self, bucket: &str, key: &str) -> Option<Head> {
        self.call(|c| async move {
            match c.head_object().bucket(bucket).key(key).send().await {
                Ok(out) => Some(Head {
                    size: out.content_length().unwrap_or(0) as u64,
                    etag: out.e_tag().unwrap_or_default().to_owned(),
                    last_modified: out
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                    storage_class: out.storage_class().map(|c| c.as_str().to_owned()),
                }),
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => None,
                Err(e) => panic!("head {bucket}/{key}: {e:?}"),
            }
        })
    }

    /// Every key under `prefix`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = self.call(|c| async move {
            let mut keys = Vec::new();
            let mut pages = c
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.unwrap_or_else(|e| panic!("list {bucket}/{prefix}: {e:?}"));
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .map(str::to_owned),
                );
            }
            keys
        });
        keys.sort();
        keys
    }

    pub fn put(&self, bucket: &str, key: &str, body: &'static [u8]) {
        self.call(|c| async move {
            c.put_object()
                .bucket(bucket)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from_static(body))
                .send()
                .await
        })
        .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.call(|c| async move { c.delete_object().bucket(bucket).key(key).send().await })
            .unwrap_or_else(|e| panic!("delete {bucket}/{key}: {e:?}"));
    }

    pub fn buckets(&self) -> Vec<String> {
        self.call(|c| async move { c.list_buckets().send().await })
            .unwrap_or_else(|e| panic!("list buckets: {e:?}"))
            .buckets()
            .iter()
            .filter_map(|b| b.name())
            .map(str::to_owned)
            .collect()
    }

    /// Open multipart uploads of a bucket as (key, upload id), by ListMultipartUploads.
    pub fn uploads(&self, bucket: &str) -> Vec<(String, String)> {
        self.call(|c| async move { c.list_multipart_uploads().bucket(bucket).send().await })
            .unwrap_or_else(|e| panic!("list the uploads of {bucket}: {e:?}"))
            .uploads()
            .iter()
            .map(|u| {
                let key = u.key().unwrap_or_default().to_owned();
                (key, u.upload_id().unwrap_or_default().to_owned())
            })
            .collect()
    }

    pub fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) {
        self.call(|c| async move {
            c.abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
        })
        .unwrap_or_else(|e| panic!("abort {upload_id} of {bucket}/{key}: {e:?}"));
    }
}
