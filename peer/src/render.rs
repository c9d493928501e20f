//! The texts the user sees for what the tracker says. Wording follows the spec's samples
//! (section 8) wherever it shows one.

use wire::{Event, Refusal, Reply, UserName};

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
    Register,
    /// A request the user did not type (chunk announcements): its success is silent.
    Quiet,
    SearchFile,
    SearchChunk,
    Download,
    /// `private <user> download <file> <chunk>` (0-based).
    Fetch {
        chunk: u32,
    },
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
pub const TIMED_OUT: &str = "You have been logged out due to inactivity";

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
        Reply::Broadcast { skipped: true } => {
            vec!["Your message could not be delivered to some recipients".into()]
        }
        Reply::Broadcast { skipped: false } => vec![],
        Reply::WhoElse { users } if users.is_empty() => vec!["No other users are online".into()],
        Reply::WhoElseSince { secs, users } if users.is_empty() => {
            vec![format!(
                "No other users were online in the last {secs} seconds"
            )]
        }
        Reply::WhoElse { users } | Reply::WhoElseSince { users, .. } => {
            users.iter().map(|u| u.to_string()).collect()
        }
        Reply::Blocked { user } => vec![format!("{user} is blocked")],
        Reply::Unblocked { user } => vec![format!("{user} is unblocked")],
        Reply::Refused(why) => vec![refusal(asked, why)],
        // Confirmed once the connection is open (`private_started`).
        Reply::PrivateGranted { .. } => vec![],
        Reply::Registered { name, size, chunks } => {
            vec![format!(
                "{name} registered ({}, {chunks} chunks)",
                human_size(*size)
            )]
        }
        Reply::FileHolders { users, .. } if users.is_empty() => vec!["Not available".into()],
        Reply::FileHolders { users, .. } => std::iter::once("Available".to_string())
            .chain(users.iter().map(|u| u.to_string()))
            .collect(),
        Reply::ChunkHolders { chunks, .. } => chunks
            .iter()
            .map(|(c, users)| {
                let who = if users.is_empty() {
                    "Not available".to_string()
                } else {
                    users
                        .iter()
                        .map(|u| u.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!("Chunk {}: {who}", c + 1)
            })
            .collect(),
        // The download driver takes it from here.
        Reply::Located { .. } | Reply::Noted => vec![],
        Reply::Active | Reply::LoggedOut => vec![],
    }
}

fn refusal(asked: Asked, why: &Refusal) -> String {
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
        Refusal::FileConflict {
            name,
            same_content: false,
            ..
        } => format!("a different file named {name} is already registered"),
        Refusal::FileConflict { name, chunks, .. } => format!(
            "Error. {name} is already registered in {chunks} chunks; use register {name} {chunks}"
        ),
        Refusal::BadChunk { chunk, count } => format!(
            "Error. There is no chunk {}: the file has chunks 1 to {count}",
            u64::from(*chunk) + 1
        ),
        Refusal::NotReachable { user } => {
            format!("Error. {user} does not accept private messages")
        }
        Refusal::NotBlocked { user } => format!("Error. {user} was not blocked"),
        Refusal::AlreadyBlocked { user } => format!("Error. {user} is already blocked"),
        Refusal::Unavailable => {
            "Error. The server could not do that right now; please try again".into()
        }
    }
}

/// Lines to print for an event pushed by the tracker.
pub fn event(e: &Event) -> Vec<String> {
    match e {
        Event::Message { from, text } => vec![format!("{from}: {text}")],
        Event::Offline { messages } => messages
            .iter()
            .map(|m| format!("{}: {}", m.from, m.text))
            .collect(),
        Event::LoggedIn { user } => vec![format!("{user} logged in")],
        Event::LoggedOut { user } => vec![format!("{user} logged out")],
        Event::TimedOut => vec![TIMED_OUT.into()],
        Event::PrivateTicket { .. } | Event::Holders { .. } | Event::HolderGone { .. } => vec![],
    }
}

pub fn private_started(user: &UserName) -> String {
    format!("Start private messaging with {user}")
}
pub fn private_incoming(user: &UserName) -> String {
    format!("{user} started private messaging with you")
}
pub fn private_already(user: &UserName) -> String {
    format!("Private messaging with {user} is already enabled")
}
pub fn private_failed(user: &UserName, why: &str) -> String {
    format!("Error. Could not start private messaging with {user}: {why}")
}
pub fn private_text(from: &UserName, text: &wire::Text) -> String {
    format!("{from}(private): {text}")
}
pub fn private_not_enabled(user: &UserName) -> String {
    format!("Error. Private messaging to {user} not enabled")
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
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1023), "1023 bytes");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(1 << 30), "1.0 GiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }
}
