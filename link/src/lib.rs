//! swarmchat's connection layer: every connection between its programs goes through here,
//! and comes out as a [`Stream`] that the callers frame with `wire` without knowing what
//! carries it.
//!
//! - To the tracker: TLS 1.3 ([`tls`]). The tracker has a self-signed certificate; a client
//!   trusts the key it presents on first use and remembers it per address ([`known`]),
//!   like SSH's `known_hosts`, or checks a pinned [`Fingerprint`].
//! - Between peers (private chat, chunk transfers): Noise IK ([`noise`]), each side proving
//!   it holds the long-term key the tracker vouched for, with the one-time ticket inside
//!   the handshake. The protocol is sans-IO ([`noise::Initiator`], [`noise::Responder`],
//!   [`noise::Transport`]); [`noise::NoiseStream`] adapts it to tokio.
//! - Plain TCP, for `--insecure-plaintext` (benchmarks against the unencrypted figure,
//!   debugging on a trusted network).
//!
//! The decoders of outside input here (handshake messages, Noise frames, the key files)
//! are pure functions with caps checked before anything grows, fuzzed with the rest.

pub mod fingerprint;
pub mod known;
pub mod noise;
pub mod tls;
pub mod tls_server;

pub use fingerprint::Fingerprint;

use tokio::io::{AsyncRead, AsyncWrite};

/// What every connection is to its users: bytes in, bytes out.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// A connection, whatever carries it (TLS, Noise, plain TCP).
pub type Stream = Box<dyn AsyncStream>;

/// Whether connections are encrypted. Both ends must agree: an encrypted client cannot talk
/// to a plaintext tracker or peer, and is told so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS to the tracker, Noise between peers.
    Encrypted,
    /// Everything in clear (`--insecure-plaintext`).
    Plaintext,
}
