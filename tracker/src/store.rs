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
use wire::{FileMeta, OfflineMessage, Text, UserName};

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
-- Descriptions of protocol 2 had no merkle roots: clients that cannot check blocks
-- cannot download them, so those names are released.
DROP TABLE IF EXISTS files;
CREATE TABLE IF NOT EXISTS files_v3 (
    name TEXT PRIMARY KEY,
    meta BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lockouts (
    user  TEXT PRIMARY KEY,
    until INTEGER NOT NULL
) WITHOUT ROWID;
";

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
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// Sessions left open by a crash are closed at `now`: those users were online until at
    /// most then, which is what `whoelsesince` needs to know.
    pub fn close_open_sessions(&self, now: Millis) -> Result<usize, StoreError> {
        Ok(self.db.execute(
            "UPDATE sessions SET logout_at = ?1 WHERE logout_at IS NULL",
            params![now.0 as i64],
        )?)
    }

    pub fn session_started(&self, user: &UserName, now: Millis) -> Result<i64, StoreError> {
        self.db
            .prepare_cached("INSERT INTO sessions (user, login_at) VALUES (?1, ?2)")?
            .execute(params![user.as_str(), now.0 as i64])?;
        Ok(self.db.last_insert_rowid())
    }

    pub fn session_ended(&self, id: i64, now: Millis) -> Result<(), StoreError> {
        self.db
            .prepare_cached("UPDATE sessions SET logout_at = ?2 WHERE id = ?1")?
            .execute(params![id, now.0 as i64])?;
        Ok(())
    }

    /// Users with a session overlapping `[since, now]`: still open, or closed at or after `since`.
    pub fn online_since(&self, since: Millis) -> Result<Vec<UserName>, StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT DISTINCT user FROM sessions WHERE logout_at IS NULL OR logout_at >= ?1 ORDER BY user",
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

    /// Records a newly registered file. Its description is stored as MessagePack, the same
    /// encoding (and validation on the way back) as on the wire.
    pub fn put_file(&self, meta: &FileMeta) -> Result<(), StoreError> {
        let blob = rmp_serde::to_vec(meta)?;
        self.db
            .prepare_cached("INSERT OR REPLACE INTO files_v3 (name, meta) VALUES (?1, ?2)")?
            .execute(params![meta.name().as_str(), blob])?;
        Ok(())
    }

    pub fn files(&self) -> Result<Vec<FileMeta>, StoreError> {
        let mut stmt = self.db.prepare("SELECT meta FROM files_v3")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(rmp_serde::from_slice(&r?)?);
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
        s.session_ended(vader, Millis(180_000)).unwrap(); // logged out at t=180 s
        let r2 = s.session_started(&u("r2d2"), Millis(0)).unwrap();
        s.session_ended(r2, Millis(0)).unwrap();
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
