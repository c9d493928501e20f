//! The tracker's durable state: one SQLite database (WAL) holding offline messages, block
//! lists, login history and account lockouts.
//!
//! All SQL lives here. Calls are synchronous and short; the caller holds the tracker's state
//! lock around them on purpose, so that "is the recipient online?" and "store for later" are
//! one atomic step with respect to that recipient logging in (see `state.rs`).
//!
//! Durability: `synchronous = NORMAL` in WAL mode makes every committed transaction survive
//! the tracker process dying (`kill -9`): the commit is in the OS's page cache before the
//! call returns. A power cut may lose the last transactions; `FULL` would cover that at
//! the price of an fsync per offline message.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use wire::{FileMeta, FileName, OfflineMessage, Text, UserName};

use crate::clock::Millis;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database holds an invalid value: {0}")]
    Corrupt(#[from] wire::IdError),
    #[error("state database holds an invalid file description: {0}")]
    CorruptMeta(#[from] rmp_serde::decode::Error),
    #[error("cannot encode a file description: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Short: a write waits this long under the tracker's lock (every connection waits with
/// it) when another program holds the database; past it the request is refused as
/// `Unavailable` instead of freezing the relay.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

pub struct Store {
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
";

/// Moves what the write-ahead log holds into the database file; see
/// [`Store::hand_checkpoints_to`].
pub struct Checkpointer {
    db: Connection,
}

/// A registered file as stored.
#[derive(Debug)]
pub struct StoredFile {
    pub meta: FileMeta,
    pub owner: Option<UserName>,
    pub unheld_since: Millis,
}

impl Checkpointer {
    /// One passive checkpoint: as much as it can without waiting for the tracker's own
    /// connection. Call it every second or so.
    pub fn run(&self) -> Result<(), StoreError> {
        self.db
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }
}

impl Store {
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
    /// takes then happen outside the tracker's lock. (SQLite's automatic checkpoint runs
    /// inside the commit that crosses 1,000 pages: under a stream of writes, a stall of
    /// several milliseconds for every connection now and then, `bench/abuse`.)
    pub fn hand_checkpoints_to(&self, path: &Path) -> Result<Checkpointer, StoreError> {
        let db = Connection::open(path)?;
        db.busy_timeout(BUSY_TIMEOUT)?;
        self.db.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Checkpointer { db })
    }

    /// Sessions left open by a crash are closed at `now`: those users were online until at
    /// most then, which is what `whoelsesince` needs to know.
    pub fn close_open_sessions(&self, now: Millis) -> Result<usize, StoreError> {
        let tx = self.db.unchecked_transaction()?;
        let n = tx.execute(
            "UPDATE sessions SET logout_at = ?1 WHERE logout_at IS NULL",
            params![now.0 as i64],
        )?;
        tx.execute(
            "UPDATE last_seen SET logout_at = ?1 WHERE logout_at IS NULL",
            params![now.0 as i64],
        )?;
        tx.commit()?;
        Ok(n)
    }

    pub fn session_started(&self, user: &UserName, now: Millis) -> Result<i64, StoreError> {
        let tx = self.db.unchecked_transaction()?;
        tx.prepare_cached("INSERT INTO sessions (user, login_at) VALUES (?1, ?2)")?
            .execute(params![user.as_str(), now.0 as i64])?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached("INSERT OR REPLACE INTO last_seen (user, logout_at) VALUES (?1, NULL)")?
            .execute(params![user.as_str()])?;
        tx.commit()?;
        Ok(id)
    }

    pub fn session_ended(&self, id: i64, user: &UserName, now: Millis) -> Result<(), StoreError> {
        let tx = self.db.unchecked_transaction()?;
        tx.prepare_cached("UPDATE sessions SET logout_at = ?2 WHERE id = ?1")?
            .execute(params![id, now.0 as i64])?;
        tx.prepare_cached("UPDATE last_seen SET logout_at = ?2 WHERE user = ?1")?
            .execute(params![user.as_str(), now.0 as i64])?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets at most `limit` sessions that ended before `before`; how many it forgot.
    /// Bounded so one call is short under the tracker's lock; called again and again.
    pub fn prune_history(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        Ok(self
            .db
            .prepare_cached(
                "DELETE FROM sessions WHERE id IN \
                 (SELECT id FROM sessions WHERE logout_at < ?1 LIMIT ?2)",
            )?
            .execute(params![before.0 as i64, limit as i64])?)
    }

    /// Sessions in the history; for tests and diagnostics.
    pub fn history_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .db
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Users with a session overlapping `[since, now]`: still open, or closed at or after
    /// `since`. One row per user, whatever the window.
    pub fn online_since(&self, since: Millis) -> Result<Vec<UserName>, StoreError> {
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

    pub fn store_offline(
        &self,
        to: &UserName,
        from: &UserName,
        text: &Text,
        now: Millis,
    ) -> Result<u64, StoreError> {
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
        Ok(self.db.last_insert_rowid() as u64)
    }

    /// Offline messages for `to`, oldest first, at most `limit`, after id `after`.
    pub fn offline_for(
        &self,
        to: &UserName,
        after: u64,
        limit: usize,
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

    pub fn ack_offline(&self, to: &UserName, up_to: u64) -> Result<usize, StoreError> {
        Ok(self
            .db
            .prepare_cached("DELETE FROM offline WHERE recipient = ?1 AND id <= ?2")?
            .execute(params![to.as_str(), up_to as i64])?)
    }

    pub fn set_block(
        &self,
        blocker: &UserName,
        blocked: &UserName,
        on: bool,
    ) -> Result<(), StoreError> {
        let sql = if on {
            "INSERT OR IGNORE INTO blocks (blocker, blocked) VALUES (?1, ?2)"
        } else {
            "DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2"
        };
        self.db
            .prepare_cached(sql)?
            .execute(params![blocker.as_str(), blocked.as_str()])?;
        Ok(())
    }

    pub fn blocks(&self) -> Result<Vec<(UserName, UserName)>, StoreError> {
        let mut stmt = self.db.prepare("SELECT blocker, blocked FROM blocks")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (a, b) = r?;
            out.push((UserName::new(a)?, UserName::new(b)?));
        }
        Ok(out)
    }

    pub fn set_lockout(&self, user: &UserName, until: Option<Millis>) -> Result<(), StoreError> {
        match until {
            Some(t) => self.db.execute(
                "INSERT OR REPLACE INTO lockouts (user, until) VALUES (?1, ?2)",
                params![user.as_str(), t.0 as i64],
            )?,
            None => self.db.execute(
                "DELETE FROM lockouts WHERE user = ?1",
                params![user.as_str()],
            )?,
        };
        Ok(())
    }

    pub fn lockouts(&self, now: Millis) -> Result<Vec<(UserName, Millis)>, StoreError> {
        self.db.execute(
            "DELETE FROM lockouts WHERE until <= ?1",
            params![now.0 as i64],
        )?;
        let mut stmt = self.db.prepare("SELECT user, until FROM lockouts")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (u, t) = r?;
            out.push((UserName::new(u)?, Millis(t as u64)));
        }
        Ok(out)
    }

    /// Records a newly registered (or replaced) file, held by its owner. Its description
    /// is stored as MessagePack, the same encoding (and validation on the way back) as on
    /// the wire.
    pub fn put_file(&self, meta: &FileMeta, owner: &UserName) -> Result<(), StoreError> {
        let blob = rmp_serde::to_vec(meta)?;
        self.db
            .prepare_cached(
                "INSERT OR REPLACE INTO files_v5 (name, meta, owner, unheld_at) \
                 VALUES (?1, ?2, ?3, NULL)",
            )?
            .execute(params![meta.name().as_str(), blob, owner.as_str()])?;
        Ok(())
    }

    /// Since when nobody holds `name` (`None`: someone does now).
    pub fn set_unheld(&self, name: &FileName, since: Option<Millis>) -> Result<(), StoreError> {
        self.db
            .prepare_cached("UPDATE files_v5 SET unheld_at = ?2 WHERE name = ?1")?
            .execute(params![name.as_str(), since.map(|m| m.0 as i64)])?;
        Ok(())
    }

    /// The name is withdrawn or released.
    pub fn delete_file(&self, name: &FileName) -> Result<(), StoreError> {
        self.db
            .prepare_cached("DELETE FROM files_v5 WHERE name = ?1")?
            .execute(params![name.as_str()])?;
        Ok(())
    }

    /// Every registered file, who registered it (unknown for names from before v4), and
    /// since when nobody holds it. Names held when the tracker last stopped (or crashed)
    /// are unheld from `now`: nobody holds anything before logging in again.
    pub fn files(&self, now: Millis) -> Result<Vec<StoredFile>, StoreError> {
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
                meta: rmp_serde::from_slice(&blob)?,
                owner: owner.and_then(|o| UserName::new(o).ok()),
                unheld_since: Millis(unheld.max(0) as u64),
            });
        }
        Ok(out)
    }

    /// For tests and diagnostics: how many offline messages wait for `to`.
    pub fn offline_count(&self, to: &UserName) -> Result<u64, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT COUNT(*) FROM offline WHERE recipient = ?1",
                params![to.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    #[test]
    fn offline_messages_keep_order_until_acknowledged() {
        let s = Store::open_in_memory().unwrap();
        let (hans, luke) = (u("hans"), u("luke"));
        for t in ["one", "two", "three"] {
            s.store_offline(&luke, &hans, &Text::new(t).unwrap(), Millis(1))
                .unwrap();
        }
        let got = s.offline_for(&luke, 0, 100).unwrap();
        let texts: Vec<_> = got.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        s.ack_offline(&luke, got[1].id).unwrap();
        let left = s.offline_for(&luke, 0, 100).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].text.as_str(), "three");
        assert!(s.offline_for(&hans, 0, 100).unwrap().is_empty());
    }

    #[test]
    fn history_window_includes_sessions_ending_inside_it() {
        let s = Store::open_in_memory().unwrap();
        let vader = s.session_started(&u("vader"), Millis(0)).unwrap();
        s.session_ended(vader, &u("vader"), Millis(180_000))
            .unwrap(); // out at t=180 s
        let r2 = s.session_started(&u("r2d2"), Millis(0)).unwrap();
        s.session_ended(r2, &u("r2d2"), Millis(0)).unwrap();
        s.session_started(&u("hans"), Millis(100)).unwrap(); // still online
        let now = 300_000;
        // Window of 200 s starts at t=100 s: vader (out at 180 s) counts, r2d2 does not.
        let names = s.online_since(Millis(now - 200_000)).unwrap();
        assert_eq!(names, [u("hans"), u("vader")]);
        // After a crash, open sessions are closed at restart time.
        assert_eq!(s.close_open_sessions(Millis(now)).unwrap(), 1);
        assert_eq!(s.online_since(Millis(now)).unwrap(), [u("hans")]);
        assert!(s.online_since(Millis(now + 1)).unwrap().is_empty());
    }

    #[test]
    fn a_checkpointer_on_its_own_connection_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = Store::open(&path).unwrap();
        let ck = s.hand_checkpoints_to(&path).unwrap();
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let before = db_len();
        for i in 0..2_000 {
            s.session_started(&u(&format!("u{i}")), Millis(i)).unwrap();
        }
        // Thousands of log pages, and none moved by the writer's own commits.
        assert_eq!(db_len(), before);
        ck.run().unwrap();
        assert!(db_len() > before + 64 * 1024, "{} -> {}", before, db_len());
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.online_since(Millis(0)).unwrap().len(), 2_000);
    }

    #[test]
    fn history_is_pruned_in_bounded_steps_and_presence_survives_it() {
        let s = Store::open_in_memory().unwrap();
        let vader = u("vader");
        for i in 0..25 {
            let id = s.session_started(&vader, Millis(i * 10)).unwrap();
            s.session_ended(id, &vader, Millis(i * 10 + 5)).unwrap();
        }
        let id = s.session_started(&vader, Millis(1_000)).unwrap(); // still online
        assert_eq!(s.history_len().unwrap(), 26);
        assert_eq!(s.prune_history(Millis(200), 10).unwrap(), 10);
        assert_eq!(s.prune_history(Millis(200), 10).unwrap(), 10);
        assert_eq!(s.prune_history(Millis(200), 10).unwrap(), 0);
        assert_eq!(
            s.history_len().unwrap(),
            6,
            "the 5 after t=200 s and the open one"
        );
        assert_eq!(
            s.online_since(Millis(5_000)).unwrap(),
            std::slice::from_ref(&vader)
        );
        s.session_ended(id, &vader, Millis(2_000)).unwrap();
        assert_eq!(s.prune_history(Millis(10_000), 100).unwrap(), 6);
        // Gone from the history, still seen by `whoelsesince`.
        assert_eq!(s.online_since(Millis(1_500)).unwrap(), [vader]);
        assert!(s.online_since(Millis(2_001)).unwrap().is_empty());
    }

    #[test]
    fn durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let s = Store::open(&path).unwrap();
            s.set_block(&u("luke"), &u("hans"), true).unwrap();
            s.store_offline(&u("luke"), &u("yoda"), &Text::new("hi").unwrap(), Millis(5))
                .unwrap();
            s.set_lockout(&u("vader"), Some(Millis(1000))).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.blocks().unwrap(), [(u("luke"), u("hans"))]);
        assert_eq!(s.offline_count(&u("luke")).unwrap(), 1);
        assert_eq!(
            s.lockouts(Millis(999)).unwrap(),
            [(u("vader"), Millis(1000))]
        );
        assert!(
            s.lockouts(Millis(1000)).unwrap().is_empty(),
            "expired lockouts are dropped"
        );
    }
}
