//! The embedded engine: one SQLite database (WAL) in the tracker's folder, the default.
//!
//! Durability: `synchronous = NORMAL` in WAL mode makes every committed transaction survive
//! the tracker process dying (`kill -9`): the commit is in the OS's page cache before the
//! journal answers. A power cut may lose the last transactions; `FULL` would cover that at
//! the price of an fsync per group commit.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use wire::{FileMeta, OfflineMessage, Text, UserName};

use super::{Answer, Boot, Cmd, Engine, Offline, StoreError, StoredFile};
use crate::clock::Millis;

/// A write waits this long when another program holds the database; past it the batch
/// fails (and a reply waiting on it says the server is unavailable) instead of freezing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

pub struct Sqlite {
    db: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS offline (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    sender    TEXT NOT NULL,
    text      TEXT NOT NULL,
    sent_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS offline_by_recipient ON offline (recipient, id);
CREATE TABLE IF NOT EXISTS blocks (
    blocker TEXT NOT NULL,
    blocked TEXT NOT NULL,
    PRIMARY KEY (blocker, blocked)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_blocked ON blocks (blocked, blocker);
CREATE TABLE IF NOT EXISTS sessions (
    id        INTEGER PRIMARY KEY,
    user      TEXT NOT NULL,
    login_at  INTEGER NOT NULL,
    logout_at INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_by_logout ON sessions (logout_at);
-- Each user's latest logout (NULL while online): all `whoelsesince` needs, one row per
-- user however often they log in. `sessions` is the history itself, kept `HISTORY_KEPT`.
CREATE TABLE IF NOT EXISTS last_seen (
    user      TEXT PRIMARY KEY,
    logout_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS last_seen_by_logout ON last_seen (logout_at);
INSERT OR IGNORE INTO last_seen (user, logout_at)
    SELECT user, MAX(COALESCE(logout_at, login_at)) FROM sessions GROUP BY user;
-- Descriptions of protocol 2 had no merkle roots: clients that cannot check blocks
-- cannot download them, so those names are released.
DROP TABLE IF EXISTS files;
CREATE TABLE IF NOT EXISTS files_v3 (
    name TEXT PRIMARY KEY,
    meta BLOB NOT NULL
) WITHOUT ROWID;
-- v4 adds who registered each name (they count toward that user's quota); names kept
-- from v3 have no known owner.
CREATE TABLE IF NOT EXISTS files_v4 (
    name  TEXT PRIMARY KEY,
    meta  BLOB NOT NULL,
    owner TEXT
) WITHOUT ROWID;
INSERT OR IGNORE INTO files_v4 (name, meta, owner) SELECT name, meta, NULL FROM files_v3;
DROP TABLE files_v3;
-- v5 adds since when nobody has held each name (milliseconds; NULL: someone held it when
-- the tracker last ran). A name unheld for `--release-after` is released.
CREATE TABLE IF NOT EXISTS files_v5 (
    name      TEXT PRIMARY KEY,
    meta      BLOB NOT NULL,
    owner     TEXT,
    unheld_at INTEGER
) WITHOUT ROWID;
INSERT OR IGNORE INTO files_v5 (name, meta, owner, unheld_at)
    SELECT name, meta, owner, NULL FROM files_v4;
DROP TABLE files_v4;
CREATE TABLE IF NOT EXISTS lockouts (
    user  TEXT PRIMARY KEY,
    until INTEGER NOT NULL
) WITHOUT ROWID;
-- Wrong passwords in a row, per user (see Cmd::Strike).
CREATE TABLE IF NOT EXISTS strikes (
    user TEXT PRIMARY KEY,
    n    INTEGER NOT NULL
) WITHOUT ROWID;
-- Who is logged in, on which tracker (see Cmd::Claim), and until when each tracker is
-- known to be alive. One tracker per SQLite file: no leases, every claim its own.
CREATE TABLE IF NOT EXISTS online (
    user    TEXT PRIMARY KEY,
    node    INTEGER NOT NULL,
    session INTEGER NOT NULL,
    since   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    id          INTEGER PRIMARY KEY,
    lease_until INTEGER NOT NULL
);
";

/// Moves what the write-ahead log holds into the database file; see
/// [`Sqlite::hand_checkpoints_to`].
pub struct Checkpointer {
    db: Connection,
}

impl Checkpointer {
    /// One passive checkpoint: as much as it can without waiting for the journal's own
    /// connection. Call it every second or so.
    pub fn run(&self) -> Result<(), StoreError> {
        self.db
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }
}

impl Engine for Sqlite {
    /// One tracker per file: every claim and open session was this tracker's.
    async fn boot(&mut self, now: Millis, _node: u64) -> Result<Boot, StoreError> {
        self.boot_now(now)
    }

    async fn run(&mut self, cmds: &[Cmd]) -> Result<Vec<Answer>, StoreError> {
        self.apply(cmds)
    }
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(db: Connection) -> Result<Self, StoreError> {
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(BUSY_TIMEOUT)?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// From now on the write-ahead log is moved into the database file only by the
    /// returned [`Checkpointer`], on a connection of its own: the fsyncs a checkpoint
    /// takes then happen outside the journal's commits. (SQLite's automatic checkpoint
    /// runs inside the commit that crosses 1,000 pages: under a stream of writes, a stall
    /// of several milliseconds now and then, `bench/abuse`.)
    pub fn hand_checkpoints_to(&self, path: &Path) -> Result<Checkpointer, StoreError> {
        let db = Connection::open(path)?;
        db.busy_timeout(BUSY_TIMEOUT)?;
        self.db.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Checkpointer { db })
    }

    /// [`Engine::boot`], synchronously.
    pub fn boot_now(&self, now: Millis) -> Result<Boot, StoreError> {
        let tx = self.db.unchecked_transaction()?;
        let closed = self.close_open_sessions(now)?;
        self.db.execute(
            "DELETE FROM lockouts WHERE until <= ?1",
            params![now.0 as i64],
        )?;
        let boot = Boot {
            lockouts: self.lockouts()?,
            files: self.files(now)?,
            blocks: self.blocks()?,
            closed,
        };
        tx.commit()?;
        Ok(boot)
    }

    /// [`Engine::run`], synchronously.
    pub fn apply(&self, cmds: &[Cmd]) -> Result<Vec<Answer>, StoreError> {
        let tx = self.db.unchecked_transaction()?;
        let answers = cmds
            .iter()
            .map(|c| self.one(c))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(answers)
    }

    fn one(&self, cmd: &Cmd) -> Result<Answer, StoreError> {
        let db = &self.db;
        match cmd {
            Cmd::SessionStarted { id, user, at } => {
                db.prepare_cached("INSERT INTO sessions (id, user, login_at) VALUES (?1, ?2, ?3)")?
                    .execute(params![id, user.as_str(), at.0 as i64])?;
                db.prepare_cached(
                    "INSERT OR REPLACE INTO last_seen (user, logout_at) VALUES (?1, NULL)",
                )?
                .execute(params![user.as_str()])?;
            }
            Cmd::SessionEnded { id, user, at } => {
                db.prepare_cached("UPDATE sessions SET logout_at = ?2 WHERE id = ?1")?
                    .execute(params![id, at.0 as i64])?;
                db.prepare_cached("UPDATE last_seen SET logout_at = ?2 WHERE user = ?1")?
                    .execute(params![user.as_str(), at.0 as i64])?;
                db.prepare_cached("DELETE FROM online WHERE user = ?1 AND session = ?2")?
                    .execute(params![user.as_str(), id])?;
            }
            Cmd::Strike {
                user,
                at,
                max,
                lock_ms,
            } => return Ok(Answer::Strike(self.strike(user, *at, *max, *lock_ms)?)),
            // One tracker per SQLite file: its sessions end with it, no token is kept.
            Cmd::Claim {
                user,
                node,
                session,
                at,
                token: _,
            } => return Ok(Answer::Claim(self.claim(user, *node, *session, *at)?)),
            Cmd::Resume { .. } => return Ok(Answer::Claim(super::Claim::Expired)),
            Cmd::Lease { node, until } => {
                db.prepare_cached(
                    "INSERT OR REPLACE INTO nodes (id, lease_until) VALUES (?1, ?2)",
                )?
                .execute(params![*node as i64, until.0 as i64])?;
            }
            Cmd::PruneHistory { before, limit } => {
                let n = db
                    .prepare_cached(
                        "DELETE FROM sessions WHERE id IN \
                         (SELECT id FROM sessions WHERE logout_at < ?1 LIMIT ?2)",
                    )?
                    .execute(params![before.0 as i64, *limit as i64])?;
                return Ok(Answer::Count(n as u64));
            }
            Cmd::Lockout { user, until } => match until {
                Some(t) => {
                    db.prepare_cached(
                        "INSERT OR REPLACE INTO lockouts (user, until) VALUES (?1, ?2)",
                    )?
                    .execute(params![user.as_str(), t.0 as i64])?;
                }
                None => {
                    db.prepare_cached("DELETE FROM lockouts WHERE user = ?1")?
                        .execute(params![user.as_str()])?;
                }
            },
            Cmd::Block {
                blocker,
                blocked,
                on,
            } => {
                let sql = if *on {
                    "INSERT OR IGNORE INTO blocks (blocker, blocked) VALUES (?1, ?2)"
                } else {
                    "DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2"
                };
                db.prepare_cached(sql)?
                    .execute(params![blocker.as_str(), blocked.as_str()])?;
            }
            Cmd::PutFile { meta, owner } => {
                // Stored as MessagePack, the same encoding (and validation on the way
                // back) as on the wire.
                let blob = rmp_serde::to_vec(meta)?;
                let n = db
                    .prepare_cached(
                        "INSERT INTO files_v5 (name, meta, owner, unheld_at) \
                         VALUES (?1, ?2, ?3, NULL) ON CONFLICT (name) DO UPDATE \
                         SET meta = excluded.meta, unheld_at = NULL \
                         WHERE owner = excluded.owner OR meta = excluded.meta",
                    )?
                    .execute(params![meta.name().as_str(), blob, owner.as_str()])?;
                return Ok(Answer::Count(n as u64));
            }
            Cmd::SetUnheld { name, since } => {
                db.prepare_cached("UPDATE files_v5 SET unheld_at = ?2 WHERE name = ?1")?
                    .execute(params![name.as_str(), since.map(|m| m.0 as i64)])?;
            }
            Cmd::DeleteFile { name } => {
                db.prepare_cached("DELETE FROM files_v5 WHERE name = ?1")?
                    .execute(params![name.as_str()])?;
            }
            Cmd::Offline {
                to,
                from,
                text,
                at,
                max,
            } => {
                return Ok(Answer::Offline(
                    self.store_offline(to, from, text, *at, *max)?,
                ))
            }
            Cmd::AckOffline { user, up_to } => {
                let n = db
                    .prepare_cached("DELETE FROM offline WHERE recipient = ?1 AND id <= ?2")?
                    .execute(params![user.as_str(), *up_to as i64])?;
                return Ok(Answer::Count(n as u64));
            }
            Cmd::OfflineFor { user, after, limit } => {
                return Ok(Answer::Messages(self.offline_for(user, *after, *limit)?))
            }
            Cmd::OnlineSince { since } => return Ok(Answer::Users(self.online_since(*since)?)),
            Cmd::BlockersOf { user } => return Ok(Answer::Users(self.blockers_of(user)?)),
        }
        Ok(Answer::Done)
    }

    /// Sessions left open by a crash are closed at `now`: those users were online until at
    /// most then, which is what `whoelsesince` needs to know. Their claims go with them.
    fn close_open_sessions(&self, now: Millis) -> Result<usize, StoreError> {
        self.db.execute("DELETE FROM online", [])?;
        let n = self.db.execute(
            "UPDATE sessions SET logout_at = ?1 WHERE logout_at IS NULL",
            params![now.0 as i64],
        )?;
        self.db.execute(
            "UPDATE last_seen SET logout_at = ?1 WHERE logout_at IS NULL",
            params![now.0 as i64],
        )?;
        Ok(n)
    }

    fn locked_until(&self, user: &UserName, at: Millis) -> Result<Option<Millis>, StoreError> {
        Ok(self
            .db
            .prepare_cached("SELECT until FROM lockouts WHERE user = ?1 AND until > ?2")?
            .query_row(params![user.as_str(), at.0 as i64], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|u| Millis(u as u64)))
    }

    fn strike(
        &self,
        user: &UserName,
        at: Millis,
        max: u32,
        lock_ms: u64,
    ) -> Result<crate::lockout::Strike, StoreError> {
        use crate::lockout::Strike;
        if let Some(until) = self.locked_until(user, at)? {
            return Ok(Strike::Locked(until));
        }
        let n: i64 = self
            .db
            .prepare_cached(
                "INSERT INTO strikes (user, n) VALUES (?1, 1) \
                 ON CONFLICT (user) DO UPDATE SET n = n + 1 RETURNING n",
            )?
            .query_row(params![user.as_str()], |r| r.get(0))?;
        if n < max as i64 {
            return Ok(Strike::TryAgain);
        }
        let until = at.plus(std::time::Duration::from_millis(lock_ms));
        self.db
            .prepare_cached("DELETE FROM strikes WHERE user = ?1")?
            .execute(params![user.as_str()])?;
        self.db
            .prepare_cached("INSERT OR REPLACE INTO lockouts (user, until) VALUES (?1, ?2)")?
            .execute(params![user.as_str(), until.0 as i64])?;
        Ok(Strike::LockedUntil(until))
    }

    fn claim(
        &self,
        user: &UserName,
        node: u64,
        session: i64,
        at: Millis,
    ) -> Result<super::Claim, StoreError> {
        use super::Claim;
        if let Some(until) = self.locked_until(user, at)? {
            return Ok(Claim::Locked(until));
        }
        let held: Option<i64> = self
            .db
            .prepare_cached(
                "SELECT o.node FROM online o JOIN nodes n ON n.id = o.node \
                 WHERE o.user = ?1 AND o.node <> ?2 AND n.lease_until > ?3",
            )?
            .query_row(params![user.as_str(), node as i64, at.0 as i64], |r| {
                r.get(0)
            })
            .optional()?;
        if held.is_some() {
            return Ok(Claim::Taken);
        }
        self.db
            .prepare_cached("DELETE FROM strikes WHERE user = ?1")?
            .execute(params![user.as_str()])?;
        self.db
            .prepare_cached(
                "INSERT OR REPLACE INTO online (user, node, session, since) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![user.as_str(), node as i64, session, at.0 as i64])?;
        Ok(Claim::Claimed)
    }

    /// Users with a session overlapping `[since, now]`: still open, or closed at or after
    /// `since`. One row per user, whatever the window.
    fn blockers_of(&self, user: &UserName) -> Result<Vec<UserName>, StoreError> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT blocker FROM blocks WHERE blocked = ?1 ORDER BY blocker")?;
        let rows = stmt.query_map(params![user.as_str()], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(UserName::new(r?)?);
        }
        Ok(out)
    }

    fn online_since(&self, since: Millis) -> Result<Vec<UserName>, StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT user FROM last_seen WHERE logout_at IS NULL OR logout_at >= ?1 ORDER BY user",
        )?;
        let rows = stmt.query_map(params![since.0 as i64], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(UserName::new(r?)?);
        }
        Ok(out)
    }

    /// Counted before storing: one index range of at most `max` entries, in the same
    /// transaction as the insert (the journal is this database's only writer).
    fn store_offline(
        &self,
        to: &UserName,
        from: &UserName,
        text: &Text,
        now: Millis,
        max: u64,
    ) -> Result<Offline, StoreError> {
        let blocked = self
            .db
            .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
            .query_row(params![to.as_str(), from.as_str()], |_| Ok(()))
            .optional()?
            .is_some();
        if blocked {
            return Ok(Offline::Blocked);
        }
        let waiting = self
            .db
            .prepare_cached("SELECT COUNT(*) FROM offline WHERE recipient = ?1")?
            .query_row(params![to.as_str()], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64;
        if waiting >= max {
            return Ok(Offline::Full { waiting });
        }
        self.db
            .prepare_cached(
                "INSERT INTO offline (recipient, sender, text, sent_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                to.as_str(),
                from.as_str(),
                text.as_str(),
                now.0 as i64
            ])?;
        Ok(Offline::Stored {
            id: self.db.last_insert_rowid() as u64,
            waiting: waiting + 1,
        })
    }

    fn offline_for(
        &self,
        to: &UserName,
        after: u64,
        limit: u32,
    ) -> Result<Vec<OfflineMessage>, StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT id, sender, text FROM offline WHERE recipient = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![to.as_str(), after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (id, from, text) = r?;
            out.push(OfflineMessage {
                id: id as u64,
                from: UserName::new(from)?,
                text: Text::new(text)?,
            });
        }
        Ok(out)
    }

    fn blocks(&self) -> Result<Vec<(UserName, UserName)>, StoreError> {
        let mut stmt = self.db.prepare("SELECT blocker, blocked FROM blocks")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (a, b) = r?;
            out.push((UserName::new(a)?, UserName::new(b)?));
        }
        Ok(out)
    }

    fn lockouts(&self) -> Result<Vec<(UserName, Millis)>, StoreError> {
        let mut stmt = self.db.prepare("SELECT user, until FROM lockouts")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (u, t) = r?;
            out.push((UserName::new(u)?, Millis(t as u64)));
        }
        Ok(out)
    }

    /// Every registered file, who registered it (unknown for names from before v4), and
    /// since when nobody holds it. Names held when the tracker last stopped (or crashed)
    /// are unheld from `now`: nobody holds anything before logging in again.
    fn files(&self, now: Millis) -> Result<Vec<StoredFile>, StoreError> {
        self.db
            .prepare_cached("UPDATE files_v5 SET unheld_at = ?1 WHERE unheld_at IS NULL")?
            .execute(params![now.0 as i64])?;
        let mut stmt = self
            .db
            .prepare("SELECT meta, owner, unheld_at FROM files_v5")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (blob, owner, unheld) = r?;
            out.push(StoredFile {
                meta: rmp_serde::from_slice::<FileMeta>(&blob)?,
                owner: owner.and_then(|o| UserName::new(o).ok()),
                unheld_since: Millis(unheld.max(0) as u64),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    #[test]
    fn a_checkpointer_on_its_own_connection_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = Sqlite::open(&path).unwrap();
        let ck = s.hand_checkpoints_to(&path).unwrap();
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let before = db_len();
        for i in 0..2_000 {
            let cmd = Cmd::SessionStarted {
                id: i,
                user: u(&format!("u{i}")),
                at: Millis(i as u64),
            };
            s.apply(&[cmd]).unwrap();
        }
        // Thousands of log pages, and none moved by the writer's own commits.
        assert_eq!(db_len(), before);
        ck.run().unwrap();
        assert!(db_len() > before + 64 * 1024, "{} -> {}", before, db_len());
        drop(s);
        let s = Sqlite::open(&path).unwrap();
        let users = s.apply(&[Cmd::OnlineSince { since: Millis(0) }]).unwrap();
        assert!(matches!(&users[..], [Answer::Users(u)] if u.len() == 2_000));
    }

    #[test]
    fn a_database_of_an_older_version_opens_and_keeps_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let s = Sqlite::open(&path).unwrap();
            s.apply(&[Cmd::Block {
                blocker: u("luke"),
                blocked: u("hans"),
                on: true,
            }])
            .unwrap();
        }
        // Opening runs the schema again (it upgrades older files in place): idempotent.
        let mut s = Sqlite::open(&path).unwrap();
        let boot = futures_util::FutureExt::now_or_never(s.boot(Millis(1), 1))
            .unwrap()
            .unwrap();
        assert_eq!(boot.blocks, [(u("luke"), u("hans"))]);
    }
}
