//! Backups: a consistent snapshot of every user (or one) in one file, and its restore into
//! either store.
//!
//! ## The file
//! A gzip stream of JSON lines ([`Record`]s): a [`Header`] (format version, the schema
//! migration the data was read under, the embedding models and dimensions present), then per
//! user their row, settings, sessions, messages, summaries, memories (each chunk followed by
//! their embeddings: vectors as base64 little-endian `f32`, exact on both stores), audit log,
//! deep memory pairs and query adapter, in chunks of at most [`CHUNK_ROWS`] rows, then an `end` record with the number of records before it and the
//! SHA-256 of every byte before it (uncompressed). A file that is truncated, altered or not
//! a backup fails [`verify`] with [`Error::InvalidInput`], before anything is written.
//!
//! Rows keep their ids. A restore into a store whose rows would collide (other users' data)
//! shifts each table's ids past the store's largest by one offset, so the order of rows, and
//! every reference between them, is kept.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{self, DataKey, DecryptReader, EncryptWriter};
use crate::error::{Error, Result};

mod records;
pub use records::*;

/// The format marker in every backup's header.
pub const FORMAT: &str = "deep-recall.backup";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 1;
/// Rows per record at most.
pub const CHUNK_ROWS: usize = 1000;
/// The longest line a backup may hold (a chunk of rows), so that a damaged file cannot make
/// the reader allocate without bound.
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// A record whose line would reach this many bytes is written as smaller ones, well within
/// [`MAX_LINE_BYTES`].
const SPLIT_BYTES: usize = 32 << 20;

/// Where backup records go (the store writes them from its snapshot).
pub trait BackupSink: Send {
    /// Writes one record.
    fn write(&mut self, record: &Record) -> Result<()>;
}

/// Where a restore reads records from (after the file was verified).
pub trait BackupSource: Send {
    /// The next record, `None` after the last before `end`.
    fn next_record(&mut self) -> Result<Option<Record>>;
}

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// One user only.
    pub user: Option<String>,
}

/// What a backup wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupReport {
    /// The file.
    pub path: PathBuf,
    /// Users in it.
    pub users: u64,
    /// Messages in it.
    pub messages: u64,
    /// Memories in it.
    pub memories: u64,
    /// Vectors in it.
    pub embeddings: u64,
    /// Its size on disk (compressed).
    pub bytes: u64,
    /// The SHA-256 of its records, as in its `end` record.
    pub sha256: String,
    /// The id of the data key it is encrypted with, if it is.
    pub encrypted_with: Option<String>,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only this user of the backup (replacing them in the store, if present).
    pub user: Option<String>,
    /// Restore into a store that already has users: the backup's users replace the same
    /// users in the store; others are left alone.
    pub force: bool,
    /// Restore users whose data was deleted (`delete_user` in the store's audit log) after
    /// the backup was taken. Without it such a restore is refused: erased data does not come
    /// back by accident.
    pub include_deleted: bool,
}

/// What a restore wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Users restored.
    pub users: u64,
    /// Of those, users that existed in the store and were replaced.
    pub replaced: u64,
    /// Messages restored.
    pub messages: u64,
    /// Memories restored.
    pub memories: u64,
    /// Vectors restored.
    pub embeddings: u64,
    /// Whether row ids had to move to avoid the store's other rows.
    pub ids_shifted: bool,
    /// Vector indexes built after the rows, in one pass (Postgres, restoring into a store
    /// that held no vectors: see [`crate::store::MemoryStore::begin_bulk_load`]).
    #[serde(default)]
    pub indexes_built: Vec<String>,
}

/// What [`verify`] learnt about a backup file: enough to plan a restore.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The header.
    pub header: Header,
    /// Its users, in file order.
    pub users: Vec<String>,
    /// Per table, the smallest and largest row id (of the selected users).
    pub id_ranges: BTreeMap<Table, (i64, i64)>,
    /// Records before `end`.
    pub records: u64,
    /// The SHA-256 of those records.
    pub sha256: String,
}

impl Verified {
    /// Whether the backup holds this user.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.iter().any(|u| u == user)
    }
}

/// A sink that tells `on_user(done, total)` as each user starts (for job progress).
pub struct Progress<'a, S> {
    /// Where the records go.
    pub inner: &'a mut S,
    /// Called with (users started, users in the backup).
    pub on_user: &'a mut (dyn FnMut(u64, u64) + Send),
    total: u64,
    done: u64,
}

impl<'a, S: BackupSink> Progress<'a, S> {
    /// Wraps `inner`.
    pub fn new(inner: &'a mut S, on_user: &'a mut (dyn FnMut(u64, u64) + Send)) -> Self {
        Self {
            inner,
            on_user,
            total: 0,
            done: 0,
        }
    }
}

impl<S: BackupSink> BackupSink for Progress<'_, S> {
    fn write(&mut self, record: &Record) -> Result<()> {
        match record {
            Record::Header(h) => self.total = h.users,
            Record::User(_) => {
                (self.on_user)(self.done, self.total);
                self.done += 1;
            }
            _ => {}
        }
        self.inner.write(record)
    }
}

/// The file name of a scheduled backup taken at `at`: `deep-recall-20261201T030000Z.backup`
/// (names sort by time).
pub fn scheduled_name(at: DateTime<Utc>) -> String {
    format!("deep-recall-{}.backup", at.format("%Y%m%dT%H%M%SZ"))
}

/// Deletes all but the newest `keep` scheduled backups in `dir` (files named by
/// [`scheduled_name`]; other files are left alone); returns the deleted paths.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.len() == scheduled_name(Utc::now()).len()
                && n.starts_with("deep-recall-")
                && n.ends_with(".backup")
        })
        .collect();
    names.sort();
    let surplus = names.len().saturating_sub(keep);
    let mut gone = Vec::new();
    for n in names.into_iter().take(surplus) {
        let path = dir.join(n);
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        gone.push(path);
    }
    Ok(gone)
}

/// Writes a backup: gzip, one JSON record per line, with the running SHA-256.
pub struct BackupWriter<W: Write> {
    out: GzEncoder<W>,
    hash: Sha256,
    records: u64,
    /// A record whose line would reach this many bytes is written as two.
    split_bytes: usize,
    /// Counts, for the report.
    pub report: BackupReport,
}

impl<W: Write + Send> BackupWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Self {
        Self {
            out: GzEncoder::new(out, Compression::default()),
            hash: Sha256::new(),
            records: 0,
            split_bytes: SPLIT_BYTES,
            report: BackupReport::default(),
        }
    }

    /// Writes the `end` record and finishes the gzip stream.
    pub fn finish(mut self) -> Result<(W, BackupReport)> {
        let sha256 = hex::encode(self.hash.clone().finalize());
        let end = Record::End {
            records: self.records,
            sha256: sha256.clone(),
        };
        let mut line = serde_json::to_vec(&end).map_err(ser)?;
        line.push(b'\n');
        self.out.write_all(&line).map_err(io)?;
        let out = self.out.finish().map_err(io)?;
        self.report.sha256 = sha256;
        Ok((out, self.report))
    }
}

impl<W: Write + Send> BackupSink for BackupWriter<W> {
    fn write(&mut self, record: &Record) -> Result<()> {
        if matches!(record, Record::End { .. }) {
            return Err(Error::Internal("backup: end written twice".into()));
        }
        let mut line = serde_json::to_vec(record).map_err(ser)?;
        // Rows of long text (64 KiB of control characters is six times that as JSON) can
        // make a record longer than a reader takes: it goes as smaller ones.
        if line.len() >= self.split_bytes {
            if let Some((a, b)) = record.halves() {
                drop(line);
                self.write(&a)?;
                return self.write(&b);
            }
            if line.len() >= MAX_LINE_BYTES {
                return Err(Error::Internal(format!(
                    "backup: a row takes {} bytes, more than a line may ({MAX_LINE_BYTES})",
                    line.len()
                )));
            }
        }
        match record {
            Record::User(_) => self.report.users += 1,
            Record::Messages { rows, .. } => self.report.messages += rows.len() as u64,
            Record::Memories { rows, .. } => self.report.memories += rows.len() as u64,
            Record::Embeddings { rows, .. } => self.report.embeddings += rows.len() as u64,
            _ => {}
        }
        line.push(b'\n');
        self.hash.update(&line);
        self.out.write_all(&line).map_err(io)?;
        self.records += 1;
        Ok(())
    }
}

fn ser(e: serde_json::Error) -> Error {
    Error::Internal(format!("backup serialisation: {e}"))
}

fn io(e: std::io::Error) -> Error {
    Error::Internal(format!("backup: {e}"))
}

/// Reads a backup's records, checking each line and, at the end, the count and checksum.
pub struct BackupReader<R: Read> {
    lines: BufReader<MultiGzDecoder<R>>,
    hash: Sha256,
    records: u64,
    line: Vec<u8>,
    ended: bool,
    /// Only this user's records are returned (others are read and checked, then skipped).
    only: Option<String>,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("not a valid backup file: {what}"))
}

impl<R: Read + Send> BackupReader<R> {
    /// A reader over the compressed bytes `input`.
    pub fn new(input: R) -> Self {
        Self {
            lines: BufReader::new(MultiGzDecoder::new(input)),
            hash: Sha256::new(),
            records: 0,
            line: Vec::new(),
            ended: false,
            only: None,
        }
    }

    /// Returns only `user`'s records (and the header).
    pub fn only(mut self, user: Option<String>) -> Self {
        self.only = user;
        self
    }

    fn read_line(&mut self) -> Result<bool> {
        self.line.clear();
        let n = (&mut self.lines)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| corrupt(format!("{e} (is it truncated?)")))?;
        if n == 0 {
            return Ok(false);
        }
        if self.line.last() != Some(&b'\n') {
            return Err(if n > MAX_LINE_BYTES {
                corrupt(format!("a line is longer than {MAX_LINE_BYTES} bytes"))
            } else {
                corrupt("the last line is cut short (truncated)")
            });
        }
        Ok(true)
    }

    /// The next record (the header first), or `None` after a valid `end`.
    pub fn next_checked(&mut self) -> Result<Option<Record>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            if !self.read_line()? {
                return Err(corrupt("it ends without an end record (truncated)"));
            }
            let record: Record = serde_json::from_slice(&self.line)
                .map_err(|e| corrupt(format!("record {}: {e}", self.records + 1)))?;
            if let Record::End { records, sha256 } = &record {
                let actual = hex::encode(self.hash.clone().finalize());
                if *records != self.records || *sha256 != actual {
                    return Err(corrupt(format!(
                        "checksum mismatch: the end record says {records} records with \
                         SHA-256 {sha256}, the file has {} with {actual}",
                        self.records
                    )));
                }
                let mut rest = [0u8; 1];
                if self.lines.read(&mut rest).map_err(corrupt)? != 0 {
                    return Err(corrupt("data after the end record"));
                }
                self.ended = true;
                return Ok(None);
            }
            self.hash.update(&self.line);
            self.records += 1;
            if self.records == 1 {
                let Record::Header(h) = &record else {
                    return Err(corrupt("it does not start with a header"));
                };
                check_header(h)?;
            } else if matches!(record, Record::Header(_)) {
                return Err(corrupt("a second header"));
            }
            if let (Some(only), Some(user)) = (&self.only, record_user(&record))
                && only != user
            {
                continue;
            }
            return Ok(Some(record));
        }
    }
}

impl<R: Read + Send> BackupSource for BackupReader<R> {
    fn next_record(&mut self) -> Result<Option<Record>> {
        self.next_checked()
    }
}

/// The user a record belongs to.
pub fn record_user(record: &Record) -> Option<&str> {
    match record {
        Record::User(u) => Some(&u.id),
        Record::Sessions { user, .. }
        | Record::Messages { user, .. }
        | Record::Summaries { user, .. }
        | Record::Memories { user, .. }
        | Record::Embeddings { user, .. }
        | Record::Audit { user, .. }
        | Record::DeepMemoryPairs { user, .. }
        | Record::DeepMemoryAdapter { user, .. } => Some(user),
        Record::Header(_) | Record::End { .. } => None,
    }
}

fn check_header(h: &Header) -> Result<()> {
    if h.format != FORMAT {
        return Err(corrupt(format!("format {:?}, not {FORMAT:?}", h.format)));
    }
    if h.version > VERSION {
        return Err(Error::invalid(format!(
            "the backup has format version {}, newer than this build's {VERSION}: restore it \
             with a newer deep-recall",
            h.version
        )));
    }
    Ok(())
}

/// The bytes of a backup file under its encryption: decrypted with the one of `keys` it was
/// encrypted with (the current data key, or a previous one for a file from before a
/// rotation; none of them is a clear error), as they are otherwise.
fn input(path: &Path, keys: &[&DataKey]) -> Result<Box<dyn Read + Send>> {
    let mut file = BufReader::new(File::open(path).map_err(|e| Error::input_file(path, e))?);
    match crypto::read_header(&mut file).map_err(|e| Error::io(path, e))? {
        crypto::Header::Plain(first) => Ok(Box::new(std::io::Cursor::new(first).chain(file))),
        crypto::Header::Encrypted { key_id, prefix } => {
            match keys.iter().find(|k| k.id() == key_id) {
                Some(k) => Ok(Box::new(DecryptReader::new(file, k, &prefix))),
                None if keys.is_empty() => Err(Error::invalid(format!(
                    "the backup is encrypted with data key {key_id}: give that key \
                     (--encryption-key-file, or --previous-encryption-key-file for a key \
                     rotated out)"
                ))),
                None => Err(Error::invalid(format!(
                    "the backup is encrypted with data key {key_id}, not with a key given ({})",
                    keys.iter().map(|k| k.id()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

/// Where a backup's bytes go: the file, through the data key's encryption when there is one.
pub enum Output {
    /// Unencrypted.
    Plain(BufWriter<File>),
    /// Encrypted with the data key.
    Encrypted(Box<EncryptWriter<BufWriter<File>>>),
}

impl Output {
    /// Over `out`, encrypted when `key` is given.
    pub fn new(out: BufWriter<File>, key: Option<&DataKey>) -> Result<Self> {
        Ok(match key {
            Some(k) => Self::Encrypted(Box::new(EncryptWriter::new(out, k).map_err(io)?)),
            None => Self::Plain(out),
        })
    }

    /// Ends the encryption; the file.
    pub fn finish(self) -> Result<BufWriter<File>> {
        match self {
            Self::Plain(out) => Ok(out),
            Self::Encrypted(enc) => enc.finish().map_err(io),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(out) => out.write(buf),
            Self::Encrypted(enc) => enc.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(out) => out.flush(),
            Self::Encrypted(enc) => enc.flush(),
        }
    }
}

/// Reads the whole file once and checks it: gzip stream, every record, the order of the
/// records (a user's rows after that user's row), the count and the checksum, and, for an
/// encrypted file, every chunk's authentication with the one of `keys` it names. `user` keeps
/// the id ranges of that user only. Nothing is written anywhere.
pub fn verify(path: &Path, user: Option<&str>, keys: &[&DataKey]) -> Result<Verified> {
    let mut reader = BackupReader::new(input(path, keys)?);
    let mut header = None;
    let mut users: Vec<String> = Vec::new();
    let mut ranges: BTreeMap<Table, (i64, i64)> = BTreeMap::new();
    let mut widen = |t: Table, ids: &mut dyn Iterator<Item = i64>| {
        for id in ids {
            let r = ranges.entry(t).or_insert((id, id));
            r.0 = r.0.min(id);
            r.1 = r.1.max(id);
        }
    };
    let mut section = Section::default();
    while let Some(record) = reader.next_checked()? {
        if let Some(u) = record_user(&record)
            && !matches!(record, Record::User(_))
            && users.last().map(String::as_str) != Some(u)
        {
            return Err(corrupt(format!(
                "rows of user {u:?} outside that user's section"
            )));
        }
        if matches!(record, Record::User(_) | Record::End { .. }) {
            std::mem::take(&mut section).check(users.last())?;
        }
        section.read(&record);
        let selected = match (user, record_user(&record)) {
            (Some(want), Some(u)) => want == u,
            _ => true,
        };
        match &record {
            Record::Header(h) => header = Some(h.clone()),
            Record::User(u) => {
                if users.contains(&u.id) {
                    return Err(corrupt(format!("user {:?} appears twice", u.id)));
                }
                users.push(u.id.clone());
            }
            _ if !selected => {}
            Record::Sessions { rows, .. } => {
                widen(Table::Sessions, &mut rows.iter().map(|r| r.id));
            }
            Record::Messages { rows, .. } => {
                widen(Table::Messages, &mut rows.iter().map(|r| r.id));
            }
            Record::Summaries { rows, .. } => {
                widen(Table::Summaries, &mut rows.iter().map(|r| r.id));
            }
            Record::Memories { rows, .. } => {
                widen(Table::Memories, &mut rows.iter().map(|r| r.id));
            }
            Record::Audit { rows, .. } => widen(Table::Audit, &mut rows.iter().map(|r| r.id)),
            Record::Embeddings { rows, .. } => {
                for r in rows {
                    r.decode()?;
                }
            }
            Record::DeepMemoryAdapter { row, .. } => {
                row.decode()?;
            }
            Record::DeepMemoryPairs { .. } => {}
            Record::End { .. } => {}
        }
    }
    section.check(users.last())?;
    let header = header.ok_or_else(|| corrupt("no header"))?;
    if let Some(want) = user
        && !users.iter().any(|u| u == want)
    {
        return Err(Error::not_found("user in the backup", want));
    }
    Ok(Verified {
        header,
        users,
        id_ranges: ranges,
        records: reader.records,
        sha256: hex::encode(reader.hash.finalize()),
    })
}

/// One user's rows in a backup, and what they point at: a restore writes rows with the ids
/// they have, so every reference must be to a row of the same user in the file (a session,
/// message, summary or memory of another user would join the two users' data).
#[derive(Default)]
struct Section {
    ids: HashMap<Table, HashSet<i64>>,
    refs: Vec<(Table, i64, &'static str)>,
}

impl Section {
    fn read(&mut self, record: &Record) {
        let mut own = |t: Table, ids: &mut dyn Iterator<Item = i64>| {
            self.ids.entry(t).or_default().extend(ids);
        };
        let mut refs = Vec::new();
        match record {
            Record::Sessions { rows, .. } => {
                own(Table::Sessions, &mut rows.iter().map(|r| r.id));
                for r in rows {
                    refs.extend(
                        r.summarized_through
                            .map(|m| (Table::Messages, m, "summarized_through")),
                    );
                }
            }
            Record::Messages { rows, .. } => {
                own(Table::Messages, &mut rows.iter().map(|r| r.id));
                refs.extend(
                    rows.iter()
                        .map(|r| (Table::Sessions, r.session_id, "message session")),
                );
            }
            Record::Summaries { rows, .. } => {
                own(Table::Summaries, &mut rows.iter().map(|r| r.id));
                for r in rows {
                    refs.push((Table::Sessions, r.session_id, "summary session"));
                    refs.extend(
                        r.first_message_id
                            .map(|m| (Table::Messages, m, "summary message")),
                    );
                    refs.extend(
                        r.last_message_id
                            .map(|m| (Table::Messages, m, "summary message")),
                    );
                }
            }
            Record::Memories { rows, .. } => {
                own(Table::Memories, &mut rows.iter().map(|r| r.id));
                for r in rows {
                    refs.extend(r.session_id.map(|x| (Table::Sessions, x, "memory session")));
                    refs.extend(r.message_id.map(|x| (Table::Messages, x, "memory message")));
                    refs.extend(
                        r.summary_id
                            .map(|x| (Table::Summaries, x, "memory summary")),
                    );
                    for (x, what) in [
                        (r.supersedes, "supersedes"),
                        (r.superseded_by, "superseded_by"),
                        (r.key_for, "key_for"),
                    ] {
                        refs.extend(x.map(|x| (Table::Memories, x, what)));
                    }
                }
            }
            Record::Embeddings { rows, .. } => {
                refs.extend(
                    rows.iter()
                        .map(|r| (Table::Memories, r.memory_id, "embedding")),
                );
            }
            Record::DeepMemoryPairs { rows, .. } => {
                refs.extend(
                    rows.iter()
                        .map(|r| (Table::Memories, r.memory_id, "deep memory pair")),
                );
            }
            _ => {}
        }
        self.refs.extend(refs);
    }

    /// Every reference of `user`'s section is to one of the section's own rows.
    fn check(self, user: Option<&String>) -> Result<()> {
        for (table, id, what) in &self.refs {
            if !self.ids.get(table).is_some_and(|ids| ids.contains(id)) {
                return Err(corrupt(format!(
                    "user {:?}: the {what} {id} is not one of that user's {} rows",
                    user.map(String::as_str).unwrap_or_default(),
                    table.name()
                )));
            }
        }
        Ok(())
    }
}

/// Opens a verified backup for reading its records (the header first).
pub fn open(
    path: &Path,
    user: Option<&str>,
    keys: &[&DataKey],
) -> Result<BackupReader<Box<dyn Read + Send>>> {
    Ok(BackupReader::new(input(path, keys)?).only(user.map(str::to_owned)))
}

/// A file written next to `path` and moved over it only once complete and synced, so that a
/// failed or interrupted backup never leaves a partial file under the final name.
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary file.
    pub fn create(path: &Path) -> Result<(Self, BufWriter<File>)> {
        let mut name = path
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{} is not a file name", path.display())))?
            .to_os_string();
        name.push(format!(".partial-{}", std::process::id()));
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok((
            Self {
                tmp,
                path: path.to_owned(),
            },
            BufWriter::new(file),
        ))
    }

    /// Syncs the file and moves it to its name; returns its size.
    pub fn commit(self, out: BufWriter<File>) -> Result<u64> {
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(&self.tmp, e))?.len();
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(bytes)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            schema: "m1".into(),
            created_at: Utc::now(),
            backend: "embedded".into(),
            metric: "cosine".into(),
            models: vec![],
            user: None,
            users: 1,
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = BackupWriter::new(Vec::new());
        w.write(&Record::Header(header())).unwrap();
        w.write(&Record::User(UserRow {
            id: "alice".into(),
            created_at: Utc::now(),
            settings: None,
            settings_updated_at: None,
            memory_keys: false,
            embedding_model: None,
        }))
        .unwrap();
        w.write(&Record::Embeddings {
            user: "alice".into(),
            rows: vec![EmbeddingRow::new(7, "m".into(), &[0.1, -2.5e-8, 3.0])],
        })
        .unwrap();
        w.finish().unwrap().0
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>> {
        let mut r = BackupReader::new(bytes);
        let mut out = Vec::new();
        while let Some(rec) = r.next_checked()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn prune_keeps_the_newest_scheduled_backups_only() {
        let dir = tempfile::tempdir().unwrap();
        let t = |h: u32| chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 1, h, 0, 0).unwrap();
        for h in [3, 1, 2, 4] {
            std::fs::write(dir.path().join(scheduled_name(t(h))), b"x").unwrap();
        }
        std::fs::write(dir.path().join("mine.backup"), b"x").unwrap();
        let gone = prune(dir.path(), 2).unwrap();
        let names = |v: &[PathBuf]| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&gone), [scheduled_name(t(1)), scheduled_name(t(2))]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                scheduled_name(t(3)),
                scheduled_name(t(4)),
                "mine.backup".into()
            ]
        );
    }

    /// Rows too long for one line go as several records, which read back as the rows in
    /// order; the report counts each row once.
    #[test]
    fn a_record_too_long_for_a_line_is_written_as_several() {
        let mut w = BackupWriter::new(Vec::new());
        w.split_bytes = 1000;
        w.write(&Record::Header(header())).unwrap();
        w.write(&Record::User(UserRow {
            id: "alice".into(),
            created_at: Utc::now(),
            settings: None,
            settings_updated_at: None,
            memory_keys: false,
            embedding_model: None,
        }))
        .unwrap();
        let rows: Vec<MessageRow> = (0..10)
            .map(|i| MessageRow {
                id: i,
                session_id: 1,
                role: "user".into(),
                content: "\u{1b}[31m".repeat(20),
                tags: serde_json::json!([]),
                metadata: serde_json::json!({}),
                created_at: Utc::now(),
            })
            .collect();
        w.write(&Record::Messages {
            user: "alice".into(),
            rows: rows.clone(),
        })
        .unwrap();
        let (bytes, report) = w.finish().unwrap();
        assert_eq!(report.messages, 10);
        let records = read_all(&bytes).unwrap();
        let mut back = Vec::new();
        for r in &records[2..] {
            let Record::Messages { rows, .. } = r else {
                panic!("{r:?}")
            };
            assert!(serde_json::to_vec(r).unwrap().len() < 1000);
            back.extend(rows.iter().cloned());
        }
        assert!(records.len() > 3, "several records");
        assert_eq!(back, rows);
    }

    #[test]
    fn round_trip_keeps_vectors_bit_exact() {
        let records = read_all(&sample()).unwrap();
        assert_eq!(records.len(), 3);
        let Record::Embeddings { rows, .. } = &records[2] else {
            panic!("{records:?}")
        };
        assert_eq!(rows[0].decode().unwrap(), vec![0.1f32, -2.5e-8, 3.0]);
    }

    #[test]
    fn damaged_files_are_refused() {
        let good = sample();
        // Truncated anywhere.
        for cut in [1, good.len() / 2, good.len() - 9] {
            let e = read_all(&good[..cut]).unwrap_err();
            assert!(e.to_string().contains("not a valid backup"), "{cut}: {e}");
        }
        // A record changed (same gzip framing, different content).
        let mut plain = Vec::new();
        MultiGzDecoder::new(&good[..])
            .read_to_end(&mut plain)
            .unwrap();
        let text = String::from_utf8(plain).unwrap().replace("alice", "alicf");
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        let e = read_all(&enc.finish().unwrap()).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        // Not gzip at all.
        let e = read_all(b"{\"t\":\"header\"}\n").unwrap_err();
        assert!(e.to_string().contains("not a valid backup"), "{e}");
        // A newer format version.
        let mut w = BackupWriter::new(Vec::new());
        w.write(&Record::Header(Header {
            version: VERSION + 1,
            ..header()
        }))
        .unwrap();
        let e = read_all(&w.finish().unwrap().0).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }
}
