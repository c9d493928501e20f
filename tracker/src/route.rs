//! Connection establishment: the one decision of how two introduced peers get a
//! connection — direct, reversed, punched or relayed — from what the tracker knows of each
//! side's reachability. A pure function over that knowledge; `private::introduce` applies
//! it and tells both sides.
//!
//! What each side's session records (`state::Listener`):
//! - `reachable`: whether the tracker could open a connection to the listener where it
//!   sees the client (`server::probe`, just after login). A router or firewall that drops
//!   unasked connections makes it `false`.
//! - `keeps_port`: whether the client's connection to the tracker, which it opens from its
//!   listening port, arrives from that same port. Then its router maps one inside port to
//!   one outside port whoever it talks to, and a peer dialling that address from its own
//!   listening port at the same moment meets it (TCP simultaneous open). A router that gives
//!   every connection a random port ("symmetric") makes it `false`: punching cannot work.

/// What the tracker knows of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// Runs a listener at all (it told a port at login).
    pub listening: bool,
    /// `None` until the probe after login has answered.
    pub reachable: Option<bool>,
    pub keeps_port: bool,
}

/// The path, without its circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Reversed,
    Punched,
    Relayed,
}

/// How `requester` gets a connection to `target`. `relay`: this tracker relays.
///
/// A target not probed yet is dialled directly, as before there was a probe: most are
/// reachable, and a user who just logged in should not wait for the probe's verdict.
pub fn route(requester: Reach, target: Reach, relay: bool) -> Path {
    if target.reachable != Some(false) {
        return Path::Direct;
    }
    if requester.listening && requester.reachable == Some(true) {
        return Path::Reversed;
    }
    let punchable = requester.listening && requester.keeps_port && target.keeps_port;
    if punchable || !relay {
        // Without a relay, punching is the only chance left, however slim.
        return Path::Punched;
    }
    Path::Relayed
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: Reach = Reach {
        listening: true,
        reachable: Some(true),
        keeps_port: true,
    };
    const CONE: Reach = Reach {
        listening: true,
        reachable: Some(false),
        keeps_port: true,
    };
    const SYMMETRIC: Reach = Reach {
        listening: true,
        reachable: Some(false),
        keeps_port: false,
    };
    const UNPROBED: Reach = Reach {
        listening: true,
        reachable: None,
        keeps_port: true,
    };

    #[test]
    fn every_pair_of_kinds_gets_the_cheapest_path_that_can_work() {
        use Path::*;
        let kinds = [PUBLIC, CONE, SYMMETRIC];
        // Rows: requester; columns: target.
        let want = [
            [Direct, Reversed, Reversed],
            [Direct, Punched, Relayed],
            [Direct, Relayed, Relayed],
        ];
        for (i, r) in kinds.iter().enumerate() {
            for (j, t) in kinds.iter().enumerate() {
                assert_eq!(route(*r, *t, true), want[i][j], "{r:?} -> {t:?}");
            }
        }
    }

    #[test]
    fn an_unprobed_target_is_dialled_and_a_relayless_tracker_punches() {
        assert_eq!(route(CONE, UNPROBED, true), Path::Direct);
        assert_eq!(route(SYMMETRIC, CONE, false), Path::Punched);
        let silent = Reach {
            listening: false,
            reachable: None,
            keeps_port: false,
        };
        // A requester without a listener can be neither dialled back nor punched to.
        assert_eq!(route(silent, CONE, true), Path::Relayed);
    }
}
