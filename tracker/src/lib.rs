//! The swarmchat tracker: authenticates users, tracks presence and login history, relays
//! messages (online, offline, broadcast), enforces block lists. See ARCHITECTURE.md.
//!
//! Map: `credentials` (who may log in), `store` (everything that must survive a crash:
//! the commands the rules record, the journal that commits them, the SQLite and PostgreSQL
//! engines), `lockout` (the 3-strike rule), `state` (the in-memory `Tracker` and its request
//! entry point), `auth`/`presence`/`chat`/`private`/`files` (the rules, by family), `gate` (per-address admission before login), `quota` (per-user request rates), `rate` (their token buckets), `server` (sockets, tasks,
//! timeouts), `clock` (injected time).

pub mod auth;
pub mod bus;
pub mod chat;
pub mod clock;
pub mod cluster;
pub mod credentials;
mod files;
pub mod gate;
pub mod lockout;
pub mod outbox;
pub mod presence;
mod private;
pub mod quota;
pub mod rate;
pub mod relay;
pub mod route;
pub mod server;
pub mod shun;
pub mod state;
pub mod store;

pub use server::{serve, Shared};
pub use state::{Rules, Tracker};
