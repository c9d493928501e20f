//! The messages. `ClientMsg` flows from a peer to the tracker, `ServerMsg` back.
//!
//! Conversation shape (see docs/protocol.md): the client's first frame is `Hello`; the tracker
//! answers `Hello` or `Unsupported`. Then `CheckUser`/`Login` until `Login(Welcome)`; then
//! `Request`s. The tracker handles one connection's requests in order, so each `Request` gets
//! exactly one `Reply`, in request order; `Event`s (incoming messages, presence) are pushed at
//! any time in between and are never replies.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::files::{Digest, FileMeta, FileName};
use crate::ids::{Password, Text, UserName};

/// A one-time permission, issued by the tracker, for one user to open one private
/// connection to another user's listener. 128 random bits: unguessable, never reused.
///
/// Serialized as 16 bytes of MessagePack `bin` (see `files.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub [u8; 16]);

/// Printed as a short prefix only, so logs never carry a usable ticket.
impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// Lets a client whose tracker went away log in again through another tracker of the same
/// cluster without its password (`ClientMsg::Resume`). 256 random bits, bound to one user's
/// one session, and accepted only in the short while after that session's tracker was
/// taken for dead (see the tracker's `store::Cmd::Resume`).
///
/// Serialized as 32 bytes of MessagePack `bin` (see `files.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResumeToken(pub [u8; 32]);

/// Printed as a short prefix only, so logs never carry a usable token.
impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResumeToken({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// Another tracker of the cluster: where clients reach it, and the SHA-256 of its TLS key
/// (`None` for a tracker in clear), told by a tracker the client already trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerEndpoint {
    pub addr: SocketAddr,
    pub fingerprint: Option<[u8; 32]>,
}

/// Most trackers named in one `Event::Failover`.
pub const MAX_FAILOVER: usize = 16;

/// One user's presence change, in an `Event::Presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceChange {
    LoggedIn(UserName),
    LoggedOut(UserName),
}

/// Changes in one `Event::Presence`: 4,096 of the longest names fit a frame many times.
pub const MAX_PRESENCE_CHANGES: usize = 4096;

/// Names one introduction's meeting point: a reversed connection presents it to the
/// requester's listener, both sides of a relayed one present it to the relay. 128 random
/// bits, given only to the two users introduced (over their tracker connections).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Circuit(pub [u8; 16]);

impl std::fmt::Debug for Circuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Circuit({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// How an introduced pair of peers gets a connection (see `tracker::route`). Whatever the
/// path, the requester then runs the handshake as dialler (presenting the ticket) and the
/// target as listener: the ticket and key checks are the same on every path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// The requester connects to the target's listener.
    Direct,
    /// The target cannot be reached but the requester can: the target connects to the
    /// requester's listener and opens with [`REVERSED_MAGIC`] and the circuit.
    Reversed { circuit: Circuit },
    /// Neither can be reached, both routers keep ports: both connect to each other's
    /// address from their own listening port at once (TCP simultaneous open). If that
    /// fails within a short window, both go through the relay with the same circuit.
    Punched { circuit: Circuit },
    /// Through the relay: both connect to the tracker and say `ClientMsg::RelayJoin`.
    Relayed { circuit: Circuit },
}

/// The first bytes of a reversed connection, ahead of the circuit's 16. Neither a valid
/// frame length (far over any cap) nor a valid Noise message length, so a listener tells
/// it from a dialler's first message by looking.
pub const REVERSED_MAGIC: [u8; 8] = *b"SWRVRS10";

/// A client's long-term public key (X25519), which it proves it holds in the Noise
/// handshake that opens every connection between peers. The tracker only passes it on: to
/// each side of a private grant or a chunk fetch, the other side's.
///
/// Serialized as 32 bytes of MessagePack `bin`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey(pub [u8; 32]);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerKey({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// Client → tracker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First frame of a connection.
    Hello { version: u32 },
    /// Is this a known user? Answered by `ServerMsg::UserCheck`.
    CheckUser { user: UserName },
    /// Answered by `ServerMsg::Login`. `p2p_port` is the client's own listener (0: none);
    /// `key` its long-term public key, handed to the peers it is introduced to.
    Login {
        user: UserName,
        password: Password,
        p2p_port: u16,
        key: PeerKey,
        /// The client's own address on the network it reaches the tracker through (its
        /// home network's, behind a router). Handed only to peers the tracker sees at the
        /// same public address as this client: they reach it there, inside that network.
        lan_ip: Option<IpAddr>,
    },
    /// After login: one command; answered by exactly one `ServerMsg::Reply`.
    Request(Request),
    /// The client has stored/shown offline messages up to and including this id; the tracker
    /// may now forget them. Not answered.
    OfflineAck { up_to: u64 },
    /// First frame of a connection to the relay, instead of `Hello`: carry `circuit`'s
    /// bytes to the other side. Answered by `ServerMsg::Relaying` once both sides are
    /// there (from then on the connection carries only the other side's bytes), or
    /// `ServerMsg::RelayRefused` and closed.
    RelayJoin { version: u32, circuit: Circuit },
    /// Instead of `Login`, after `Hello`: this session's tracker went away; log in again
    /// with the token it gave (`Event::Failover`). Answered by `ServerMsg::Login`:
    /// `Welcome`, `ResumeRefused` (use the password), or `AlreadyLoggedIn` (the old
    /// tracker's lease has not run out yet: try again in a moment).
    Resume {
        user: UserName,
        token: ResumeToken,
        p2p_port: u16,
        key: PeerKey,
        lan_ip: Option<IpAddr>,
    },
}

/// A logged-in user's command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Message {
        to: UserName,
        text: Text,
    },
    Broadcast {
        text: Text,
    },
    WhoElse,
    WhoElseSince {
        secs: u64,
    },
    Block {
        user: UserName,
    },
    Unblock {
        user: UserName,
    },
    /// Ask for `user`'s listener address and a ticket to connect to it.
    StartPrivate {
        user: UserName,
    },
    /// Share a file (the user typed `register`). Creates the registry entry if the name is
    /// new. A name the sender registered before takes the new description (`Registered`
    /// with `replaced`; holders and watchers of the old one are sent `FileGone`); anyone
    /// else's `meta` must match the registered one exactly.
    Register {
        meta: FileMeta,
        have: Vec<u32>,
    },
    /// The chunks we hold of a file registered earlier (at login, to go on sharing and to
    /// resume). Never creates or changes an entry: a name withdrawn, replaced or released
    /// meanwhile is refused (`UnknownFile`, `FileConflict`), and the client stops sharing
    /// its copy. Answered `Noted`.
    Announce {
        meta: FileMeta,
        have: Vec<u32>,
    },
    /// Stop sharing `name`. From the user who registered it, the name is withdrawn for
    /// everyone (holders and watchers are sent `FileGone`); from anyone else, only their
    /// own holdings end. Answered `Unregistered`, or refused `NotSharing`.
    Unregister {
        name: FileName,
    },
    /// We now hold (verified) this chunk.
    HaveChunk {
        name: FileName,
        chunk: u32,
    },
    SearchFile {
        name: FileName,
    },
    /// Chunk numbers are 0-based on the wire.
    SearchChunk {
        name: FileName,
        chunks: Vec<u32>,
    },
    /// What is needed to download `name`: its description, and for every online holder
    /// (or only `from`, checked like `StartPrivate`) its chunks, address and a ticket.
    /// Without `from`, the asker also *watches* `name` from now on: it is sent `Holders`
    /// and `HolderGone` events as holders gain chunks or leave, until `Unwatch` or logout.
    Locate {
        name: FileName,
        from: Option<UserName>,
    },
    /// Stop watching `name` (the download finished or was cancelled). Answered `Noted`.
    Unwatch {
        name: FileName,
    },
    /// We no longer hold any chunk of `name` (the file changed or vanished from disk).
    /// Answered `Noted`; watchers are sent `HolderGone`.
    Withdraw {
        name: FileName,
    },
    /// The user did something the tracker does not otherwise see (a local command, a private
    /// message); counts as activity for the inactivity timeout.
    Activity,
    Logout,
    /// Could `StartPrivate { user }` succeed? Checked like it, but no ticket is issued and
    /// `user` is told nothing: the client asks when the user types `private` without a
    /// session, to say why there is none. Answered `Reachable` or refused.
    CheckPeer {
        user: UserName,
    },
}

/// Tracker → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Answer to `ClientMsg::Hello`.
    Hello {
        version: u32,
    },
    /// The client's version is not spoken here; the connection closes after this frame.
    Unsupported {
        version: u32,
    },
    UserCheck(UserCheck),
    Login(LoginResult),
    Reply(Reply),
    Event(Event),
    /// Both sides of the circuit are here: what follows is the other side's bytes.
    Relaying,
    RelayRefused(RelayRefusal),
}

/// Why the relay turned a `RelayJoin` away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayRefusal {
    /// Unknown, expired or already joined by both sides; or the other side never came.
    BadCircuit,
    /// That user has as many relayed connections as the relay allows one user.
    TooMany,
    /// This tracker relays nothing (`--no-relay`), or the protocol version differs.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserCheck {
    Known,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginResult {
    Welcome,
    /// Wrong password; the user may try again.
    BadPassword,
    /// Wrong password for the third time in a row: the account is now locked. Connection closes.
    LockedNow,
    /// The account is locked from earlier failures. Connection closes.
    Locked,
    /// This user is online elsewhere. Connection closes.
    AlreadyLoggedIn,
    /// Too many wrong passwords from this address lately; no password was checked. The
    /// connection closes; another try may come after `retry_secs`.
    Throttled {
        retry_secs: u32,
    },
    /// The server could not record the login (its database is unreachable); nothing was
    /// counted against the account. The connection closes; try again shortly.
    Unavailable,
    /// The resume token is unknown, spent or expired, or its session's tracker is still
    /// alive: log in with the password. The connection closes.
    ResumeRefused,
}

/// Users named in one listing reply: 10,000 names of the longest kind fill 660 KB, so a
/// reply fits the frame cap by construction.
pub const MAX_LISTED: usize = 10_000;
/// Holders named per chunk in a `ChunkHolders` reply: 256 chunks × 32 long names fit.
pub const MAX_LISTED_PER_CHUNK: usize = 32;
/// Holders (with their tickets) in one `Located` reply; enough to saturate any downlink,
/// and more come as `Holders` events while the download runs.
pub const MAX_LOCATED: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The message was handed to the online recipient's connection (`stored == false`) or
    /// written durably for offline delivery (`stored == true`).
    Sent {
        to: UserName,
        stored: bool,
    },
    /// `reached`: how many online users it was delivered to; `skipped`: some online users
    /// did not get it (they blocked the sender, or were too far behind).
    Broadcast {
        reached: u32,
        skipped: bool,
    },
    /// At most [`MAX_LISTED`] users; `more` were left out.
    WhoElse {
        users: Vec<UserName>,
        more: u32,
    },
    WhoElseSince {
        secs: u64,
        users: Vec<UserName>,
        more: u32,
    },
    Blocked {
        user: UserName,
    },
    Unblocked {
        user: UserName,
    },
    /// Answer to `StartPrivate`: connect to `addr` and present `ticket`; the listener
    /// there must prove it holds `key`.
    PrivateGranted {
        user: UserName,
        addr: SocketAddr,
        ticket: Ticket,
        key: PeerKey,
        via: Via,
    },
    Registered {
        name: FileName,
        size: u64,
        chunks: u32,
        /// It replaced the sender's earlier description of that name.
        replaced: bool,
    },
    /// Answer to `Unregister`; `for_everyone`: the name itself was withdrawn.
    Unregistered {
        name: FileName,
        for_everyone: bool,
    },
    /// Answer to `HaveChunk`, `Unwatch`, `Withdraw` and `Announce`.
    Noted,
    /// Online users holding at least one chunk (empty: not available); at most
    /// [`MAX_LISTED`], `more` left out.
    FileHolders {
        name: FileName,
        users: Vec<UserName>,
        more: u32,
    },
    /// Per asked chunk (each once, in order), its online holders (empty: not available):
    /// at most [`MAX_LISTED_PER_CHUNK`] of them, and how many more there are.
    ChunkHolders {
        name: FileName,
        chunks: Vec<(u32, Vec<UserName>, u32)>,
    },
    Located {
        meta: FileMeta,
        holders: Vec<Holder>,
    },
    Refused(Refusal),
    /// Answer to `Request::Activity`.
    Active,
    /// Answer to `Request::Logout`; the tracker closes the connection after it.
    LoggedOut,
    /// Answer to `CheckPeer`: `user` is online and may be connected to.
    Reachable {
        user: UserName,
    },
}

/// Why a request was not carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    /// No such user in the credentials file.
    InvalidUser { user: UserName },
    /// The command names the user who sent it.
    SelfTarget,
    /// The recipient has blocked the sender.
    BlockedByRecipient { user: UserName },
    /// `unblock` of a user who was not blocked.
    NotBlocked { user: UserName },
    /// `block` of a user who is already blocked.
    AlreadyBlocked { user: UserName },
    /// The user is not logged in.
    Offline { user: UserName },
    /// The user's client does not accept private connections.
    NotReachable { user: UserName },
    /// The tracker could not carry it out durably (storage failure); nothing was done.
    Unavailable,
    /// No file of that name is registered.
    UnknownFile { name: FileName },
    /// A different file is registered under that name. `same_content`: same bytes, split
    /// into `chunks` chunks.
    FileConflict {
        name: FileName,
        same_content: bool,
        chunks: u32,
    },
    /// Chunk number out of range (0-based) for a file of `count` chunks.
    BadChunk { chunk: u32, count: u32 },
    /// The offline recipient already has `waiting` messages stored (the most kept for one
    /// user); this one was not stored.
    MailboxFull { user: UserName, waiting: u32 },
    /// The sender sent this kind of request faster than allowed; try again in `retry_ms`.
    TooFast { retry_ms: u32 },
    /// The sender has already registered `limit` file names, the most one user may.
    TooManyFiles { limit: u32 },
    /// `Unregister` of a file the sender neither registered, holds nor downloads.
    NotSharing { name: FileName },
    /// The recipient is online but has not taken what is already waiting for them (a slow
    /// link, or a flood from others); the message was not delivered.
    RecipientBusy { user: UserName },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A message (direct or broadcast) relayed while the recipient is online.
    Message { from: UserName, text: Text },
    /// Messages stored while the recipient was offline, oldest first. Acknowledge with
    /// `ClientMsg::OfflineAck`; unacknowledged ones are delivered again at the next login.
    Offline { messages: Vec<OfflineMessage> },
    /// Who logged in and out, in order, since this recipient's last such event. The
    /// tracker gathers presence changes per recipient and sends them every
    /// `tracker::presence::FLUSH_EVERY`, and before its reply to any request, so a burst of
    /// logins costs each online user one frame per interval instead of one per login. At
    /// most [`MAX_PRESENCE_CHANGES`] per frame.
    Presence { changes: Vec<PresenceChange> },
    /// The tracker logged this user out for inactivity; the connection closes after this.
    TimedOut,
    /// Sent soon after login: the address (and port) the tracker sees this client's
    /// connection come from, and whether the tracker could open a connection to the
    /// client's listener there (if not, others cannot either: the client is behind a
    /// router that drops incoming connections, or a firewall).
    Reachability {
        observed: SocketAddr,
        reachable: bool,
    },
    /// `from` was granted a private connection to this user's listener with `ticket`; the
    /// program presenting it must prove it holds `key`.
    PrivateTicket {
        from: UserName,
        ticket: Ticket,
        key: PeerKey,
        /// How the connection will be made; for `Reversed` and `Punched`, `addr` is where
        /// to connect to `from` (its listener, where the tracker sees it).
        via: Via,
        addr: SocketAddr,
        /// For `Punched` and `Relayed`: the relay to meet `from` at when it is not this
        /// user's own tracker's (`from` is on another tracker of the cluster).
        relay: Option<TrackerEndpoint>,
    },
    /// To watchers of `name` (see `Request::Locate`): `user` now also holds `chunks`.
    /// Ask `Locate { from: Some(user) }` for an address and a ticket to fetch from them.
    Holders {
        name: FileName,
        user: UserName,
        chunks: Vec<u32>,
    },
    /// To watchers of `name`: `user` no longer holds any of it (logged out or withdrew).
    HolderGone { name: FileName, user: UserName },
    /// To the holders and watchers of `name`: the name no longer means what they hold or
    /// download. Their copies are no longer shared.
    FileGone { name: FileName, why: Gone },
    /// Right after the welcome, from a tracker in a cluster: if this tracker goes away,
    /// log in again through one of `trackers` with `token` (`ClientMsg::Resume`).
    Failover {
        token: ResumeToken,
        trackers: Vec<TrackerEndpoint>,
    },
}

/// Why a registered name stopped meaning the file it described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Gone {
    /// The user who registered it unregistered it.
    Withdrawn { by: UserName },
    /// The user who registered it registered different content under the name.
    Replaced { by: UserName },
    /// Nobody held any of it for `after_secs` (the tracker's `--release-after`).
    Released { after_secs: u64 },
}

/// One peer to download from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub user: UserName,
    pub addr: SocketAddr,
    pub ticket: Ticket,
    /// The key the holder's listener must prove it holds.
    pub key: PeerKey,
    pub via: Via,
    /// 0-based chunk numbers it holds.
    pub chunks: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineMessage {
    pub id: u64,
    pub from: UserName,
    pub text: Text,
}

/// Peer ↔ peer, on a connection to a peer's listener. The connecting side's first frame is
/// `Hello`; the listener answers `Accepted` or `Refused` (and closes).
///
/// On a `Chat` connection both sides may then send `Text` at any time; `Bye` ends the
/// session on purpose.
///
/// On a `Transfer` connection the connecting side (the downloader) names the file with
/// `Interested`; the listener (the holder) answers `Holding` and, when it has an upload
/// slot for it, `Unchoke`. The downloader then keeps several `Request`s in flight, each
/// answered by one `Block` or `Reject`, in any order; `Cancel` withdraws one not yet sent.
/// `Choke` means the holder dropped every request it had from this downloader and serves
/// none until the next `Unchoke`. The holder sends `Have` as it gets new chunks and
/// `HaveBlock` as it gets blocks of chunks it has not completed (a holder downloading the
/// same file serves those blocks too); the downloader says `NotInterested` while the
/// holder has nothing it needs (it then waits for no slot) and `Interested` again when it
/// has. Before the first block of a chunk, the downloader asks for the chunk's block
/// hashes (`WantHashes`, answered at once, choked or not, with `Hashes` or `NoHashes`),
/// checks them against the chunk's merkle root and then every block against its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    Hello {
        version: u32,
        ticket: Ticket,
        purpose: Purpose,
    },
    Accepted,
    Refused(PeerRefusal),
    /// A private message.
    Text {
        text: Text,
    },
    /// `stopprivate` or logout: the session is over.
    Bye,
    /// Both users opened a session at once; this connection is dropped in favour of the
    /// other. Not shown to the user.
    Superseded,
    /// Downloader's first frame on a `Transfer` connection: the file it wants.
    Interested {
        name: FileName,
    },
    /// The holder's answer: the chunks (0-based) of that file it holds now, and the
    /// verified blocks of chunks it holds only in part; both empty if it holds nothing.
    Holding {
        chunks: Vec<u32>,
        partial: Vec<Partial>,
    },
    /// The holder has verified another chunk of the file.
    Have {
        chunk: u32,
    },
    /// The holder has verified block `block` of `chunk` (a chunk it does not hold whole).
    HaveBlock {
        chunk: u32,
        block: u32,
    },
    /// Send me batch `batch` of the block hashes of `chunk`.
    WantHashes {
        chunk: u32,
        batch: u32,
    },
    /// Batch `batch` of `chunk`'s block hashes (blocks `batch * B ..`, `B` = the `merkle`
    /// crate's batch size, 512), with the sibling roots that prove them against the
    /// chunk's root (top first; none when the chunk has at most `B` blocks).
    Hashes {
        chunk: u32,
        batch: u32,
        leaves: Vec<Digest>,
        proof: Vec<Digest>,
    },
    /// The holder has no block hashes of that chunk.
    NoHashes {
        chunk: u32,
        batch: u32,
    },
    /// The holder suggests fetching these chunks from it, in this order: those it has
    /// sent least (as BitTorrent's Suggest Piece), so a crowd starting together spreads
    /// over different chunks instead of all fetching the same one. Sent with `Unchoke`.
    Suggest {
        chunks: Vec<u32>,
    },
    /// The downloader needs nothing the holder has, for now.
    NotInterested,
    /// The holder drops every request of this downloader and takes no more for now.
    Choke,
    /// The holder has an upload slot for this downloader: requests are served.
    Unchoke,
    /// Send me block `block` (0-based, `BLOCK_LEN` bytes each) of chunk `chunk`.
    Request {
        chunk: u32,
        block: u32,
    },
    /// Forget that request if it is not sent yet.
    Cancel {
        chunk: u32,
        block: u32,
    },
    /// The block asked for: `BLOCK_LEN` bytes, fewer for the last block of a chunk.
    Block {
        chunk: u32,
        block: u32,
        bytes: bytes::Bytes,
    },
    /// That block will not be sent: the holder does not hold its chunk (any more).
    Reject {
        chunk: u32,
        block: u32,
    },
    /// That block is not sent now: the holder is a seed with more downloaders than slots,
    /// and has already sent it to others while blocks it sent nobody remain, so others
    /// hold it or soon will. Ask them, or ask again later (it is not refused twice).
    Later {
        chunk: u32,
        block: u32,
    },
}

/// The verified blocks of one chunk held in part: bit `b % 8` of byte `b / 8` is block
/// `b` (least significant bit first); as many bytes as the chunk's blocks need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    pub chunk: u32,
    pub blocks: bytes::Bytes,
}

impl Partial {
    /// The blocks set in `blocks`, if it is exactly the right length for `count` blocks
    /// and sets none at or past `count`.
    pub fn blocks(&self, count: u32) -> Option<Vec<u32>> {
        if self.blocks.len() != (count as usize).div_ceil(8) {
            return None;
        }
        let mut out = Vec::new();
        for (i, byte) in self.blocks.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let b = (i * 8 + bit) as u32;
                    if b >= count {
                        return None;
                    }
                    out.push(b);
                }
            }
        }
        Some(out)
    }

    pub fn new(chunk: u32, count: u32, held: impl IntoIterator<Item = u32>) -> Partial {
        let mut bytes = vec![0u8; (count as usize).div_ceil(8)];
        for b in held.into_iter().filter(|&b| b < count) {
            bytes[b as usize / 8] |= 1 << (b % 8);
        }
        Partial {
            chunk,
            blocks: bytes.into(),
        }
    }
}

/// What a connection to a peer's listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// A private chat session, shown to the user.
    Chat,
    /// Chunk requests; not shown to the user.
    Transfer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRefusal {
    /// The ticket is unknown, already used or expired.
    BadTicket,
    /// The ticket was issued for another key than the one the dialler proved it holds.
    WrongKey,
    /// Protocol version mismatch; carries the listener's.
    Version(u32),
    /// The listener is at its connection limit.
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_bitfields_round_trip_and_refuse_what_does_not_fit() {
        for count in [1u32, 7, 8, 9, 13, 64, 100] {
            let held: Vec<u32> = (0..count).filter(|b| b % 3 != 1).collect();
            let p = Partial::new(4, count, held.iter().copied());
            assert_eq!(p.blocks.len(), (count as usize).div_ceil(8));
            assert_eq!(p.blocks(count), Some(held));
            // Another count: a different length, or bits past the end.
            assert_eq!(p.blocks(count + 8), None);
        }
        let past_end = Partial {
            chunk: 0,
            blocks: vec![0b1000_0000].into(),
        };
        assert_eq!(past_end.blocks(7), None);
        assert_eq!(past_end.blocks(8), Some(vec![7]));
    }
}
