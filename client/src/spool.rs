//! The durable spool: where accepted events wait while the broker cannot take
//! them.
//!
//! Layout: a directory (owned by one process, enforced with a file lock) of
//! numbered NDJSON segments, `segment-000000000001.ndjson`, … Appends go to the
//! newest segment and are fsync'd before [`Spool::append`] returns, so an event
//! is acknowledged to a client only once it is on disk. Replay seals the active
//! segment, publishes the sealed ones oldest first through the confirmed
//! [`Publisher`], and deletes a segment only after every event in it was
//! confirmed. A crash at any point leaves either the segment (replayed again:
//! the writer's exactly-once storage absorbs the repeats) or nothing to do.
//!
//! A write torn by a crash can only be the last line of a segment (every
//! process start and every failed write begin a new segment); such a line was
//! never acknowledged, and replay skips it.

use crate::publisher::Publisher;
use anyhow::Context;
use auditline_event::{AuditEvent, event::to_ndjson};
use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
};

/// A segment is sealed once it grows past this, so replay reads it whole
/// without holding much memory.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Why events could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({used} of {max} bytes used)")]
    Full { used: u64, max: u64 },
    #[error("cannot write the spool: {0}")]
    Io(#[from] std::io::Error),
}

struct Active {
    seq: u64,
    file: Option<File>,
    written: u64,
}

/// See the module documentation.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    active: Mutex<Active>,
    /// Bytes in every segment, sealed or not.
    used: std::sync::atomic::AtomicU64,
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

fn segment_name(seq: u64) -> String {
    format!("segment-{seq:012}.ndjson")
}

fn segment_seq(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("segment-")?
        .strip_suffix(".ndjson")?
        .parse()
        .ok()
}

impl Spool {
    /// Opens (creating if needed) the spool directory and takes its lock.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> anyhow::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the spool directory {}", dir.display()))?;
        let lock = File::create(dir.join(".lock"))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "the spool directory {} is in use by another process; give each gateway its own",
                dir.display()
            )
        })?;
        let segments = Self::segments_in(&dir)?;
        let used = segments
            .iter()
            .map(|(_, p)| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        let next = segments.last().map(|(seq, _)| seq + 1).unwrap_or(1);
        Ok(Self {
            dir,
            max_bytes,
            active: Mutex::new(Active {
                seq: next,
                file: None,
                written: 0,
            }),
            used: std::sync::atomic::AtomicU64::new(used),
            _lock: lock,
        })
    }

    fn segments_in(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
        let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|p| segment_seq(&p).map(|seq| (seq, p)))
            .collect();
        segments.sort();
        Ok(segments)
    }

    /// Bytes spooled and not yet replayed.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.used_bytes() == 0
    }

    /// Appends events and fsyncs them. When this returns `Ok` they survive a
    /// crash of the process or the machine.
    pub fn append(&self, events: &[AuditEvent]) -> Result<(), SpoolError> {
        self.append_ndjson(&[&to_ndjson(events)])
    }

    /// [`Spool::append`] of events already written as NDJSON: `parts` one
    /// after another (each whole lines, every line one valid event), with one
    /// fsync for all.
    pub fn append_ndjson(&self, parts: &[&[u8]]) -> Result<(), SpoolError> {
        let len = parts.iter().map(|p| p.len() as u64).sum::<u64>();
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let used = self.used_bytes();
        if used + len > self.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
            });
        }
        if active.file.is_none() {
            let path = self.dir.join(segment_name(active.seq));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            // The new file's name must be durable too.
            File::open(&self.dir)?.sync_all()?;
            active.file = Some(file);
            active.written = 0;
        }
        let result = match active.file.as_mut() {
            Some(file) => parts
                .iter()
                .try_for_each(|part| file.write_all(part))
                .and_then(|()| file.sync_data()),
            None => Ok(()),
        };
        if let Err(e) = result {
            // The segment may now end in a torn line: never append after it.
            Self::seal(&mut active);
            return Err(e.into());
        }
        active.written += len;
        self.used
            .fetch_add(len, std::sync::atomic::Ordering::SeqCst);
        if active.written >= SEGMENT_BYTES {
            Self::seal(&mut active);
        }
        Ok(())
    }

    fn seal(active: &mut Active) {
        if active.file.take().is_some() {
            active.seq += 1;
            active.written = 0;
        }
    }

    /// The most bytes the spool holds.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Publishes every spooled event, oldest first, deleting each segment once
    /// all its events are confirmed. Returns the events replayed. Stops at the
    /// first publish error (what is left stays for the next try).
    pub async fn replay(&self, publisher: &Publisher, chunk: usize) -> anyhow::Result<usize> {
        let sealed_below = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            Self::seal(&mut active);
            active.seq
        };
        let mut replayed = 0;
        for (seq, path) in Self::segments_in(&self.dir)? {
            if seq >= sealed_below {
                break;
            }
            // Reading and parsing up to a segment's 16 MiB is blocking work:
            // off the runtime, whose thread may be an app's or a publisher's.
            let (events, size) = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_segment(&path)).await??
            };
            for part in events.chunks(chunk.max(1)) {
                publisher.publish_batch(part).await?;
            }
            let dir = self.dir.clone();
            let removed = path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                fs::remove_file(&removed)?;
                File::open(&dir)?.sync_all()
            })
            .await??;
            self.used.fetch_sub(
                size.min(self.used_bytes()),
                std::sync::atomic::Ordering::SeqCst,
            );
            replayed += events.len();
            tracing::info!(segment = %path.display(), events = events.len(), "spool segment replayed");
        }
        Ok(replayed)
    }

    /// Replays whenever the spool holds events and the broker is reachable,
    /// forever (abort the task to stop). `progress` gets the events replayed
    /// in a round and the bytes still spooled.
    pub async fn replay_forever(
        self: std::sync::Arc<Self>,
        publisher: Publisher,
        chunk: usize,
        progress: impl Fn(usize, u64),
    ) {
        loop {
            if !self.is_empty() && publisher.is_connected().await {
                match self.replay(&publisher, chunk).await {
                    Ok(n) => progress(n, self.used_bytes()),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "spool replay interrupted; will retry")
                    }
                }
            } else {
                progress(0, self.used_bytes());
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Appends from many callers with one fsync for all that arrive together,
/// on a thread of its own: callers (actix workers) await the result instead
/// of each blocking their thread on its own fsync.
pub struct GroupCommit {
    queue: mpsc::Sender<Waiting>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

/// What to do once an append is fsync'd (or failed): given back its bytes.
type Done = Box<dyn FnOnce(Vec<u8>, Result<(), SpoolError>) + Send>;

struct Waiting {
    ndjson: Vec<u8>,
    done: Done,
}

/// The most bytes one commit writes (callers beyond it wait for the next).
const GROUP_BYTES: usize = 8 * 1024 * 1024;
/// How a commit gathers appends (like PostgreSQL's `commit_delay`, but
/// following the burst): after the first, it waits while appends keep
/// coming, each at most [`GROUP_GAP`] after the one before, for at most
/// [`GROUP_MAX_WAIT`] in all. The spool is written only while the broker is
/// away, when a few milliseconds more per request cost nothing and many
/// requests sharing one fsync is what keeps the gateway's throughput; a
/// fixed 2 ms window split a burst of 100 posts on a busy machine into
/// 37–54 fsyncs.
const GROUP_GAP: std::time::Duration = std::time::Duration::from_millis(2);
const GROUP_MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

impl GroupCommit {
    /// Starts the committing thread; `committed(requests)` is called after
    /// each fsync with the number of appends it made durable. The thread
    /// ends when the `GroupCommit` is dropped.
    pub fn start(
        spool: Arc<Spool>,
        committed: impl Fn(usize) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (queue, waiting) = mpsc::channel::<Waiting>();
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || {
                while let Ok(first) = waiting.recv() {
                    let mut group = vec![first];
                    let mut bytes = group[0].ndjson.len();
                    let started = std::time::Instant::now();
                    let mut last = started;
                    while bytes < GROUP_BYTES {
                        let until = (last + GROUP_GAP).min(started + GROUP_MAX_WAIT);
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        match waiting.recv_timeout(left) {
                            Ok(next) => {
                                bytes += next.ndjson.len();
                                group.push(next);
                                last = std::time::Instant::now();
                            }
                            Err(_) => break,
                        }
                    }
                    commit(&spool, group, &committed);
                }
            })?;
        Ok(Self { queue })
    }

    /// Appends `ndjson` (whole lines, each a valid event); resolves once it
    /// is fsync'd with whatever else arrived meanwhile.
    pub async fn append(&self, ndjson: Vec<u8>) -> Result<(), SpoolError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.append_then(ndjson, move |_, outcome| {
            // A caller that went away (its request cut) needs no answer.
            let _ = done.send(outcome);
        })
        .map_err(|(_, e)| e)?;
        result.await.map_err(|_| gone())?
    }

    /// Appends `ndjson` without waiting: `done` is called on the committing
    /// thread once it is fsync'd (or failed), with the bytes back (a buffer
    /// to reuse). Callable from any thread, with or without a runtime. When
    /// the committing thread is gone, the bytes come back at once.
    pub fn append_then(
        &self,
        ndjson: Vec<u8>,
        done: impl FnOnce(Vec<u8>, Result<(), SpoolError>) + Send + 'static,
    ) -> Result<(), (Vec<u8>, SpoolError)> {
        self.queue
            .send(Waiting {
                ndjson,
                done: Box::new(done),
            })
            .map_err(|mpsc::SendError(waiting)| (waiting.ndjson, gone()))
    }
}

fn gone() -> SpoolError {
    SpoolError::Io(std::io::Error::other("the spool's commit thread is gone"))
}

/// Writes the appends of `group` that fit, in arrival order, with one fsync;
/// those that do not fit are told the spool is full.
fn commit(spool: &Spool, group: Vec<Waiting>, committed: &impl Fn(usize)) {
    let used = spool.used_bytes();
    let mut fits = 0;
    let mut total = 0u64;
    for waiting in &group {
        let len = waiting.ndjson.len() as u64;
        if used + total + len > spool.max_bytes() {
            break;
        }
        total += len;
        fits += 1;
    }
    let result = if fits == 0 {
        Ok(())
    } else {
        let parts: Vec<&[u8]> = group[..fits].iter().map(|w| &w.ndjson[..]).collect();
        spool.append_ndjson(&parts)
    };
    if fits > 0 && result.is_ok() {
        committed(fits);
    }
    for (i, waiting) in group.into_iter().enumerate() {
        let answer = if i >= fits {
            Err(SpoolError::Full {
                used: spool.used_bytes(),
                max: spool.max_bytes(),
            })
        } else {
            match &result {
                Ok(()) => Ok(()),
                Err(SpoolError::Full { used, max }) => Err(SpoolError::Full {
                    used: *used,
                    max: *max,
                }),
                Err(SpoolError::Io(e)) => {
                    Err(SpoolError::Io(std::io::Error::new(e.kind(), e.to_string())))
                }
            }
        };
        (waiting.done)(waiting.ndjson, answer);
    }
}

/// The events of a sealed segment, and its size in bytes.
fn read_segment(path: &Path) -> anyhow::Result<(Vec<AuditEvent>, u64)> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ends_clean = bytes.last() == Some(&b'\n');
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut events = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match AuditEvent::parse(line) {
            Ok(event) => events.push(event),
            // A torn last write was never acknowledged to anyone.
            Err(_) if i + 1 == lines.len() && !ends_clean => {}
            Err(e) => {
                tracing::error!(segment = %path.display(), line = i + 1, error = %e, "unreadable spool line skipped");
            }
        }
    }
    Ok((events, bytes.len() as u64))
}
