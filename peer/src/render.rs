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
        Reply::Active | Reply::LoggedOut => vec![],
    }
}

fn refusal(asked: Asked, why: &Refusal) -> String {
    match why {
        Refusal::InvalidUser { .. } => INVALID_USER.into(),
        Refusal::SelfTarget => match asked {
            Asked::Block => "Error. Cannot block self".into(),
            Asked::Unblock => "Error. Cannot unblock self".into(),
            _ => "Error. Cannot message self".into(),
        },
        Refusal::BlockedByRecipient { .. } => {
            "Your message could not be delivered as the recipient has blocked you".into()
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
    }
}
