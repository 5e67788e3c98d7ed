//! The JetStream store's own tests (the contract suite runs in `tests/it` against a real server).

use super::*;

#[test]
fn server_versions_compare() {
    assert!(version_at_least("2.15.1", (2, 12)));
    assert!(version_at_least("2.12.0-beta", (2, 12)));
    assert!(version_at_least("3.0.0", (2, 12)));
    assert!(!version_at_least("2.9.10", (2, 12)));
    assert!(!version_at_least("garbage", (2, 12)));
}

#[test]
fn names_that_break_subjects_are_refused() {
    let bad = |f: fn(&mut JetStreamConfig)| {
        let mut config = JetStreamConfig::default();
        f(&mut config);
        check_names(&config).is_err()
    };
    assert!(!bad(|_| {}));
    assert!(bad(|c| c.stream = "A.B".into()));
    assert!(bad(|c| c.subject_prefix = "weft.>".into()));
    assert!(bad(|c| c.subject_prefix = "weft..store".into()));
    assert!(bad(|c| c.snapshots_bucket = String::new()));
    assert!(bad(|c| c.replicas = 0));
}
