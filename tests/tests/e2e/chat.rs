//! Relayed chat: section 8's sample sessions 1–6 and the blocking rules.

use std::time::Duration;

use harness::service::Service;
use harness::*;

on_both!(whoelse_invalid_command_and_messages, 60, 120);
on_both!(broadcast_reaches_all_others, 60, 120);
on_both!(block_and_unblock_as_in_sample_4, 60, 120);
on_both!(presence_is_hidden_from_blocked_users, 60, 120);
on_both!(whoelsesince_includes_recently_logged_out_users, 60, 120);
on_both!(
    offline_messages_are_delivered_in_order_at_next_login,
    60,
    120
);
on_both!(
    messages_from_blocked_users_are_not_stored_for_later,
    60,
    120
);
on_both!(ten_clients_message_each_other, 60, 120);

/// Sample 1 and 2: whoelse, an unknown command, a message, an unknown user.
fn whoelse_invalid_command_and_messages(s: &Service) {
    let mut hans = s.login("hans");
    let mut yoda = s.login("yoda");
    let mut luke = s.login("luke");
    hans.expect("yoda logged in");
    hans.expect("luke logged in");
    yoda.expect("luke logged in");

    let mut others = hans.run("whoelse");
    others.sort();
    assert_eq!(others, ["luke", "yoda"]);
    assert_eq!(hans.run("whatsthetime"), ["Error. Invalid command"]);

    assert_eq!(hans.run("message yoda Hey Dude"), Vec::<String>::new());
    yoda.expect("hans: Hey Dude");
    assert_eq!(hans.run("message bob party time"), ["Error. Invalid user"]);
    assert_eq!(
        hans.run("message hans hello me"),
        ["Error. Cannot message self"]
    );
    // luke saw none of it.
    assert_eq!(luke.sync(), Vec::<String>::new());
}

/// Sample 3: broadcast reaches everyone online but the sender.
fn broadcast_reaches_all_others(s: &Service) {
    let mut hans = s.login("hans");
    let mut yoda = s.login("yoda");
    let mut luke = s.login("luke");
    hans.send("broadcast vader sucks");
    yoda.expect("hans: vader sucks");
    luke.expect("hans: vader sucks");
    assert!(!hans.sync().iter().any(|l| l.contains("vader sucks")));
}

/// Sample 4: block and unblock, and their effects.
fn block_and_unblock_as_in_sample_4(s: &Service) {
    let mut hans = s.login("hans");
    let mut yoda = s.login("yoda");
    let mut luke = s.login("luke");
    hans.sync();
    yoda.sync();

    assert_eq!(luke.run("block hans"), ["hans is blocked"]);
    assert_eq!(
        hans.run("broadcast I rock"),
        ["Your message could not be delivered to some recipients"]
    );
    yoda.expect("hans: I rock");
    assert_eq!(
        hans.run("message luke You angry?"),
        ["Your message could not be delivered as the recipient has blocked you"]
    );
    assert_eq!(hans.run("block hans"), ["Error. Cannot block self"]);
    assert_eq!(luke.run("unblock yoda"), ["Error. yoda was not blocked"]);
    assert_eq!(luke.run("block hans"), ["Error. hans is already blocked"]);
    assert_eq!(luke.run("block bob"), ["Error. Invalid user"]);
    // luke never saw anything from hans.
    assert!(!luke.transcript().contains("hans:"));

    assert_eq!(luke.run("unblock hans"), ["hans is unblocked"]);
    assert_eq!(hans.run("broadcast stormtroopers"), Vec::<String>::new());
    yoda.expect("hans: stormtroopers");
    luke.expect("hans: stormtroopers");
}

/// If luke blocked hans, hans hears nothing of luke's presence: no notices, and luke is
/// missing from hans's whoelse and whoelsesince. luke still sees hans.
fn presence_is_hidden_from_blocked_users(s: &Service) {
    let mut hans = s.login("hans");
    let mut luke = s.login("luke");
    hans.expect("luke logged in");
    luke.run("block hans");
    luke.send("logout");
    assert!(luke.wait_exit().success());
    let mut luke = s.login("luke");
    assert_eq!(hans.run("whoelse"), ["No other users are online"]);
    assert_eq!(
        hans.run("whoelsesince 600"),
        ["No other users were online in the last 600 seconds"]
    );
    assert!(!hans.transcript().contains("luke logged out"));
    assert_eq!(luke.run("whoelse"), ["hans"]);
    // hans's presence still reaches luke.
    hans.send("logout");
    luke.expect("hans logged out");
    assert_eq!(
        hans.transcript().matches("luke logged in").count(),
        1,
        "only the notice from before the block"
    );
}

/// Sample 5 in seconds rather than minutes: whoelsesince counts users online at any time
/// in the window, including those who have since logged out, but not earlier ones.
fn whoelsesince_includes_recently_logged_out_users(s: &Service) {
    let mut r2d2 = s.login("r2d2");
    r2d2.send("logout");
    assert!(r2d2.wait_exit().success());
    std::thread::sleep(Duration::from_millis(2500));
    let mut vader = s.login("vader");
    vader.send("logout");
    assert!(vader.wait_exit().success());
    let mut yoda = s.login("yoda");
    let mut luke = s.login("luke");
    yoda.expect("luke logged in");

    let mut recent = luke.run("whoelsesince 2");
    recent.sort();
    assert_eq!(recent, ["vader", "yoda"]);
    let mut all = yoda.run("whoelsesince 100");
    all.sort();
    assert_eq!(all, ["luke", "r2d2", "vader"]);
    assert_eq!(
        yoda.run("whoelsesince soon"),
        ["Error. Usage: whoelsesince <seconds>"]
    );
}

/// Sample 6: a message to an offline user arrives at their next login, in order, along
/// with presence notices to others.
fn offline_messages_are_delivered_in_order_at_next_login(s: &Service) {
    let mut hans = s.login("hans");
    let mut yoda = s.login("yoda");
    hans.sync();
    assert_eq!(
        hans.run("message luke Let's rock"),
        ["luke is offline; the message will be delivered when they log in"]
    );
    yoda.run("message luke from yoda");
    hans.run("message luke third");

    let mut luke = s.peer("luke");
    s.log_in(&mut luke, "luke");
    assert_eq!(luke.next_line(), "hans: Let's rock");
    assert_eq!(luke.next_line(), "yoda: from yoda");
    assert_eq!(luke.next_line(), "hans: third");
    hans.expect("luke logged in");
    yoda.expect("luke logged in");

    yoda.send("logout");
    hans.expect("yoda logged out");
    luke.expect("yoda logged out");

    // Delivered once: a second login brings nothing back.
    luke.send("logout");
    assert!(luke.wait_exit().success());
    let mut luke = s.login("luke");
    assert_eq!(luke.sync(), Vec::<String>::new());
}

/// A blocked user's messages to an offline blocker are refused, not stored.
fn messages_from_blocked_users_are_not_stored_for_later(s: &Service) {
    let mut hans = s.login("hans");
    let mut luke = s.login("luke");
    hans.expect("luke logged in");
    luke.run("block hans");
    luke.send("logout");
    assert!(luke.wait_exit().success());
    assert_eq!(
        hans.run("message luke sneaky"),
        ["Your message could not be delivered as the recipient has blocked you"]
    );
    let mut luke = s.login("luke");
    assert_eq!(luke.sync(), Vec::<String>::new());
}

/// Many clients at once: ten users all log in, each messages every other, everyone
/// receives every message.
fn ten_clients_message_each_other(s: &Service) {
    let users: Vec<&str> = CREDENTIALS
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let mut peers: Vec<Peer> = users.iter().map(|u| s.login(u)).collect();
    for (i, p) in peers.iter_mut().enumerate() {
        for (j, to) in users.iter().enumerate() {
            if i != j {
                p.send(&format!("message {to} hello from {}", users[i]));
            }
        }
    }
    for (j, p) in peers.iter_mut().enumerate() {
        let wants: Vec<String> = (0..users.len())
            .filter(|&i| i != j)
            .map(|i| format!("{0}: hello from {0}", users[i]))
            .collect();
        p.expect_all(&wants);
    }
}
