//! The credentials file: one `user password` per line, a single space between.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use wire::{Password, UserName};

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
}

/// Who may log in, and with which password.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    users: HashMap<UserName, Password>,
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
    /// that is not exactly `user password` is an error rather than a silently skipped user.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            let Some((user, password)) = line.split_once(' ') else {
                return Err((line_no, "expected `user password`".into()));
            };
            let user = UserName::new(user).map_err(|e| (line_no, e.to_string()))?;
            let password = Password::new(password).map_err(|e| (line_no, e.to_string()))?;
            if users.insert(user.clone(), password).is_some() {
                return Err((line_no, format!("user {user} appears twice")));
            }
        }
        Ok(Self { users })
    }

    pub fn contains(&self, user: &UserName) -> bool {
        self.users.contains_key(user)
    }

    /// Compares in time independent of where the first difference is, so response timing
    /// does not reveal how much of a guess was right.
    pub fn verify(&self, user: &UserName, password: &Password) -> bool {
        let Some(want) = self.users.get(user) else {
            return false;
        };
        let (a, b) = (want.as_str().as_bytes(), password.as_str().as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
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
