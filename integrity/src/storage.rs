//! Where export files land: `local` (the `export_dir`) or a named
//! S3-compatible destination (`exports.destinations.<name>`).
//!
//! Either way a file only appears when whole: locally it is written under a
//! temporary name, fsync'd and renamed; in a bucket it is a multipart upload,
//! which the store shows only once completed (a failed upload is aborted).
//! The manifest is written after the file, so a manifest always describes a
//! complete file. Uploads abandoned by a killed process are invisible parts
//! that the bucket's `AbortIncompleteMultipartUpload` lifecycle rule removes.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::Context;
use auditline_shared::settings::{ExportSettings, S3Destination};
use bytes::Bytes;
use futures_util::{StreamExt, stream::BoxStream};
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, aws::AmazonS3Builder, path::Path,
};
use tokio::io::AsyncWriteExt;

/// The name of the export directory as a destination.
pub const LOCAL: &str = "local";

/// Bytes a multipart upload sends per part (S3 wants at least 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight at once: memory stays under `PART_BYTES` times this.
const PARTS_IN_FLIGHT: usize = 2;

/// Every destination an export can be written to.
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
    buckets: BTreeMap<String, Bucket>,
}

#[derive(Debug, Clone)]
struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl Bucket {
    fn path(&self, file: &str) -> Path {
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            Path::from(file)
        } else {
            Path::from(format!("{prefix}/{file}"))
        }
    }
}

/// Makes TLS (for `https://` buckets) use the ring provider; once per process.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when the process already chose a provider: fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn bucket(name: &str, settings: &S3Destination) -> anyhow::Result<Bucket> {
    install_tls_provider();
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&settings.bucket)
        .with_region(&settings.region)
        .with_allow_http(settings.allow_http);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(key) = &settings.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &settings.secret_access_key {
        builder = builder.with_secret_access_key(secret.expose());
    }
    let store = builder
        .build()
        .with_context(|| format!("export destination {name:?}"))?;
    Ok(Bucket {
        store: Arc::new(store),
        prefix: settings.prefix.clone(),
    })
}

impl Storage {
    pub fn new(dir: PathBuf, settings: &ExportSettings) -> anyhow::Result<Self> {
        let buckets = settings
            .destinations
            .iter()
            .map(|(name, destination)| Ok((name.clone(), bucket(name, destination)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { dir, buckets })
    }

    /// The export directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether `name` is a destination; the error lists the known ones.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if name == LOCAL || self.buckets.contains_key(name) {
            return Ok(());
        }
        let known: Vec<String> = std::iter::once(LOCAL)
            .chain(self.buckets.keys().map(String::as_str))
            .map(|n| format!("{n:?}"))
            .collect();
        Err(format!(
            "{name:?} is not a configured destination (known: {})",
            known.join(", ")
        ))
    }

    fn bucket(&self, name: &str) -> anyhow::Result<Option<&Bucket>> {
        if name == LOCAL {
            return Ok(None);
        }
        match self.buckets.get(name) {
            Some(bucket) => Ok(Some(bucket)),
            None => Err(anyhow::anyhow!(self.check(name).err().unwrap_or_default())),
        }
    }

    /// Starts writing `file` (attempt `attempt`, so a retry never shares a
    /// temporary name with a dead one's leftovers).
    pub async fn create(
        &self,
        destination: &str,
        file: &str,
        attempt: i32,
    ) -> anyhow::Result<Upload> {
        match self.bucket(destination)? {
            None => {
                let dir = self.dir.clone();
                self.remove_partials(file).await;
                tokio::fs::create_dir_all(&dir)
                    .await
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let partial = dir.join(format!(".{file}.{attempt}.partial"));
                let out = tokio::fs::File::create(&partial)
                    .await
                    .with_context(|| format!("cannot create {}", partial.display()))?;
                Ok(Upload::Local {
                    out,
                    partial,
                    path: dir.join(file),
                    dir,
                })
            }
            Some(bucket) => {
                let path = bucket.path(file);
                let upload = bucket.store.put_multipart(&path).await.with_context(|| {
                    format!("destination {destination:?}: cannot start the upload of {path}")
                })?;
                Ok(Upload::Remote {
                    writer: WriteMultipart::new_with_chunk_size(upload, PART_BYTES),
                    path,
                    destination: destination.to_owned(),
                })
            }
        }
    }

    /// Writes a small file whole (the manifest), atomically.
    pub async fn put(&self, destination: &str, file: &str, data: Vec<u8>) -> anyhow::Result<()> {
        match self.bucket(destination)? {
            None => {
                // std's blocking calls, so every error (a full disk first of
                // all) comes back from the call that met it: tokio's file
                // writes in the background and loses such an error when the
                // next call is `sync_all`.
                let dir = self.dir.clone();
                let file = file.to_owned();
                tokio::task::spawn_blocking(move || write_whole(&dir, &file, &data))
                    .await
                    .context("the file writer panicked")?
            }
            Some(bucket) => {
                let path = bucket.path(file);
                bucket
                    .store
                    .put(&path, PutPayload::from(data))
                    .await
                    .with_context(|| format!("destination {destination:?}: cannot write {path}"))?;
                Ok(())
            }
        }
    }

    /// Reads a small file whole; `None` when it does not exist.
    pub async fn get(&self, destination: &str, file: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self.bucket(destination)? {
            None => {
                let path = self.dir.join(file);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
                }
            }
            Some(bucket) => {
                let path = bucket.path(file);
                match bucket.store.get(&path).await {
                    Ok(got) => Ok(Some(got.bytes().await?.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e).with_context(|| {
                        format!("destination {destination:?}: cannot read {path}")
                    }),
                }
            }
        }
    }

    /// The names of the files whose name starts with `prefix`.
    pub async fn list(&self, destination: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
        match self.bucket(destination)? {
            None => {
                let mut entries = match tokio::fs::read_dir(&self.dir).await {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot list {}", self.dir.display()));
                    }
                };
                let mut names = Vec::new();
                while let Some(entry) = entries
                    .next_entry()
                    .await
                    .with_context(|| format!("cannot list {}", self.dir.display()))?
                {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(prefix) {
                        names.push(name);
                    }
                }
                Ok(names)
            }
            Some(bucket) => {
                // Listing prefixes are whole path segments: list the
                // destination's folder and pick by name.
                let base = bucket.path("");
                let folder = (!base.as_ref().is_empty()).then_some(&base);
                let mut listing = bucket.store.list(folder);
                let mut names = Vec::new();
                while let Some(meta) = listing.next().await {
                    let meta = meta.with_context(|| {
                        format!("destination {destination:?}: cannot list {prefix}*")
                    })?;
                    let full = meta.location.as_ref();
                    let name = full
                        .strip_prefix(base.as_ref())
                        .unwrap_or(full)
                        .trim_start_matches('/');
                    if name.starts_with(prefix) && !name.contains('/') {
                        names.push(name.to_owned());
                    }
                }
                Ok(names)
            }
        }
    }

    /// Reads a file: its size and its bytes as a stream.
    pub async fn read(
        &self,
        destination: &str,
        file: &str,
    ) -> anyhow::Result<(u64, BoxStream<'static, std::io::Result<Bytes>>)> {
        match self.bucket(destination)? {
            None => {
                let path = self.dir.join(file);
                let file = tokio::fs::File::open(&path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?;
                let size = file
                    .metadata()
                    .await
                    .context("cannot stat the export")?
                    .len();
                let body = futures_util::stream::unfold(file, |mut file| async move {
                    use tokio::io::AsyncReadExt;
                    let mut buffer = vec![0; 256 * 1024];
                    match file.read(&mut buffer).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buffer.truncate(n);
                            Some((Ok(Bytes::from(buffer)), file))
                        }
                        Err(e) => Some((Err(e), file)),
                    }
                });
                Ok((size, body.boxed()))
            }
            Some(bucket) => {
                let path = bucket.path(file);
                let got =
                    bucket.store.get(&path).await.with_context(|| {
                        format!("destination {destination:?}: cannot read {path}")
                    })?;
                let size = got.meta.size;
                let body = got
                    .into_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other));
                Ok((size, body.boxed()))
            }
        }
    }

    /// Deletes a file if it is there.
    pub async fn remove(&self, destination: &str, file: &str) {
        let outcome = match self.bucket(destination) {
            Ok(None) => match tokio::fs::remove_file(self.dir.join(file)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Ok(Some(bucket)) => match bucket.store.delete(&bucket.path(file)).await {
                Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %format!("{e:#}"), destination, file, "cannot remove an export file");
        }
    }

    /// Removes the local temporary files earlier attempts at `file` left.
    async fn remove_partials(&self, file: &str) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return;
        };
        let prefix = format!(".{file}.");
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".partial") {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
}

/// Writes `file` in `dir` under a temporary name, fsyncs it, renames it
/// into place and fsyncs the directory; on any error the old file (if any)
/// is left as it was and the temporary one removed.
fn write_whole(dir: &std::path::Path, file: &str, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let partial = dir.join(format!(".{file}.partial"));
    let written = (|| {
        let mut out = std::fs::File::create(&partial)?;
        out.write_all(data)?;
        out.sync_all()?;
        std::fs::rename(&partial, dir.join(file))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("cannot write {}", dir.join(file).display()));
    }
    Ok(())
}

async fn sync_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await?;
    Ok(())
}

/// A file being written; [`Upload::complete`] makes it appear,
/// [`Upload::abort`] (or dropping a local one) leaves nothing behind.
#[derive(Debug)]
pub enum Upload {
    Local {
        out: tokio::fs::File,
        partial: PathBuf,
        path: PathBuf,
        dir: PathBuf,
    },
    Remote {
        writer: WriteMultipart,
        path: Path,
        destination: String,
    },
}

impl Upload {
    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Local { out, partial, .. } => out
                .write_all(data)
                .await
                .with_context(|| format!("cannot write {}", partial.display())),
            Self::Remote {
                writer,
                path,
                destination,
            } => {
                // Waits while earlier parts are still uploading: memory stays bounded.
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .with_context(|| {
                        format!("destination {destination:?}: cannot upload {path}")
                    })?;
                writer.write(data);
                Ok(())
            }
        }
    }

    /// Makes the whole file appear under its name.
    pub async fn complete(self) -> anyhow::Result<()> {
        match self {
            Self::Local {
                out,
                partial,
                path,
                dir,
            } => {
                let mut out = out;
                // A write tokio did in the background and failed (a full
                // disk) is reported by `flush`; `sync_all` alone would not.
                let written = async {
                    out.flush().await?;
                    out.sync_all().await
                }
                .await;
                drop(out);
                if let Err(e) = written {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(e).with_context(|| format!("cannot write {}", path.display()));
                }
                tokio::fs::rename(&partial, &path)
                    .await
                    .with_context(|| format!("cannot rename {}", partial.display()))?;
                sync_dir(&dir).await
            }
            Self::Remote {
                writer,
                path,
                destination,
            } => {
                writer.finish().await.with_context(|| {
                    format!("destination {destination:?}: cannot complete the upload of {path}")
                })?;
                Ok(())
            }
        }
    }

    /// Drops what was written.
    pub async fn abort(self) {
        match self {
            Self::Local { out, partial, .. } => {
                drop(out);
                let _ = tokio::fs::remove_file(&partial).await;
            }
            Self::Remote {
                writer,
                path,
                destination,
            } => {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(error = %e, %path, destination, "cannot abort an export upload");
                }
            }
        }
    }
}
