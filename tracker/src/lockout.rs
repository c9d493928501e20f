//! The 3-strike rule: three consecutive wrong passwords for a user name lock it, from any
//! address and on any tracker sharing the store, for the block duration.

use std::collections::HashMap;

use wire::UserName;

use crate::clock::Millis;

/// Consecutive failures that lock an account.
pub const MAX_FAILURES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// Wrong, but the user may try again.
    TryAgain,
    /// This failure locked the account until the given time.
    LockedUntil(Millis),
    /// The account was already locked (by attempts elsewhere): this one counts nothing.
    Locked(Millis),
}

/// The locks this tracker knows of, so a locked account is refused before its password is
/// checked. A cache: the strikes are counted and the locks made by the store
/// ([`crate::store::Cmd::Strike`]), atomically, so trackers sharing a store agree;
/// this learns of a lock when a login meets it there, and at startup.
#[derive(Debug, Default)]
pub struct Lockouts {
    locked: HashMap<UserName, Millis>,
}

impl Lockouts {
    /// Remembers a lock the store reported.
    pub fn restore(&mut self, user: UserName, until: Millis) {
        self.locked.insert(user, until);
    }

    pub fn is_locked(&mut self, user: &UserName, now: Millis) -> bool {
        match self.locked.get(user) {
            Some(&until) if now < until => true,
            Some(_) => {
                self.locked.remove(user);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holds_until_it_expires() {
        let mut l = Lockouts::default();
        let yoda = UserName::new("yoda").unwrap();
        l.restore(yoda.clone(), Millis(1_060_000));
        assert!(l.is_locked(&yoda, Millis(1_059_999)));
        assert!(!l.is_locked(&yoda, Millis(1_060_000)), "expired");
        assert!(!l.is_locked(&UserName::new("luke").unwrap(), Millis(0)));
    }
}
