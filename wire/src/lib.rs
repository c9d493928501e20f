//! swarmchat's wire protocol: every byte exchanged between programs is a frame defined here.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of MessagePack
//! ([`rmp_serde`]) encoding one of the typed messages in [`msg`]. The length is checked
//! against a hard cap *before* any buffer grows, so a peer cannot make us allocate by
//! declaring a huge frame. Names and texts that come off the network are validated into
//! their own types ([`UserName`], [`Text`], ...) during decoding, so a frame that decodes at
//! all holds only values the rest of the program may trust.
//!
//! Architecture invariant: this crate knows MessagePack and framing, and nothing about the
//! tracker's or peer's behaviour. Its core has no runtime dependency; the `codec` feature adds
//! a tokio-util `Decoder`/`Encoder` adapter over the same pure functions.

pub mod files;
pub mod frame;
pub mod ids;
pub mod msg;

#[cfg(feature = "codec")]
pub mod codec;

pub use files::{
    Digest, FileMeta, FileName, MetaError, BLOCK_LEN, MAX_CHUNKS, MAX_FILE_NAME, STATE_DIR,
};
pub use frame::{decode, encode, EncodedFrame, FrameError, MAX_FRAME_LEN};
pub use ids::{IdError, Password, Text, UserName};
pub use msg::*;

/// Version carried in the first frame of every connection. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 12;
