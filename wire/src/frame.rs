//! Length-prefixed MessagePack frames: pure functions over a byte buffer.
//!
//! Like mini-redis's `Connection::parse_frame`, a frame is only consumed from the buffer once
//! it is whole; unlike it, the declared length is checked against a cap before the buffer is
//! allowed to grow.

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Hard cap on a frame body, in bytes, for every connection. Large enough for a 256 KiB block
/// of chunk data plus headers; receivers that expect only small frames pass a lower cap.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("malformed frame: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("malformed frame: bytes left over after the message")]
    TrailingBytes,
    #[error("cannot encode frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Appends one frame holding `msg` to `dst`.
pub fn encode<T: Serialize>(msg: &T, dst: &mut BytesMut, max: usize) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0); // patched below once the body length is known
    let mut w = dst.writer();
    let written = rmp_serde::encode::write(&mut w, msg);
    let dst = w.into_inner();
    if let Err(e) = written {
        // Leave `dst` as it was: a half-written frame would corrupt what follows it.
        dst.truncate(start);
        return Err(e.into());
    }
    let len = dst.len() - start - HEADER_LEN;
    if len > max {
        dst.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// One message already encoded as a whole frame (length prefix included). Built only by
/// [`EncodedFrame::new`], so it always holds a valid frame. Cheap to clone: a message sent
/// to many connections is encoded once and shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame(bytes::Bytes);

impl EncodedFrame {
    pub fn new<T: Serialize>(msg: &T, max: usize) -> Result<EncodedFrame, FrameError> {
        let mut buf = BytesMut::new();
        encode(msg, &mut buf, max)?;
        Ok(EncodedFrame(buf.freeze()))
    }

    /// The frame's bytes, prefix included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Takes one whole frame off the front of `src`, if there is one.
///
/// `Ok(None)` means "need more bytes" and leaves `src` untouched (it may reserve room for the
/// rest of a frame whose length is within `max`). Any error means the stream is unusable: the
/// caller should drop the connection.
pub fn decode<T: DeserializeOwned>(
    src: &mut BytesMut,
    max: usize,
) -> Result<Option<T>, FrameError> {
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if src.len() < HEADER_LEN + len {
        src.reserve(HEADER_LEN + len - src.len());
        return Ok(None);
    }
    let body = &src[HEADER_LEN..HEADER_LEN + len];
    // Decoding borrows from the buffer (strings are copied once, into the message), rather
    // than going through a reader that copies every string into a scratch vector first.
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    let msg = T::deserialize(&mut de)?;
    // Whatever follows the message must be nothing at all: reading one more value fails
    // to find even a marker byte only if the body is used up exactly.
    match serde::de::IgnoredAny::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        _ => return Err(FrameError::TrailingBytes),
    }
    src.advance(HEADER_LEN + len);
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientMsg, Event, OfflineMessage, Request, ServerMsg, Text, UserName};

    fn samples() -> Vec<ServerMsg> {
        let u = UserName::new("yoda").unwrap();
        vec![
            ServerMsg::Hello { version: 1 },
            ServerMsg::Event(Event::Message {
                from: u.clone(),
                text: Text::new("force is strong").unwrap(),
            }),
            ServerMsg::Event(Event::Offline {
                messages: vec![OfflineMessage {
                    id: 7,
                    from: u,
                    text: Text::new("Let's rock").unwrap(),
                }],
            }),
        ]
    }

    #[test]
    fn round_trips_split_at_every_byte() {
        let mut all = BytesMut::new();
        for m in samples() {
            encode(&m, &mut all, MAX_FRAME_LEN).unwrap();
        }
        for cut in 0..=all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(m) = decode::<ServerMsg>(&mut buf, MAX_FRAME_LEN).unwrap() {
                got.push(m);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(m) = decode::<ServerMsg>(&mut buf, MAX_FRAME_LEN).unwrap() {
                got.push(m);
            }
            assert_eq!(got, samples(), "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let cap_before = buf.capacity();
        let err = decode::<ClientMsg>(&mut buf, 64 * 1024).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max } if len == u32::MAX as usize && max == 64 * 1024)
        );
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn encode_refuses_frames_over_the_cap() {
        let mut buf = BytesMut::new();
        let msg = ClientMsg::Request(Request::Broadcast {
            text: Text::new("x".repeat(4000)).unwrap(),
        });
        assert!(matches!(
            encode(&msg, &mut buf, 100),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(buf.is_empty(), "a refused frame leaves nothing behind");
    }

    #[test]
    fn junk_and_invalid_values_are_errors() {
        let mut junk = BytesMut::from(&b"\x00\x00\x00\x05hello"[..]);
        assert!(decode::<ClientMsg>(&mut junk, MAX_FRAME_LEN).is_err());

        let mut empty = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(
            decode::<ClientMsg>(&mut empty, MAX_FRAME_LEN),
            Err(FrameError::Empty)
        ));

        // A user name with an escape sequence fails validation inside decoding.
        #[derive(serde::Serialize)]
        enum Raw {
            CheckUser { user: String },
        }
        let mut buf = BytesMut::new();
        encode(
            &Raw::CheckUser {
                user: "\u{1b}[2Jevil".into(),
            },
            &mut buf,
            MAX_FRAME_LEN,
        )
        .unwrap();
        assert!(matches!(
            decode::<ClientMsg>(&mut buf, MAX_FRAME_LEN),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn an_encoded_frame_decodes_to_its_message() {
        let msg = ServerMsg::Hello { version: 7 };
        let f = EncodedFrame::new(&msg, MAX_FRAME_LEN).unwrap();
        let mut buf = BytesMut::from(f.as_bytes());
        assert_eq!(
            decode::<ServerMsg>(&mut buf, MAX_FRAME_LEN).unwrap(),
            Some(msg)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut buf = BytesMut::new();
        encode(&ClientMsg::Hello { version: 1 }, &mut buf, MAX_FRAME_LEN).unwrap();
        // Grow the declared length by one and append a stray byte.
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) + 1;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf.put_u8(0xc0);
        assert!(matches!(
            decode::<ClientMsg>(&mut buf, MAX_FRAME_LEN),
            Err(FrameError::TrailingBytes)
        ));
        // A stray byte that starts a value it does not finish (str8 with no length) too.
        let mut buf = BytesMut::new();
        encode(&ClientMsg::Hello { version: 1 }, &mut buf, MAX_FRAME_LEN).unwrap();
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) + 1;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf.put_u8(0xd9);
        assert!(matches!(
            decode::<ClientMsg>(&mut buf, MAX_FRAME_LEN),
            Err(FrameError::TrailingBytes)
        ));
    }
}
