//! One store test suite, run against both engines: the embedded SQLite and a PostgreSQL
//! server this test starts for itself. Each check gets a fresh database; "restart" opens
//! the same database again, as a tracker does after a crash.

use std::path::PathBuf;

use harness::servers::Postgres;
use tracker::clock::Millis;
use tracker::store::{Answer, Boot, Cmd, Engine, Journal, Offline, StoreError};
use wire::{Digest, FileMeta, FileName, OfflineMessage, Text, UserName};

/// Either engine, so a check is written once.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

enum Any {
    Sqlite(tracker::store::Sqlite),
    Postgres(Box<tracker::store::Postgres>),
}

impl Engine for Any {
    async fn boot(&mut self, now: Millis, node: u64) -> Result<Boot, StoreError> {
        match self {
            Any::Sqlite(e) => e.boot(now, node).await,
            Any::Postgres(e) => e.boot(now, node).await,
        }
    }
    async fn run(&mut self, cmds: &[Cmd]) -> Result<Vec<Answer>, StoreError> {
        match self {
            Any::Sqlite(e) => e.run(cmds).await,
            Any::Postgres(e) => e.run(cmds).await,
        }
    }
}

impl Db {
    async fn open(&self) -> Any {
        match self {
            Db::Sqlite(p) => Any::Sqlite(tracker::store::Sqlite::open(p).unwrap()),
            Db::Postgres(url) => Any::Postgres(Box::new(
                tracker::store::Postgres::connect(url).await.unwrap(),
            )),
        }
    }
}

fn u(s: &str) -> UserName {
    UserName::new(s).unwrap()
}

fn text(s: &str) -> Text {
    Text::new(s).unwrap()
}

fn meta(name: &str, fill: u8) -> FileMeta {
    FileMeta::new(
        FileName::new(name).unwrap(),
        25,
        10,
        vec![
            Digest([fill; 32]),
            Digest([fill + 1; 32]),
            Digest([fill + 2; 32]),
        ],
        vec![Digest([fill + 3; 32]); 3],
        Digest([fill; 32]),
    )
    .unwrap()
}

async fn one(e: &mut Any, cmd: Cmd) -> Answer {
    e.run(&[cmd]).await.unwrap().pop().unwrap()
}

fn offline(to: &str, from: &str, s: &str, max: u64) -> Cmd {
    Cmd::Offline {
        to: u(to),
        from: u(from),
        text: text(s),
        at: Millis(5),
        max,
    }
}

async fn backlog(e: &mut Any, user: &str) -> Vec<OfflineMessage> {
    let read = Cmd::OfflineFor {
        user: u(user),
        after: 0,
        limit: 1000,
    };
    match one(e, read).await {
        Answer::Messages(m) => m,
        other => panic!("{other:?}"),
    }
}

async fn online_since(e: &mut Any, since: u64) -> Vec<UserName> {
    match one(
        e,
        Cmd::OnlineSince {
            since: Millis(since),
        },
    )
    .await
    {
        Answer::Users(u) => u,
        other => panic!("{other:?}"),
    }
}

async fn offline_messages_keep_order_until_acknowledged(db: Db) {
    let mut e = db.open().await;
    // Three in one transaction, as a group commit makes them.
    let stored = e
        .run(&[
            offline("luke", "hans", "one", 100),
            offline("luke", "hans", "two", 100),
            offline("luke", "yoda", "three", 100),
        ])
        .await
        .unwrap();
    let waiting: Vec<u64> = stored
        .iter()
        .map(|a| match a {
            Answer::Offline(Offline::Stored { waiting, .. }) => *waiting,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(waiting, [1, 2, 3]);
    let got = backlog(&mut e, "luke").await;
    let texts: Vec<_> = got
        .iter()
        .map(|m| (m.from.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(texts, [("hans", "one"), ("hans", "two"), ("yoda", "three")]);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "ids grow");
    let after_first = Cmd::OfflineFor {
        user: u("luke"),
        after: got[0].id,
        limit: 1,
    };
    assert_eq!(
        one(&mut e, after_first).await,
        Answer::Messages(vec![got[1].clone()])
    );
    let ack = Cmd::AckOffline {
        user: u("luke"),
        up_to: got[1].id,
    };
    assert_eq!(one(&mut e, ack).await, Answer::Count(2));
    let left = backlog(&mut e, "luke").await;
    assert_eq!(left, [got[2].clone()]);
    assert!(backlog(&mut e, "hans").await.is_empty());
}

async fn a_full_mailbox_stores_nothing_more(db: Db) {
    let mut e = db.open().await;
    for i in 0..3 {
        one(&mut e, offline("luke", "hans", &format!("m{i}"), 3)).await;
    }
    assert_eq!(
        one(&mut e, offline("luke", "hans", "too many", 3)).await,
        Answer::Offline(Offline::Full { waiting: 3 })
    );
    let waiting = backlog(&mut e, "luke").await;
    assert_eq!(waiting.len(), 3);
    // Acknowledged ones make room again.
    let ack = Cmd::AckOffline {
        user: u("luke"),
        up_to: waiting[1].id,
    };
    assert_eq!(one(&mut e, ack).await, Answer::Count(2));
    assert!(matches!(
        one(&mut e, offline("luke", "hans", "room", 3)).await,
        Answer::Offline(Offline::Stored { waiting: 2, .. })
    ));
    // Nothing is kept from a sender the recipient blocks.
    let block = Cmd::Block {
        blocker: u("luke"),
        blocked: u("vader"),
        on: true,
    };
    one(&mut e, block).await;
    assert_eq!(
        one(&mut e, offline("luke", "vader", "let me in", 3)).await,
        Answer::Offline(Offline::Blocked)
    );
    // Another recipient's mailbox is its own.
    assert!(matches!(
        one(&mut e, offline("yoda", "hans", "hi", 3)).await,
        Answer::Offline(Offline::Stored { waiting: 1, .. })
    ));
}

async fn the_history_window_includes_sessions_ending_inside_it(db: Db) {
    let mut e = db.open().await;
    let session = |id: i64, user: &str, at: u64| Cmd::SessionStarted {
        id,
        user: u(user),
        at: Millis(at),
    };
    let ended = |id: i64, user: &str, at: u64| Cmd::SessionEnded {
        id,
        user: u(user),
        at: Millis(at),
    };
    e.run(&[
        session(1, "vader", 0),
        ended(1, "vader", 180_000),
        session(2, "r2d2", 0),
        ended(2, "r2d2", 0),
        session(3, "hans", 100),
    ])
    .await
    .unwrap();
    // A window of 200 s at t=300 s starts at t=100 s: vader (out at 180 s) counts, r2d2 not.
    assert_eq!(online_since(&mut e, 100_000).await, [u("hans"), u("vader")]);
    // After a crash, open sessions are closed at the restart.
    drop(e);
    let mut e = db.open().await;
    let boot = e.boot(Millis(300_000), 1).await.unwrap();
    assert_eq!(boot.closed, 1);
    assert_eq!(online_since(&mut e, 300_000).await, [u("hans")]);
    assert!(online_since(&mut e, 300_001).await.is_empty());
}

async fn the_history_is_pruned_in_bounded_steps_and_last_logouts_survive_it(db: Db) {
    let mut e = db.open().await;
    let vader = u("vader");
    let mut cmds = Vec::new();
    for i in 0..25 {
        cmds.push(Cmd::SessionStarted {
            id: i,
            user: vader.clone(),
            at: Millis(i as u64 * 10),
        });
        cmds.push(Cmd::SessionEnded {
            id: i,
            user: vader.clone(),
            at: Millis(i as u64 * 10 + 5),
        });
    }
    cmds.push(Cmd::SessionStarted {
        id: 99,
        user: vader.clone(),
        at: Millis(1_000),
    });
    e.run(&cmds).await.unwrap();
    let prune = |before: u64, limit: u32| Cmd::PruneHistory {
        before: Millis(before),
        limit,
    };
    assert_eq!(one(&mut e, prune(200, 10)).await, Answer::Count(10));
    assert_eq!(one(&mut e, prune(200, 10)).await, Answer::Count(10));
    assert_eq!(
        one(&mut e, prune(200, 10)).await,
        Answer::Count(0),
        "the 5 after 200 ms stay"
    );
    assert_eq!(
        online_since(&mut e, 5_000).await,
        std::slice::from_ref(&vader),
        "still online"
    );
    let end = Cmd::SessionEnded {
        id: 99,
        user: vader.clone(),
        at: Millis(2_000),
    };
    one(&mut e, end).await;
    assert_eq!(one(&mut e, prune(10_000, 100)).await, Answer::Count(6));
    // Gone from the history, still seen by `whoelsesince`.
    assert_eq!(online_since(&mut e, 1_500).await, [vader]);
    assert!(online_since(&mut e, 2_001).await.is_empty());
}

async fn the_users_who_block_someone_are_read_as_committed(db: Db) {
    let mut e = db.open().await;
    let block = |blocker: &str, blocked: &str, on| Cmd::Block {
        blocker: u(blocker),
        blocked: u(blocked),
        on,
    };
    let blockers = |user: &str| Cmd::BlockersOf { user: u(user) };
    let answers = e
        .run(&[
            block("yoda", "hans", true),
            block("luke", "hans", true),
            block("luke", "vader", true),
            blockers("hans"),
            block("yoda", "hans", false),
            blockers("hans"),
            blockers("r2d2"),
        ])
        .await
        .unwrap();
    assert_eq!(answers[3], Answer::Users(vec![u("luke"), u("yoda")]));
    assert_eq!(
        answers[5..],
        [Answer::Users(vec![u("luke")]), Answer::Users(vec![])]
    );
}

async fn blocks_lockouts_and_files_survive_a_restart(db: Db) {
    let mut e = db.open().await;
    e.run(&[
        Cmd::Block {
            blocker: u("luke"),
            blocked: u("hans"),
            on: true,
        },
        Cmd::Block {
            blocker: u("luke"),
            blocked: u("vader"),
            on: true,
        },
        // Twice is once.
        Cmd::Block {
            blocker: u("luke"),
            blocked: u("vader"),
            on: true,
        },
        Cmd::Block {
            blocker: u("luke"),
            blocked: u("hans"),
            on: false,
        },
        Cmd::Lockout {
            user: u("vader"),
            until: Some(Millis(1_000)),
        },
        Cmd::Lockout {
            user: u("r2d2"),
            until: Some(Millis(500)),
        },
        Cmd::Lockout {
            user: u("yoda"),
            until: Some(Millis(5_000)),
        },
        Cmd::Lockout {
            user: u("yoda"),
            until: None,
        },
        Cmd::PutFile {
            meta: meta("a.bin", 1),
            owner: u("hans"),
        },
        Cmd::PutFile {
            meta: meta("b.bin", 1),
            owner: u("hans"),
        },
        // Replaced by its owner.
        Cmd::PutFile {
            meta: meta("b.bin", 7),
            owner: u("hans"),
        },
        Cmd::PutFile {
            meta: meta("c.bin", 1),
            owner: u("luke"),
        },
        Cmd::SetUnheld {
            name: FileName::new("a.bin").unwrap(),
            since: Some(Millis(40)),
        },
        Cmd::DeleteFile {
            name: FileName::new("c.bin").unwrap(),
        },
        offline("luke", "yoda", "hi", 100),
    ])
    .await
    .unwrap();
    drop(e);
    let mut e = db.open().await;
    let boot = e.boot(Millis(600), 1).await.unwrap();
    assert_eq!(boot.blocks, [(u("luke"), u("vader"))]);
    assert_eq!(
        boot.lockouts,
        [(u("vader"), Millis(1_000))],
        "expired and lifted ones gone"
    );
    let mut files: Vec<(String, FileMeta, Option<UserName>, u64)> = boot
        .files
        .into_iter()
        .map(|f| (f.meta.name().to_string(), f.meta, f.owner, f.unheld_since.0))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        files,
        [
            ("a.bin".into(), meta("a.bin", 1), Some(u("hans")), 40),
            // Held when the tracker stopped: unheld from the restart on.
            ("b.bin".into(), meta("b.bin", 7), Some(u("hans")), 600),
        ]
    );
    assert_eq!(backlog(&mut e, "luke").await.len(), 1);
}

/// A name is its first owner's: another owner's content under it is refused (two
/// trackers registering it at once: one wins), the same content is taken without changing
/// the owner, and the owner may replace it.
async fn a_name_is_taken_once_whatever_the_tracker(db: Db) {
    let mut e = db.open().await;
    let put = |meta: FileMeta, owner: &str| Cmd::PutFile {
        meta,
        owner: u(owner),
    };
    assert_eq!(
        one(&mut e, put(meta("x.bin", 1), "hans")).await,
        Answer::Count(1)
    );
    assert_eq!(
        one(&mut e, put(meta("x.bin", 2), "luke")).await,
        Answer::Count(0)
    );
    assert_eq!(
        one(&mut e, put(meta("x.bin", 1), "luke")).await,
        Answer::Count(1)
    );
    assert_eq!(
        one(&mut e, put(meta("x.bin", 3), "hans")).await,
        Answer::Count(1)
    );
    drop(e);
    let mut e = db.open().await;
    let boot = e.boot(Millis(600), 1).await.unwrap();
    let files: Vec<(FileMeta, Option<UserName>)> =
        boot.files.into_iter().map(|f| (f.meta, f.owner)).collect();
    assert_eq!(files, [(meta("x.bin", 3), Some(u("hans")))]);
}

/// A group commit that fails (here: a login under an id already taken) is retried batch
/// by batch: only the failing batch fails, and nothing of it was applied.
async fn a_batch_that_fails_in_a_group_fails_alone(db: Db) {
    let e = db.open().await;
    let journal = Journal::spawn(e);
    let start = |id: i64, user: &str| Cmd::SessionStarted {
        id,
        user: u(user),
        at: Millis(1),
    };
    journal
        .submit(vec![start(7, "hans")])
        .answers()
        .await
        .unwrap();
    // Submitted with no await between: the journal (a task of this single-threaded test
    // runtime) has not run meanwhile, so it takes all three into one group.
    let good = journal.submit(vec![offline("luke", "hans", "kept", 100)]);
    let bad = journal.submit(vec![offline("luke", "hans", "lost", 100), start(7, "yoda")]);
    let after = journal.submit(vec![start(8, "luke")]);
    assert!(matches!(
        &good.answers().await.unwrap()[..],
        [Answer::Offline(Offline::Stored { .. })]
    ));
    assert!(bad.answers().await.is_err());
    assert_eq!(after.answers().await.unwrap(), [Answer::Done]);
    let read = Cmd::OfflineFor {
        user: u("luke"),
        after: 0,
        limit: 10,
    };
    let Answer::Messages(m) = journal
        .submit(vec![read])
        .answers()
        .await
        .unwrap()
        .remove(0)
    else {
        panic!()
    };
    let texts: Vec<&str> = m.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["kept"]);
    let who = journal.submit(vec![Cmd::OnlineSince { since: Millis(0) }]);
    assert_eq!(
        who.answers().await.unwrap(),
        [Answer::Users(vec![u("hans"), u("luke")])]
    );
}

fn strike(user: &str, at: u64) -> Cmd {
    Cmd::Strike {
        user: u(user),
        at: Millis(at),
        max: 3,
        lock_ms: 60_000,
    }
}

fn claim(user: &str, node: u64, session: i64, at: u64) -> Cmd {
    claim_with(user, node, session, at, [0; 32])
}

fn claim_with(user: &str, node: u64, session: i64, at: u64, token: [u8; 32]) -> Cmd {
    Cmd::Claim {
        user: u(user),
        node,
        session,
        at: Millis(at),
        token,
    }
}

fn resume(user: &str, token: [u8; 32], renewed: [u8; 32], node: u64, at: u64) -> Cmd {
    Cmd::Resume {
        user: u(user),
        token,
        renewed,
        node,
        session: at as i64,
        at: Millis(at),
        window_ms: 30_000,
    }
}

async fn the_third_wrong_password_in_a_row_locks_and_the_right_one_resets_the_count(db: Db) {
    use tracker::lockout::Strike;
    use tracker::store::Claim;
    let mut e = db.open().await;
    assert_eq!(
        one(&mut e, strike("yoda", 0)).await,
        Answer::Strike(Strike::TryAgain)
    );
    assert_eq!(
        one(&mut e, strike("yoda", 0)).await,
        Answer::Strike(Strike::TryAgain)
    );
    assert_eq!(
        one(&mut e, claim("yoda", 1, 10, 1)).await,
        Answer::Claim(Claim::Claimed)
    );
    // Counting starts again after a login; the third in a row locks.
    let three = e
        .run(&[
            strike("yoda", 5),
            strike("yoda", 5),
            strike("yoda", 5),
            strike("yoda", 6),
        ])
        .await
        .unwrap();
    assert_eq!(
        three,
        [
            Answer::Strike(Strike::TryAgain),
            Answer::Strike(Strike::TryAgain),
            Answer::Strike(Strike::LockedUntil(Millis(60_005))),
            Answer::Strike(Strike::Locked(Millis(60_005))),
        ]
    );
    assert_eq!(
        one(&mut e, claim("yoda", 2, 11, 60_004)).await,
        Answer::Claim(Claim::Locked(Millis(60_005)))
    );
    // Users are counted apart; the lock survives a restart and expires.
    assert_eq!(
        one(&mut e, strike("luke", 6)).await,
        Answer::Strike(Strike::TryAgain)
    );
    drop(e);
    let mut e = db.open().await;
    let boot = e.boot(Millis(7), 1).await.unwrap();
    assert_eq!(boot.lockouts, [(u("yoda"), Millis(60_005))]);
    assert_eq!(
        one(&mut e, strike("yoda", 60_005)).await,
        Answer::Strike(Strike::TryAgain)
    );
}

/// A user's session is one tracker's: another tracker's claim is refused while the first
/// is alive (its lease), and succeeds once it is not.
async fn a_session_claimed_by_a_live_tracker_is_not_claimed_by_another(db: Db) {
    use tracker::store::Claim;
    let mut e = db.open().await;
    let lease = |node: u64, until: u64| Cmd::Lease {
        node,
        until: Millis(until),
    };
    e.run(&[lease(1, 3_000), lease(2, 3_000)]).await.unwrap();
    assert_eq!(
        one(&mut e, claim("hans", 1, 10, 0)).await,
        Answer::Claim(Claim::Claimed)
    );
    assert_eq!(
        one(&mut e, claim("hans", 2, 20, 100)).await,
        Answer::Claim(Claim::Taken)
    );
    // Logged out on tracker 1: free for tracker 2.
    let out = Cmd::SessionEnded {
        id: 10,
        user: u("hans"),
        at: Millis(200),
    };
    one(&mut e, out).await;
    assert_eq!(
        one(&mut e, claim("hans", 2, 20, 300)).await,
        Answer::Claim(Claim::Claimed)
    );
    // Tracker 2 stops renewing its lease (it died): past it, tracker 1 may take hans.
    assert_eq!(
        one(&mut e, claim("hans", 1, 11, 2_999)).await,
        Answer::Claim(Claim::Taken)
    );
    assert_eq!(
        one(&mut e, claim("hans", 1, 11, 3_000)).await,
        Answer::Claim(Claim::Claimed)
    );
}

/// Every check, each on a fresh database made by `fresh`.
async fn suite(mut fresh: impl FnMut(&str) -> Db) {
    offline_messages_keep_order_until_acknowledged(fresh("order")).await;
    a_full_mailbox_stores_nothing_more(fresh("full")).await;
    the_history_window_includes_sessions_ending_inside_it(fresh("window")).await;
    the_history_is_pruned_in_bounded_steps_and_last_logouts_survive_it(fresh("prune")).await;
    the_users_who_block_someone_are_read_as_committed(fresh("blockers")).await;
    blocks_lockouts_and_files_survive_a_restart(fresh("restart")).await;
    a_batch_that_fails_in_a_group_fails_alone(fresh("group")).await;
    a_name_is_taken_once_whatever_the_tracker(fresh("names")).await;
    the_third_wrong_password_in_a_row_locks_and_the_right_one_resets_the_count(fresh("strike"))
        .await;
    a_session_claimed_by_a_live_tracker_is_not_claimed_by_another(fresh("claim")).await;
}

#[tokio::test]
async fn the_store_suite_passes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    suite(|name| Db::Sqlite(root.join(format!("{name}.db")))).await;
}

#[tokio::test]
async fn the_store_suite_passes_on_postgres() {
    let pg = Postgres::start();
    suite(|name| Db::Postgres(pg.database(name))).await;
}

/// A session's resume token takes it over to another tracker only once its tracker is
/// dead, only within the window after, only once, only for its user; the embedded store
/// resumes nothing (nowhere to fail over to).
#[tokio::test]
async fn a_resume_token_moves_its_session_once_after_its_tracker_died() {
    use tracker::store::Claim;
    let pg = Postgres::start();
    let mut e = Db::Postgres(pg.database("resume")).open().await;
    let lease = |node: u64, until: u64| Cmd::Lease {
        node,
        until: Millis(until),
    };
    e.run(&[lease(1, 3_000), lease(2, 1_000_000)])
        .await
        .unwrap();
    let (good, other, renewed) = ([7; 32], [8; 32], [9; 32]);
    assert_eq!(
        one(&mut e, claim_with("hans", 1, 10, 0, good)).await,
        Answer::Claim(Claim::Claimed)
    );
    // Tracker 1 alive: not yet (the client tries again).
    assert_eq!(
        one(&mut e, resume("hans", good, renewed, 2, 2_000)).await,
        Answer::Claim(Claim::Taken)
    );
    // Wrong token, or another user's: never.
    assert_eq!(
        one(&mut e, resume("hans", other, renewed, 2, 4_000)).await,
        Answer::Claim(Claim::Expired)
    );
    assert_eq!(
        one(&mut e, resume("luke", good, renewed, 2, 4_000)).await,
        Answer::Claim(Claim::Expired)
    );
    // Tracker 1 dead since 3,000: within the window, once.
    assert_eq!(
        one(&mut e, resume("hans", good, renewed, 2, 4_000)).await,
        Answer::Claim(Claim::Claimed)
    );
    assert_eq!(
        one(&mut e, resume("hans", good, [10; 32], 2, 4_100)).await,
        Answer::Claim(Claim::Expired)
    );
    // The session is tracker 2's now: another claim is refused while it lives.
    assert_eq!(
        one(&mut e, claim("hans", 3, 30, 5_000)).await,
        Answer::Claim(Claim::Taken)
    );
    // Too late: a token of a tracker dead for longer than the window.
    one(&mut e, lease(2, 6_000)).await;
    assert_eq!(
        one(&mut e, resume("hans", renewed, [11; 32], 3, 36_001)).await,
        Answer::Claim(Claim::Expired)
    );
    let dir = tempfile::tempdir().unwrap();
    let mut lite = Db::Sqlite(dir.path().join("t.db")).open().await;
    one(&mut lite, claim_with("hans", 1, 10, 0, good)).await;
    assert_eq!(
        one(&mut lite, resume("hans", good, renewed, 1, 10)).await,
        Answer::Claim(Claim::Expired)
    );
}

/// Two trackers' connections to one PostgreSQL, at once: of many attempts on the same
/// account, exactly the third locks it; of two claims of one user, exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_sharing_postgres_count_strikes_and_claims_once() {
    use tracker::lockout::Strike;
    use tracker::store::Claim;
    let pg = Postgres::start();
    let db = Db::Postgres(pg.database("race"));
    let (mut a, mut b) = (db.open().await, db.open().await);
    a.run(&[
        Cmd::Lease {
            node: 1,
            until: Millis(u64::MAX / 2),
        },
        Cmd::Lease {
            node: 2,
            until: Millis(u64::MAX / 2),
        },
    ])
    .await
    .unwrap();
    for round in 0..20u64 {
        let user = format!("u{round}");
        let at = round * 1_000;
        let (sa, sb) = (
            [strike(&user, at), strike(&user, at)],
            [strike(&user, at), strike(&user, at)],
        );
        let (x, y) = tokio::join!(a.run(&sa), b.run(&sb));
        let all: Vec<Answer> = x.unwrap().into_iter().chain(y.unwrap()).collect();
        let locked = all
            .iter()
            .filter(|a| matches!(a, Answer::Strike(Strike::LockedUntil(_))))
            .count();
        let refused = all
            .iter()
            .filter(|a| matches!(a, Answer::Strike(Strike::Locked(_))))
            .count();
        assert_eq!((locked, refused), (1, 1), "round {round}: {all:?}");

        let who = format!("c{round}");
        let (ca, cb) = (
            [claim(&who, 1, 2 * round as i64, at)],
            [claim(&who, 2, 2 * round as i64 + 1, at)],
        );
        let (x, y) = tokio::join!(a.run(&ca), b.run(&cb));
        let claimed = [x.unwrap(), y.unwrap()]
            .iter()
            .filter(|a| a[..] == [Answer::Claim(Claim::Claimed)])
            .count();
        assert_eq!(claimed, 1, "round {round}");
    }
}
