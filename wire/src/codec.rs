//! tokio-util adapter: a `Decoder<Item = In>` + `Encoder<Out>` over [`crate::frame`].

use std::marker::PhantomData;

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{decode, encode, FrameError, MAX_FRAME_LEN};

/// Reads frames of `In`, writes frames of `Out`, each at most `max` bytes.
pub struct WireCodec<In, Out> {
    max: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> WireCodec<In, Out> {
    /// A codec with the protocol-wide cap, [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max(MAX_FRAME_LEN)
    }

    /// A codec that refuses frames over `max` bytes in either direction.
    pub fn with_max(max: usize) -> Self {
        Self {
            max: max.min(MAX_FRAME_LEN),
            _types: PhantomData,
        }
    }
}

impl<In, Out> WireCodec<In, Out> {
    /// Changes the cap, e.g. raising it once a handshake has authenticated the other side.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.min(MAX_FRAME_LEN);
    }
}

impl<In, Out> Default for WireCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for WireCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        decode(src, self.max)
    }
}

impl<In, Out: Serialize> Encoder<Out> for WireCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode(&item, dst, self.max)
    }
}
