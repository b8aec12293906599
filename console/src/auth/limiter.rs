//! Login attempts, limited per account and per client address: a password guesser gets a few
//! tries a minute at one account, and a handful more across accounts from one address. Checked
//! before the password is (so a refused attempt costs no hashing either).

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Attempts per account per minute (a person who mistyped has room; a guesser does not).
pub const PER_ACCOUNT_PER_MINUTE: u32 = 5;
/// Attempts per client address per minute, over all accounts.
pub const PER_ADDRESS_PER_MINUTE: u32 = 20;

/// Why an attempt is refused before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Account,
    Address,
}

/// Both limits.
pub struct LoginLimiter {
    accounts: DefaultKeyedRateLimiter<String>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).expect("a positive quota"));
        Self {
            accounts: RateLimiter::keyed(per_minute(PER_ACCOUNT_PER_MINUTE)),
            addresses: RateLimiter::keyed(per_minute(PER_ADDRESS_PER_MINUTE)),
        }
    }
}

impl LoginLimiter {
    /// Counts an attempt at `account` from `address`; `Err` when either limit is spent.
    pub fn attempt(&self, account: &str, address: IpAddr) -> Result<(), Limited> {
        // Bounded memory: forget keys whose limit has fully recovered, once in a while.
        if self.accounts.len() > 10_000 {
            self.accounts.retain_recent();
        }
        if self.addresses.len() > 10_000 {
            self.addresses.retain_recent();
        }
        self.addresses.check_key(&address).map_err(|_| Limited::Address)?;
        self.accounts.check_key(&account.to_ascii_lowercase()).map_err(|_| Limited::Account)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_gets_a_few_attempts_a_minute_from_anywhere() {
        let limiter = LoginLimiter::default();
        for i in 0..PER_ACCOUNT_PER_MINUTE {
            let address = IpAddr::from([10, 0, 0, i as u8]);
            assert_eq!(limiter.attempt("ann", address), Ok(()));
        }
        assert_eq!(limiter.attempt("ANN", IpAddr::from([10, 0, 1, 1])), Err(Limited::Account));
        assert_eq!(limiter.attempt("bob", IpAddr::from([10, 0, 1, 1])), Ok(()));
    }

    #[test]
    fn an_address_gets_a_bounded_number_of_attempts_across_accounts() {
        let limiter = LoginLimiter::default();
        let address = IpAddr::from([192, 0, 2, 7]);
        for i in 0..PER_ADDRESS_PER_MINUTE {
            assert_eq!(limiter.attempt(&format!("user{i}"), address), Ok(()));
        }
        assert_eq!(limiter.attempt("someone-else", address), Err(Limited::Address));
    }
}
