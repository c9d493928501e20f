//! Encrypted, mutually authenticated connections between peers: Noise IK (snow), as
//! WireGuard uses it.
//!
//! Every client has a long-term X25519 key ([`Identity`], kept in its folder) whose public
//! half it gives the tracker at login; the tracker hands each side of a private grant the
//! other side's public key. The dialler knows the listener's key, so IK fits: its first
//! message carries its own static key and a payload (the one-time ticket and purpose),
//! both encrypted to the listener's key; the listener looks the ticket up, compares the
//! dialler's proven key with the one the tracker vouched for with that ticket, and answers
//! in the second message. Two messages, one round trip, and then both directions are
//! encrypted and authenticated (AES-256-GCM: the machines this runs on have AES
//! instructions).
//!
//! A program without the key the ticket was issued for cannot complete the first message
//! as that key (IK mixes the static-static secret in), and cannot read anything sent back.
//!
//! Sans-IO: [`Initiator`], [`Responder`] and [`Transport`] turn bytes into bytes; the
//! framing ([`split`]) is a pure function with its cap checked first. [`NoiseStream`] and
//! the `initiate`/`respond` functions carry them over any tokio stream.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The handshake: IK, X25519, AES-GCM, SHA-256.
pub const PATTERN: &str = "Noise_IK_25519_AESGCM_SHA256";
/// A handshake message is small (IK's first is 96 bytes and the payload); anything larger
/// is refused before it is read in.
pub const MAX_HANDSHAKE: usize = 1024;
/// Noise's largest message (length prefix excluded).
pub const MAX_MESSAGE: usize = 65535;
/// AES-GCM's tag.
const TAG: usize = 16;
/// Plaintext carried by one transport message.
pub const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG;

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("a message of {0} bytes, over the {1}-byte limit")]
    TooLong(usize, usize),
    #[error("the handshake failed (the other side does not hold the expected key?)")]
    Handshake,
    #[error("a message failed authentication")]
    Decrypt,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<NoiseError> for io::Error {
    fn from(e: NoiseError) -> io::Error {
        match e {
            NoiseError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

fn params() -> NoiseParams {
    PATTERN.parse().expect("a valid Noise pattern")
}

/// The public half of `private`.
fn public_of(private: &[u8; 32]) -> [u8; 32] {
    let mut dh = DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("X25519 is built in");
    dh.set(private);
    dh.pubkey().try_into().expect("a 32-byte key")
}

/// A client's long-term key pair.
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity({:02x}{:02x}..)",
            self.public[0], self.public[1]
        )
    }
}

/// What starts a key file, and its version.
const KEY_FILE_HEADER: &str = "swarmchat-identity-v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("{path}: {why}")]
    Bad {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("{0}")]
    Write(#[from] crate::tls::TlsError),
}

impl Identity {
    pub fn generate() -> Identity {
        let mut private = [0u8; 32];
        getrandom(&mut private);
        Identity {
            public: public_of(&private),
            private,
        }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The key file's text: a header line and the private key in hex.
    pub fn to_file_text(&self) -> String {
        let hex: String = self.private.iter().map(|b| format!("{b:02x}")).collect();
        format!("{KEY_FILE_HEADER}\n{hex}\n")
    }

    /// Parses a key file's text (see [`Identity::to_file_text`]).
    pub fn parse(text: &str) -> Result<Identity, String> {
        if text.len() > 256 {
            return Err("too long for a key file".into());
        }
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(format!("does not start with {KEY_FILE_HEADER}"));
        }
        let hex = lines.next().unwrap_or("").trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the key is not 64 hex digits".into());
        }
        let mut private = [0u8; 32];
        for (i, byte) in private.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex checked");
        }
        Ok(Identity {
            public: public_of(&private),
            private,
        })
    }

    /// Reads the key at `path`, or makes one there (readable by its owner only) if there
    /// is none. Also says whether it was made now.
    pub fn load_or_create(path: &Path) -> Result<(Identity, bool), KeyFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                Identity::parse(&text)
                    .map(|id| (id, false))
                    .map_err(|why| KeyFileError::Bad {
                        path: path.into(),
                        why,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = Identity::generate();
                crate::tls::write_new(path, id.to_file_text().as_bytes(), 0o600)?;
                Ok((id, true))
            }
            Err(source) => Err(KeyFileError::Read {
                path: path.into(),
                source,
            }),
        }
    }
}

fn getrandom(out: &mut [u8]) {
    let mut rng = DefaultResolver.resolve_rng().expect("an OS random source");
    rng.try_fill_bytes(out).expect("the OS random source works");
}

/// Splits one length-prefixed message (2-byte big-endian length) off the front of `buf`:
/// its body's range, or `None` until all of it is there. A length over `max` is an error
/// as soon as the two bytes are in.
pub fn split(buf: &[u8], max: usize) -> Result<Option<std::ops::Range<usize>>, NoiseError> {
    let Some(head) = buf.get(..2) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([head[0], head[1]]) as usize;
    if len > max {
        return Err(NoiseError::TooLong(len, max));
    }
    Ok((buf.len() >= 2 + len).then_some(2..2 + len))
}

/// Appends `body` with its length prefix.
fn framed(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// The dialling side, between its first message and the answer.
pub struct Initiator(snow::HandshakeState);

impl Initiator {
    /// Starts a handshake to the holder of `them` (its public key), carrying `payload`
    /// (at most a few hundred bytes). Returns the first message, length prefix included.
    pub fn start(
        me: &Identity,
        them: &[u8; 32],
        prologue: &[u8],
        payload: &[u8],
    ) -> Result<(Initiator, Vec<u8>), NoiseError> {
        let mut hs = snow::Builder::new(params())
            .local_private_key(&me.private)
            .and_then(|b| b.remote_public_key(them))
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_initiator())
            .map_err(|_| NoiseError::Handshake)?;
        let mut msg = vec![0u8; MAX_HANDSHAKE];
        let n = hs
            .write_message(payload, &mut msg)
            .map_err(|_| NoiseError::Handshake)?;
        let mut out = Vec::with_capacity(n + 2);
        framed(&msg[..n], &mut out);
        Ok((Initiator(hs), out))
    }

    /// Reads the answer (body only): the transport and the answer's payload. Fails when
    /// the answer was not made by the holder of the key we dialled.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(Transport, Vec<u8>), NoiseError> {
        let mut payload = vec![0u8; MAX_HANDSHAKE];
        let n = self
            .0
            .read_message(msg2, &mut payload)
            .map_err(|_| NoiseError::Handshake)?;
        payload.truncate(n);
        let t = self
            .0
            .into_transport_mode()
            .map_err(|_| NoiseError::Handshake)?;
        Ok((Transport(t), payload))
    }
}

/// The listening side, between the first message and its answer.
pub struct Responder {
    hs: snow::HandshakeState,
    remote: [u8; 32],
}

impl Responder {
    /// Reads a first message (body only): the dialler's public key, which it proved it
    /// holds, and its payload. Whether that key is the one expected is the caller's to
    /// decide before answering.
    pub fn read(
        me: &Identity,
        prologue: &[u8],
        msg1: &[u8],
    ) -> Result<(Responder, Vec<u8>), NoiseError> {
        let mut hs = snow::Builder::new(params())
            .local_private_key(&me.private)
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_responder())
            .map_err(|_| NoiseError::Handshake)?;
        let mut payload = vec![0u8; MAX_HANDSHAKE];
        let n = hs
            .read_message(msg1, &mut payload)
            .map_err(|_| NoiseError::Handshake)?;
        payload.truncate(n);
        let remote: [u8; 32] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(NoiseError::Handshake)?;
        Ok((Responder { hs, remote }, payload))
    }

    /// The dialler's long-term public key.
    pub fn remote(&self) -> [u8; 32] {
        self.remote
    }

    /// Answers with `payload`: the transport and the second message, prefix included.
    pub fn answer(mut self, payload: &[u8]) -> Result<(Transport, Vec<u8>), NoiseError> {
        let mut msg = vec![0u8; MAX_HANDSHAKE];
        let n = self
            .hs
            .write_message(payload, &mut msg)
            .map_err(|_| NoiseError::Handshake)?;
        let mut out = Vec::with_capacity(n + 2);
        framed(&msg[..n], &mut out);
        let t = self
            .hs
            .into_transport_mode()
            .map_err(|_| NoiseError::Handshake)?;
        Ok((Transport(t), out))
    }
}

/// An established session: seals and opens transport messages.
pub struct Transport(snow::TransportState);

impl Transport {
    /// Appends `plaintext` (at most [`MAX_PLAINTEXT`] bytes) sealed, prefix included.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        assert!(plaintext.len() <= MAX_PLAINTEXT);
        let start = out.len();
        out.resize(start + 2 + plaintext.len() + TAG, 0);
        let n = self
            .0
            .write_message(plaintext, &mut out[start + 2..])
            .expect("room for the message and its tag");
        out[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
        out.truncate(start + 2 + n);
    }

    /// Opens one message (body only) into `out` (which must have room for it); its
    /// plaintext length.
    pub fn open(&mut self, body: &[u8], out: &mut [u8]) -> Result<usize, NoiseError> {
        self.0
            .read_message(body, out)
            .map_err(|_| NoiseError::Decrypt)
    }
}

/// Reads one length-prefixed handshake message from `stream`.
async fn read_handshake<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, NoiseError> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let len = u16::from_be_bytes(head) as usize;
    if len > MAX_HANDSHAKE {
        return Err(NoiseError::TooLong(len, MAX_HANDSHAKE));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Dials the holder of `them` over `stream`: the first message with `payload`, then the
/// answer. The caller bounds it in time.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    me: &Identity,
    them: &[u8; 32],
    prologue: &[u8],
    payload: &[u8],
) -> Result<(NoiseStream<S>, Vec<u8>), NoiseError> {
    let (initiator, msg1) = Initiator::start(me, them, prologue, payload)?;
    stream.write_all(&msg1).await?;
    stream.flush().await?;
    let msg2 = read_handshake(&mut stream).await?;
    let (transport, answer) = initiator.finish(&msg2)?;
    Ok((NoiseStream::new(stream, transport), answer))
}

/// The listening side, after the first message: the dialler's key and payload are known,
/// the answer not yet sent.
pub struct Pending<S> {
    stream: S,
    responder: Responder,
}

/// Reads a dialler's first message from `stream`. The caller bounds it in time.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    me: &Identity,
    prologue: &[u8],
) -> Result<(Pending<S>, Vec<u8>), NoiseError> {
    let msg1 = read_handshake(&mut stream).await?;
    let (responder, payload) = Responder::read(me, prologue, &msg1)?;
    Ok((Pending { stream, responder }, payload))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Pending<S> {
    /// The dialler's long-term public key (proven).
    pub fn remote(&self) -> [u8; 32] {
        self.responder.remote()
    }

    /// Sends the answer; the session is open (whatever the payload says: a refusal is
    /// sent this way too, readable only by the dialler).
    pub async fn answer(mut self, payload: &[u8]) -> Result<NoiseStream<S>, NoiseError> {
        let (transport, msg2) = self.responder.answer(payload)?;
        self.stream.write_all(&msg2).await?;
        self.stream.flush().await?;
        Ok(NoiseStream::new(self.stream, transport))
    }
}

/// Read buffer: room for a few messages, so one read usually brings whole ones.
const READ_AHEAD: usize = 2 * (MAX_MESSAGE + 2);
/// Ciphertext written before it must go out: a few messages per `write` call.
const WRITE_BATCH: usize = 4 * (MAX_MESSAGE + 2);

/// A stream whose bytes travel as Noise transport messages over `S`.
///
/// Buffers grow to [`READ_AHEAD`] and [`WRITE_BATCH`] while data moves and are given back
/// when a connection goes idle, so an idle chat costs little.
pub struct NoiseStream<S> {
    inner: S,
    transport: Transport,
    /// Ciphertext read, not yet opened.
    rbuf: Vec<u8>,
    /// Opened plaintext not yet handed out: `plain[ppos..]`.
    plain: Vec<u8>,
    ppos: usize,
    /// Sealed ciphertext not yet written: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
}

impl<S> NoiseStream<S> {
    fn new(inner: S, transport: Transport) -> NoiseStream<S> {
        NoiseStream {
            inner,
            transport,
            rbuf: Vec::new(),
            plain: Vec::new(),
            ppos: 0,
            wbuf: Vec::new(),
            wpos: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes out sealed bytes until none are left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > WRITE_BATCH + MAX_MESSAGE {
            self.wbuf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ppos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.ppos);
                buf.put_slice(&this.plain[this.ppos..this.ppos + n]);
                this.ppos += n;
                if this.ppos == this.plain.len() {
                    this.plain.clear();
                    this.ppos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(body) = split(&this.rbuf, MAX_MESSAGE)? {
                this.plain.resize(body.len(), 0);
                let n = this
                    .transport
                    .open(&this.rbuf[body.clone()], &mut this.plain)?;
                this.plain.truncate(n);
                this.rbuf.drain(..body.end);
                if this.rbuf.is_empty() && this.rbuf.capacity() > READ_AHEAD {
                    this.rbuf = Vec::new();
                }
                continue;
            }
            // Read more ciphertext into the spare room.
            if this.rbuf.capacity() - this.rbuf.len() < MAX_MESSAGE + 2 {
                this.rbuf
                    .reserve(READ_AHEAD - this.rbuf.len().min(READ_AHEAD));
            }
            let start = this.rbuf.len();
            let cap = this.rbuf.capacity();
            this.rbuf.resize(cap, 0);
            let mut rb = ReadBuf::new(&mut this.rbuf[start..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            this.rbuf.truncate(start + got);
            ready!(polled)?;
            if got == 0 {
                // End of stream: clean between messages, an error inside one.
                return if this.rbuf.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wbuf.len() - this.wpos >= WRITE_BATCH {
            ready!(this.poll_drain(cx))?;
        }
        // Seal as much as fits in the batch, whole messages at a time.
        let mut taken = 0;
        while taken < buf.len() && this.wbuf.len() - this.wpos < WRITE_BATCH {
            let n = (buf.len() - taken).min(MAX_PLAINTEXT);
            this.transport.seal(&buf[taken..taken + n], &mut this.wbuf);
            taken += n;
        }
        // Start sending; what the socket does not take now goes with the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROLOGUE: &[u8] = b"swarmchat test";

    #[test]
    fn a_key_file_round_trips_and_junk_is_refused() {
        let id = Identity::generate();
        let back = Identity::parse(&id.to_file_text()).unwrap();
        assert_eq!(back.public(), id.public());
        for bad in [
            "",
            "swarmchat-identity-v1\n",
            "swarmchat-identity-v1\nzz\n",
            "other\n00\n",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        let (made, new) = Identity::load_or_create(&path).unwrap();
        assert!(new);
        let (again, new) = Identity::load_or_create(&path).unwrap();
        assert!(!new);
        assert_eq!(made.public(), again.public());
    }

    #[test]
    fn split_waits_for_a_whole_message_and_refuses_a_long_one_at_once() {
        assert_eq!(split(&[], 10).unwrap(), None);
        assert_eq!(split(&[0], 10).unwrap(), None);
        assert_eq!(split(&[0, 3, 1, 2], 10).unwrap(), None);
        assert_eq!(split(&[0, 3, 1, 2, 3, 9], 10).unwrap(), Some(2..5));
        assert!(matches!(
            split(&[0, 11], 10),
            Err(NoiseError::TooLong(11, 10))
        ));
    }

    /// The sans-IO handshake: the listener learns the dialler's proven key and payload,
    /// the dialler the answer; then messages flow both ways and a tampered one is refused.
    #[test]
    fn both_sides_prove_their_keys_and_then_talk() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let (init, msg1) = Initiator::start(&a, &b.public(), PROLOGUE, b"ticket").unwrap();
        let body = split(&msg1, MAX_HANDSHAKE).unwrap().unwrap();
        let (resp, payload) = Responder::read(&b, PROLOGUE, &msg1[body]).unwrap();
        assert_eq!(payload, b"ticket");
        assert_eq!(resp.remote(), a.public());
        let (mut tb, msg2) = resp.answer(b"accepted").unwrap();
        let (mut ta, answer) = init.finish(&msg2[2..]).unwrap();
        assert_eq!(answer, b"accepted");

        let mut wire = Vec::new();
        ta.seal(b"secret text", &mut wire);
        assert!(!wire.windows(6).any(|w| w == b"secret"), "not in clear");
        let mut out = vec![0u8; 64];
        let n = tb.open(&wire[2..], &mut out).unwrap();
        assert_eq!(&out[..n], b"secret text");
        let mut tampered = Vec::new();
        tb.seal(b"reply", &mut tampered);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            ta.open(&tampered[2..], &mut out),
            Err(NoiseError::Decrypt)
        ));
    }

    /// Dialling a listener with the wrong key for it, or a prologue of another version,
    /// fails at the listener's first read; the listener sees the dialler's real key, never
    /// one it claims.
    #[test]
    fn the_wrong_key_gets_nowhere() {
        let (a, b, c) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        // a thinks it dials c, but b listens.
        let (_, msg1) = Initiator::start(&a, &c.public(), PROLOGUE, b"t").unwrap();
        assert!(Responder::read(&b, PROLOGUE, &msg1[2..]).is_err());
        let (_, msg1) = Initiator::start(&a, &b.public(), PROLOGUE, b"t").unwrap();
        assert!(Responder::read(&b, b"other version", &msg1[2..]).is_err());
        // c (an impostor for a) can only prove c's key.
        let (_, msg1) = Initiator::start(&c, &b.public(), PROLOGUE, b"t").unwrap();
        let (resp, _) = Responder::read(&b, PROLOGUE, &msg1[2..]).unwrap();
        assert_eq!(resp.remote(), c.public());
    }

    #[tokio::test]
    async fn a_noise_stream_carries_large_and_small_writes_both_ways() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let (x, y) = tokio::io::duplex(64 * 1024);
        let b2 = b.clone();
        let listener = tokio::spawn(async move {
            let (pending, payload) = respond(y, &b2, PROLOGUE).await.unwrap();
            assert_eq!(payload, b"hello");
            let mut s = pending.answer(b"ok").await.unwrap();
            let mut got = vec![0u8; 1_000_000];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            s.flush().await.unwrap();
            s.shutdown().await.unwrap();
        });
        let (mut s, answer) = initiate(x, &a, &b.public(), PROLOGUE, b"hello")
            .await
            .unwrap();
        assert_eq!(answer, b"ok");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut r, mut w) = tokio::io::split(s);
        let send = async {
            for part in data.chunks(100_003) {
                w.write_all(part).await.unwrap();
            }
            w.flush().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let ((), got) = tokio::join!(send, recv);
        got.unwrap();
        assert!(back == data);
        listener.await.unwrap();
        s = r.unsplit(w);
        drop(s);
    }
}
