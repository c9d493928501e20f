//! The checks behind every fuzz target: one function per decoder that takes bytes or
//! text from outside (the tracker's and the peer's frames, the peer handshake, the
//! credentials file, the command line parser). Each must return, never panic, whatever
//! it is given; and what decodes must re-encode to something that decodes the same.
//!
//! `fuzz/` (cargo-fuzz, excluded from the workspace) calls these on generated inputs;
//! `tests/replay.rs` calls them on every input of the committed corpus, so CI checks
//! the corpus on stable Rust without the fuzzer.

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use wire::codec::WireCodec;
use wire::{ClientMsg, PeerMsg, ServerMsg};

/// Every frame in `data` through `codec`, as the connection would read them, until the
/// bytes run out or a frame is refused (which ends a real connection).
fn frames<In, Out>(mut codec: WireCodec<In, Out>, data: &[u8]) -> Vec<In>
where
    In: serde::de::DeserializeOwned,
{
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while let Ok(Some(msg)) = codec.decode(&mut buf) {
        out.push(msg);
        if out.len() > 1_000 {
            break;
        }
    }
    out
}

/// What decodes re-encodes, and decodes to the same message.
fn round_trips<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    wire::encode(msg, &mut buf, wire::MAX_FRAME_LEN).expect("a decoded message re-encodes");
    let again: T = wire::decode(&mut buf, wire::MAX_FRAME_LEN)
        .expect("re-encoded bytes decode")
        .expect("a whole frame");
    assert_eq!(&again, msg);
}

/// What a client may send the tracker (capped as the tracker caps it).
pub fn tracker_frames(data: &[u8]) {
    let codec = WireCodec::<ClientMsg, ServerMsg>::with_max(tracker::server::MAX_CLIENT_FRAME);
    for msg in frames(codec, data) {
        round_trips(&msg);
    }
}

/// What the tracker may send a client.
pub fn client_frames(data: &[u8]) {
    for msg in frames(WireCodec::<ServerMsg, ClientMsg>::new(), data) {
        round_trips(&msg);
    }
}

/// What a peer may send another: the handshake under its small cap, then transfer and
/// chat frames; block hashes are checked against a root as a downloader would.
pub fn peer_frames(data: &[u8]) {
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let (hello, rest) = data.split_at(split);
    for msg in frames(WireCodec::<PeerMsg, PeerMsg>::with_max(1024), hello) {
        round_trips(&msg);
    }
    for msg in frames(WireCodec::<PeerMsg, PeerMsg>::new(), rest) {
        round_trips(&msg);
        if let PeerMsg::Hashes {
            batch,
            leaves,
            proof,
            ..
        } = &msg
        {
            let n = (leaves.len() as u32).saturating_add(*batch);
            let _ = merkle::check_batch(&wire::Digest([0; 32]), n, *batch, leaves, proof);
        }
    }
}

/// A credentials file.
pub fn credentials(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tracker::credentials::Credentials::parse(text);
    }
}

/// A typed command line.
pub fn command(data: &[u8]) {
    use peer::command::{typed, Command};
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    // A file name parsed from any line, typed back as the client suggests typing it,
    // parses to the same name.
    let name = match Command::parse(line) {
        Ok(
            Command::Register { name, .. }
            | Command::SearchFile { name }
            | Command::SearchChunk { name, .. }
            | Command::Download { name }
            | Command::FetchChunk { name, .. }
            | Command::Cancel { name }
            | Command::Unregister { name },
        ) => name,
        _ => return,
    };
    let again = Command::parse(&format!("download {}", typed(&name)));
    assert_eq!(again, Ok(Command::Download { name }));
}

/// The key a fuzzed listener holds (fixed, so runs repeat).
pub fn listener_identity() -> &'static link::noise::Identity {
    static ID: std::sync::OnceLock<link::noise::Identity> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        link::noise::Identity::parse(&format!("swarmchat-identity-v1\n{}\n", "5a".repeat(32)))
            .expect("a valid key file")
    })
}

/// What a dialler may send a peer's listener in the Noise handshake: a length-prefixed
/// first message (checked against the cap before anything is read), the message itself
/// (a forged or garbled one fails, never panics), and the payload a real one carries,
/// read as the listener reads it (one frame under the handshake cap) and re-encoded.
pub fn peer_handshake(data: &[u8]) {
    use link::noise::{split, Responder, MAX_HANDSHAKE};
    let me = listener_identity();
    if let Ok(Some(body)) = split(data, MAX_HANDSHAKE) {
        let _ = Responder::read(me, peer::p2p::PROLOGUE, &data[body]);
    }
    if let Some(msg) = peer::p2p::frame_of(data) {
        round_trips(&msg);
    }
}

/// The key files a client or tracker reads: by the first byte, `i` a client's identity,
/// `k` a known-trackers file, `f` a fingerprint as typed on the command line, `p` a PEM
/// certificate (`tracker fingerprint`).
pub fn key_files(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(rest);
    match kind {
        b'i' => {
            if let Ok(id) = link::noise::Identity::parse(text.unwrap_or_default()) {
                let again = link::noise::Identity::parse(&id.to_file_text()).unwrap();
                assert_eq!(again.public(), id.public());
            }
        }
        b'k' => {
            if let Ok(known) = link::known::parse(text.unwrap_or_default()) {
                let written: String = known
                    .iter()
                    .map(|(addr, fp)| link::known::line(*addr, fp))
                    .collect();
                assert_eq!(link::known::parse(&written), Ok(known));
            }
        }
        b'f' => {
            if let Ok(fp) = text.unwrap_or_default().parse::<link::Fingerprint>() {
                assert_eq!(fp.to_string().parse::<link::Fingerprint>(), Ok(fp));
            }
        }
        b'p' => {
            let _ = link::tls::fingerprint_of_pem(rest);
        }
        _ => {}
    }
}

/// A target's check.
pub type Check = fn(&[u8]);

/// Every target, by the name its corpus directory has.
pub const TARGETS: &[(&str, Check)] = &[
    ("tracker_frames", tracker_frames),
    ("client_frames", client_frames),
    ("peer_frames", peer_frames),
    ("credentials", credentials),
    ("command", command),
    ("peer_handshake", peer_handshake),
    ("key_files", key_files),
];
