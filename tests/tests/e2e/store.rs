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
    Postgres(tracker::store::Postgres),
}

impl Engine for Any {
    async fn boot(&mut self, now: Millis) -> Result<Boot, StoreError> {
        match self {
            Any::Sqlite(e) => e.boot(now).await,
            Any::Postgres(e) => e.boot(now).await,
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
            Db::Postgres(url) => {
                Any::Postgres(tracker::store::Postgres::connect(url).await.unwrap())
            }
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
    let boot = e.boot(Millis(300_000)).await.unwrap();
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
    let boot = e.boot(Millis(600)).await.unwrap();
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

/// Every check, each on a fresh database made by `fresh`.
async fn suite(mut fresh: impl FnMut(&str) -> Db) {
    offline_messages_keep_order_until_acknowledged(fresh("order")).await;
    a_full_mailbox_stores_nothing_more(fresh("full")).await;
    the_history_window_includes_sessions_ending_inside_it(fresh("window")).await;
    the_history_is_pruned_in_bounded_steps_and_last_logouts_survive_it(fresh("prune")).await;
    blocks_lockouts_and_files_survive_a_restart(fresh("restart")).await;
    a_batch_that_fails_in_a_group_fails_alone(fresh("group")).await;
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
