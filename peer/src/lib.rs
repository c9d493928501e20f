//! The swarmchat terminal client. See ARCHITECTURE.md.
//!
//! Map: `command` (typed line → `Command`, no I/O), `terminal` (line editor or plain lines,
//! and printing above the input), `tracker_link` (the tracker connection), `p2p` (private connections: listener,
//! tickets, one task per connection), `render` (every
//! text the user sees for what the tracker says), `session` (login and the command loop).

pub mod announce;
pub mod command;
pub mod download;
pub mod establish;
pub mod hash;
pub mod library;
pub mod p2p;
pub mod ratelimit;
pub mod render;
pub mod serve;
pub mod session;
pub mod terminal;
pub mod tracker_link;
