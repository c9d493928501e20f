//! The trackers a client folder has connected to, and the key each presented: trust on
//! first use, as SSH's `known_hosts`. One line per tracker, `ADDRESS FINGERPRINT`; lines
//! starting with `#` and blank lines are ignored.
//!
//! Parsing is pure and bounded (a line over [`MAX_LINE`] is refused before it is split),
//! so a damaged file is an error naming its line, never a crash or a silent trust.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::Fingerprint;

/// Longer than any `ADDRESS FINGERPRINT` line (an IPv6 address with port is at most 47).
pub const MAX_LINE: usize = 128;

const HEADER: &str = "# swarmchat: the key each tracker presented when this folder first connected to it.\n# A changed key is refused; delete a tracker's line if its key was changed on purpose.\n";

#[derive(Debug, thiserror::Error)]
pub enum KnownError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Line {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The known trackers, read from text.
pub fn parse(text: &str) -> Result<HashMap<SocketAddr, Fingerprint>, (usize, String)> {
    let mut known = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        if raw.len() > MAX_LINE {
            return Err((line_no, "line too long".into()));
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (addr, fp) = line
            .split_once(' ')
            .ok_or_else(|| (line_no, "expected `ADDRESS FINGERPRINT`".to_string()))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| (line_no, format!("not an address and port: {addr}")))?;
        let fp: Fingerprint = fp.trim().parse().map_err(|e| (line_no, format!("{e}")))?;
        if known.insert(addr, fp).is_some() {
            return Err((line_no, format!("{addr} appears twice")));
        }
    }
    Ok(known)
}

/// The line that remembers `addr`'s key.
pub fn line(addr: SocketAddr, fp: &Fingerprint) -> String {
    format!("{addr} {fp}\n")
}

/// The file of known trackers at a path.
pub struct KnownTrackers {
    path: PathBuf,
}

impl KnownTrackers {
    pub fn at(path: impl Into<PathBuf>) -> KnownTrackers {
        KnownTrackers { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key remembered for `addr`, if any (a missing file remembers nothing).
    pub fn get(&self, addr: SocketAddr) -> Result<Option<Fingerprint>, KnownError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KnownError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let known = parse(&text).map_err(|(line, why)| KnownError::Line {
            path: self.path.clone(),
            line,
            why,
        })?;
        Ok(known.get(&addr).copied())
    }

    /// Remembers `addr`'s key (appended, synced: a crash loses at most this line).
    pub fn remember(&self, addr: SocketAddr, fp: &Fingerprint) -> Result<(), KnownError> {
        let write = || -> std::io::Result<()> {
            let new = !self.path.exists();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            if new {
                f.write_all(HEADER.as_bytes())?;
            }
            f.write_all(line(addr, fp).as_bytes())?;
            f.sync_all()
        };
        write().map_err(|source| KnownError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_reads_back_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownTrackers::at(dir.path().join("known_trackers"));
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "[::1]:4000".parse().unwrap();
        assert_eq!(known.get(a).unwrap(), None, "no file: nothing known");
        let (fa, fb) = (Fingerprint::of_spki(b"a"), Fingerprint::of_spki(b"b"));
        known.remember(a, &fa).unwrap();
        known.remember(b, &fb).unwrap();
        assert_eq!(known.get(a).unwrap(), Some(fa));
        assert_eq!(known.get(b).unwrap(), Some(fb));
        assert_eq!(known.get("127.0.0.1:4001".parse().unwrap()).unwrap(), None);
        let text = std::fs::read_to_string(known.path()).unwrap();
        assert!(text.starts_with("# swarmchat"), "{text}");
    }

    #[test]
    fn a_damaged_line_is_named() {
        let fp = Fingerprint::of_spki(b"a");
        let ok = line("127.0.0.1:1".parse().unwrap(), &fp);
        assert_eq!(parse(&format!("# c\n\n{ok}")).unwrap().len(), 1);
        for (text, at) in [
            (format!("{ok}127.0.0.1 {fp}\n"), 2),
            (format!("{ok}{ok}"), 2),
            ("127.0.0.1:1 SHA256:short\n".to_string(), 1),
            ("127.0.0.1:1\n".to_string(), 1),
            (format!("#\n{}\n", "x".repeat(MAX_LINE + 1)), 2),
        ] {
            assert_eq!(parse(&text).unwrap_err().0, at, "{text}");
        }
    }
}
