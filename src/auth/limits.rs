//! Rate limits per identity and per tenant: every authenticated request (HTTP route, NATS command or query)
//! spends one unit of its identity's budget and one of its tenant's; past either, HTTP answers 429 with
//! `Retry-After` and NATS a typed `unavailable` with `retry_after_ms`. Budgets are token buckets
//! (`governor`): a rate per second, with bursts of up to twice it. The node's own token is not limited, nor a
//! node without authentication (it knows no identities).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::Identity;

/// The options of `weft serve` that set the limits.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitOptions {
    /// Requests per second one identity may make (HTTP routes, NATS commands and queries together), with
    /// bursts of twice it; 0: no limit.
    #[arg(long, default_value_t = 500, env = "WEFT_RATE_LIMIT_IDENTITY")]
    pub rate_limit_identity: u32,
    /// Requests per second the identities of one tenant may make together; 0: no limit.
    #[arg(long, default_value_t = 2000, env = "WEFT_RATE_LIMIT_TENANT")]
    pub rate_limit_tenant: u32,
}

/// How often the limiters forget keys that have been idle long enough to be full again.
const FORGET_EVERY: u64 = 10_000;

/// The limiters. Cheap to share behind an `Arc`.
pub struct RateLimits {
    identity: Option<DefaultKeyedRateLimiter<String>>,
    tenant: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("identity", &self.identity.is_some())
            .field("tenant", &self.tenant.is_some())
            .finish()
    }
}

fn limiter(per_second: u32) -> Option<DefaultKeyedRateLimiter<String>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
    Some(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
}

impl RateLimits {
    /// Limiters of these rates (0: none).
    pub fn new(options: &LimitOptions) -> Self {
        Self {
            identity: limiter(options.rate_limit_identity),
            tenant: limiter(options.rate_limit_tenant),
            checks: AtomicU64::new(0),
        }
    }

    /// Spends one request of `identity` acting for `tenant` (`None`: its only tenant, if it has one); when a
    /// budget is spent, how long until it has one again.
    pub fn check(&self, identity: &Identity, tenant: Option<&str>) -> Result<(), Duration> {
        if identity.delegate {
            return Ok(());
        }
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            for limiter in self.identity.iter().chain(&self.tenant) {
                limiter.retain_recent();
            }
        }
        let now = DefaultClock::default().now();
        let wait = |limiter: &Option<DefaultKeyedRateLimiter<String>>, key: &str| match limiter {
            Some(limiter) => limiter.check_key(&key.to_owned()).map_err(|not_until| not_until.wait_time_from(now)),
            None => Ok(()),
        };
        wait(&self.identity, &identity.subject)?;
        let tenant = tenant.or(match identity.tenants.as_slice() {
            [only] if only != "*" => Some(only.as_str()),
            _ => None,
        });
        match tenant {
            Some(tenant) => wait(&self.tenant, tenant),
            None => Ok(()),
        }
    }
}

/// Milliseconds to wait, at least 1: what NATS replies' `retry_after_ms` says.
pub fn retry_after_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Whole seconds to wait, at least 1: what `Retry-After` says.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn who(subject: &str, tenant: &str) -> Identity {
        Identity { subject: subject.into(), role: Role::User, tenants: vec![tenant.into()], delegate: false }
    }

    #[test]
    fn a_budget_spent_is_refused_with_the_time_to_wait_and_others_are_not_touched() {
        let limits = RateLimits::new(&LimitOptions { rate_limit_identity: 2, rate_limit_tenant: 5 });
        let ann = who("ann", "acme");
        // A burst of twice the rate, then refused.
        assert!(limits.check(&ann, None).is_ok() && limits.check(&ann, None).is_ok());
        assert!(limits.check(&ann, None).is_ok() && limits.check(&ann, None).is_ok());
        let wait = limits.check(&ann, None).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        // Another identity of the tenant still has its own budget, until the tenant's is spent too.
        let bob = who("bob", "acme");
        assert!(limits.check(&bob, None).is_ok());
        for _ in 0..10 {
            let _ = limits.check(&who(&format!("u{}", rand::random::<u32>()), "acme"), None);
        }
        assert!(limits.check(&who("carl", "acme"), None).is_err(), "the tenant's budget is shared");
        assert!(limits.check(&who("dora", "globex"), None).is_ok());
        // The node's own token is never limited.
        let node = Identity { delegate: true, ..ann };
        assert!((0..100).all(|_| limits.check(&node, None).is_ok()));
        let off = RateLimits::new(&LimitOptions { rate_limit_identity: 0, rate_limit_tenant: 0 });
        assert!((0..100).all(|_| off.check(&who("x", "y"), None).is_ok()));
    }
}
