//! The blocking face: the async [`Client`] run on a private current-thread runtime.

use crate::asynchronous::{ContentInfo, Download};
use crate::{Client, Config, Error, Result};
use bytes::Bytes;
use clusterware_shared::api::{FileRecord, ImportOptions, ImportReport};
use std::future::Future;
use std::io::{Read, Write};

/// How much an upload reads from its source at a time.
const CHUNK: usize = 256 << 10;

/// A blocking client of one head's API: every call of [`Client`], waiting for its answer.
/// Not for use inside a tokio runtime (it runs its own).
pub struct BlockingClient {
    // Dropped before the runtime its connections live on.
    inner: Client,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingClient").field("base", &self.inner.base()).finish_non_exhaustive()
    }
}

impl BlockingClient {
    pub fn new(cfg: Config) -> Result<BlockingClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::Setup(format!("cannot set up the HTTP client: {e}")))?;
        let inner = {
            let _in = rt.enter();
            // A connection kept between two blocking calls is not polled in between.
            Client::build(cfg, false)?
        };
        Ok(BlockingClient { inner, rt })
    }

    /// The async client underneath.
    pub fn inner(&self) -> &Client {
        &self.inner
    }

    /// The head's base URL (`http://HOST:PORT`).
    pub fn base(&self) -> &str {
        self.inner.base()
    }

    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// [`Client::raw`]: any request, for tests of malformed and hostile input.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        self.block_on(self.inner.raw(method, path, token, body))
    }

    /// [`Client::file_content_info`].
    pub fn file_content_info(&self, id: &str, peer: bool) -> Result<ContentInfo> {
        self.block_on(self.inner.file_content_info(id, peer))
    }

    /// [`Client::upload_file`]: `size` bytes read from `reader` (streamed, with that
    /// `Content-Length`).
    pub fn upload_file(
        &self,
        name: &str,
        kind: &str,
        size: u64,
        sha256: Option<&str>,
        reader: &mut dyn Read,
    ) -> Result<FileRecord> {
        self.send_reader(reader, |body| self.inner.upload_file(name, kind, size, sha256, body))
    }

    /// [`Client::import`]: an archive of `len` bytes read from `reader`.
    pub fn import(&self, o: &ImportOptions, len: u64, reader: &mut dyn Read) -> Result<ImportReport> {
        self.send_reader(reader, |body| self.inner.import(o, len, body))
    }

    /// [`Client::export_boot_config`] written to `out`; `progress` gets the bytes so far and
    /// the total when known. Answers the bytes written (the caller flushes and syncs).
    pub fn export_boot_config(
        &self,
        name: &str,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<u64> {
        self.receive(self.inner.export_boot_config(name), out, progress)
    }

    /// [`Client::file_content`] written to `out`, as [`BlockingClient::export_boot_config`].
    pub fn download_file(
        &self,
        id: &str,
        peer: bool,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<u64> {
        self.receive(self.inner.file_content(id, peer), out, progress)
    }

    /// Runs `call` with a body fed from `reader` on the same thread: reads happen as the HTTP
    /// stack takes chunks (a few chunks ahead), so memory stays small whatever the size.
    fn send_reader<T, F, Fut>(&self, reader: &mut dyn Read, call: F) -> Result<T>
    where
        F: FnOnce(BodyStream) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let body: BodyStream =
            Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }));
        self.block_on(async {
            let call = call(body);
            let feed = feed(reader, tx);
            tokio::pin!(call, feed);
            let mut feeding = true;
            let mut read_error = None;
            let r = loop {
                tokio::select! {
                    r = &mut call => break r,
                    f = &mut feed, if feeding => {
                        feeding = false;
                        read_error = f.err();
                    }
                }
            };
            match read_error {
                // The request failed because its source did: say that.
                Some(source) => Err(Error::Local { what: "cannot read the data to send".into(), source }),
                None => r,
            }
        })
    }

    fn receive(
        &self,
        start: impl Future<Output = Result<Download>>,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<u64> {
        self.block_on(async {
            let mut d = start.await?;
            let total = d.content_length();
            let mut n = 0u64;
            while let Some(c) = d.chunk().await? {
                out.write_all(&c)
                    .map_err(|source| Error::Local { what: "cannot write the download".into(), source })?;
                n += c.len() as u64;
                progress(n, total);
            }
            out.flush().map_err(|source| Error::Local { what: "cannot write the download".into(), source })?;
            Ok(n)
        })
    }
}

type BodyStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Reads `reader` to its end into `tx`; a read error is sent too (it aborts the request) and
/// returned. Stops early, without error, when the request no longer takes the body.
async fn feed(reader: &mut dyn Read, tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> std::io::Result<()> {
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = loop {
            match reader.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string()))).await;
                    return Err(e);
                }
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
            return Ok(());
        }
    }
}
