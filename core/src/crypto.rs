//! The data key and encryption with it: AES-256-GCM (RustCrypto) in the STREAM construction
//! (Hoang, Reyhanitabar, Rogaway, Vizár), for files of any length read and written in
//! chunks: each chunk is authenticated, and so are their order and which one is last, so a
//! file cut short, reordered or altered fails to decrypt instead of yielding garbage.
//!
//! File layout: [`MAGIC`], the key id (8 bytes), a random 7-byte nonce prefix, then chunks of
//! `flag (1 byte: 0 more, 1 last) | length (u32 LE) | ciphertext` of at most [`CHUNK`]
//! plaintext bytes each.
use std::io::{self, Read, Write};
use std::path::Path;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The first bytes of a file encrypted with the data key.
pub const MAGIC: &[u8; 8] = b"DRENC01\n";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const PREFIX: usize = 7;

/// The 32-byte data key, with its id (the first 8 bytes of its SHA-256, in hex), which is
/// stored beside what it encrypts so that a wrong key is named, not guessed.
#[derive(Clone)]
pub struct DataKey {
    key: [u8; 32],
    id: [u8; 8],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id())
    }
}

impl DataKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let digest = Sha256::digest(key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self { key, id }
    }

    /// Reads a key file: 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        let key: Vec<u8> = if bytes.len() == 32 {
            bytes
        } else {
            hex::decode(text.trim()).unwrap_or_default()
        };
        let key: [u8; 32] = key.try_into().map_err(|_| {
            Error::invalid(format!(
                "{}: an encryption key file holds 32 random bytes, raw or as 64 hex digits \
                 (`head -c 32 /dev/urandom > key`)",
                path.display()
            ))
        })?;
        Ok(Self::from_bytes(key))
    }

    /// The key's id, in hex.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key))
    }
}

fn crypto_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Encrypts everything written to it; [`EncryptWriter::finish`] writes the last chunk.
pub struct EncryptWriter<W: Write> {
    out: W,
    stream: Option<EncryptorBE32<Aes256Gcm>>,
    buf: Vec<u8>,
}

impl<W: Write> EncryptWriter<W> {
    /// Writes the header to `out`.
    pub fn new(mut out: W, key: &DataKey) -> io::Result<Self> {
        let mut prefix = [0u8; PREFIX];
        OsRng.fill_bytes(&mut prefix);
        out.write_all(MAGIC)?;
        out.write_all(&key.id)?;
        out.write_all(&prefix)?;
        Ok(Self {
            out,
            stream: Some(EncryptorBE32::from_aead(key.cipher(), (&prefix).into())),
            buf: Vec::with_capacity(CHUNK),
        })
    }

    fn chunk(&mut self, last: bool) -> io::Result<()> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| crypto_error("write after finish"))?;
        let sealed = if last {
            let stream = self.stream.take().expect("checked above");
            stream.encrypt_last(&self.buf[..])
        } else {
            stream.encrypt_next(&self.buf[..])
        }
        .map_err(|_| crypto_error("encryption failed"))?;
        self.out.write_all(&[u8::from(last)])?;
        self.out.write_all(&(sealed.len() as u32).to_le_bytes())?;
        self.out.write_all(&sealed)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes the last chunk; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.chunk(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK {
            self.chunk(false)?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decrypts a stream that [`EncryptWriter`] wrote (after its header was read by
/// [`read_header`]).
pub struct DecryptReader<R: Read> {
    input: R,
    stream: Option<DecryptorBE32<Aes256Gcm>>,
    plain: Vec<u8>,
    at: usize,
}

/// What starts a file: encrypted (with the key id and nonce prefix) or not.
pub enum Header {
    /// Not encrypted; these are its first bytes (fewer than 8 when the file is that short).
    Plain(Vec<u8>),
    /// Encrypted with the key of this id.
    Encrypted {
        /// The key id, in hex.
        key_id: String,
        /// The nonce prefix.
        prefix: [u8; PREFIX],
    },
}

/// Reads the first bytes of `input` and tells whether it was encrypted with a data key.
pub fn read_header<R: Read>(input: &mut R) -> io::Result<Header> {
    let mut magic = Vec::with_capacity(8);
    input.take(8).read_to_end(&mut magic)?;
    if magic != MAGIC {
        return Ok(Header::Plain(magic));
    }
    let mut id = [0u8; 8];
    let mut prefix = [0u8; PREFIX];
    input.read_exact(&mut id)?;
    input.read_exact(&mut prefix)?;
    Ok(Header::Encrypted {
        key_id: hex::encode(id),
        prefix,
    })
}

impl<R: Read> DecryptReader<R> {
    /// Decrypts the rest of `input` (after its header) with `key`.
    pub fn new(input: R, key: &DataKey, prefix: &[u8; PREFIX]) -> Self {
        Self {
            input,
            stream: Some(DecryptorBE32::from_aead(key.cipher(), prefix.into())),
            plain: Vec::new(),
            at: 0,
        }
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            self.plain.clear();
            return Ok(());
        };
        let mut head = [0u8; 5];
        self.input
            .read_exact(&mut head)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => crypto_error("the encrypted file is cut short"),
                _ => e,
            })?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > CHUNK + 16 {
            return Err(crypto_error("a chunk of the encrypted file is too long"));
        }
        let mut sealed = vec![0u8; len];
        self.input
            .read_exact(&mut sealed)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => crypto_error("the encrypted file is cut short"),
                _ => e,
            })?;
        let opened = match head[0] {
            0 => stream.decrypt_next(&sealed[..]),
            1 => self
                .stream
                .take()
                .expect("checked above")
                .decrypt_last(&sealed[..]),
            _ => return Err(crypto_error("the encrypted file is damaged")),
        };
        self.plain = opened.map_err(|_| {
            crypto_error("the encrypted file is damaged or was altered (authentication failed)")
        })?;
        self.at = 0;
        if self.stream.is_none() {
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest)? != 0 {
                return Err(crypto_error("data after the last encrypted chunk"));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if self.stream.is_none() {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.at);
        out[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The keys that seal stored fields (encryption at rest): the current key, with which every
/// write is sealed, and previous keys, which only open rows not yet rotated (see
/// `deep-recall keys rotate`). With no current key, writes are stored in the clear.
///
/// A sealed field is `base64(nonce (12 bytes) | AES-256-GCM ciphertext and tag)`; the name of
/// its column is the associated data, so a value moved to another column fails to open. The
/// row stores the id of the key that sealed it.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    current: Option<DataKey>,
    previous: Vec<DataKey>,
}

impl PartialEq for Keyring {
    fn eq(&self, other: &Self) -> bool {
        let ids = |k: &Keyring| k.previous.iter().map(DataKey::id).collect::<Vec<_>>();
        self.current_id() == other.current_id() && ids(self) == ids(other)
    }
}

impl Keyring {
    /// A keyring sealing with `current` (if any) that can also open rows of `previous`.
    pub fn new(current: Option<DataKey>, previous: Vec<DataKey>) -> Self {
        Self { current, previous }
    }

    /// The current key's id: the key new writes are sealed with.
    pub fn current_id(&self) -> Option<String> {
        self.current.as_ref().map(DataKey::id)
    }

    /// Whether any key is set (rows may be sealed).
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.previous.is_empty()
    }

    /// Whether the key with this id is in the ring.
    pub fn knows(&self, id: &str) -> bool {
        self.key(id).is_some()
    }

    fn key(&self, id: &str) -> Option<&DataKey> {
        self.current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id() == id)
    }

    /// Seals `text` for `column` with the current key; the text itself with none.
    pub fn seal(&self, column: &str, text: &str) -> Result<String> {
        let Some(key) = &self.current else {
            return Ok(text.to_owned());
        };
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let sealed = key
            .cipher()
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: text.as_bytes(),
                    aad: column.as_bytes(),
                },
            )
            .map_err(|_| Error::Internal("encryption failed".into()))?;
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(BASE64.encode(out))
    }

    /// Opens a field of `column` sealed with the key `key_id` (`None`: stored in the clear).
    pub fn open(&self, key_id: Option<&str>, column: &str, stored: &str) -> Result<String> {
        let Some(id) = key_id else {
            return Ok(stored.to_owned());
        };
        let key = self.key(id).ok_or_else(|| unknown_key(id))?;
        let damaged = || Error::Internal(format!("a sealed {column} value does not open"));
        let bytes = BASE64.decode(stored).map_err(|_| damaged())?;
        if bytes.len() < 12 + 16 {
            return Err(damaged());
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = key
            .cipher()
            .decrypt(
                nonce.into(),
                Payload {
                    msg: sealed,
                    aad: column.as_bytes(),
                },
            )
            .map_err(|_| damaged())?;
        String::from_utf8(plain).map_err(|_| damaged())
    }

    /// Seals a JSON value as a JSON string (kept as it is with no current key).
    pub fn seal_json(&self, column: &str, value: &serde_json::Value) -> Result<serde_json::Value> {
        if self.current.is_none() {
            return Ok(value.clone());
        }
        Ok(serde_json::Value::String(
            self.seal(column, &value.to_string())?,
        ))
    }

    /// Opens a JSON value sealed by [`Keyring::seal_json`].
    pub fn open_json(
        &self,
        key_id: Option<&str>,
        column: &str,
        stored: serde_json::Value,
    ) -> Result<serde_json::Value> {
        if key_id.is_none() {
            return Ok(stored);
        }
        let serde_json::Value::String(sealed) = stored else {
            return Err(Error::Internal(format!(
                "a sealed {column} value is not a string"
            )));
        };
        serde_json::from_str(&self.open(key_id, column, &sealed)?)
            .map_err(|_| Error::Internal(format!("a sealed {column} value is not JSON")))
    }
}

/// The error for data sealed with a key that was not given.
pub fn unknown_key(id: &str) -> Error {
    Error::invalid(format!(
        "the store holds data encrypted with key {id}, which was not given: pass that key with \
         --encryption-key-file (or, while rotating, as a previous key: \
         --previous-encryption-key-file)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &DataKey, data: &[u8]) -> Vec<u8> {
        let mut w = EncryptWriter::new(Vec::new(), key).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn open(key: &DataKey, mut sealed: &[u8]) -> io::Result<Vec<u8>> {
        let Header::Encrypted { key_id, prefix } = read_header(&mut sealed)? else {
            panic!("not encrypted")
        };
        assert_eq!(key_id, key.id());
        let mut out = Vec::new();
        DecryptReader::new(sealed, key, &prefix).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let key = DataKey::from_bytes([7; 32]);
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for len in [0, 1, CHUNK, CHUNK + 1, data.len()] {
            assert_eq!(open(&key, &seal(&key, &data[..len])).unwrap(), &data[..len]);
        }
        let sealed = seal(&key, &data);
        assert!(
            !sealed.windows(16).any(|w| w == &data[4000..4016]),
            "no plaintext"
        );
        // Cut at a chunk boundary (the last chunk dropped), in a chunk, or altered.
        let first = 8 + 8 + PREFIX + 5 + CHUNK + 16;
        for bad in [
            sealed[..first].to_vec(),
            sealed[..sealed.len() - 3].to_vec(),
            {
                let mut s = sealed.clone();
                s[first + 100] ^= 1;
                s
            },
        ] {
            let e = open(&key, &bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
        // Another key.
        let other = DataKey::from_bytes([8; 32]);
        let mut s = &sealed[..];
        let Header::Encrypted { prefix, .. } = read_header(&mut s).unwrap() else {
            panic!()
        };
        let mut out = Vec::new();
        assert!(
            DecryptReader::new(s, &other, &prefix)
                .read_to_end(&mut out)
                .is_err()
        );
    }

    #[test]
    fn key_files_are_raw_or_hex() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [3u8; 32]).unwrap();
        let hexed = dir.path().join("hex");
        std::fs::write(&hexed, format!("{}\n", hex::encode([3u8; 32]))).unwrap();
        assert_eq!(
            DataKey::from_file(&raw).unwrap().id(),
            DataKey::from_file(&hexed).unwrap().id()
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd").unwrap();
        assert!(
            DataKey::from_file(&short)
                .unwrap_err()
                .to_string()
                .contains("32 random bytes")
        );
    }

    #[test]
    fn keyring_seals_fields_per_column_and_key() {
        let old = DataKey::from_bytes([1; 32]);
        let new = DataKey::from_bytes([2; 32]);
        let ring = Keyring::new(Some(new.clone()), vec![old.clone()]);
        let sealed = ring.seal("memories.content", "my pin is 4417").unwrap();
        assert!(!sealed.contains("4417"));
        assert_ne!(
            sealed,
            ring.seal("memories.content", "my pin is 4417").unwrap()
        );
        let id = ring.current_id().unwrap();
        assert_eq!(
            ring.open(Some(&id), "memories.content", &sealed).unwrap(),
            "my pin is 4417"
        );
        // Another column, a damaged value, or a key not in the ring: an error, not garbage.
        assert!(ring.open(Some(&id), "messages.content", &sealed).is_err());
        let mut bad = sealed.clone().into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        assert!(
            ring.open(
                Some(&id),
                "memories.content",
                std::str::from_utf8(&bad).unwrap()
            )
            .is_err()
        );
        let only_old = Keyring::new(Some(old.clone()), vec![]);
        let e = only_old
            .open(Some(&id), "memories.content", &sealed)
            .unwrap_err();
        assert!(e.to_string().contains(&id), "{e}");
        // Rows of the previous key still open; clear rows pass through.
        let by_old = only_old.seal("memories.content", "x").unwrap();
        assert_eq!(
            ring.open(Some(&old.id()), "memories.content", &by_old)
                .unwrap(),
            "x"
        );
        assert_eq!(
            ring.open(None, "memories.content", "clear").unwrap(),
            "clear"
        );
        let meta = serde_json::json!({"source": "diary", "n": 3});
        let sealed = ring.seal_json("memories.metadata", &meta).unwrap();
        assert!(sealed.is_string());
        assert_eq!(
            ring.open_json(Some(&id), "memories.metadata", sealed)
                .unwrap(),
            meta
        );
        assert_eq!(Keyring::default().seal("c", "t").unwrap(), "t");
    }
}
