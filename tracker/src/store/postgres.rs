//! The shared engine: a PostgreSQL server (`tracker … --store postgres://…`), which
//! several trackers can use at once.
//!
//! One connection per tracker, the journal's: the journal is the tracker's one writer and
//! keeps its commands in order, so a pool would only let them overtake each other. What
//! makes one connection fast is pipelining: a group commit sends every statement of every
//! batch waiting without waiting for each answer (PostgreSQL runs them in order, each
//! seeing the ones before), then the commit: one round trip and one WAL flush for the lot.
//!
//! Each command is one statement (data-modifying CTEs where it touches two tables), so the
//! pipeline needs no answer before it can send the next. A lost connection is opened
//! again for the next batch; the batch it failed answers an error (its reply, if any, says
//! the server is unavailable), nothing half-done: it was one transaction.
//!
//! No TLS to the database: it is meant to sit beside the trackers on a trusted network.

use futures_util::future::try_join_all;
use tokio_postgres::{Client, NoTls, Statement};
use wire::{FileMeta, OfflineMessage, Text, UserName};

use super::{Answer, Boot, Cmd, Engine, Offline, StoreError, StoredFile};
use crate::clock::Millis;

/// Created by the first tracker to start; later ones (and upgrades) find them there. An
/// advisory lock keeps two trackers starting at once from racing on `CREATE`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS offline (
    id        BIGSERIAL PRIMARY KEY,
    recipient TEXT NOT NULL,
    sender    TEXT NOT NULL,
    text      TEXT NOT NULL,
    sent_at   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS offline_by_recipient ON offline (recipient, id);
-- How many messages wait for each recipient: kept with every insert and delete of
-- `offline`, so the quota costs one row, not a count of up to 1,000 (half the cost of
-- storing a message when counted, `bench/relay`), and holds across trackers (the row is
-- locked by the update).
CREATE TABLE IF NOT EXISTS mailbox (
    recipient TEXT PRIMARY KEY,
    n         BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    blocker TEXT NOT NULL,
    blocked TEXT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
CREATE INDEX IF NOT EXISTS blocks_by_blocked ON blocks (blocked, blocker);
CREATE TABLE IF NOT EXISTS sessions (
    id        BIGINT PRIMARY KEY,
    username  TEXT NOT NULL,
    login_at  BIGINT NOT NULL,
    logout_at BIGINT
);
CREATE INDEX IF NOT EXISTS sessions_by_logout ON sessions (logout_at);
CREATE TABLE IF NOT EXISTS last_seen (
    username  TEXT PRIMARY KEY,
    logout_at BIGINT
);
CREATE INDEX IF NOT EXISTS last_seen_by_logout ON last_seen (logout_at);
CREATE TABLE IF NOT EXISTS files (
    name      TEXT PRIMARY KEY,
    meta      BYTEA NOT NULL,
    owner     TEXT,
    unheld_at BIGINT
);
CREATE TABLE IF NOT EXISTS lockouts (
    username TEXT PRIMARY KEY,
    until    BIGINT NOT NULL
);
-- Wrong passwords in a row, per user (see Cmd::Strike): the row every attempt on every
-- tracker updates, so they are counted one after another.
CREATE TABLE IF NOT EXISTS strikes (
    username TEXT PRIMARY KEY,
    n        INTEGER NOT NULL
);
-- Who is logged in on which tracker (see Cmd::Claim), and until when each tracker of a
-- cluster is known to be alive.
CREATE TABLE IF NOT EXISTS online (
    username TEXT PRIMARY KEY,
    node     BIGINT NOT NULL,
    session  BIGINT NOT NULL,
    since    BIGINT NOT NULL,
    -- SHA-256 of the session's resume token (Cmd::Resume).
    token    BYTEA
);
ALTER TABLE online ADD COLUMN IF NOT EXISTS token BYTEA;
CREATE TABLE IF NOT EXISTS nodes (
    id          BIGINT PRIMARY KEY,
    lease_until BIGINT NOT NULL
);
";

/// `pg_advisory_xact_lock` key for the schema: any number other programs sharing the
/// database do not use.
const SCHEMA_LOCK: i64 = 0x5357_4152_4d43_4854; // "SWARMCHT"

pub struct Postgres {
    url: String,
    conn: Option<Conn>,
}

struct Conn {
    client: Client,
    st: Statements,
}

/// One prepared statement per command.
struct Statements {
    strike: Statement,
    claim: Statement,
    resume: Statement,
    lease: Statement,
    session_started: Statement,
    session_ended: Statement,
    prune: Statement,
    lock: Statement,
    unlock: Statement,
    block: Statement,
    unblock: Statement,
    put_file: Statement,
    set_unheld: Statement,
    delete_file: Statement,
    offline: Statement,
    ack: Statement,
    offline_for: Statement,
    online_since: Statement,
    blockers_of: Statement,
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            // Counted on the user's row (trackers attempting at once wait for each other
            // there); the `max`-th in a row resets the count and locks.
            strike: c
                .prepare(
                    "WITH locked AS (SELECT until FROM lockouts WHERE username = $1 AND until > $2), \
                     s AS (INSERT INTO strikes AS s (username, n) \
                           SELECT $1, 1 WHERE NOT EXISTS (SELECT 1 FROM locked) \
                           ON CONFLICT (username) DO UPDATE \
                           SET n = CASE WHEN s.n + 1 >= $3 THEN 0 ELSE s.n + 1 END \
                           RETURNING n), \
                     l AS (INSERT INTO lockouts (username, until) SELECT $1, $4 FROM s WHERE s.n = 0 \
                           ON CONFLICT (username) DO UPDATE SET until = EXCLUDED.until \
                           RETURNING until) \
                     SELECT (SELECT until FROM locked), (SELECT until FROM l)",
                )
                .await?,
            // The user's row in `online` is taken unless another tracker with a live lease
            // holds it: the condition is checked on the row as it is once locked, so of two
            // trackers claiming at once the second sees the first's claim.
            claim: c
                .prepare(
                    "WITH locked AS (SELECT until FROM lockouts WHERE username = $1 AND until > $4), \
                     c AS (INSERT INTO online AS o (username, node, session, since, token) \
                           SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM locked) \
                           ON CONFLICT (username) DO UPDATE \
                           SET node = EXCLUDED.node, session = EXCLUDED.session, since = EXCLUDED.since, \
                               token = EXCLUDED.token \
                           WHERE o.node = $2 OR NOT EXISTS \
                               (SELECT 1 FROM nodes n WHERE n.id = o.node AND n.lease_until > $4) \
                           RETURNING 1), \
                     r AS (DELETE FROM strikes WHERE username = $1 AND EXISTS (SELECT 1 FROM c)) \
                     SELECT (SELECT until FROM locked), (SELECT COUNT(*) FROM c)",
                )
                .await?,
            // The row is locked as it is read: of two trackers resuming with one token, the
            // second finds it renewed and gets nothing. The old session is closed in the
            // history as the new one starts.
            resume: c
                .prepare(
                    "WITH locked AS (SELECT until FROM lockouts WHERE username = $1 AND until > $5), \
                     old AS (SELECT o.session, COALESCE(n.lease_until, 0) AS lease \
                             FROM online o LEFT JOIN nodes n ON n.id = o.node \
                             WHERE o.username = $1 AND o.token = $2 FOR UPDATE OF o), \
                     c AS (UPDATE online o SET node = $3, session = $4, since = $5, token = $6 \
                           FROM old WHERE o.username = $1 AND NOT EXISTS (SELECT 1 FROM locked) \
                           AND old.lease <= $5 AND old.lease > $5 - $7 \
                           RETURNING 1), \
                     e AS (UPDATE sessions SET logout_at = $5 \
                           WHERE id IN (SELECT session FROM old) AND EXISTS (SELECT 1 FROM c)) \
                     SELECT (SELECT until FROM locked), (SELECT COUNT(*) FROM old), \
                            (SELECT lease FROM old), (SELECT COUNT(*) FROM c)",
                )
                .await?,
            lease: c
                .prepare(
                    "INSERT INTO nodes (id, lease_until) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
                )
                .await?,
            session_started: c
                .prepare(
                    "WITH s AS (INSERT INTO sessions (id, username, login_at) VALUES ($1, $2, $3)) \
                     INSERT INTO last_seen (username, logout_at) VALUES ($2, NULL) \
                     ON CONFLICT (username) DO UPDATE SET logout_at = NULL",
                )
                .await?,
            session_ended: c
                .prepare(
                    "WITH s AS (UPDATE sessions SET logout_at = $3 WHERE id = $1), \
                     o AS (DELETE FROM online WHERE username = $2 AND session = $1) \
                     UPDATE last_seen SET logout_at = $3 WHERE username = $2",
                )
                .await?,
            prune: c
                .prepare(
                    "DELETE FROM sessions WHERE id IN \
                     (SELECT id FROM sessions WHERE logout_at < $1 LIMIT $2)",
                )
                .await?,
            lock: c
                .prepare(
                    "INSERT INTO lockouts (username, until) VALUES ($1, $2) \
                     ON CONFLICT (username) DO UPDATE SET until = EXCLUDED.until",
                )
                .await?,
            unlock: c
                .prepare("DELETE FROM lockouts WHERE username = $1")
                .await?,
            block: c
                .prepare(
                    "INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .await?,
            unblock: c
                .prepare("DELETE FROM blocks WHERE blocker = $1 AND blocked = $2")
                .await?,
            put_file: c
                .prepare(
                    "INSERT INTO files AS f (name, meta, owner, unheld_at) VALUES ($1, $2, $3, NULL) \
                     ON CONFLICT (name) DO UPDATE \
                     SET meta = EXCLUDED.meta, unheld_at = NULL \
                     WHERE f.owner = EXCLUDED.owner OR f.meta = EXCLUDED.meta",
                )
                .await?,
            set_unheld: c
                .prepare("UPDATE files SET unheld_at = $2 WHERE name = $1")
                .await?,
            delete_file: c.prepare("DELETE FROM files WHERE name = $1").await?,
            // The mailbox counted up, if below the quota, and the message stored only then,
            // in one statement. (Every part of it sees the mailbox as it was before: that
            // is the count when it was full.)
            offline: c
                .prepare(
                    "WITH blocked AS (SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2), \
                     m AS (INSERT INTO mailbox AS b (recipient, n) \
                           SELECT $1, 1 WHERE NOT EXISTS (SELECT 1 FROM blocked) \
                           ON CONFLICT (recipient) DO UPDATE SET n = b.n + 1 \
                           WHERE b.n < $5 AND NOT EXISTS (SELECT 1 FROM blocked) RETURNING b.n), \
                     ins AS (INSERT INTO offline (recipient, sender, text, sent_at) \
                             SELECT $1, $2, $3, $4 FROM m RETURNING id) \
                     SELECT (SELECT n FROM m), (SELECT id FROM ins), \
                            (SELECT n FROM mailbox WHERE recipient = $1), \
                            EXISTS (SELECT 1 FROM blocked)",
                )
                .await?,
            ack: c
                .prepare(
                    "WITH d AS (DELETE FROM offline WHERE recipient = $1 AND id <= $2 RETURNING 1), \
                     m AS (UPDATE mailbox SET n = n - (SELECT COUNT(*) FROM d) WHERE recipient = $1) \
                     SELECT COUNT(*) FROM d",
                )
                .await?,
            offline_for: c
                .prepare(
                    "SELECT id, sender, text FROM offline WHERE recipient = $1 AND id > $2 \
                     ORDER BY id LIMIT $3",
                )
                .await?,
            blockers_of: c
                .prepare("SELECT blocker FROM blocks WHERE blocked = $1 ORDER BY blocker")
                .await?,
            online_since: c
                .prepare(
                    "SELECT username FROM last_seen WHERE logout_at IS NULL OR logout_at >= $1 \
                     ORDER BY username",
                )
                .await?,
        })
    }
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/database`, or key=value
    /// pairs) and creates the tables if they are not there.
    pub async fn connect(url: &str) -> Result<Postgres, StoreError> {
        let mut pg = Postgres {
            url: url.to_string(),
            conn: None,
        };
        pg.conn().await?;
        Ok(pg)
    }

    /// The connection, opened again if it was lost.
    async fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            tracing::warn!("lost the state database's connection; connecting again");
            self.conn = None;
        }
        if self.conn.is_none() {
            let (mut client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "state database connection ended");
                }
            });
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            tx.commit().await?;
            let st = Statements::prepare(&client).await?;
            self.conn = Some(Conn { client, st });
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }
}

fn ms(m: Millis) -> i64 {
    m.0.min(i64::MAX as u64) as i64
}

impl Engine for Postgres {
    async fn boot(&mut self, now: Millis, node: u64) -> Result<Boot, StoreError> {
        let Conn { client, .. } = self.conn().await?;
        let tx = client.transaction().await?;
        let now = ms(now);
        // Claims of this tracker's earlier run and of trackers that stopped (no live lease)
        // are nobody's now, and their sessions over: closed at `now`, as far as
        // `whoelsesince` can tell. Live trackers' sessions stay open.
        tx.execute(
            "DELETE FROM online o WHERE o.node = $2 OR NOT EXISTS \
             (SELECT 1 FROM nodes n WHERE n.id = o.node AND n.lease_until > $1)",
            &[&now, &(node as i64)],
        )
        .await?;
        let closed = tx
            .execute(
                "UPDATE sessions SET logout_at = $1 WHERE logout_at IS NULL \
                 AND id NOT IN (SELECT session FROM online)",
                &[&now],
            )
            .await?;
        tx.execute(
            "UPDATE last_seen SET logout_at = $1 WHERE logout_at IS NULL \
             AND username NOT IN (SELECT username FROM online)",
            &[&now],
        )
        .await?;
        tx.execute("DELETE FROM lockouts WHERE until <= $1", &[&now])
            .await?;
        let mut boot = Boot {
            closed: closed as usize,
            ..Boot::default()
        };
        for r in tx
            .query("SELECT username, until FROM lockouts", &[])
            .await?
        {
            let until: i64 = r.get(1);
            boot.lockouts
                .push((UserName::new(r.get::<_, String>(0))?, Millis(until as u64)));
        }
        for r in tx.query("SELECT blocker, blocked FROM blocks", &[]).await? {
            boot.blocks.push((
                UserName::new(r.get::<_, String>(0))?,
                UserName::new(r.get::<_, String>(1))?,
            ));
        }
        // Nobody holds anything before logging in again.
        tx.execute(
            "UPDATE files SET unheld_at = $1 WHERE unheld_at IS NULL",
            &[&now],
        )
        .await?;
        for r in tx
            .query("SELECT meta, owner, unheld_at FROM files", &[])
            .await?
        {
            let blob: Vec<u8> = r.get(0);
            let owner: Option<String> = r.get(1);
            let unheld: i64 = r.get(2);
            boot.files.push(StoredFile {
                meta: rmp_serde::from_slice::<FileMeta>(&blob)?,
                owner: owner.and_then(|o| UserName::new(o).ok()),
                unheld_since: Millis(unheld.max(0) as u64),
            });
        }
        tx.commit().await?;
        Ok(boot)
    }

    async fn run(&mut self, cmds: &[Cmd]) -> Result<Vec<Answer>, StoreError> {
        let Conn { client, st } = self.conn().await?;
        let tx = client.transaction().await?;
        // Every statement sent before any answer is awaited (see the module's comment).
        let answers = try_join_all(cmds.iter().map(|c| one(&tx, st, c))).await?;
        tx.commit().await?;
        Ok(answers)
    }
}

async fn one(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    cmd: &Cmd,
) -> Result<Answer, StoreError> {
    match cmd {
        Cmd::SessionStarted { id, user, at } => {
            tx.execute(&st.session_started, &[id, &user.as_str(), &ms(*at)])
                .await?;
        }
        Cmd::SessionEnded { id, user, at } => {
            tx.execute(&st.session_ended, &[id, &user.as_str(), &ms(*at)])
                .await?;
        }
        Cmd::PruneHistory { before, limit } => {
            let n = tx
                .execute(&st.prune, &[&ms(*before), &(*limit as i64)])
                .await?;
            return Ok(Answer::Count(n));
        }
        Cmd::Strike {
            user,
            at,
            max,
            lock_ms,
        } => {
            use crate::lockout::Strike;
            let until = ms(at.plus(std::time::Duration::from_millis(*lock_ms)));
            let row = tx
                .query_one(
                    &st.strike,
                    &[&user.as_str(), &ms(*at), &(*max as i32), &until],
                )
                .await?;
            let locked: Option<i64> = row.get(0);
            let now_locked: Option<i64> = row.get(1);
            return Ok(Answer::Strike(match (locked, now_locked) {
                (Some(u), _) => Strike::Locked(Millis(u as u64)),
                (None, Some(u)) => Strike::LockedUntil(Millis(u as u64)),
                (None, None) => Strike::TryAgain,
            }));
        }
        Cmd::Claim {
            user,
            node,
            session,
            at,
            token,
        } => {
            use super::Claim;
            let row = tx
                .query_one(
                    &st.claim,
                    &[
                        &user.as_str(),
                        &(*node as i64),
                        session,
                        &ms(*at),
                        &token.as_slice(),
                    ],
                )
                .await?;
            let locked: Option<i64> = row.get(0);
            let claimed: i64 = row.get(1);
            return Ok(Answer::Claim(match locked {
                Some(u) => Claim::Locked(Millis(u as u64)),
                None if claimed > 0 => Claim::Claimed,
                None => Claim::Taken,
            }));
        }
        Cmd::Resume {
            user,
            token,
            renewed,
            node,
            session,
            at,
            window_ms,
        } => {
            use super::Claim;
            let row = tx
                .query_one(
                    &st.resume,
                    &[
                        &user.as_str(),
                        &token.as_slice(),
                        &(*node as i64),
                        session,
                        &ms(*at),
                        &renewed.as_slice(),
                        &(*window_ms as i64),
                    ],
                )
                .await?;
            let locked: Option<i64> = row.get(0);
            let found: i64 = row.get(1);
            let lease: Option<i64> = row.get(2);
            let resumed: i64 = row.get(3);
            return Ok(Answer::Claim(match locked {
                Some(u) => Claim::Locked(Millis(u as u64)),
                None if resumed > 0 => Claim::Claimed,
                None if found > 0 && lease.unwrap_or(0) > ms(*at) => Claim::Taken,
                None => Claim::Expired,
            }));
        }
        Cmd::Lease { node, until } => {
            tx.execute(&st.lease, &[&(*node as i64), &ms(*until)])
                .await?;
        }
        Cmd::Lockout { user, until } => match until {
            Some(t) => {
                tx.execute(&st.lock, &[&user.as_str(), &ms(*t)]).await?;
            }
            None => {
                tx.execute(&st.unlock, &[&user.as_str()]).await?;
            }
        },
        Cmd::Block {
            blocker,
            blocked,
            on,
        } => {
            let s = if *on { &st.block } else { &st.unblock };
            tx.execute(s, &[&blocker.as_str(), &blocked.as_str()])
                .await?;
        }
        Cmd::PutFile { meta, owner } => {
            let blob = rmp_serde::to_vec(meta)?;
            let n = tx
                .execute(
                    &st.put_file,
                    &[&meta.name().as_str(), &blob, &owner.as_str()],
                )
                .await?;
            return Ok(Answer::Count(n));
        }
        Cmd::SetUnheld { name, since } => {
            tx.execute(&st.set_unheld, &[&name.as_str(), &since.map(ms)])
                .await?;
        }
        Cmd::DeleteFile { name } => {
            tx.execute(&st.delete_file, &[&name.as_str()]).await?;
        }
        Cmd::Offline {
            to,
            from,
            text,
            at,
            max,
        } => {
            let max = (*max).min(i64::MAX as u64) as i64;
            let row = tx
                .query_one(
                    &st.offline,
                    &[&to.as_str(), &from.as_str(), &text.as_str(), &ms(*at), &max],
                )
                .await?;
            let now: Option<i64> = row.get(0);
            let id: Option<i64> = row.get(1);
            let before: Option<i64> = row.get(2);
            let blocked: bool = row.get(3);
            return Ok(Answer::Offline(match (id, now) {
                _ if blocked => Offline::Blocked,
                (Some(id), Some(n)) => Offline::Stored {
                    id: id as u64,
                    waiting: n.max(0) as u64,
                },
                _ => Offline::Full {
                    waiting: before.unwrap_or(0).max(0) as u64,
                },
            }));
        }
        Cmd::AckOffline { user, up_to } => {
            let up_to = (*up_to).min(i64::MAX as u64) as i64;
            let row = tx.query_one(&st.ack, &[&user.as_str(), &up_to]).await?;
            let n: i64 = row.get(0);
            return Ok(Answer::Count(n.max(0) as u64));
        }
        Cmd::OfflineFor { user, after, limit } => {
            let after = (*after).min(i64::MAX as u64) as i64;
            let rows = tx
                .query(&st.offline_for, &[&user.as_str(), &after, &(*limit as i64)])
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let id: i64 = r.get(0);
                out.push(OfflineMessage {
                    id: id as u64,
                    from: UserName::new(r.get::<_, String>(1))?,
                    text: Text::new(r.get::<_, String>(2))?,
                });
            }
            return Ok(Answer::Messages(out));
        }
        Cmd::BlockersOf { user } => {
            let rows = tx.query(&st.blockers_of, &[&user.as_str()]).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(UserName::new(r.get::<_, String>(0))?);
            }
            return Ok(Answer::Users(out));
        }
        Cmd::OnlineSince { since } => {
            let rows = tx.query(&st.online_since, &[&ms(*since)]).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(UserName::new(r.get::<_, String>(0))?);
            }
            return Ok(Answer::Users(out));
        }
    }
    Ok(Answer::Done)
}
