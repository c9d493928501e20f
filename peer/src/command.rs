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
    /// Stop sharing a file; its owner withdraws the name for everyone.
    Unregister {
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
    #[error("Error. A quote is not closed: a file name with spaces goes in double quotes, as in register \"my notes.txt\"")]
    OpenQuote,
    /// A file name with spaces typed without quotes; carries the command as it should be.
    #[error("Error. A file name with spaces goes in double quotes: {0}")]
    NeedsQuotes(String),
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
        "unregister <file>",
        "stop sharing <file>; if you registered it, withdraw it for everyone",
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
    const USAGE: ParseError =
        ParseError::Usage("private <user> download <file> <chunk>, chunks numbered from 1");
    let (first, rest) = word(msg);
    if first != "download" || rest.is_empty() {
        return Ok(None);
    }
    let quoted = rest.starts_with('"');
    let Some((name, after)) = file_word(rest) else {
        return Err(ParseError::OpenQuote);
    };
    match (word(after), quoted) {
        // The chunk number forgotten: not chat text.
        (("", _), _) => Err(USAGE),
        ((n, ""), _) => match chunk_number(n) {
            Some(chunk) => Ok(Some(Command::FetchChunk {
                from: user(to)?,
                name: file(&name)?,
                chunk,
            })),
            None => Err(USAGE),
        },
        (_, true) => Err(USAGE),
        // A longer sentence is chat text.
        (_, false) => Ok(None),
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

/// A file name as typed, and whether it was in quotes.
struct Typed<'a> {
    word: std::borrow::Cow<'a, str>,
    quoted: bool,
}

/// The file name that starts `rest`, and what follows it.
fn file_then<'a>(rest: &'a str, cmd: &str) -> Result<(Typed<'a>, &'a str), ParseError> {
    let quoted = rest.trim_start().starts_with('"');
    match file_word(rest) {
        None => Err(ParseError::OpenQuote),
        Some((w, _)) if w.is_empty() && !quoted => Err(usage(cmd)),
        Some((word, rest)) => Ok((Typed { word, quoted }, rest)),
    }
}

/// A command taking one file name and nothing else; `cmd` as it is spelled in `help`.
fn one_file(rest: &str, cmd: &'static str) -> Result<FileName, ParseError> {
    let lower = cmd.to_ascii_lowercase();
    let (name, after) = file_then(rest, &lower)?;
    match after {
        "" => file(&name.word),
        _ if name.quoted => Err(usage(&lower)),
        // `download my notes.txt`: a name with spaces, typed without its quotes.
        more => Err(needs_quotes(cmd, &format!("{} {more}", name.word), "")),
    }
}

fn needs_quotes(cmd: &str, spaced: &str, after: &str) -> ParseError {
    let name = match FileName::new(spaced) {
        Ok(n) => typed(&n).into_owned(),
        Err(_) => format!("\"{spaced}\""),
    };
    let after = if after.is_empty() {
        String::new()
    } else {
        format!(" {after}")
    };
    ParseError::NeedsQuotes(format!("{cmd} {name}{after}"))
}

fn digits(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit())
}

/// A chunk number as typed (from 1), as it travels (from 0).
fn chunk_number(word: &str) -> Option<u32> {
    word.parse::<u32>().ok().filter(|&n| n >= 1).map(|n| n - 1)
}

fn text(rest: &str) -> Result<Text, ParseError> {
    Text::new(rest).map_err(ParseError::BadText)
}

/// Splits off a file name: a word, or a name in double quotes (`"my notes.txt"`, with
/// `\"` and `\\` for a quote or backslash inside). The rest keeps its inner spacing.
/// `None` when a quote is not closed.
fn file_word(s: &str) -> Option<(std::borrow::Cow<'_, str>, &str)> {
    let s = s.trim_start();
    let Some(quoted) = s.strip_prefix('"') else {
        let (w, rest) = word(s);
        return Some((w.into(), rest));
    };
    let mut name = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let rest = &quoted[i + 1..];
                // `"a"b` is not a name followed by `b`.
                if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                    return None;
                }
                return Some((name.into(), rest.trim_start()));
            }
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => name.push(e),
                Some((_, other)) => {
                    name.push('\\');
                    name.push(other);
                }
                None => return None,
            },
            c => name.push(c),
        }
    }
    None
}

/// How to type `name` in a command: as it is, or in double quotes when it holds a space
/// or starts with a quote (what [`Command::parse`] reads back as the same name).
pub fn typed(name: &FileName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str();
    if !s.contains(char::is_whitespace) && !s.starts_with('"') {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out.into()
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
                let (name, rest) = file_then(rest, &lower)?;
                let words: Vec<&str> = rest.split_whitespace().collect();
                let chunks = match words[..] {
                    [] => DEFAULT_CHUNKS,
                    [n] if digits(n) => match n.parse::<usize>() {
                        Ok(n) if (1..=MAX_CHUNKS).contains(&n) => n,
                        _ => {
                            return Err(ParseError::Usage(
                                "register <file> [<chunks>], 1 to 256 chunks",
                            ))
                        }
                    },
                    _ if name.quoted => return Err(usage("register")),
                    // `register my notes.txt` or `register my notes.txt 4`.
                    [.., n] if digits(n) => {
                        let spaced =
                            format!("{} {}", name.word, words[..words.len() - 1].join(" "));
                        return Err(needs_quotes("register", &spaced, n));
                    }
                    _ => {
                        let spaced = format!("{} {}", name.word, words.join(" "));
                        return Err(needs_quotes("register", &spaced, ""));
                    }
                };
                Ok(Command::Register {
                    name: file(&name.word)?,
                    chunks,
                })
            }
            "searchfile" => Ok(Command::SearchFile {
                name: one_file(rest, "searchFile")?,
            }),
            "searchchunk" => {
                let (name, rest) = file_then(rest, &lower)?;
                let words: Vec<&str> = rest.split_whitespace().collect();
                // The numbers are the words after the last one that is not a number.
                let first_number = words.iter().rposition(|w| !digits(w)).map_or(0, |i| i + 1);
                if first_number > 0 && !name.quoted {
                    let spaced = format!("{} {}", name.word, words[..first_number].join(" "));
                    return Err(needs_quotes(
                        "searchChunk",
                        &spaced,
                        &words[first_number..].join(" "),
                    ));
                }
                let chunks: Option<Vec<u32>> = words.iter().map(|w| chunk_number(w)).collect();
                match chunks {
                    Some(c) if !c.is_empty() => Ok(Command::SearchChunk {
                        name: file(&name.word)?,
                        chunks: c,
                    }),
                    _ => Err(usage("searchchunk")),
                }
            }
            "download" => Ok(Command::Download {
                name: one_file(rest, "download")?,
            }),
            "unregister" => Ok(Command::Unregister {
                name: one_file(rest, "unregister")?,
            }),
            "transfers" => none(rest, Command::Transfers),
            "cancel" => Ok(Command::Cancel {
                name: one_file(rest, "cancel")?,
            }),
            "logout" => none(rest, Command::Logout),
            "help" => Ok(Command::Help),
            _ => Err(ParseError::Unknown),
        }
    }
}

/// The line after the commands in `help`.
pub const QUOTING: &str =
    r#"A file name with spaces goes in double quotes: register "my notes.txt""#;

/// The `help` text.
pub fn help_text() -> Vec<String> {
    let width = HELP.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    HELP.iter()
        .map(|(syntax, what)| format!("{syntax:width$}  {what}"))
        .chain([QUOTING.to_string()])
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
    fn a_file_name_with_spaces_goes_in_double_quotes_in_every_file_command() {
        let n = f("my notes.txt");
        assert_eq!(
            Command::parse(r#"register "my notes.txt" 4"#),
            Ok(Command::Register {
                name: n.clone(),
                chunks: 4
            })
        );
        assert_eq!(
            Command::parse(r#"searchFile "my notes.txt""#),
            Ok(Command::SearchFile { name: n.clone() })
        );
        assert_eq!(
            Command::parse(r#"searchChunk "my notes.txt" 1 2"#),
            Ok(Command::SearchChunk {
                name: n.clone(),
                chunks: vec![0, 1]
            })
        );
        assert_eq!(
            Command::parse(r#"download "my notes.txt""#),
            Ok(Command::Download { name: n.clone() })
        );
        assert_eq!(
            Command::parse(r#"cancel "my notes.txt""#),
            Ok(Command::Cancel { name: n.clone() })
        );
        assert_eq!(
            Command::parse(r#"unregister "my notes.txt""#),
            Ok(Command::Unregister { name: n.clone() })
        );
        assert_eq!(
            Command::parse(r#"private hans download "my notes.txt" 3"#),
            Ok(Command::FetchChunk {
                from: u("hans"),
                name: n.clone(),
                chunk: 2
            })
        );
        // Quotes and backslashes inside a quoted name; a quoted one-word name is that word.
        assert_eq!(
            Command::parse(r#"download "say \"hi\" now""#),
            Ok(Command::Download {
                name: f(r#"say "hi" now"#)
            })
        );
        assert_eq!(
            Command::parse(r#"download "a.bin""#),
            Ok(Command::Download { name: f("a.bin") })
        );
        // What the client suggests typing reads back as the same name.
        for name in ["a.bin", "my notes.txt", r#"say "hi" now"#, r#""quoted""#] {
            let line = format!("download {}", typed(&f(name)));
            assert_eq!(
                Command::parse(&line),
                Ok(Command::Download { name: f(name) })
            );
        }
    }

    #[test]
    fn a_name_with_spaces_typed_without_quotes_is_shown_how_to_type_it() {
        let hint = |s: &str| Err(ParseError::NeedsQuotes(s.to_string()));
        assert_eq!(
            Command::parse("register my notes.txt"),
            hint(r#"register "my notes.txt""#)
        );
        assert_eq!(
            Command::parse("register my notes.txt 4"),
            hint(r#"register "my notes.txt" 4"#)
        );
        assert_eq!(
            Command::parse("download my notes.txt"),
            hint(r#"download "my notes.txt""#)
        );
        assert_eq!(
            Command::parse("searchChunk my notes.txt 1 2"),
            hint(r#"searchChunk "my notes.txt" 1 2"#)
        );
        assert_eq!(
            Command::parse(r#"download "my notes.txt"#),
            Err(ParseError::OpenQuote)
        );
        assert_eq!(
            Command::parse(r#"download "my notes.txt"x"#),
            Err(ParseError::OpenQuote)
        );
        assert_eq!(
            Command::parse(r#"download "a" b"#),
            Err(ParseError::Usage("download <file>"))
        );
        assert!(matches!(
            Command::parse(r#"download " padded""#),
            Err(ParseError::BadFile(IdError::Padded { .. }))
        ));
        assert_eq!(
            Command::parse("unregister"),
            Err(ParseError::Usage("unregister <file>"))
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
        assert_eq!(h.len(), HELP.len() + 1);
        assert_eq!(h.last().map(String::as_str), Some(QUOTING));
        assert!(h.iter().any(|l| l.starts_with("whoelsesince <seconds>")));
    }
}
