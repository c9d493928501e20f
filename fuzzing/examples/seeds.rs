//! Writes the fuzz corpus's starting inputs (fuzz/corpus/<target>/seed-*): one valid
//! frame stream or text per kind of input, so the fuzzer starts from real messages.
//! Run from the repository root: `cargo run -p fuzzing --example seeds`.

use bytes::BytesMut;
use wire::*;

fn frames<T: serde::Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for m in msgs {
        wire::encode(m, &mut buf, MAX_FRAME_LEN).unwrap();
    }
    buf.to_vec()
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = std::path::Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn main() {
    let u = |s: &str| UserName::new(s).unwrap();
    let f = FileName::new("notes.txt").unwrap();
    let d = |b: u8| Digest([b; 32]);
    let meta = FileMeta::new(
        f.clone(),
        25,
        10,
        vec![d(1), d(2), d(3)],
        vec![d(4); 3],
        d(5),
    )
    .unwrap();
    let text = Text::new("hello there").unwrap();
    let requests = [
        Request::Message {
            to: u("yoda"),
            text: text.clone(),
        },
        Request::Broadcast { text: text.clone() },
        Request::WhoElse,
        Request::WhoElseSince { secs: 200 },
        Request::Block { user: u("luke") },
        Request::Unblock { user: u("luke") },
        Request::StartPrivate { user: u("yoda") },
        Request::Register {
            meta: meta.clone(),
            have: vec![0, 1, 2],
        },
        Request::HaveChunk {
            name: f.clone(),
            chunk: 1,
        },
        Request::SearchFile { name: f.clone() },
        Request::SearchChunk {
            name: f.clone(),
            chunks: vec![0, 2],
        },
        Request::Locate {
            name: f.clone(),
            from: None,
        },
        Request::Announce {
            meta: meta.clone(),
            have: vec![1],
        },
        Request::Unregister { name: f.clone() },
        Request::Withdraw { name: f.clone() },
        Request::CheckPeer { user: u("yoda") },
        Request::Activity,
        Request::Logout,
    ];
    let mut client = vec![
        ClientMsg::Hello {
            version: PROTOCOL_VERSION,
        },
        ClientMsg::CheckUser { user: u("hans") },
        ClientMsg::Login {
            user: u("hans"),
            password: Password::new("falcon").unwrap(),
            p2p_port: 4000,
            key: PeerKey([9; 32]),
            lan_ip: None,
        },
    ];
    client.extend(requests.iter().cloned().map(ClientMsg::Request));
    client.push(ClientMsg::OfflineAck { up_to: 7 });
    client.push(ClientMsg::RelayJoin {
        version: PROTOCOL_VERSION,
        circuit: Circuit([9; 16]),
    });
    write("tracker_frames", "session", &frames(&client));

    let server = [
        ServerMsg::Hello {
            version: PROTOCOL_VERSION,
        },
        ServerMsg::UserCheck(UserCheck::Known),
        ServerMsg::Login(LoginResult::Throttled { retry_secs: 6 }),
        ServerMsg::Reply(Reply::WhoElse {
            users: vec![u("yoda")],
            more: 3,
        }),
        ServerMsg::Reply(Reply::ChunkHolders {
            name: f.clone(),
            chunks: vec![(0, vec![u("yoda")], 1)],
        }),
        ServerMsg::Reply(Reply::Refused(Refusal::MailboxFull {
            user: u("luke"),
            waiting: 1000,
        })),
        ServerMsg::Event(Event::Message {
            from: u("yoda"),
            text: text.clone(),
        }),
        ServerMsg::Event(Event::Presence {
            changes: vec![
                PresenceChange::LoggedIn(u("luke")),
                PresenceChange::LoggedOut(u("yoda")),
            ],
        }),
        ServerMsg::Reply(Reply::PrivateGranted {
            user: u("luke"),
            addr: "10.0.0.2:4001".parse().unwrap(),
            ticket: Ticket([4; 16]),
            key: PeerKey([5; 32]),
            via: Via::Punched {
                circuit: Circuit([7; 16]),
            },
        }),
        ServerMsg::Event(Event::PrivateTicket {
            from: u("luke"),
            ticket: Ticket([4; 16]),
            key: PeerKey([6; 32]),
            via: Via::Reversed {
                circuit: Circuit([8; 16]),
            },
            addr: "10.0.0.3:4002".parse().unwrap(),
            relay: None,
        }),
        ServerMsg::Event(Event::Reachability {
            observed: "10.0.0.3:4002".parse().unwrap(),
            reachable: false,
        }),
        ServerMsg::Relaying,
        ServerMsg::RelayRefused(RelayRefusal::TooMany),
        ServerMsg::Reply(Reply::Registered {
            name: f.clone(),
            size: 25,
            chunks: 3,
            replaced: true,
        }),
        ServerMsg::Reply(Reply::Unregistered {
            name: f.clone(),
            for_everyone: true,
        }),
        ServerMsg::Reply(Reply::Refused(Refusal::NotSharing { name: f.clone() })),
        ServerMsg::Event(Event::FileGone {
            name: f.clone(),
            why: Gone::Replaced { by: u("yoda") },
        }),
        ServerMsg::Event(Event::FileGone {
            name: f.clone(),
            why: Gone::Released { after_secs: 60 },
        }),
    ];
    write("client_frames", "session", &frames(&server));

    let leaves: Vec<Digest> = (0..4u8).map(|b| merkle::leaf(&[b; 64])).collect();
    let proof = merkle::batch_proof(&leaves, 0).unwrap();
    let hello = frames(&[PeerMsg::Hello {
        version: PROTOCOL_VERSION,
        ticket: Ticket([3; 16]),
        purpose: Purpose::Transfer,
    }]);
    let rest = frames(&[
        PeerMsg::Accepted,
        PeerMsg::Interested { name: f.clone() },
        PeerMsg::Holding {
            chunks: vec![0, 2],
            partial: vec![Partial::new(1, 10, [0, 3, 9])],
        },
        PeerMsg::WantHashes { chunk: 1, batch: 0 },
        PeerMsg::Hashes {
            chunk: 1,
            batch: 0,
            leaves: leaves.clone(),
            proof,
        },
        PeerMsg::Request { chunk: 1, block: 2 },
        PeerMsg::Block {
            chunk: 1,
            block: 2,
            bytes: bytes::Bytes::from_static(b"some bytes"),
        },
        PeerMsg::HaveBlock { chunk: 1, block: 3 },
        PeerMsg::Later { chunk: 1, block: 4 },
        PeerMsg::Text { text },
        PeerMsg::Bye,
    ]);
    let mut peer = vec![hello.len() as u8];
    peer.extend(&hello);
    peer.extend(&rest);
    write("peer_frames", "transfer", &peer);

    write(
        "credentials",
        "spec",
        b"hans falcon\nyoda wise\r\nluke lightsaber\n\nvader sithlord",
    );
    write("peer_handshake", "hello", &hello);
    write(
        "peer_handshake",
        "refused",
        &frames(&[PeerMsg::Refused(PeerRefusal::WrongKey)]),
    );
    let b = fuzzing::listener_identity();
    let (_, msg1) = link::noise::Initiator::start(
        &link::noise::Identity::generate(),
        &b.public(),
        peer::p2p::PROLOGUE,
        &hello,
    )
    .unwrap();
    write("peer_handshake", "first-message", &msg1);
    let id = link::noise::Identity::generate();
    let fp = link::Fingerprint::of_spki(b"a key");
    write(
        "key_files",
        "identity",
        format!("i{}", id.to_file_text()).as_bytes(),
    );
    write(
        "key_files",
        "known",
        format!(
            "k# trackers\n{}",
            link::known::line("10.0.0.1:4000".parse().unwrap(), &fp)
        )
        .as_bytes(),
    );
    write("key_files", "fingerprint", format!("f{fp}").as_bytes());
    for (i, line) in [
        "message yoda hi there",
        "broadcast hello all",
        "whoelsesince 200",
        "startprivate yoda",
        "private yoda secret",
        "register notes.txt 10",
        "searchChunk notes.txt 1 3",
        "download notes.txt",
        "fetchchunk yoda notes.txt 2",
        "cancel notes.txt",
        "logout",
        r#"register "my notes.txt" 4"#,
        r#"download "say \"hi\" now""#,
        r#"private hans download "a b.txt" 2"#,
        "unregister notes.txt",
        "searchChunk my notes.txt 1 2",
    ]
    .iter()
    .enumerate()
    {
        write("command", &i.to_string(), line.as_bytes());
    }
}
