//! File-sharing values: names, digests, and the description of a shared file.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{check, IdError};

/// Most chunks a file may be split into. Keeps a `Register` (32 bytes of hash per chunk)
/// well inside the tracker's client frame cap.
pub const MAX_CHUNKS: usize = 256;
/// Longest file name, in bytes: the usual file-system limit (255) less the longest suffix
/// a client adds for its own files about it (`<name>.leaves` in [`STATE_DIR`]). A name
/// the client could not keep state for is refused before anything is registered, not
/// half-registered (255-byte names used to pass the tracker and then fail to save).
pub const MAX_FILE_NAME: usize = 255 - ".leaves".len();
/// Bytes of chunk data per `PeerMsg::Data` frame: memory per transfer stays this small
/// whatever the chunk size.
pub const BLOCK_LEN: usize = 256 * 1024;

/// A plain file name: no path separators, not `.` or `..`, no control characters, not the
/// client's own state folder. Safe to join onto a folder path. Spaces are allowed inside
/// (`my notes.txt`; the client reads such a name in double quotes) but not at either end,
/// where nobody could see them in a listing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileName(String);

/// The folder inside `--dir` where a client keeps its manifests and partial downloads.
pub const STATE_DIR: &str = ".swarmchat";

impl FileName {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check(&s, "file name", MAX_FILE_NAME, true)?;
        if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
            return Err(IdError::Padded { what: "file name" });
        }
        if s.contains(['/', '\\']) || s == "." || s == ".." || s == STATE_DIR {
            return Err(IdError::NotPlain);
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FileName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<FileName> for String {
    fn from(v: FileName) -> String {
        v.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Fixed-size byte arrays travel as MessagePack `bin` (2 + N bytes), not as arrays of
/// integers (up to 2 bytes per element).
macro_rules! byte_array_serde {
    ($name:ident, $n:expr) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        write!(f, "{} bytes", $n)
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$name, E> {
                        <[u8; $n]>::try_from(v)
                            .map($name)
                            .map_err(|_| E::invalid_length(v.len(), &self))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    };
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);
byte_array_serde!(Digest, 32);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

byte_array_serde!(Ticket, 16);
byte_array_serde!(Circuit, 16);
byte_array_serde!(PeerKey, 32);
byte_array_serde!(ResumeToken, 32);
use crate::msg::{Circuit, PeerKey, ResumeToken, Ticket};

/// Why a file description is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("a shared file cannot be empty")]
    Empty,
    #[error("chunk size must be at least 1 byte")]
    ZeroChunk,
    #[error("{0} chunks is more than the {MAX_CHUNKS} allowed")]
    TooManyChunks(usize),
    #[error("{roots} merkle roots for {chunks} chunks")]
    Roots { chunks: usize, roots: usize },
    #[error("{chunks} chunk hashes for {size} bytes in chunks of {chunk_size}")]
    Mismatch {
        size: u64,
        chunk_size: u64,
        chunks: usize,
    },
}

/// Everything a downloader needs to know about a file to fetch and verify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMeta", into = "RawMeta")]
pub struct FileMeta {
    name: FileName,
    size: u64,
    chunk_size: u64,
    /// Per chunk, its SHA-256 and the root of the merkle tree over its blocks (the
    /// `merkle` crate): what every block is checked against on arrival. (One vector, not
    /// two: the description travels inside replies, which stay small to move.)
    chunks: Vec<(Digest, Digest)>,
    sha256: Digest,
}

#[derive(Serialize, Deserialize)]
struct RawMeta {
    name: FileName,
    size: u64,
    chunk_size: u64,
    chunks: Vec<Digest>,
    roots: Vec<Digest>,
    sha256: Digest,
}

impl TryFrom<RawMeta> for FileMeta {
    type Error = MetaError;
    fn try_from(r: RawMeta) -> Result<Self, MetaError> {
        FileMeta::new(r.name, r.size, r.chunk_size, r.chunks, r.roots, r.sha256)
    }
}

impl From<FileMeta> for RawMeta {
    fn from(m: FileMeta) -> RawMeta {
        let (chunks, roots) = m.chunks.into_iter().unzip();
        RawMeta {
            name: m.name,
            size: m.size,
            chunk_size: m.chunk_size,
            chunks,
            roots,
            sha256: m.sha256,
        }
    }
}

impl FileMeta {
    pub fn new(
        name: FileName,
        size: u64,
        chunk_size: u64,
        chunks: Vec<Digest>,
        roots: Vec<Digest>,
        sha256: Digest,
    ) -> Result<Self, MetaError> {
        if size == 0 {
            return Err(MetaError::Empty);
        }
        if chunk_size == 0 {
            return Err(MetaError::ZeroChunk);
        }
        if chunks.len() > MAX_CHUNKS {
            return Err(MetaError::TooManyChunks(chunks.len()));
        }
        if size.div_ceil(chunk_size) != chunks.len() as u64 {
            return Err(MetaError::Mismatch {
                size,
                chunk_size,
                chunks: chunks.len(),
            });
        }
        if roots.len() != chunks.len() {
            return Err(MetaError::Roots {
                chunks: chunks.len(),
                roots: roots.len(),
            });
        }
        Ok(Self {
            name,
            size,
            chunk_size,
            chunks: chunks.into_iter().zip(roots).collect(),
            sha256,
        })
    }

    /// The chunk size that splits `size` bytes into at most `wanted` chunks, all full but
    /// the last. May give fewer chunks than wanted for tiny files (never an empty chunk).
    pub fn chunk_size_for(size: u64, wanted: usize) -> u64 {
        size.div_ceil(wanted.max(1) as u64).max(1)
    }

    pub fn name(&self) -> &FileName {
        &self.name
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }
    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }
    pub fn chunk_hash(&self, chunk: u32) -> Option<&Digest> {
        self.chunks.get(chunk as usize).map(|(hash, _)| hash)
    }
    pub fn sha256(&self) -> &Digest {
        &self.sha256
    }
    /// The merkle root over `chunk`'s blocks.
    pub fn chunk_root(&self, chunk: u32) -> Option<&Digest> {
        self.chunks.get(chunk as usize).map(|(_, root)| root)
    }

    /// Index of block `block` of `chunk` among all blocks of the file (every chunk but the
    /// last is full, so holds the same number of blocks), if both exist.
    pub fn block_index(&self, chunk: u32, block: u32) -> Option<u64> {
        self.block_range(chunk, block)?;
        let per = self.chunk_size.div_ceil(BLOCK_LEN as u64);
        Some(chunk as u64 * per + block as u64)
    }

    /// Blocks in the whole file: the length of a bitfield of them.
    pub fn total_blocks(&self) -> u64 {
        (0..self.chunk_count())
            .map(|c| self.block_count(c).unwrap_or(0) as u64)
            .sum()
    }

    /// Byte offset and length of `chunk`, if it exists.
    pub fn chunk_range(&self, chunk: u32) -> Option<(u64, u64)> {
        if chunk >= self.chunk_count() {
            return None;
        }
        let start = chunk as u64 * self.chunk_size;
        Some((start, self.chunk_size.min(self.size - start)))
    }

    /// Blocks (of [`BLOCK_LEN`] bytes, the last one shorter) in `chunk`, if it exists.
    pub fn block_count(&self, chunk: u32) -> Option<u32> {
        let (_, len) = self.chunk_range(chunk)?;
        Some(len.div_ceil(BLOCK_LEN as u64) as u32)
    }

    /// Byte offset in the file and length of block `block` of `chunk`, if both exist.
    pub fn block_range(&self, chunk: u32, block: u32) -> Option<(u64, u64)> {
        let (start, len) = self.chunk_range(chunk)?;
        let at = block as u64 * BLOCK_LEN as u64;
        if at >= len {
            return None;
        }
        Some((start + at, (BLOCK_LEN as u64).min(len - at)))
    }

    /// Same content and the same split.
    pub fn same_as(&self, other: &FileMeta) -> bool {
        self == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: u8) -> Digest {
        Digest([b; 32])
    }

    #[test]
    fn file_names_are_plain() {
        assert!(FileName::new("movie.mkv").is_ok());
        assert!(FileName::new(".hidden").is_ok());
        assert!(FileName::new("my  notes.txt").is_ok());
        assert_eq!(
            FileName::new(" lead"),
            Err(IdError::Padded { what: "file name" })
        );
        assert_eq!(
            FileName::new("trail\u{a0}"),
            Err(IdError::Padded { what: "file name" })
        );
        for bad in [
            "",
            "a/b",
            "..",
            ".",
            "a\\b",
            "../etc/passwd",
            "tab\there",
            ".swarmchat",
            "\u{7}",
        ] {
            assert!(FileName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn meta_checks_its_arithmetic() {
        let name = FileName::new("f").unwrap();
        let m = FileMeta::new(
            name.clone(),
            25,
            10,
            vec![d(1), d(2), d(3)],
            vec![d(4); 3],
            d(0),
        )
        .unwrap();
        assert_eq!(m.chunk_range(0), Some((0, 10)));
        assert_eq!(m.chunk_range(2), Some((20, 5)));
        assert_eq!(m.chunk_range(3), None);
        assert_eq!(
            FileMeta::new(name.clone(), 25, 10, vec![d(1), d(2)], vec![d(4); 2], d(0)),
            Err(MetaError::Mismatch {
                size: 25,
                chunk_size: 10,
                chunks: 2
            })
        );
        assert_eq!(
            FileMeta::new(name.clone(), 0, 1, vec![], vec![], d(0)),
            Err(MetaError::Empty)
        );
        assert_eq!(
            FileMeta::new(
                name.clone(),
                1000,
                1,
                vec![d(1); 1000],
                vec![d(1); 1000],
                d(0)
            ),
            Err(MetaError::TooManyChunks(1000))
        );
        assert_eq!(
            FileMeta::new(name, 25, 10, vec![d(1), d(2), d(3)], vec![d(4); 2], d(0)),
            Err(MetaError::Roots {
                chunks: 3,
                roots: 2
            })
        );
    }

    #[test]
    fn blocks_tile_each_chunk() {
        let name = FileName::new("f").unwrap();
        let b = BLOCK_LEN as u64;
        // Chunks of 2.5 blocks; the file ends half a block into its second chunk.
        let m = FileMeta::new(
            name,
            3 * b,
            5 * b / 2,
            vec![d(1), d(2)],
            vec![d(3); 2],
            d(0),
        )
        .unwrap();
        assert_eq!(m.total_blocks(), 4);
        assert_eq!(m.block_count(0), Some(3));
        assert_eq!(m.block_range(0, 2), Some((2 * b, b / 2)));
        assert_eq!(m.block_range(0, 3), None);
        assert_eq!(m.block_count(1), Some(1));
        assert_eq!(m.block_range(1, 0), Some((5 * b / 2, b / 2)));
        assert_eq!(m.block_range(2, 0), None);
    }

    #[test]
    fn chunk_size_never_makes_empty_chunks() {
        assert_eq!(FileMeta::chunk_size_for(100, 10), 10);
        assert_eq!(FileMeta::chunk_size_for(101, 10), 11); // 10 chunks, last of 2 bytes
        assert_eq!(FileMeta::chunk_size_for(11, 10), 2); // 6 chunks
        assert_eq!(FileMeta::chunk_size_for(3, 10), 1); // 3 chunks
        for size in 1..200u64 {
            for n in 1..12usize {
                let cs = FileMeta::chunk_size_for(size, n);
                let count = size.div_ceil(cs);
                assert!(count <= n as u64 && count >= 1);
                assert!(size - (count - 1) * cs >= 1, "last chunk is not empty");
            }
        }
    }

    #[test]
    fn digests_are_compact_and_round_trip() {
        let bytes = rmp_serde::to_vec(&d(0xff)).unwrap();
        assert_eq!(bytes.len(), 34);
        assert_eq!(rmp_serde::from_slice::<Digest>(&bytes).unwrap(), d(0xff));
        assert!(
            rmp_serde::from_slice::<Digest>(&rmp_serde::to_vec(&[1u8; 31][..]).unwrap()).is_err()
        );
    }

    #[test]
    fn inconsistent_meta_fails_to_decode() {
        let raw = RawMeta {
            name: FileName::new("f").unwrap(),
            size: 25,
            chunk_size: 10,
            chunks: vec![d(1)],
            roots: vec![d(2)],
            sha256: d(0),
        };
        let bytes = rmp_serde::to_vec(&raw).unwrap();
        assert!(rmp_serde::from_slice::<FileMeta>(&bytes).is_err());
    }
}
