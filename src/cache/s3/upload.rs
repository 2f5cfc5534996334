//! Streaming uploads: PutObject for an object that fits in one part, else a multipart upload
//! whose parts are filled by the blocking writer ([`S3Writer`]) and sent by one async task,
//! at most `parts_in_flight` at a time. A full part waits for a place in the cache's part
//! budget before it is handed over, and keeps it until its UploadPart is done, so memory stays
//! bounded whatever the object size and however many objects upload at once.

use super::*;

pub(super) enum Chunk {
    /// A full part, with its place in the part budget; more follow.
    Part(Bytes, OwnedSemaphorePermit),
    /// The end of the object (possibly empty): commit; with `true`, only if no object is
    /// under the key by then.
    Last(Bytes, bool),
}

/// The async half of a streaming upload.
pub(super) struct Upload {
    ctx: Arc<Ctx>,
    key: String,
    content_type: String,
    parts_in_flight: usize,
}

impl Upload {
    pub(super) fn interrupted(&self, detail: &str) -> CacheError {
        CacheError::UploadInterrupted {
            key: self.key.clone(),
            detail: detail.to_owned(),
        }
    }

    /// The object's size once committed, or `None` if committing only if absent found an
    /// object under the key (then nothing of this upload remains).
    pub(super) async fn run(
        self,
        mut rx: mpsc::Receiver<Chunk>,
    ) -> Result<Option<u64>, CacheError> {
        let first = match rx.recv().await {
            None => return Err(self.interrupted("aborted before commit")),
            Some(Chunk::Last(body, if_absent)) => {
                // The whole object fit in one part: a single PutObject, no multipart state.
                let size = body.len() as u64;
                if if_absent {
                    let (ctx, key, ct) = (&self.ctx, &self.key, &self.content_type);
                    let wrote = ctx.put_if_absent(key, body, ct).await?;
                    return Ok(wrote.then_some(size));
                }
                self.ctx.put(&self.key, body, &self.content_type).await?;
                return Ok(Some(size));
            }
            Some(part) => part,
        };
        let ctx = &self.ctx;
        let created = ctx
            .client
            .create_multipart_upload()
            .bucket(&ctx.bucket)
            .key(&self.key)
            .content_type(&self.content_type)
            .set_storage_class(ctx.storage_class.clone())
            .send()
            .await
            .map_err(|e| ctx.error("CreateMultipartUpload", &self.key, e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(ctx.missing("CreateMultipartUpload", &self.key, "upload id"));
        };
        let mut inflight = JoinSet::new();
        let result = match self.parts(upload_id, first, &mut rx, &mut inflight).await {
            Ok((parts, size, if_absent)) => {
                let done = self.complete(upload_id, parts, size, if_absent).await;
                done.map(|landed| landed.then_some(size))
            }
            Err(e) => Err(e),
        };
        // Parts of an upload that did not become the object are billed until aborted.
        if !matches!(result, Ok(Some(_))) {
            // No part may land after the abort, or it would linger as billed storage. A part
            // request merely dropped may still be written by the store after the abort (S3
            // documents this), so parts in flight get a moment to finish first.
            let drain = async { while inflight.join_next().await.is_some() {} };
            if tokio::time::timeout(PART_DRAIN_TIMEOUT, drain)
                .await
                .is_err()
            {
                inflight.shutdown().await;
            }
            let _ = ctx
                .client
                .abort_multipart_upload()
                .bucket(&ctx.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .send()
                .await;
        }
        result
    }

    /// Uploads parts as they arrive, at most `parts_in_flight` at a time, until `Last`.
    pub(super) async fn parts(
        &self,
        upload_id: &str,
        first: Chunk,
        rx: &mut mpsc::Receiver<Chunk>,
        inflight: &mut JoinSet<Result<CompletedPart, CacheError>>,
    ) -> Result<(Vec<CompletedPart>, u64, bool), CacheError> {
        let mut done = Vec::new();
        let mut number = 0i32;
        let mut size = 0u64;
        let mut next = Some(first);
        let joined = |r: Option<
            Result<Result<CompletedPart, CacheError>, tokio::task::JoinError>,
        >| {
            match r {
                Some(Ok(r)) => r.map(Some),
                Some(Err(e)) => Err(self.interrupted(&format!("part upload task failed: {e}"))),
                None => Ok(None),
            }
        };
        loop {
            let chunk = match next.take() {
                Some(c) => Some(c),
                None if inflight.len() >= self.parts_in_flight => {
                    done.extend(joined(inflight.join_next().await)?);
                    continue;
                }
                None => tokio::select! {
                    // Notice a failed part at once rather than after the next one is read.
                    Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                        done.extend(joined(Some(r))?);
                        continue;
                    }
                    c = rx.recv() => c,
                },
            };
            let (body, place, last) = match chunk {
                None => return Err(self.interrupted("aborted before commit")),
                Some(Chunk::Part(b, place)) => (b, Some(place), None),
                Some(Chunk::Last(b, if_absent)) => (b, None, Some(if_absent)),
            };
            if !body.is_empty() {
                number += 1;
                if number > MAX_PARTS {
                    return Err(self.interrupted(&format!(
                        "the object needs more than {MAX_PARTS} parts; use a larger part size"
                    )));
                }
                size += body.len() as u64;
                let part = self.ctx.clone().upload_part(
                    self.key.clone(),
                    upload_id.to_owned(),
                    number,
                    body,
                );
                inflight.spawn(async move {
                    let sent = part.await;
                    drop(place);
                    sent
                });
            }
            if let Some(if_absent) = last {
                while let Some(r) = joined(inflight.join_next().await)? {
                    done.push(r);
                }
                done.sort_by_key(|p| p.part_number());
                return Ok((done, size, if_absent));
            }
        }
    }

    /// `true`: the upload became the object; `false`: `if_absent`, and an object was there.
    pub(super) async fn complete(
        &self,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        size: u64,
        if_absent: bool,
    ) -> Result<bool, CacheError> {
        let ctx = &self.ctx;
        let mut conditional =
            if_absent && self.ctx.features.conditional_writes.load(Ordering::Relaxed);
        let send = |condition: Option<&str>| {
            ctx.client
                .complete_multipart_upload()
                .bucket(&ctx.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .set_if_none_match(condition.map(str::to_owned))
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts.clone()))
                        .build(),
                )
                .send()
        };
        let res = loop {
            if if_absent && !conditional && ctx.head(&self.key).await?.is_some() {
                // The store cannot complete-if-absent; the HEAD is racy but never replaces an
                // object that was there before.
                return Ok(false);
            }
            match send(conditional.then_some("*")).await {
                Err(e) if conditional && feature_refused(&e) => {
                    self.ctx
                        .features
                        .conditional_writes
                        .store(false, Ordering::Relaxed);
                    conditional = false;
                }
                res => break res,
            }
        };
        match res {
            Ok(_) => Ok(true),
            // An object was there, or is being written by another conditional write (409); or
            // this upload's own completion landed and its answer was lost. Either way the
            // object there describes itself (HEAD).
            Err(e) if conditional && (is_status(&e, 412) || is_status(&e, 409)) => Ok(false),
            // A retry after an attempt that did complete but whose answer was lost, or that is
            // still completing: the upload is gone because it became the object. S3 says
            // NoSuchUpload; s3s-fs says AccessDenied for an upload id it no longer knows.
            Err(e) if matches!(e.code(), Some("NoSuchUpload" | "AccessDenied")) => {
                self.after_vanished_upload(size, if_absent, e.code().unwrap_or_default())
                    .await
            }
            Err(e) => Err(ctx.error("CompleteMultipartUpload", &self.key, e)),
        }
    }

    /// The store no longer knows an upload whose completion we sent. An object of the right
    /// size is taken to be this upload (another push's bytes for the same NAR name almost never
    /// have the same size); of another size, and committing only if absent, it is another's.
    /// An attempt still completing may not show its object yet, so it is looked for again
    /// with backoff. Never a credentials error: the credentials just did the upload.
    pub(super) async fn after_vanished_upload(
        &self,
        size: u64,
        if_absent: bool,
        code: &str,
    ) -> Result<bool, CacheError> {
        let ctx = &self.ctx;
        let mut wait = INITIAL_BACKOFF;
        for look in 0..VANISHED_UPLOAD_LOOKS {
            if look > 0 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            match ctx.head(&self.key).await?.map(|o| o.size) {
                Some(found) if found == size => return Ok(true),
                Some(_) if if_absent => return Ok(false),
                _ => {}
            }
        }
        Err(CacheError::S3 {
            operation: "CompleteMultipartUpload",
            bucket: ctx.bucket.clone(),
            key: self.key.clone(),
            code: code.to_owned(),
            message: "the store no longer knows this upload, and no object of its size \
                      appeared under its name"
                .to_owned(),
        })
    }
}

impl Ctx {
    /// Sends part `number` of the upload `upload_id` of `key`.
    async fn upload_part(
        self: Arc<Ctx>,
        key: String,
        upload_id: String,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, CacheError> {
        let ctx = self;
        let out = ctx
            .client
            .upload_part()
            .bucket(&ctx.bucket)
            .key(&key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| ctx.error("UploadPart", &key, e))?;
        let Some(etag) = out.e_tag() else {
            return Err(ctx.missing("UploadPart", &key, "ETag"));
        };
        Ok(CompletedPart::builder()
            .part_number(number)
            .e_tag(etag)
            .build())
    }
}

/// The blocking half of a streaming upload: fills one part buffer at a time.
pub(crate) struct S3Writer {
    key: String,
    buf: Vec<u8>,
    part_size: usize,
    /// Places for full parts, shared by every upload to the cache.
    budget: Arc<Semaphore>,
    size: u64,
    tx: Option<mpsc::Sender<Chunk>>,
    done: Option<oneshot::Receiver<Result<Option<u64>, CacheError>>>,
    /// The upload's own error once it failed; `commit` returns it.
    failed: Option<CacheError>,
}

impl S3Writer {
    /// Starts the async half of an upload of `key` on the current runtime; the writer fails
    /// if there is none.
    pub(super) fn start(
        ctx: Arc<Ctx>,
        key: &str,
        content_type: &str,
        (part_size, parts_in_flight): (usize, usize),
        budget: Arc<Semaphore>,
    ) -> S3Writer {
        let handle = match Handle::try_current() {
            Ok(h) => h,
            Err(_) => {
                let err = CacheError::UploadInterrupted {
                    key: key.to_owned(),
                    detail: "Cache::writer was called outside a tokio runtime".into(),
                };
                return S3Writer::failed(err, budget);
            }
        };
        let (tx, rx) = mpsc::channel(1);
        let (done_tx, done_rx) = oneshot::channel();
        let upload = Upload {
            ctx,
            key: key.to_owned(),
            content_type: content_type.to_owned(),
            parts_in_flight,
        };
        handle.spawn(async move {
            let _ = done_tx.send(upload.run(rx).await);
        });
        S3Writer {
            key: key.to_owned(),
            buf: Vec::new(),
            part_size,
            budget,
            size: 0,
            tx: Some(tx),
            done: Some(done_rx),
            failed: None,
        }
    }

    pub(super) fn failed(err: CacheError, budget: Arc<Semaphore>) -> S3Writer {
        S3Writer {
            key: String::new(),
            buf: Vec::new(),
            part_size: MIN_PART_SIZE,
            budget,
            size: 0,
            tx: None,
            done: None,
            failed: Some(err),
        }
    }

    /// Waits for the async half to finish and returns its verdict.
    pub(super) fn wait(&mut self) -> Result<Option<u64>, CacheError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let interrupted = |detail: &str| CacheError::UploadInterrupted {
            key: self.key.clone(),
            detail: detail.to_owned(),
        };
        match self.done.take() {
            Some(rx) => match rx.blocking_recv() {
                Ok(r) => r,
                Err(_) => Err(interrupted("the runtime shut down during the upload")),
            },
            None => Err(interrupted("upload already finished")),
        }
    }

    /// Hands a chunk to the async half. `false`: it has stopped, and `self.failed` says why.
    pub(super) fn send(&mut self, chunk: Chunk) -> bool {
        if let Some(tx) = &self.tx
            && tx.blocking_send(chunk).is_ok()
        {
            return true;
        }
        self.tx = None;
        if self.failed.is_none() {
            self.failed = Some(match self.wait() {
                Err(e) => e,
                Ok(_) => CacheError::UploadInterrupted {
                    key: self.key.clone(),
                    detail: "the upload ended before all data was written".into(),
                },
            });
        }
        false
    }

    pub(super) fn failure(&mut self) -> CacheError {
        self.failed
            .take()
            .unwrap_or_else(|| CacheError::UploadInterrupted {
                key: self.key.clone(),
                detail: "the upload failed".into(),
            })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.to_string()));
        }
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sent only once more data arrives, so an object of exactly one
        // part still goes up as a single PutObject.
        if self.buf.len() >= self.part_size {
            // Waiting here holds no place, and every place held is released by an UploadPart
            // that needs nothing else to finish: no two writers can wait on each other.
            let place = futures::executor::block_on(self.budget.clone().acquire_owned())
                .expect("the part budget is never closed");
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
            if !self.send(Chunk::Part(Bytes::from(full), place)) {
                let text = self.failed.as_ref().map(ToString::to_string);
                return Err(std::io::Error::other(text.unwrap_or_default()));
            }
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.part_size);
        }
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        Ok(n)
    }

    /// Makes the object visible: its size, or `None` when `if_absent` found one there.
    pub(crate) fn commit(mut self, if_absent: bool) -> Result<Option<u64>, CacheError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let last = Bytes::from(std::mem::take(&mut self.buf));
        if !self.send(Chunk::Last(last, if_absent)) {
            return Err(self.failure());
        }
        self.tx = None;
        let size = self.wait()?;
        debug_assert!(size.is_none_or(|s| s == self.size));
        Ok(size)
    }

    pub(crate) fn abort(mut self) {
        self.tx = None;
        if self.done.is_some() {
            let _ = self.wait();
        }
    }
}
