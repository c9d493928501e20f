//! The 3-strike rule: three consecutive wrong passwords for a user name lock it, from any
//! address, for the block duration. Pure: every call takes `now`.

use std::collections::HashMap;
use std::time::Duration;

use wire::UserName;

use crate::clock::Millis;

/// Consecutive failures that lock an account.
pub const MAX_FAILURES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strike {
    /// Wrong, but the user may try again.
    TryAgain,
    /// This failure locked the account until the given time.
    LockedUntil(Millis),
}

#[derive(Debug, Default)]
pub struct Lockouts {
    duration: Duration,
    failures: HashMap<UserName, u32>,
    locked: HashMap<UserName, Millis>,
}

impl Lockouts {
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            ..Self::default()
        }
    }

    /// Restores a lock read back from the store.
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

    pub fn fail(&mut self, user: &UserName, now: Millis) -> Strike {
        let n = self.failures.entry(user.clone()).or_insert(0);
        *n += 1;
        if *n >= MAX_FAILURES {
            self.failures.remove(user);
            let until = now.plus(self.duration);
            self.locked.insert(user.clone(), until);
            Strike::LockedUntil(until)
        } else {
            Strike::TryAgain
        }
    }

    pub fn succeed(&mut self, user: &UserName) {
        self.failures.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn third_consecutive_failure_locks_for_the_duration() {
        let mut l = Lockouts::new(Duration::from_secs(60));
        let yoda = UserName::new("yoda").unwrap();
        let t0 = Millis(1_000_000);
        assert_eq!(l.fail(&yoda, t0), Strike::TryAgain);
        assert_eq!(l.fail(&yoda, t0), Strike::TryAgain);
        assert_eq!(l.fail(&yoda, t0), Strike::LockedUntil(Millis(1_060_000)));
        assert!(l.is_locked(&yoda, Millis(1_059_999)));
        assert!(
            !l.is_locked(&yoda, Millis(1_060_000)),
            "lock expires after the duration"
        );
        // The count starts again from zero after a lock.
        assert_eq!(l.fail(&yoda, Millis(1_060_000)), Strike::TryAgain);
    }

    #[test]
    fn success_resets_the_count_and_users_are_independent() {
        let mut l = Lockouts::new(Duration::from_secs(60));
        let (a, b) = (UserName::new("a").unwrap(), UserName::new("b").unwrap());
        l.fail(&a, Millis(0));
        l.fail(&a, Millis(0));
        l.succeed(&a);
        assert_eq!(l.fail(&a, Millis(0)), Strike::TryAgain);
        l.fail(&b, Millis(0));
        l.fail(&b, Millis(0));
        assert_eq!(l.fail(&a, Millis(0)), Strike::TryAgain);
        assert!(matches!(l.fail(&b, Millis(0)), Strike::LockedUntil(_)));
        assert!(!l.is_locked(&a, Millis(0)));
    }
}
