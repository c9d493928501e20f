//! The credentials file: one `user password` per line, a single space between, where the
//! password may also be an Argon2 PHC string (`user $argon2id$v=19$m=19456,t=2,p=1$...`),
//! which is what `tracker hash-credentials FILE` turns every plain entry into.
//!
//! Argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane: the `argon2` crate's
//! defaults) takes ~30 ms a check on this machine's cores, on purpose: the server calls
//! [`Secret::verify`] off its async threads.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use wire::{Password, UserName};

/// What starts a hashed entry; a plain password cannot start with it.
const PHC_PREFIX: &str = "$argon2";
/// The costliest hash a login may take: 256 MiB, 16 passes, 8 lanes (OWASP's is 19 MiB,
/// 2, 1).
const MAX_M_KIB: u32 = 256 * 1024;
const MAX_T: u32 = 16;
const MAX_P: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {path}: {source}")]
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
    #[error("{path}: no users")]
    Empty { path: PathBuf },
    #[error("cannot write credentials file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the file holds for one user.
#[derive(Debug, Clone)]
pub enum Secret {
    /// The spec's plain password.
    Plain(Password),
    /// An Argon2 PHC string (checked to parse when the file was read).
    Hashed(Arc<str>),
}

impl Secret {
    /// Whether checking takes real time (call it off async threads).
    pub fn is_hashed(&self) -> bool {
        matches!(self, Secret::Hashed(_))
    }

    /// Whether `password` is this user's. A plain one is compared in time independent of
    /// where the first difference is, so response timing does not reveal how much of a
    /// guess was right; a hashed one costs the same for any guess (Argon2 over the guess,
    /// then a constant-time comparison of the outputs).
    pub fn verify(&self, password: &Password) -> bool {
        match self {
            Secret::Plain(want) => {
                let (a, b) = (want.as_str().as_bytes(), password.as_str().as_bytes());
                let mut diff = a.len() ^ b.len();
                for i in 0..a.len().max(b.len()) {
                    diff |= usize::from(
                        a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0),
                    );
                }
                diff == 0
            }
            Secret::Hashed(phc) => PasswordHash::new(phc).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_str().as_bytes(), &h)
                    .is_ok()
            }),
        }
    }
}

/// `password` as an Argon2id PHC string with a fresh random salt.
pub fn hash(password: &Password) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_str().as_bytes(), &salt)
        .expect("Argon2 with default parameters and a generated salt")
        .to_string()
}

/// Parses one entry's secret: a PHC string when it starts like one, else a password.
fn secret(field: &str) -> Result<Secret, String> {
    if !field.starts_with(PHC_PREFIX) {
        return Password::new(field)
            .map(Secret::Plain)
            .map_err(|e| e.to_string());
    }
    let h = PasswordHash::new(field).map_err(|e| format!("not an Argon2 PHC string: {e}"))?;
    if !["argon2id", "argon2i", "argon2d"].contains(&h.algorithm.as_str()) {
        return Err(format!("unknown hash algorithm {}", h.algorithm));
    }
    // The parameters must be ones Argon2 accepts, or no password would ever match; and
    // ones a login can afford, or one line could make every check take a gigabyte.
    let params = argon2::Params::try_from(&h).map_err(|e| format!("bad Argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_M_KIB || params.t_cost() > MAX_T || params.p_cost() > MAX_P {
        return Err(format!(
            "Argon2 parameters too costly for a login (at most m={MAX_M_KIB}, t={MAX_T}, p={MAX_P})"
        ));
    }
    if h.hash.is_none() {
        return Err("a PHC string without its hash".into());
    }
    Ok(Secret::Hashed(field.into()))
}

/// Who may log in, and with what.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    users: HashMap<UserName, Secret>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
            .map_err(|(line, why)| CredentialsError::Line {
                path: path.to_owned(),
                line,
                why,
            })
            .and_then(|c| {
                if c.users.is_empty() {
                    Err(CredentialsError::Empty {
                        path: path.to_owned(),
                    })
                } else {
                    Ok(c)
                }
            })
    }

    /// Parses the file's text; an error carries the 1-based line number and the reason.
    ///
    /// CRLF line ends, a missing final newline and blank lines are tolerated; anything else
    /// that is not exactly `user password` (or `user PHC`) is an error rather than a
    /// silently skipped user.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (line_no, entry) in entries(text) {
            let (user, secret) = entry.map_err(|why| (line_no, why))?;
            if users.insert(user.clone(), secret).is_some() {
                return Err((line_no, format!("user {user} appears twice")));
            }
        }
        Ok(Self { users })
    }

    pub fn contains(&self, user: &UserName) -> bool {
        self.users.contains_key(user)
    }

    /// The user's secret, to check a password against (see [`Secret::verify`]).
    pub fn secret(&self, user: &UserName) -> Option<Secret> {
        self.users.get(user).cloned()
    }

    /// Whether `password` is `user`'s (at Argon2's cost for a hashed entry).
    pub fn verify(&self, user: &UserName, password: &Password) -> bool {
        self.users.get(user).is_some_and(|s| s.verify(password))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn users(&self) -> impl Iterator<Item = &UserName> {
        self.users.keys()
    }
}

/// Each non-blank line's number and entry (or why it is not one).
fn entries(text: &str) -> impl Iterator<Item = (usize, Result<(UserName, Secret), String>)> + '_ {
    text.split('\n').enumerate().filter_map(|(i, raw)| {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            return None;
        }
        let entry = line
            .split_once(' ')
            .ok_or_else(|| "expected `user password`".to_string())
            .and_then(|(user, field)| {
                let user = UserName::new(user).map_err(|e| e.to_string())?;
                Ok((user, secret(field)?))
            });
        Some((i + 1, entry))
    })
}

/// What [`hash_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed {
    /// Plain entries now hashed.
    pub hashed: usize,
    /// Entries that were hashed already, kept as they were.
    pub kept: usize,
}

/// Rewrites the credentials file at `path` with every plain password hashed (Argon2id),
/// atomically: the new file is written beside it, synced, and renamed over it, with the
/// old file's permissions, so a crash leaves either the old file or the new one. A file
/// that does not parse is left alone (the error names the line). Blank lines and entries
/// already hashed stay as they are; hashing uses every core.
pub fn hash_file(path: &Path) -> Result<Hashed, CredentialsError> {
    let read_err = |source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    };
    let write_err = |source| CredentialsError::Write {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    Credentials::parse(&text).map_err(|(line, why)| CredentialsError::Line {
        path: path.to_owned(),
        line,
        why,
    })?;
    let lines: Vec<&str> = text.split('\n').collect();
    let plain: Vec<usize> = entries(&text)
        .filter(|(_, e)| matches!(e, Ok((_, Secret::Plain(_)))))
        .map(|(line_no, _)| line_no - 1)
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = plain.len().div_ceil(threads).max(1);
    let hashes: Vec<(usize, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = plain
            .chunks(per)
            .map(|idx| {
                let lines = &lines;
                scope.spawn(move || {
                    idx.iter()
                        .map(|&i| {
                            let line = lines[i].strip_suffix('\r').unwrap_or(lines[i]);
                            let (user, password) = line.split_once(' ').expect("parsed above");
                            let password = Password::new(password).expect("parsed above");
                            (i, format!("{user} {}", hash(&password)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("hashing does not panic"))
            .collect()
    });
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    for (i, line) in hashes {
        let crlf = if out[i].ends_with('\r') { "\r" } else { "" };
        out[i] = format!("{line}{crlf}");
    }
    let result = Hashed {
        hashed: plain.len(),
        kept: entries(&text).count() - plain.len(),
    };
    if plain.is_empty() {
        return Ok(result);
    }
    let perms = std::fs::metadata(path).map_err(read_err)?.permissions();
    let tmp = path.with_file_name(format!(
        ".{}.new-{}",
        path.file_name()
            .map_or("credentials".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(perms)?;
        f.write_all(out.join("\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the folder is synced.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }
    fn p(s: &str) -> Password {
        Password::new(s).unwrap()
    }

    #[test]
    fn parses_crlf_blank_lines_and_missing_final_newline() {
        let c = Credentials::parse("hans falcon\r\n\r\nyoda wise").unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.verify(&u("hans"), &p("falcon")));
        assert!(c.verify(&u("yoda"), &p("wise")));
        assert!(
            !c.verify(&u("yoda"), &p("Wise")),
            "passwords are case-sensitive"
        );
        assert!(
            !c.verify(&u("Yoda"), &p("wise")),
            "names are case-sensitive"
        );
        assert!(!c.verify(&u("yoda"), &p("wis")));
        assert!(!c.verify(&u("yoda"), &p("wisee")));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        assert_eq!(Credentials::parse("hans falcon\nyoda").unwrap_err().0, 2);
        assert_eq!(
            Credentials::parse("hans falcon\nyoda  wise").unwrap_err().0,
            2,
            "two spaces leave a password starting with a space"
        );
        assert_eq!(Credentials::parse("a b\nb c\na d").unwrap_err().0, 3);
    }

    #[test]
    fn hashed_and_plain_entries_both_verify() {
        let phc = hash(&p("falcon"));
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let c = Credentials::parse(&format!("hans {phc}\nyoda wise\n")).unwrap();
        assert!(c.secret(&u("hans")).unwrap().is_hashed());
        assert!(!c.secret(&u("yoda")).unwrap().is_hashed());
        assert!(c.verify(&u("hans"), &p("falcon")));
        assert!(!c.verify(&u("hans"), &p("Falcon")));
        assert!(
            !c.verify(&u("hans"), &p(&phc[..60])),
            "the hash is not the password"
        );
        assert!(c.verify(&u("yoda"), &p("wise")));
        assert!(!c.verify(&u("luke"), &p("wise")));
    }

    #[test]
    fn a_broken_hash_names_its_line() {
        let phc = hash(&p("falcon"));
        for bad in [
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA".to_string(), // no hash
            "$argon2id$nonsense".to_string(),
            phc.replace("argon2id", "argon2x"),
            phc.replace("m=19456", "m=1"), // below Argon2's minimum
            phc.replace("m=19456", "m=4000000"), // 4 GB a login
        ] {
            let err = Credentials::parse(&format!("yoda wise\nhans {bad}\n")).unwrap_err();
            assert_eq!(err.0, 2, "{bad}: {}", err.1);
        }
        // Any other `$` starts a plain password, as in the spec.
        let c = Credentials::parse("hans $ecret").unwrap();
        assert!(c.verify(&u("hans"), &p("$ecret")));
    }

    #[test]
    fn hash_file_hashes_every_plain_entry_and_keeps_everyone_able_to_log_in() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.txt");
        let already = hash(&p("pass1"));
        std::fs::write(
            &path,
            format!("hans falcon\r\n\nyoda wise\nluke {already}\nleia $ecret"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let done = hash_file(&path).unwrap();
        assert_eq!(done, Hashed { hashed: 3, kept: 1 });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("falcon") && !text.contains("wise") && !text.contains("$ecret"));
        assert!(text.contains(&already), "a hashed entry is kept as it was");
        let c = Credentials::parse(&text).unwrap();
        for (user, pw) in [
            ("hans", "falcon"),
            ("yoda", "wise"),
            ("luke", "pass1"),
            ("leia", "$ecret"),
        ] {
            assert!(c.secret(&u(user)).unwrap().is_hashed(), "{user}");
            assert!(c.verify(&u(user), &p(pw)), "{user}");
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "permissions kept");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        // Again: nothing left to hash, the file untouched.
        assert_eq!(hash_file(&path).unwrap(), Hashed { hashed: 0, kept: 4 });
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn hash_file_leaves_a_broken_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.txt");
        std::fs::write(&path, "hans falcon\nbroken\n").unwrap();
        let msg = hash_file(&path).unwrap_err().to_string();
        assert!(msg.contains("creds.txt:2"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "hans falcon\nbroken\n"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.txt");
        std::fs::write(&path, "hans falcon\nbroken\n").unwrap();
        let msg = Credentials::load(&path).unwrap_err().to_string();
        assert!(msg.contains("creds.txt:2"), "{msg}");
        let msg = Credentials::load(&dir.path().join("missing.txt"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing.txt"), "{msg}");
    }
}
