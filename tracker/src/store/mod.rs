//! The tracker's durable state behind one interface: offline messages, block lists, login
//! history, lockouts and file descriptions.
//!
//! The rules never call a database. They record what must become durable as [`Cmd`]s
//! (`Tracker::take_effects`), under the state lock and so in the order things happened;
//! the server hands each batch to the [`Journal`] before it lets the lock go, and awaits a
//! batch's [`Ticket`] only when a reply depends on it ("stored for later", "blocked").
//! The journal carries the commands out in that order, outside the lock, on an [`Engine`]:
//! SQLite embedded in the process (`sqlite`), the default, or a PostgreSQL server
//! (`postgres`) that several trackers can share.
//!
//! Why this shape: the rules used to call SQLite inline while holding the lock, which made
//! "the recipient is offline, store it" and "the recipient logs in, load its backlog" one
//! atomic step. A database across a network cannot be called under a lock every connection
//! shares, so that invariant now rests on order instead (see `ARCHITECTURE.md`, *Durable
//! state*): a stored message is committed before the sender's node looks whether the
//! recipient came online meanwhile, and a login is recorded before its backlog is read, so
//! one of the two always sees the other.
//!
//! Group commit: the journal takes every batch waiting (up to [`GROUP_OPS`]) into one
//! transaction: one fsync (SQLite) or one round of commits (PostgreSQL) for all of them.
//! If that transaction fails, each batch is retried alone, so one batch's failure is its
//! own.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use wire::{FileMeta, FileName, OfflineMessage, Text, UserName};

use crate::clock::Millis;

pub mod postgres;
pub mod sqlite;

pub use postgres::Postgres;
pub use sqlite::Sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("state database holds an invalid value: {0}")]
    Corrupt(#[from] wire::IdError),
    #[error("state database holds an invalid file description: {0}")]
    CorruptMeta(#[from] rmp_serde::decode::Error),
    #[error("cannot encode a file description: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("the state journal has stopped")]
    Gone,
}

/// One thing to make durable, or to read in order with them.
#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    /// A login, under an id the tracker chose (see `Tracker::login_verified`), after its
    /// [`Cmd::Claim`].
    SessionStarted {
        id: i64,
        user: UserName,
        at: Millis,
    },
    SessionEnded {
        id: i64,
        user: UserName,
        at: Millis,
    },
    /// Forget at most `limit` sessions that ended before `before`.
    PruneHistory {
        before: Millis,
        limit: u32,
    },
    /// The account is locked until then (`None`: the lock is lifted).
    Lockout {
        user: UserName,
        until: Option<Millis>,
    },
    /// A wrong password for `user` at `at`: counted, and the `max`-th in a row locks the
    /// account for `lock_ms`. Answered with [`Answer::Strike`]. Atomic, so trackers
    /// sharing the store count every attempt once and lock once.
    Strike {
        user: UserName,
        at: Millis,
        max: u32,
        lock_ms: u64,
    },
    /// Tracker `node` is alive until `until`: its claims hold until then (see
    /// [`Cmd::Claim`]). Written by trackers of a cluster every second.
    Lease {
        node: u64,
        until: Millis,
    },
    /// The right password for `user`: the session `session` on tracker `node` is theirs,
    /// unless the account is locked or another live tracker holds a session of theirs.
    /// Answered with [`Answer::Claim`]. Resets the count of wrong passwords.
    Claim {
        user: UserName,
        node: u64,
        session: i64,
        at: Millis,
        /// SHA-256 of the session's resume token (see [`Cmd::Resume`]).
        token: [u8; 32],
    },
    /// A client whose tracker went away logs in again on tracker `node` with its session's
    /// resume token (SHA-256 `token`): the session becomes `session` there, with the new
    /// token `renewed`, if the token is the user's current session's, the tracker that held
    /// it is dead (its lease ran out) and died less than `window_ms` ago, and the account is
    /// not locked. Answered with [`Answer::Claim`]: `Taken` while the old tracker's lease
    /// still runs, `Expired` for anything else. Only a shared store resumes sessions (the
    /// embedded one serves one tracker: nowhere to fail over to).
    Resume {
        user: UserName,
        token: [u8; 32],
        renewed: [u8; 32],
        node: u64,
        session: i64,
        at: Millis,
        window_ms: u64,
    },
    Block {
        blocker: UserName,
        blocked: UserName,
        on: bool,
    },
    /// A newly registered (or replaced) file, held by its owner: taken unless the name
    /// is another owner's for other content (registered through another tracker at the
    /// same moment). Answered with [`Answer::Count`]: 1 if taken, 0 if not.
    PutFile {
        meta: FileMeta,
        owner: UserName,
    },
    /// Since when nobody holds `name` (`None`: someone does now).
    SetUnheld {
        name: FileName,
        since: Option<Millis>,
    },
    /// The name is withdrawn or released.
    DeleteFile {
        name: FileName,
    },
    /// Store a message for later, unless `to` blocks `from` or `max` already wait for `to`:
    /// answered with [`Answer::Offline`].
    Offline {
        to: UserName,
        from: UserName,
        text: Text,
        at: Millis,
        max: u64,
    },
    /// `user` received its stored messages up to `up_to`: answered with [`Answer::Count`]
    /// (how many were deleted).
    AckOffline {
        user: UserName,
        up_to: u64,
    },
    /// `user`'s stored messages after id `after`, oldest first, at most `limit`: answered
    /// with [`Answer::Messages`].
    OfflineFor {
        user: UserName,
        after: u64,
        limit: u32,
    },
    /// Users with a session overlapping `[since, now]`: answered with [`Answer::Users`].
    OnlineSince {
        since: Millis,
    },
    /// Users who block `user`, as committed (a block set through another tracker counts
    /// as soon as its reply was sent): answered with [`Answer::Users`].
    BlockersOf {
        user: UserName,
    },
}

/// What a command answers, one per command, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Done,
    Offline(Offline),
    Strike(crate::lockout::Strike),
    Claim(Claim),
    Count(u64),
    Messages(Vec<OfflineMessage>),
    Users(Vec<UserName>),
}

/// How a [`Cmd::Offline`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    /// Stored under `id`; `waiting` messages now wait for the recipient, this one included.
    Stored { id: u64, waiting: u64 },
    /// Not stored: `waiting` already wait.
    Full { waiting: u64 },
    /// Not stored: the recipient blocks the sender (the store's block list decides, so a
    /// block set through another tracker holds whatever this one has heard of it).
    Blocked,
}

/// How a [`Cmd::Claim`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    /// Locked until then (by wrong passwords here or on another tracker).
    Locked(Millis),
    /// Another tracker, alive, holds a session of this user's.
    Taken,
    /// A [`Cmd::Resume`] whose token is not (or no longer) good.
    Expired,
}

/// What a tracker starts from: the durable state it keeps in memory.
#[derive(Debug, Default)]
pub struct Boot {
    pub lockouts: Vec<(UserName, Millis)>,
    pub files: Vec<StoredFile>,
    pub blocks: Vec<(UserName, UserName)>,
    /// Sessions left open by an unclean stop, now closed.
    pub closed: usize,
}

/// A registered file as stored.
#[derive(Debug)]
pub struct StoredFile {
    pub meta: FileMeta,
    pub owner: Option<UserName>,
    pub unheld_since: Millis,
}

/// A database the journal can carry commands out on.
pub trait Engine: Send + 'static {
    /// Everything tracker `node` starting at `now` keeps in memory. Sessions it or a
    /// tracker without a live lease left open are closed at `now` (their tracker stopped
    /// without closing them), and names held when it stopped count as unheld from `now`.
    fn boot(
        &mut self,
        now: Millis,
        node: u64,
    ) -> impl Future<Output = Result<Boot, StoreError>> + Send;

    /// Carries out `cmds` in order, in one transaction: one answer per command, or an
    /// error and nothing applied.
    fn run(&mut self, cmds: &[Cmd])
        -> impl Future<Output = Result<Vec<Answer>, StoreError>> + Send;
}

/// Batches taken into one transaction at most, and commands in them.
pub const GROUP_OPS: usize = 256;
const GROUP_CMDS: usize = 4096;

type Done = oneshot::Sender<Result<Vec<Answer>, StoreError>>;

struct Op {
    cmds: Vec<Cmd>,
    done: Done,
}

/// Where the tracker sends what must become durable, in order. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Op>,
}

/// A batch's answers, once committed.
pub struct Ticket(oneshot::Receiver<Result<Vec<Answer>, StoreError>>);

impl Ticket {
    pub async fn answers(self) -> Result<Vec<Answer>, StoreError> {
        self.0.await.unwrap_or(Err(StoreError::Gone))
    }
}

/// The answers of a batch, if one was handed over (`Shared::act` hands none over when
/// nothing was recorded, and then nobody can be waiting for an answer: a bug, `Gone`).
pub async fn answers(ticket: Option<Ticket>) -> Result<Vec<Answer>, StoreError> {
    match ticket {
        Some(t) => t.answers().await,
        None => Err(StoreError::Gone),
    }
}

/// The answer to the command at `at` of a batch's answers.
pub fn answer_at(
    answers: Result<Vec<Answer>, StoreError>,
    at: usize,
) -> Result<Answer, StoreError> {
    let mut answers = answers?;
    if at < answers.len() {
        Ok(answers.swap_remove(at))
    } else {
        Err(StoreError::Gone)
    }
}

impl Journal {
    /// Queues `cmds`, after everything queued before. Unbounded on purpose: it is called
    /// under the state lock, which must not wait; what feeds it is bounded upstream (a
    /// connection waits for its own batch before its next request; logins are paced by
    /// password checks).
    pub fn submit(&self, cmds: Vec<Cmd>) -> Ticket {
        let (done, rx) = oneshot::channel();
        // If the journal has stopped, the ticket answers `Gone`.
        let _ = self.tx.send(Op { cmds, done });
        Ticket(rx)
    }

    /// Starts a journal on `engine` as a task of the current runtime.
    pub fn spawn<E: Engine>(engine: E) -> Journal {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(engine, rx));
        Journal { tx }
    }

    /// Starts a journal on `engine` on a thread of its own: for an engine whose calls
    /// block (SQLite), so they never hold up the runtime's threads.
    pub fn spawn_blocking<E: Engine>(engine: E) -> std::io::Result<Journal> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || rt.block_on(serve(engine, rx)))?;
        Ok(Journal { tx })
    }
}

/// The journal: takes every batch waiting, commits them together, answers each.
async fn serve<E: Engine>(mut engine: E, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut group: Vec<Op> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut cmds = first.cmds.len();
        group.push(first);
        while group.len() < GROUP_OPS && cmds < GROUP_CMDS {
            match rx.try_recv() {
                Ok(op) => {
                    cmds += op.cmds.len();
                    group.push(op);
                }
                Err(_) => break,
            }
        }
        commit(&mut engine, &mut group).await;
    }
}

async fn commit<E: Engine>(engine: &mut E, group: &mut Vec<Op>) {
    let all: Vec<Cmd> = group
        .iter()
        .flat_map(|op| op.cmds.iter().cloned())
        .collect();
    match engine.run(&all).await {
        Ok(mut answers) => {
            for op in group.drain(..).rev() {
                let mine = answers.split_off(answers.len() - op.cmds.len());
                let _ = op.done.send(Ok(mine));
            }
        }
        Err(e) if group.len() == 1 => {
            let op = group.pop().expect("one");
            failed(&op.cmds, &e);
            let _ = op.done.send(Err(e));
        }
        Err(_) => {
            // Each alone, so only the batches that fail by themselves fail.
            for op in group.drain(..) {
                let r = engine.run(&op.cmds).await;
                if let Err(e) = &r {
                    failed(&op.cmds, e);
                }
                let _ = op.done.send(r);
            }
        }
    }
}

/// A batch that did not commit. Logged here once: most batches are nobody's reply
/// (a logout, a file nobody holds now) and have no one else to tell.
fn failed(cmds: &[Cmd], e: &StoreError) {
    let what: Vec<&'static str> = cmds.iter().map(Cmd::kind).collect();
    tracing::error!(error = %e, ?what, "could not store");
}

impl Cmd {
    fn kind(&self) -> &'static str {
        match self {
            Cmd::SessionStarted { .. } => "login",
            Cmd::SessionEnded { .. } => "logout",
            Cmd::PruneHistory { .. } => "history pruning",
            Cmd::Lockout { .. } => "lockout",
            Cmd::Strike { .. } => "wrong password",
            Cmd::Claim { .. } => "login claim",
            Cmd::Resume { .. } => "session resume",
            Cmd::Lease { .. } => "node lease",
            Cmd::Block { .. } => "block",
            Cmd::PutFile { .. } => "file",
            Cmd::SetUnheld { .. } => "file holding",
            Cmd::DeleteFile { .. } => "file removal",
            Cmd::Offline { .. } => "offline message",
            Cmd::AckOffline { .. } => "offline acknowledgement",
            Cmd::OfflineFor { .. } => "offline backlog",
            Cmd::OnlineSince { .. } => "login history",
            Cmd::BlockersOf { .. } => "block list",
        }
    }
}
