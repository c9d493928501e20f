//! What the user types, parsed into a [`Command`] with no I/O, so every rule about command
//! syntax is unit-tested here and the session loop only ever sees valid commands.

use wire::{FileName, IdError, Text, UserName, MAX_CHUNKS};

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Message {
        to: UserName,
        text: Text,
    },
    Broadcast {
        text: Text,
    },
    WhoElse,
    WhoElseSince {
        secs: u64,
    },
    Block {
        user: UserName,
    },
    Unblock {
        user: UserName,
    },
    StartPrivate {
        user: UserName,
    },
    Private {
        to: UserName,
        text: Text,
    },
    StopPrivate {
        user: UserName,
    },
    /// Share a file from `--dir`, split into `chunks` pieces.
    Register {
        name: FileName,
        chunks: usize,
    },
    SearchFile {
        name: FileName,
    },
    /// Chunk numbers 0-based (typed 1-based).
    SearchChunk {
        name: FileName,
        chunks: Vec<u32>,
    },
    Download {
        name: FileName,
    },
    /// `private <user> download <file> <chunk>`: one chunk (0-based) from one user.
    FetchChunk {
        from: UserName,
        name: FileName,
        chunk: u32,
    },
    /// List downloads and uploads in progress.
    Transfers,
    /// Stop a download, keeping its verified chunks.
    Cancel {
        name: FileName,
    },
    Logout,
    Help,
}

/// Why a line is not a command; `Display` is what the user sees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("Error. Invalid command")]
    Unknown,
    #[error("Error. Usage: {0}")]
    Usage(&'static str),
    #[error("Error. Invalid user")]
    BadUser,
    #[error("Error. {0}")]
    BadText(IdError),
    #[error("Error. {0}")]
    BadFile(IdError),
}

/// Chunks a file is split into when `register` is not told.
pub const DEFAULT_CHUNKS: usize = 10;

/// One line per command, shown by `help` and in usage errors.
pub const HELP: &[(&str, &str)] = &[
    (
        "message <user> <message>",
        "send a message (stored if they are offline)",
    ),
    ("broadcast <message>", "send a message to everyone online"),
    ("whoelse", "list the other users online now"),
    (
        "whoelsesince <seconds>",
        "list users online at any time in the last <seconds>",
    ),
    (
        "block <user>",
        "stop <user> from messaging you or seeing your presence",
    ),
    ("unblock <user>", "undo block"),
    (
        "startprivate <user>",
        "open a direct (peer-to-peer) chat with <user>",
    ),
    (
        "private <user> <message>",
        "send over the direct chat; the tracker never sees it",
    ),
    ("stopprivate <user>", "close the direct chat with <user>"),
    (
        "register <file> [<chunks>]",
        "share a file from your folder, in <chunks> pieces (default 10)",
    ),
    (
        "searchFile <file>",
        "which online users hold some of <file>",
    ),
    (
        "searchChunk <file> <chunk>...",
        "which online users hold these chunks (numbered from 1)",
    ),
    (
        "download <file>",
        "fetch <file> from every peer holding it, in the background",
    ),
    (
        "private <user> download <file> <chunk>",
        "fetch one chunk from <user>",
    ),
    (
        "transfers",
        "show downloads and uploads in progress, with rates and limits",
    ),
    (
        "cancel <file>",
        "stop downloading <file>; what is verified is kept for later",
    ),
    ("logout", "log out and quit (end of input does the same)"),
    ("help", "show this list"),
];

/// `private <user> download <file> <chunk>` is a chunk request, not a message.
fn fetch_chunk(to: &str, msg: &str) -> Result<Option<Command>, ParseError> {
    let words: Vec<&str> = msg.split_whitespace().collect();
    match words[..] {
        // The chunk number forgotten: not chat text. A longer sentence still is.
        ["download", _] => Err(ParseError::Usage(
            "private <user> download <file> <chunk>, chunks numbered from 1",
        )),
        ["download", f, n] => match chunk_number(n) {
            Some(chunk) => Ok(Some(Command::FetchChunk {
                from: user(to)?,
                name: file(f)?,
                chunk,
            })),
            None => Err(ParseError::Usage(
                "private <user> download <file> <chunk>, chunks numbered from 1",
            )),
        },
        _ => Ok(None),
    }
}

fn usage(cmd: &str) -> ParseError {
    let text = HELP
        .iter()
        .find(|(syntax, _)| {
            syntax
                .split(' ')
                .next()
                .map(str::to_ascii_lowercase)
                .as_deref()
                == Some(cmd)
        })
        .map(|(syntax, _)| *syntax)
        .unwrap_or("help");
    ParseError::Usage(text)
}

fn user(word: &str) -> Result<UserName, ParseError> {
    UserName::new(word).map_err(|_| ParseError::BadUser)
}

fn file(word: &str) -> Result<FileName, ParseError> {
    FileName::new(word).map_err(ParseError::BadFile)
}

/// A chunk number as typed (from 1), as it travels (from 0).
fn chunk_number(word: &str) -> Option<u32> {
    word.parse::<u32>().ok().filter(|&n| n >= 1).map(|n| n - 1)
}

fn text(rest: &str) -> Result<Text, ParseError> {
    Text::new(rest).map_err(ParseError::BadText)
}

/// Splits off the first whitespace-separated word; the rest keeps its inner spacing.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

impl Command {
    /// Parses a non-empty line. Command words are case-insensitive; names are not.
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let (cmd, rest) = word(line.trim_end());
        let lower = cmd.to_ascii_lowercase();
        let one_user = |rest: &str| -> Result<UserName, ParseError> {
            match word(rest) {
                (u, "") if !u.is_empty() => user(u),
                _ => Err(usage(&lower)),
            }
        };
        let none = |rest: &str, c: Command| {
            if rest.is_empty() {
                Ok(c)
            } else {
                Err(usage(&lower))
            }
        };
        match lower.as_str() {
            "message" | "private" => {
                let (to, msg) = word(rest);
                if to.is_empty() || msg.is_empty() {
                    return Err(usage(&lower));
                }
                if lower == "private" {
                    if let Some(fetch) = fetch_chunk(to, msg)? {
                        return Ok(fetch);
                    }
                }
                let (to, text) = (user(to)?, text(msg)?);
                Ok(if lower == "message" {
                    Command::Message { to, text }
                } else {
                    Command::Private { to, text }
                })
            }
            "broadcast" if !rest.is_empty() => Ok(Command::Broadcast { text: text(rest)? }),
            "broadcast" => Err(usage("broadcast")),
            "whoelse" => none(rest, Command::WhoElse),
            "whoelsesince" => match word(rest) {
                // A number too large for 64 bits still means "since ever".
                (n, "") if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(Command::WhoElseSince {
                        secs: n.parse::<u64>().unwrap_or(u64::MAX),
                    })
                }
                _ => Err(usage("whoelsesince")),
            },
            "block" => Ok(Command::Block {
                user: one_user(rest)?,
            }),
            "unblock" => Ok(Command::Unblock {
                user: one_user(rest)?,
            }),
            "startprivate" => Ok(Command::StartPrivate {
                user: one_user(rest)?,
            }),
            "stopprivate" => Ok(Command::StopPrivate {
                user: one_user(rest)?,
            }),
            "register" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let chunks = match words[..] {
                    [_] => DEFAULT_CHUNKS,
                    [_, n] => match n.parse::<usize>() {
                        Ok(n) if (1..=MAX_CHUNKS).contains(&n) => n,
                        _ => {
                            return Err(ParseError::Usage(
                                "register <file> [<chunks>], 1 to 256 chunks",
                            ))
                        }
                    },
                    _ => return Err(usage("register")),
                };
                Ok(Command::Register {
                    name: file(words[0])?,
                    chunks,
                })
            }
            "searchfile" => match word(rest) {
                (f, "") if !f.is_empty() => Ok(Command::SearchFile { name: file(f)? }),
                _ => Err(usage("searchfile")),
            },
            "searchchunk" => {
                let mut words = rest.split_whitespace();
                let (Some(f), numbers) = (words.next(), words) else {
                    return Err(usage("searchchunk"));
                };
                let chunks: Option<Vec<u32>> = numbers.map(chunk_number).collect();
                match chunks {
                    Some(c) if !c.is_empty() => Ok(Command::SearchChunk {
                        name: file(f)?,
                        chunks: c,
                    }),
                    _ => Err(usage("searchchunk")),
                }
            }
            "download" => match word(rest) {
                (f, "") if !f.is_empty() => Ok(Command::Download { name: file(f)? }),
                _ => Err(usage("download")),
            },
            "transfers" => none(rest, Command::Transfers),
            "cancel" => match word(rest) {
                (f, "") if !f.is_empty() => Ok(Command::Cancel { name: file(f)? }),
                _ => Err(usage("cancel")),
            },
            "logout" => none(rest, Command::Logout),
            "help" => Ok(Command::Help),
            _ => Err(ParseError::Unknown),
        }
    }
}

/// The `help` text.
pub fn help_text() -> Vec<String> {
    let width = HELP.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    HELP.iter()
        .map(|(syntax, what)| format!("{syntax:width$}  {what}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    #[test]
    fn parses_the_spec_commands() {
        assert_eq!(
            Command::parse("message yoda Hey Dude"),
            Ok(Command::Message {
                to: u("yoda"),
                text: Text::new("Hey Dude").unwrap()
            })
        );
        assert_eq!(
            Command::parse("broadcast  vader   sucks "),
            Ok(Command::Broadcast {
                text: Text::new("vader   sucks").unwrap()
            })
        );
        assert_eq!(Command::parse("whoelse"), Ok(Command::WhoElse));
        assert_eq!(
            Command::parse("whoelsesince 200"),
            Ok(Command::WhoElseSince { secs: 200 })
        );
        assert_eq!(
            Command::parse("block hans"),
            Ok(Command::Block { user: u("hans") })
        );
        assert_eq!(
            Command::parse("unblock hans"),
            Ok(Command::Unblock { user: u("hans") })
        );
        assert_eq!(Command::parse("logout"), Ok(Command::Logout));
        assert_eq!(Command::parse("WhoElse"), Ok(Command::WhoElse));
        assert_eq!(
            Command::parse("startprivate luke"),
            Ok(Command::StartPrivate { user: u("luke") })
        );
        assert_eq!(
            Command::parse("private luke hey dude"),
            Ok(Command::Private {
                to: u("luke"),
                text: Text::new("hey dude").unwrap()
            })
        );
        assert_eq!(
            Command::parse("stopprivate luke"),
            Ok(Command::StopPrivate { user: u("luke") })
        );
        assert_eq!(
            Command::parse("private luke"),
            Err(ParseError::Usage("private <user> <message>"))
        );
    }

    fn f(s: &str) -> FileName {
        FileName::new(s).unwrap()
    }

    #[test]
    fn parses_the_file_commands() {
        assert_eq!(
            Command::parse("register a.bin"),
            Ok(Command::Register {
                name: f("a.bin"),
                chunks: 10
            })
        );
        assert_eq!(
            Command::parse("register a.bin 4"),
            Ok(Command::Register {
                name: f("a.bin"),
                chunks: 4
            })
        );
        assert!(matches!(
            Command::parse("register a.bin 0"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            Command::parse("register a.bin 257"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            Command::parse("register ../etc/passwd"),
            Err(ParseError::BadFile(_))
        ));
        assert_eq!(
            Command::parse("searchFile a.bin"),
            Ok(Command::SearchFile { name: f("a.bin") })
        );
        assert_eq!(
            Command::parse("searchChunk a.bin 1 3"),
            Ok(Command::SearchChunk {
                name: f("a.bin"),
                chunks: vec![0, 2]
            })
        );
        assert_eq!(
            Command::parse("searchChunk a.bin 0"),
            Err(ParseError::Usage("searchChunk <file> <chunk>..."))
        );
        assert_eq!(
            Command::parse("searchChunk a.bin"),
            Err(ParseError::Usage("searchChunk <file> <chunk>..."))
        );
        assert_eq!(
            Command::parse("download a.bin"),
            Ok(Command::Download { name: f("a.bin") })
        );
        assert_eq!(
            Command::parse("private hans download a.bin 3"),
            Ok(Command::FetchChunk {
                from: u("hans"),
                name: f("a.bin"),
                chunk: 2
            })
        );
        assert!(matches!(
            Command::parse("private hans download a.bin x"),
            Err(ParseError::Usage(_))
        ));
        assert_eq!(Command::parse("transfers"), Ok(Command::Transfers));
        assert_eq!(
            Command::parse("cancel a.bin"),
            Ok(Command::Cancel { name: f("a.bin") })
        );
        assert_eq!(
            Command::parse("cancel"),
            Err(ParseError::Usage("cancel <file>"))
        );
        // Anything else after `private <user>` is a message.
        assert_eq!(
            Command::parse("private hans download it now please"),
            Ok(Command::Private {
                to: u("hans"),
                text: Text::new("download it now please").unwrap()
            })
        );
    }

    #[test]
    fn a_private_download_that_does_not_parse_is_a_usage_error_not_chat() {
        let usage = Err(ParseError::Usage(
            "private <user> download <file> <chunk>, chunks numbered from 1",
        ));
        assert_eq!(Command::parse("private hans download f.bin"), usage);
        assert!(matches!(
            Command::parse("private hans downloading is slow today"),
            Ok(Command::Private { .. })
        ));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(Command::parse("whatsthetime"), Err(ParseError::Unknown));
        assert_eq!(
            Command::parse("whatsthetime").unwrap_err().to_string(),
            "Error. Invalid command"
        );
        assert_eq!(
            Command::parse("message yoda"),
            Err(ParseError::Usage("message <user> <message>"))
        );
        assert_eq!(
            Command::parse("whoelsesince soon"),
            Err(ParseError::Usage("whoelsesince <seconds>"))
        );
        assert_eq!(
            Command::parse("whoelsesince -5"),
            Err(ParseError::Usage("whoelsesince <seconds>"))
        );
        assert_eq!(
            Command::parse("whoelsesince +5"),
            Err(ParseError::Usage("whoelsesince <seconds>"))
        );
        assert_eq!(
            Command::parse("whoelsesince 99999999999999999999999"),
            Ok(Command::WhoElseSince { secs: u64::MAX })
        );
        assert_eq!(
            Command::parse("block"),
            Err(ParseError::Usage("block <user>"))
        );
        assert_eq!(
            Command::parse("block a b"),
            Err(ParseError::Usage("block <user>"))
        );
        assert_eq!(
            Command::parse("whoelse now"),
            Err(ParseError::Usage("whoelse"))
        );
        let long = format!("broadcast {}", "x".repeat(5000));
        assert!(matches!(Command::parse(&long), Err(ParseError::BadText(_))));
    }

    #[test]
    fn help_has_a_line_per_command() {
        let h = help_text();
        assert_eq!(h.len(), HELP.len());
        assert!(h.iter().any(|l| l.starts_with("whoelsesince <seconds>")));
    }
}
