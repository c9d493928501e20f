//! Validated values that arrive from the network or the user.
//!
//! Each type can only be built through its validating constructor (serde goes through it too,
//! via `try_from`), so code holding a `UserName` or a `Text` never re-checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest user name, in bytes.
pub const MAX_USER_LEN: usize = 64;
/// Longest password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 256;
/// Longest chat message, in bytes. Keeps every chat frame far below the frame cap.
pub const MAX_TEXT_LEN: usize = 4096;

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} contains whitespace")]
    Whitespace { what: &'static str },
    #[error("{what} starts or ends with a space")]
    Padded { what: &'static str },
    #[error("{what} contains a control character")]
    Control { what: &'static str },
    #[error("file names must be plain names: no path separators, not . or ..")]
    NotPlain,
}

/// The rules every validated string shares: non-empty, at most `max` bytes, no control
/// characters, and (unless `allow_space`) no whitespace.
pub(crate) fn check(
    s: &str,
    what: &'static str,
    max: usize,
    allow_space: bool,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong { what, max });
    }
    // Control characters (escape sequences, newlines) would let one user rewrite another's
    // terminal or forge extra lines of output, so they never enter the system.
    if s.is_ascii() {
        // Every relayed text passes here: the byte test is the same rule without decoding
        // characters (ASCII controls are 0x00-0x1f and 0x7f; the only ASCII whitespace that
        // is not a control is the space).
        let b = s.as_bytes();
        if b.iter().any(|&c| c < 0x20 || c == 0x7f) {
            return Err(IdError::Control { what });
        }
        if !allow_space && b.contains(&b' ') {
            return Err(IdError::Whitespace { what });
        }
        return Ok(());
    }
    if s.chars().any(char::is_control) {
        return Err(IdError::Control { what });
    }
    if !allow_space && s.chars().any(char::is_whitespace) {
        return Err(IdError::Whitespace { what });
    }
    Ok(())
}

macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $allow_space:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check(&s, $what, $max, $allow_space)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

validated_string!(
    /// A user name: 1..=64 bytes, no whitespace, no control characters. Case-sensitive.
    UserName, "user name", MAX_USER_LEN, false
);
validated_string!(
    /// A password as typed: 1..=256 bytes, no whitespace, no control characters.
    Password, "password", MAX_PASSWORD_LEN, false
);
validated_string!(
    /// A chat message: 1..=4096 bytes of printable text (spaces allowed, no control characters).
    Text, "message", MAX_TEXT_LEN, true
);

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
/// Never printed, so it cannot leak into a log.
impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_fast_path_is_the_same_rule_as_the_character_test() {
        for c in 0u8..0x80 {
            let s = format!("a{}b", c as char);
            let ch = c as char;
            for allow_space in [false, true] {
                let want = if ch.is_control() {
                    Err(IdError::Control { what: "t" })
                } else if !allow_space && ch.is_whitespace() {
                    Err(IdError::Whitespace { what: "t" })
                } else {
                    Ok(())
                };
                assert_eq!(check(&s, "t", 10, allow_space), want, "byte {c:#x}");
            }
        }
    }

    #[test]
    fn user_names_are_validated() {
        assert!(UserName::new("r2d2").is_ok());
        assert_eq!(UserName::new(""), Err(IdError::Empty { what: "user name" }));
        assert_eq!(
            UserName::new("a b"),
            Err(IdError::Whitespace { what: "user name" })
        );
        assert_eq!(
            UserName::new("a\u{1b}[2J"),
            Err(IdError::Control { what: "user name" })
        );
        assert!(matches!(
            UserName::new("x".repeat(MAX_USER_LEN + 1)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn text_allows_spaces_but_not_newlines() {
        assert!(Text::new("force is strong").is_ok());
        assert_eq!(
            Text::new("two\nlines"),
            Err(IdError::Control { what: "message" })
        );
    }

    #[test]
    fn password_debug_hides_the_secret() {
        let p = Password::new("wise").unwrap();
        assert!(!format!("{p:?}").contains("wise"));
    }
}
