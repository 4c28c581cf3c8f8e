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
use aes_gcm::aead::{KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key};
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
}
