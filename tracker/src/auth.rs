//! Login: known-user check, password, 3-strike lockout, one session per user, and the
//! backlog of offline messages handed to a new session.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wire::{
    Event, LoginResult, OfflineMessage, Password, ResumeToken, ServerMsg, UserCheck, UserName,
};

use crate::clock::Millis;
use crate::credentials::Secret;
use crate::lockout::{Strike, MAX_FAILURES};
use crate::outbox::Outbox;
use crate::state::{ConnId, Listener, Session, Tracker};
use crate::store::{Answer, Claim, Cmd, StoreError};

/// Where a login is once its password was checked (see [`Tracker::login_verified`]).
pub enum LoginStep {
    Done(LoginResult),
    /// Waiting for the store: the answer to the command at `at` among the effects handed
    /// to the journal with it.
    Wait(LoginWait),
}

pub struct LoginWait {
    then: LoginThen,
    pub at: usize,
}

enum LoginThen {
    Strike,
    Claim {
        conn: ConnId,
        outbox: Arc<Outbox>,
        listener: Listener,
        history_id: i64,
        /// What the client may resume the session with elsewhere (its hash is stored).
        token: ResumeToken,
    },
}

/// How long after a session's tracker was taken for dead its client may still resume it
/// on another tracker without the password.
pub const RESUME_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// A fresh resume token, and the hash the store keeps of it.
fn new_token() -> (ResumeToken, [u8; 32]) {
    // ThreadRng is a CSPRNG seeded from the OS: tokens cannot be predicted.
    let token = ResumeToken(rand::random());
    (token, token_hash(&token))
}

fn token_hash(token: &ResumeToken) -> [u8; 32] {
    Sha256::digest(token.0).into()
}

/// Offline messages per `Event::Offline` frame: 128 × 4 KiB texts stays far below the cap.
const OFFLINE_BATCH: usize = 128;
/// Offline frames read in a row when a connection is told of stored messages; the rest
/// waits, unacknowledged, for the next time (a new message, or the next login).
pub const OFFLINE_BATCHES_AT_ONCE: usize = 64;

impl Tracker {
    pub fn check_user(&self, user: &UserName) -> UserCheck {
        if self.creds.contains(user) {
            UserCheck::Known
        } else {
            UserCheck::Unknown
        }
    }

    /// Tries to log `user` in on connection `conn`, whose frames go to `outbox`, checking
    /// the password inline ([`Tracker::login_check`], [`Secret::verify`],
    /// [`Tracker::login_verified`] in one go). The server does the three apart, so a
    /// hashed password is checked off its async threads and outside the state lock.
    #[allow(clippy::too_many_arguments)]
    pub fn login(
        &mut self,
        user: &UserName,
        password: &Password,
        now: Millis,
        conn: ConnId,
        outbox: Arc<Outbox>,
        listener: Listener,
    ) -> LoginStep {
        match self.login_check(user, now) {
            Err(refused) => LoginStep::Done(refused),
            Ok(secret) => {
                let ok = secret.verify(password);
                self.login_verified(user, ok, now, conn, outbox, listener)
            }
        }
    }

    /// Before a password is looked at: the secret to check it against, or the answer.
    /// A locked account is refused before the password is looked at (so guessing during a
    /// lock tells nothing).
    pub fn login_check(&mut self, user: &UserName, now: Millis) -> Result<Secret, LoginResult> {
        let Some(secret) = self.creds.secret(user) else {
            return Err(LoginResult::BadPassword);
        };
        if self.lockouts.is_locked(user, now) {
            return Err(LoginResult::Locked);
        }
        Ok(secret)
    }

    /// Once the password was checked (`ok`): what the store must settle. A wrong password
    /// is counted there ([`Cmd::Strike`]), and the right one claims the user's one session
    /// there ([`Cmd::Claim`]): both atomic in the database, so trackers sharing it count
    /// every attempt and let one session in, whichever tracker the attempts reach. The
    /// answer goes to [`Tracker::login_settled`].
    ///
    /// The lock is looked at again: other attempts may have locked the account while this
    /// one's password was being checked. "Already logged in" is only said to someone who
    /// knows the password (so it does not reveal presence to strangers).
    #[allow(clippy::too_many_arguments)]
    pub fn login_verified(
        &mut self,
        user: &UserName,
        ok: bool,
        now: Millis,
        conn: ConnId,
        outbox: Arc<Outbox>,
        listener: Listener,
    ) -> LoginStep {
        if !self.creds.contains(user) {
            return LoginStep::Done(LoginResult::BadPassword);
        }
        if self.lockouts.is_locked(user, now) {
            return LoginStep::Done(LoginResult::Locked);
        }
        if !ok {
            let at = self.persist_at(Cmd::Strike {
                user: user.clone(),
                at: now,
                max: MAX_FAILURES,
                lock_ms: self.rules.block_duration.as_millis() as u64,
            });
            return LoginStep::Wait(LoginWait {
                then: LoginThen::Strike,
                at,
            });
        }
        if self.sessions.contains_key(user) {
            return LoginStep::Done(LoginResult::AlreadyLoggedIn);
        }
        let node = self.node;
        self.claim(conn, outbox, listener, |session, token| Cmd::Claim {
            user: user.clone(),
            node,
            session,
            at: now,
            token,
        })
    }

    /// A client whose tracker went away logs in here with its session's resume token
    /// instead of a password: the store takes the session over if the token is good (see
    /// [`Cmd::Resume`]); the answer goes to [`Tracker::login_settled`] as a login's does.
    pub fn resume(
        &mut self,
        user: &UserName,
        presented: &ResumeToken,
        now: Millis,
        conn: ConnId,
        outbox: Arc<Outbox>,
        listener: Listener,
    ) -> LoginStep {
        if !self.creds.contains(user) || !self.clustered() {
            return LoginStep::Done(LoginResult::ResumeRefused);
        }
        if self.lockouts.is_locked(user, now) {
            return LoginStep::Done(LoginResult::Locked);
        }
        if self.sessions.contains_key(user) {
            return LoginStep::Done(LoginResult::AlreadyLoggedIn);
        }
        let node = self.node;
        self.claim(conn, outbox, listener, |session, renewed| Cmd::Resume {
            user: user.clone(),
            token: token_hash(presented),
            renewed,
            node,
            session,
            at: now,
            window_ms: RESUME_WINDOW.as_millis() as u64,
        })
    }

    /// A login's or resume's claim on a new session (`cmd`, given the session's id in the
    /// history and the SHA-256 of its new resume token), settled by
    /// [`Tracker::login_settled`].
    fn claim(
        &mut self,
        conn: ConnId,
        outbox: Arc<Outbox>,
        listener: Listener,
        cmd: impl FnOnce(i64, [u8; 32]) -> Cmd,
    ) -> LoginStep {
        let history_id = rand::random::<i64>() & i64::MAX;
        let (token, hash) = new_token();
        let at = self.persist_at(cmd(history_id, hash));
        LoginStep::Wait(LoginWait {
            then: LoginThen::Claim {
                conn,
                outbox,
                listener,
                history_id,
                token,
            },
            at,
        })
    }

    /// The store's answer to a login's [`LoginWait`]: on a claimed session, the session,
    /// with the `Welcome` queued on its outbox first, ahead of the backlog and presence
    /// that follow; any other answer is the caller's to send.
    pub fn login_settled(
        &mut self,
        user: &UserName,
        wait: LoginWait,
        answers: Result<Vec<Answer>, StoreError>,
        now: Millis,
    ) -> LoginResult {
        let answer = crate::store::answer_at(answers, wait.at).ok();
        let (conn, outbox, listener, history_id, token) = match (wait.then, answer) {
            (LoginThen::Strike, Some(Answer::Strike(Strike::LockedUntil(until)))) => {
                self.lockouts.restore(user.clone(), until);
                return LoginResult::LockedNow;
            }
            (LoginThen::Strike, Some(Answer::Strike(Strike::Locked(until)))) => {
                self.lockouts.restore(user.clone(), until);
                return LoginResult::Locked;
            }
            // Counted; or not (the store failed, and logged it): a wrong password is wrong.
            (LoginThen::Strike, _) => return LoginResult::BadPassword,
            (then, Some(Answer::Claim(claim))) => match (then, claim) {
                (
                    LoginThen::Claim {
                        conn,
                        outbox,
                        listener,
                        history_id,
                        token,
                    },
                    Claim::Claimed,
                ) => (conn, outbox, listener, history_id, token),
                (_, Claim::Locked(until)) => {
                    self.lockouts.restore(user.clone(), until);
                    return LoginResult::Locked;
                }
                (_, Claim::Expired) => return LoginResult::ResumeRefused,
                (_, _) => return LoginResult::AlreadyLoggedIn,
            },
            (LoginThen::Claim { .. }, _) => return LoginResult::Unavailable,
        };
        if self.sessions.contains_key(user) {
            // Another connection of this user's got in meanwhile (the server lets one
            // check a user's password at a time, so only a bug gets here).
            return LoginResult::AlreadyLoggedIn;
        }
        self.persist(Cmd::SessionStarted {
            id: history_id,
            user: user.clone(),
            at: now,
        });
        if let Err(e) = outbox.push_reply(&ServerMsg::Login(LoginResult::Welcome)) {
            tracing::error!(error = %e, "cannot encode the welcome");
        }
        // In a cluster: where to go, and with what, if this tracker goes away.
        if let Some(trackers) = self.failover() {
            let event = ServerMsg::Event(Event::Failover { token, trackers });
            if let Err(e) = outbox.push_reply(&event) {
                tracing::error!(error = %e, "cannot encode the failover");
            }
        }
        // Whatever comes for the session waits behind its backlog, which the connection
        // reads next (`read_mail`): so nothing sent after the login overtakes what was
        // stored before it.
        outbox.hold();
        outbox.poke();
        let known = self.arrived_from_elsewhere(user, now);
        self.sessions.insert(
            user.clone(),
            Session {
                conn,
                outbox,
                last_active: now,
                history_id,
                listener,
                quota: crate::quota::Quota::new(now),
                offline_sent: 0,
                offline_acked: 0,
                mail: true,
                presence_seen: self.presence.end(),
                resume: token,
            },
        );
        if !known {
            self.notify_presence(user, true);
        }
        self.note_change(user, Some(listener));
        self.settle(now);
        LoginResult::Welcome
    }

    /// The next read of `user`'s stored messages for its connection `conn`, if any were
    /// stored since the last read: the index of the command among the effects handed to
    /// the journal with it. The messages stay stored until the client acknowledges them,
    /// so a connection lost mid-delivery loses nothing.
    pub fn read_mail(&mut self, user: &UserName, conn: ConnId) -> Option<usize> {
        let s = self.sessions.get_mut(user).filter(|s| s.conn == conn)?;
        if !s.mail {
            return None;
        }
        s.mail = false;
        let cmd = Cmd::OfflineFor {
            user: user.clone(),
            after: s.offline_sent,
            limit: OFFLINE_BATCH as u32,
        };
        Some(self.persist_at(cmd))
    }

    /// What [`Tracker::read_mail`]'s read found: queued for the client (ahead of anything
    /// held behind the backlog at login). `true` if there may be more to read now.
    pub fn mail_read(
        &mut self,
        user: &UserName,
        conn: ConnId,
        found: Result<Vec<OfflineMessage>, StoreError>,
        now: Millis,
    ) -> bool {
        let Some(s) = self.sessions.get_mut(user).filter(|s| s.conn == conn) else {
            return false;
        };
        // A failed read was logged by the journal; the messages wait for the next read (a
        // new message, or the next login).
        let mut batch = found.unwrap_or_default();
        // Ids only grow: a message already handed out is never handed out again.
        let sent = s.offline_sent;
        batch.retain(|m| m.id > sent);
        let Some(last) = batch.last() else {
            s.outbox.release();
            return false;
        };
        s.offline_sent = last.id;
        let full = batch.len() == OFFLINE_BATCH;
        let event = ServerMsg::Event(Event::Offline { messages: batch });
        let queued = if s.outbox.is_held() {
            // Right after the welcome, ahead of everything that came after the login.
            s.outbox.release_with(&event).is_ok()
        } else {
            self.push(user, &event)
        };
        if queued && full {
            // More, probably: read on.
            if let Some(s) = self.sessions.get_mut(user) {
                s.mail = true;
            }
        }
        self.settle(now);
        queued && full
    }

    /// The client has received offline messages up to `up_to`.
    pub fn ack_offline(&mut self, user: &UserName, conn: ConnId, up_to: u64) {
        // Only an ack that moves forward through what was handed out reaches the store: a
        // client repeating acks (or inventing ids) costs nothing.
        match self.sessions.get_mut(user) {
            Some(s) if s.conn == conn && s.offline_acked < up_to && up_to <= s.offline_sent => {
                s.offline_acked = up_to;
            }
            _ => return,
        }
        // Counted afresh by the next message stored for them.
        self.mailbox.remove(user);
        self.persist(Cmd::AckOffline {
            user: user.clone(),
            up_to,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::testkit::*;

    fn attempt(t: &mut Rig, user: &str, pw: &str, now: Millis) -> LoginResult {
        let step = t.t.login(
            &u(user),
            &Password::new(pw).unwrap(),
            now,
            rand::random(),
            Arc::new(Outbox::default()),
            Listener {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                port: 0,
                key: key_of(user),
                reachable: None,
                keeps_port: true,
                lan_ip: None,
            },
        );
        settle_login(t, user, step, now)
    }

    #[test]
    fn lockout_after_three_failures_then_expiry() {
        let mut t = tracker();
        assert_eq!(
            attempt(&mut t, "yoda", "weird", T0),
            LoginResult::BadPassword
        );
        assert_eq!(
            attempt(&mut t, "yoda", "green", T0),
            LoginResult::BadPassword
        );
        assert_eq!(
            attempt(&mut t, "yoda", "password", T0),
            LoginResult::LockedNow
        );
        // Even the right password is refused during the lock, from any connection.
        let during = T0.plus(Duration::from_secs(59));
        assert_eq!(attempt(&mut t, "yoda", "wise", during), LoginResult::Locked);
        let after = T0.plus(Duration::from_secs(60));
        assert_eq!(attempt(&mut t, "yoda", "wise", after), LoginResult::Welcome);
    }

    #[test]
    fn lockout_survives_a_restart_of_the_rules() {
        let mut t = tracker();
        for _ in 0..3 {
            attempt(&mut t, "vader", "x", T0);
        }
        // A new Tracker over the same store (as after a crash) still knows the lock.
        let mut t2 = t.restart(T0);
        assert_eq!(
            attempt(
                &mut t2,
                "vader",
                "sithlord",
                T0.plus(Duration::from_secs(1))
            ),
            LoginResult::Locked
        );
    }

    #[test]
    fn second_login_is_refused_and_first_session_kept() {
        let mut t = tracker();
        let _hans = login(&mut t, "hans", T0);
        assert_eq!(
            attempt(&mut t, "hans", "falcon", T0),
            LoginResult::AlreadyLoggedIn
        );
        assert!(t.is_online(&u("hans")));
    }

    #[test]
    fn unknown_users_are_reported() {
        let t = tracker();
        assert_eq!(t.check_user(&u("bob")), UserCheck::Unknown);
        assert_eq!(t.check_user(&u("yoda")), UserCheck::Known);
    }
}
