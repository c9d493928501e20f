//! The texts the user sees for what the tracker says. Wording follows the spec's samples
//! (section 8) wherever it shows one.

use std::net::SocketAddr;

use wire::{Event, FileName, Gone, Refusal, Reply, UserName};

use crate::command::typed;
use crate::establish::Path;

/// What a request was, remembered until its reply arrives (replies come in request order),
/// because some replies read differently depending on the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    Message,
    Broadcast,
    WhoElse,
    WhoElseSince,
    Block,
    Unblock,
    StartPrivate,
    /// `register`, with the number of chunks the user asked for.
    Register {
        wanted: u32,
    },
    /// A request the user did not type (chunk announcements): its success is silent.
    Quiet,
    /// What we hold, announced at login: silent unless the name no longer means it.
    Announce,
    /// A shared file found changed on disk, registered again as it is now.
    Recheck,
    Unregister,
    SearchFile,
    SearchChunk,
    Download,
    /// `private <user> download <file> <chunk>` (0-based).
    Fetch {
        chunk: u32,
    },
    /// `private <user> ...` typed with no session open: the tracker is asked whether one
    /// could be, to say why there is none (`fetch`: it was a chunk download).
    CheckPrivate {
        fetch: bool,
    },
    /// A download asked to be introduced to a holder it heard of: not shown.
    Introduce,
    Activity,
    Logout,
}

pub const WELCOME: &str = "Welcome to the greatest messaging application ever!";
pub const BAD_PASSWORD: &str = "Invalid Password. Please try again";
pub const LOCKED_NOW: &str =
    "Invalid Password. Your account has been blocked. Please try again later";
pub const LOCKED: &str =
    "Your account is blocked due to multiple login failures. Please try again later";
pub const INVALID_USER: &str = "Error. Invalid user";
pub const LOGIN_UNAVAILABLE: &str =
    "The server cannot log you in just now (its database is unreachable). Please try again shortly";
pub const TIMED_OUT: &str = "You have been logged out due to inactivity";

/// The line closing a listing the tracker cut short.
fn and_more(more: u32) -> Option<String> {
    (more > 0).then(|| format!("(and {more} more)"))
}

pub fn throttled(retry_secs: u32) -> String {
    format!(
        "Too many failed logins from your address. Please try again in {retry_secs} second{}",
        plural(retry_secs.into())
    )
}

pub fn already_logged_in(user: &UserName) -> String {
    format!("{user} is already logged in")
}

/// Lines to print for a reply (often none: success is silent, as in the spec).
pub fn reply(asked: Asked, r: &Reply) -> Vec<String> {
    match r {
        Reply::Sent { stored: false, .. } => vec![],
        Reply::Sent { to, stored: true } => {
            vec![format!(
                "{to} is offline; the message will be delivered when they log in"
            )]
        }
        Reply::Broadcast { skipped: true, .. } => {
            vec!["Your message could not be delivered to some recipients".into()]
        }
        Reply::Broadcast { reached: 0, .. } => {
            vec!["No other users are online: your broadcast reached no one".into()]
        }
        Reply::Broadcast { .. } => vec![],
        Reply::WhoElse { users, .. } if users.is_empty() => {
            vec!["No other users are online".into()]
        }
        Reply::WhoElseSince { secs, users, .. } if users.is_empty() => {
            vec![format!(
                "No other users were online in the last {secs} second{}",
                plural(*secs)
            )]
        }
        Reply::WhoElse { users, more } | Reply::WhoElseSince { users, more, .. } => users
            .iter()
            .map(|u| u.to_string())
            .chain(and_more(*more))
            .collect(),
        Reply::Blocked { user } => vec![format!("{user} is blocked")],
        Reply::Unblocked { user } => vec![format!("{user} is unblocked")],
        Reply::Refused(why) => vec![refusal(asked, why)],
        // Confirmed once the connection is open (`private_started`).
        Reply::PrivateGranted { .. } => vec![],
        Reply::Registered {
            name,
            size,
            chunks,
            replaced,
        } => {
            let mut line = registered(asked, name, *size, *chunks);
            if *replaced {
                line.push_str("; it replaces your earlier version, whose holders were told");
            }
            vec![line]
        }
        Reply::Unregistered {
            name,
            for_everyone: true,
        } => vec![format!(
            "{name} unregistered: nobody can download it now (your copy stays in your folder)"
        )],
        Reply::Unregistered { name, .. } => vec![format!(
            "Stopped sharing {name} (your copy stays in your folder; others who hold it may still share it)"
        )],
        Reply::FileHolders { .. } | Reply::ChunkHolders { .. } => search(r, &Default::default()),
        // The download takes it from here.
        Reply::Located { .. } | Reply::Noted => vec![],
        Reply::Active | Reply::LoggedOut => vec![],
        Reply::Reachable { user } if asked == (Asked::CheckPrivate { fetch: true }) => {
            vec![format!(
                "Error. No private messaging session with {user}: type startprivate {user} first"
            )]
        }
        Reply::Reachable { user } => vec![private_not_enabled(user)],
    }
}

/// The answer to `searchFile` or `searchChunk` (spec 3.5: `Available` and the online
/// holders, or `Not available`). The tracker leaves the asker out of the holders; `mine`
/// are the chunks we hold ourselves, so a user who just registered a file is not told it
/// is nowhere to be had.
pub fn search(r: &Reply, mine: &std::collections::BTreeSet<u32>) -> Vec<String> {
    match r {
        Reply::FileHolders { users, more, .. } => {
            if users.is_empty() && mine.is_empty() {
                return vec!["Not available".into()];
            }
            let head = if mine.is_empty() {
                "Available"
            } else {
                "Available (you hold it)"
            };
            std::iter::once(head.to_string())
                .chain(users.iter().map(|u| u.to_string()))
                .chain(and_more(*more))
                .collect()
        }
        Reply::ChunkHolders { chunks, .. } => {
            let held = |c: &u32, users: &Vec<UserName>| !users.is_empty() || mine.contains(c);
            if !chunks.iter().any(|(c, users, _)| held(c, users)) {
                return vec!["Not available".into()];
            }
            let per_chunk = chunks.iter().map(|(c, users, more)| {
                let who = if !held(c, users) {
                    "Not available".to_string()
                } else {
                    let names = mine
                        .contains(c)
                        .then_some("you")
                        .into_iter()
                        .chain(users.iter().map(|u| u.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    match and_more(*more) {
                        Some(m) => format!("{names} {m}"),
                        None => names,
                    }
                };
                format!("Chunk {}: {who}", c + 1)
            });
            std::iter::once("Available".to_string())
                .chain(per_chunk)
                .collect()
        }
        other => reply(Asked::Activity, other),
    }
}

/// `movie.bin registered (97.7 KiB, 10 chunks)`, and why when there are fewer chunks than
/// asked for: chunks are all one size (the last may be shorter), so a file of 13 bytes in
/// 10 chunks has chunks of 2 bytes, and only 7 of them.
fn registered(asked: Asked, name: &wire::FileName, size: u64, chunks: u32) -> String {
    let count = format!("{chunks} chunk{}", plural(chunks.into()));
    match asked {
        Asked::Register { wanted } if chunks < wanted => {
            let each = human_size(wire::FileMeta::chunk_size_for(size, wanted as usize));
            let size = human_size(size);
            format!(
                "{name} registered ({size}, {count} of {each}: chunks are all one size, \
                 so {size} cannot make {wanted})"
            )
        }
        _ => format!("{name} registered ({}, {count})", human_size(size)),
    }
}

fn refusal(asked: Asked, why: &Refusal) -> String {
    // Without a session, `private` is refused as `startprivate` would be (spec 3.4, 3.5).
    let asked = match asked {
        Asked::CheckPrivate { fetch: false } => Asked::StartPrivate,
        Asked::CheckPrivate { fetch: true } => Asked::Fetch { chunk: 0 },
        other => other,
    };
    match why {
        Refusal::InvalidUser { .. } => INVALID_USER.into(),
        Refusal::SelfTarget => match asked {
            Asked::Block => "Error. Cannot block self".into(),
            Asked::Unblock => "Error. Cannot unblock self".into(),
            Asked::StartPrivate => "Error. Cannot start private messaging with self".into(),
            Asked::Fetch { .. } => "Error. Cannot download from self".into(),
            _ => "Error. Cannot message self".into(),
        },
        Refusal::BlockedByRecipient { user } if asked == Asked::StartPrivate => {
            format!("Error. Cannot start private messaging as {user} has blocked you")
        }
        Refusal::BlockedByRecipient { user } if matches!(asked, Asked::Fetch { .. }) => {
            format!("Error. Cannot download from {user} as {user} has blocked you")
        }
        Refusal::BlockedByRecipient { .. } => {
            "Your message could not be delivered as the recipient has blocked you".into()
        }
        Refusal::Offline { user } => format!("Error. {user} is offline"),
        Refusal::UnknownFile { .. } if asked == Asked::SearchChunk => "Not available".into(),
        Refusal::UnknownFile { name } => format!("Error. No file named {name} is registered"),
        Refusal::FileConflict { name, .. } if asked == Asked::Recheck => format!(
            "{name} changed on disk, and only the user who registered it first may register \
             a new version: no longer sharing it"
        ),
        Refusal::FileConflict {
            name,
            same_content: false,
            ..
        } => format!("Error. A different file named {name} is already registered"),
        Refusal::FileConflict { name, chunks, .. } => format!(
            "Error. {name} is already registered in {chunks} chunks; use register {} {chunks}",
            typed(name)
        ),
        Refusal::NotSharing { name } => format!("Error. You are not sharing {name}"),
        Refusal::BadChunk { chunk, count } => format!(
            "Error. There is no chunk {}: the file has chunks 1 to {count}",
            u64::from(*chunk) + 1
        ),
        Refusal::NotReachable { user } => {
            format!("Error. {user} does not accept private messages")
        }
        Refusal::NotBlocked { user } => format!("Error. {user} was not blocked"),
        Refusal::AlreadyBlocked { user } => format!("Error. {user} is already blocked"),
        Refusal::MailboxFull { user, waiting } => format!(
            "Error. {user} is offline with {waiting} messages already waiting; yours was not stored"
        ),
        Refusal::RecipientBusy { user } => format!(
            "Error. {user} is not keeping up with the messages sent to them; yours was not delivered"
        ),
        Refusal::TooFast { retry_ms } => format!(
            "Error. Too many requests of this kind; try again in {:.1} s",
            *retry_ms as f64 / 1000.0
        ),
        Refusal::TooManyFiles { limit } => format!(
            "Error. You have already registered {limit} files, the most one user may"
        ),
        Refusal::Unavailable => {
            "Error. The server could not do that right now; please try again".into()
        }
    }
}

/// Why the tracker would not introduce us to a holder, in a download's "waiting" lines.
pub fn not_introduced(user: &UserName, why: &Refusal) -> String {
    match why {
        Refusal::BlockedByRecipient { .. } => format!("{user} has blocked you"),
        Refusal::Offline { .. } => format!("{user} is offline"),
        Refusal::NotReachable { .. } => format!("{user} does not accept connections"),
        other => format!("{user}: {}", refusal(Asked::Introduce, other)),
    }
}

/// One line for a download in `transfers`.
pub fn transfer(name: &wire::FileName, only: Option<u32>, s: &crate::download::Status) -> String {
    let what = match only {
        Some(c) => format!("chunk {} of {name}", c + 1),
        None => name.to_string(),
    };
    if s.locating {
        return format!("{what}: asking the tracker where it is");
    }
    let pct = (s.verified * 100).checked_div(s.wanted).unwrap_or(100);
    let done = format!(
        "{what}: {} of {} ({pct}%)",
        human_size(s.verified),
        human_size(s.wanted)
    );
    if let Some(w) = &s.waiting {
        let first = w.lines().next().unwrap_or_default();
        return format!("{done}; {first}");
    }
    let eta = if s.rate > 0.0 {
        format!(
            ", ETA {}",
            human_secs((s.wanted - s.verified) as f64 / s.rate)
        )
    } else {
        String::new()
    };
    format!(
        "{done} at {} from {} of {} peer{}{eta}",
        human_rate(s.rate),
        s.sending,
        s.peers,
        plural(s.peers as u64)
    )
}

/// What `transfers` says about uploads (`sent` bytes since login) and limits.
pub fn uploads(
    serving: &[UserName],
    waiting: usize,
    rate: f64,
    sent: u64,
    down: Option<crate::ratelimit::Rate>,
    up: Option<crate::ratelimit::Rate>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if serving.is_empty() && waiting == 0 {
        lines.push(format!(
            "Not uploading ({} uploaded in all)",
            human_size(sent)
        ));
    } else {
        let who: Vec<&str> = serving.iter().map(|u| u.as_str()).collect();
        let queue = if waiting > 0 {
            format!("; {waiting} waiting for a slot")
        } else {
            String::new()
        };
        lines.push(format!(
            "Uploading to {} at {}{queue} ({} uploaded in all)",
            if who.is_empty() {
                "nobody".to_string()
            } else {
                who.join(", ")
            },
            human_rate(rate),
            human_size(sent)
        ));
    }
    let show = |r: Option<crate::ratelimit::Rate>| r.map_or("none".to_string(), |r| r.to_string());
    lines.push(format!(
        "Limits: download {}, upload {}",
        show(down),
        show(up)
    ));
    lines
}

/// Lines to print for an event pushed by the tracker.
pub fn event(e: &Event) -> Vec<String> {
    match e {
        Event::Message { from, text } => vec![format!("{from}: {text}")],
        Event::Offline { messages } => messages
            .iter()
            .map(|m| format!("{}: {}", m.from, m.text))
            .collect(),
        Event::Presence { changes } => changes
            .iter()
            .map(|c| match c {
                wire::PresenceChange::LoggedIn(user) => format!("{user} logged in"),
                wire::PresenceChange::LoggedOut(user) => format!("{user} logged out"),
            })
            .collect(),
        Event::TimedOut => vec![TIMED_OUT.into()],
        // The session says what it did about it (`file_gone`).
        Event::PrivateTicket { .. }
        | Event::Reachability { .. }
        | Event::Holders { .. }
        | Event::HolderGone { .. }
        | Event::FileGone { .. }
        | Event::Failover { .. } => vec![],
    }
}

/// Where the tracker sees us, and whether others can connect to us (`transfers`).
pub fn reachability(reach: Option<(SocketAddr, bool)>) -> String {
    match reach {
        None => "Reachability: not known yet".into(),
        Some((at, true)) => {
            format!("Reachability: the server sees you at {}; others can connect to you", at.ip())
        }
        Some((at, false)) => format!(
            "Reachability: the server sees you at {}; others cannot connect to you (a router or firewall drops incoming connections)",
            at.ip()
        ),
    }
}

/// What we had of a name that went away (`Event::FileGone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HadOf {
    Downloading,
    /// Chunks of a download that is not running.
    Part,
    Whole,
}

/// A name we hold or download no longer means that file (`Event::FileGone`).
pub fn file_gone(name: &FileName, why: &Gone, had: HadOf) -> String {
    let what = match why {
        Gone::Withdrawn { by } => format!("{by} withdrew {name}"),
        Gone::Replaced { by } => format!("{by} replaced {name} with a new version"),
        Gone::Released { after_secs } => format!(
            "{name} was released: nobody held it for {}",
            human_duration(*after_secs)
        ),
    };
    let t = typed(name);
    match (why, had) {
        (Gone::Replaced { .. }, HadOf::Downloading) => {
            format!("{what}: its download stopped; download {t} gets the new one")
        }
        (_, HadOf::Downloading) => format!("{what}: its download stopped"),
        (Gone::Replaced { .. }, HadOf::Part) => {
            format!("{what}: the part of it you had was dropped; download {t} gets the new one")
        }
        (_, HadOf::Part) => format!("{what}: the part of it you had was dropped"),
        // The old copy is in the way of a download of the new one, and may be precious.
        (Gone::Replaced { .. }, HadOf::Whole) => format!(
            "{what}: your copy stays in your folder but is no longer shared; move it aside, \
             then download {t} gets the new one"
        ),
        (_, HadOf::Whole) => {
            format!("{what}: your copy stays in your folder but is no longer shared")
        }
    }
}

/// A file announced at login is no longer registered as we hold it: the name is gone, or
/// (`now_different`) it names other contents.
pub fn announce_refused(name: &FileName, now_different: bool) -> String {
    let t = typed(name);
    if now_different {
        format!(
            "{name} now names a different file: your copy is not shared; move it aside, then \
             download {t} gets the one registered now"
        )
    } else {
        format!(
            "{name} is no longer registered (withdrawn by the user who registered it, or \
             held by nobody for long): your copy is not shared; register {t} shares it again"
        )
    }
}

/// `30 days`, `2 hours`, `45 seconds`: the largest whole unit.
pub fn human_duration(secs: u64) -> String {
    let (n, unit) = match secs {
        s if s >= 86_400 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => (s / 3_600, "hour"),
        s if s >= 60 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", plural(n))
}

/// Said after a private start when the connection goes through the server's relay: it
/// is slower, and users should know their texts pass through the server (encrypted for the
/// other side only, unless both run `--insecure-plaintext`).
fn via_relay(path: Path) -> &'static str {
    match path {
        Path::Relayed => " (through the server's relay)",
        _ => "",
    }
}
pub fn private_started(user: &UserName, path: Path) -> String {
    format!("Start private messaging with {user}{}", via_relay(path))
}
pub fn private_incoming(user: &UserName, path: Path) -> String {
    format!(
        "{user} started private messaging with you{}",
        via_relay(path)
    )
}
pub fn private_already(user: &UserName) -> String {
    format!("Private messaging with {user} is already enabled")
}
pub fn private_failed(user: &UserName, why: &str, reach: Option<(SocketAddr, bool)>) -> String {
    let hint = match reach {
        Some((_, false)) => " (nobody can connect to you either: see `transfers`)",
        _ => "",
    };
    format!("Error. Could not start private messaging with {user}: {why}{hint}")
}
pub fn private_text(from: &UserName, text: &wire::Text) -> String {
    format!("{from}(private): {text}")
}
pub fn private_not_enabled(user: &UserName) -> String {
    format!("Error. Private messaging to {user} not enabled")
}
pub fn private_backlog(user: &UserName) -> String {
    format!("Error. {user} is not reading private messages right now; message not sent")
}
pub fn private_gone(user: &UserName) -> String {
    format!("{user} is no longer online")
}
pub fn private_stopped_by(user: &UserName) -> String {
    format!("{user} stopped private messaging")
}
pub fn private_stopped(user: &UserName) -> String {
    format!("Stopped private messaging with {user}")
}
pub fn private_none(user: &UserName) -> String {
    format!("Error. No private messaging session with {user}")
}

/// Sizes as people read them: bytes below 1 KiB, else one decimal in binary units.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} byte{}", plural(bytes));
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The "s" of a count of things, none when there is one.
pub fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Bytes per second as people read them.
pub fn human_rate(bytes_per_sec: f64) -> String {
    format!("{}/s", human_size(bytes_per_sec.max(0.0) as u64))
}

/// A duration in whole seconds, minutes or hours.
pub fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0).ceil() as u64;
    match s {
        0..=99 => format!("{s} s"),
        100..=5999 => format!("{} min", s.div_ceil(60)),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// 0-based chunk numbers as users read them: 1-based, runs as ranges ("chunks 1-3, 7").
pub fn chunk_list(chunks: &[u32]) -> String {
    let mut sorted: Vec<u64> = chunks.iter().map(|&c| c as u64 + 1).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    let word = if sorted.len() == 1 { "chunk" } else { "chunks" };
    format!("{word} {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_one_are_singular() {
        let none = |secs| Reply::WhoElseSince {
            secs,
            users: vec![],
            more: 0,
        };
        assert_eq!(
            reply(Asked::WhoElseSince, &none(1)),
            ["No other users were online in the last 1 second"]
        );
        assert_eq!(
            reply(Asked::WhoElseSince, &none(2)),
            ["No other users were online in the last 2 seconds"]
        );
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(
            throttled(1),
            "Too many failed logins from your address. Please try again in 1 second"
        );
    }

    #[test]
    fn chunk_lists_read_as_ranges() {
        assert_eq!(chunk_list(&[0]), "chunk 1");
        assert_eq!(chunk_list(&[4, 0, 1, 2, 9]), "chunks 1-3, 5, 10");
        let many: Vec<u32> = (0..57).chain(100..103).collect();
        assert_eq!(chunk_list(&many), "chunks 1-57, 101-103");
    }

    #[test]
    fn rates_and_times_read_naturally() {
        assert_eq!(human_rate(1536.0), "1.5 KiB/s");
        assert_eq!(human_secs(4.2), "5 s");
        assert_eq!(human_secs(150.0), "3 min");
        assert_eq!(human_secs(7200.0), "2.0 h");
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1023), "1023 bytes");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(1 << 30), "1.0 GiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }
}
