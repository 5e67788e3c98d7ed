//! Events of the tenants: so far only their erasure, the one change to a tenant that the log must carry (every
//! node's read models scrub the tenant's personal fields when they read it).
//!
//! All erasures are one stream, [`erasures`]: tenant names may hold characters a stream name may not, and an
//! erasure is rare.

use serde::{Deserialize, Serialize};

use crate::envelope::{StreamName, Timestamp};

/// The stream of every tenant's erasure.
pub fn erasures() -> StreamName {
    StreamName::from_stored("tenant-erasures")
}

/// A tenant's key was destroyed (a GDPR erasure request): the personal fields of its events read as
/// [`crate::seal::ERASED`] from now on, everywhere, and no new event with personal fields is accepted for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Erased {
    /// The tenant.
    pub tenant: String,
    /// Why, as the operator gave it (a ticket number, not personal data).
    pub reason: String,
    /// When the key was destroyed.
    pub at: Timestamp,
}

super::domain_events! { "tenant";
    /// See [`Erased`].
    Erased(Erased) = "tenant.erased", v 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainEvent;
    use crate::domain::tests::round_trip;

    #[test]
    fn an_erasure_round_trips_with_its_stable_name() {
        let event: Event = Erased { tenant: "acme".into(), reason: "ticket 12".into(), at: Timestamp(3) }.into();
        assert_eq!(event.event_type(), "tenant.erased");
        assert_eq!(round_trip(&event), event);
        assert!(StreamName::new(erasures().as_str()).is_ok());
    }
}
