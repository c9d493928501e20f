//! Connection establishment: the one decision of how two introduced peers get a
//! connection — direct, reversed, punched or relayed — from what the tracker knows of each
//! side's reachability. A pure function over that knowledge; `private::introduce` applies
//! it and tells both sides.
//!
//! What each side's session records (`state::Listener`):
//! - `reachable`: whether the tracker could open a connection to the listener where it
//!   sees the client (`server::probe`, just after login). A router or firewall that drops
//!   unasked connections makes it `false`.
//! - `public` and `has_lan`: two clients at the same public address are behind the same
//!   router, and meet inside their network at the address the target told (`Login.lan_ip`).
//! - `keeps_port`: whether the client's connection to the tracker, which it opens from its
//!   listening port, arrives from that same port. Then its router maps one inside port to
//!   one outside port whoever it talks to, and a peer dialling that address from its own
//!   listening port at the same moment meets it (TCP simultaneous open). A router that gives
//!   every connection a random port ("symmetric") makes it `false`: punching cannot work.

/// What the tracker knows of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// The address its connection comes from (its router's, behind one).
    pub public: std::net::IpAddr,
    /// It told its address inside its own network (`Login.lan_ip`).
    pub has_lan: bool,
    /// Runs a listener at all (it told a port at login).
    pub listening: bool,
    /// `None` until the probe after login has answered.
    pub reachable: Option<bool>,
    pub keeps_port: bool,
}

/// The path, without its circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Both behind the same router: to the target's address inside their network.
    Inside,
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
    if requester.public == target.public && target.has_lan {
        return Path::Inside;
    }
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

    const A: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 1));

    const PUBLIC: Reach = Reach {
        public: A,
        has_lan: true,
        listening: true,
        reachable: Some(true),
        keeps_port: true,
    };
    const CONE: Reach = Reach {
        public: A,
        has_lan: false,
        listening: true,
        reachable: Some(false),
        keeps_port: true,
    };
    const SYMMETRIC: Reach = Reach {
        public: A,
        has_lan: false,
        listening: true,
        reachable: Some(false),
        keeps_port: false,
    };
    const UNPROBED: Reach = Reach {
        public: A,
        has_lan: false,
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
        // Each behind a router of its own: different public addresses.
        let at = |k: Reach, n: u8| Reach {
            public: std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, n)),
            ..k
        };
        for (i, r) in kinds.iter().enumerate() {
            for (j, t) in kinds.iter().enumerate() {
                let (r, t) = (at(*r, 1), at(*t, 2));
                assert_eq!(route(r, t, true), want[i][j], "{r:?} -> {t:?}");
            }
        }
        // Behind the same router, a target that told its inside address is met there.
        let lan = Reach {
            has_lan: true,
            ..SYMMETRIC
        };
        assert_eq!(route(SYMMETRIC, lan, true), Path::Inside);
    }

    #[test]
    fn an_unprobed_target_is_dialled_and_a_relayless_tracker_punches() {
        assert_eq!(route(CONE, UNPROBED, true), Path::Direct);
        assert_eq!(route(SYMMETRIC, CONE, false), Path::Punched);
        let silent = Reach {
            public: A,
            has_lan: false,
            listening: false,
            reachable: None,
            keeps_port: false,
        };
        // A requester without a listener can be neither dialled back nor punched to.
        assert_eq!(route(silent, CONE, true), Path::Relayed);
    }
}
