//! The users' and keys' checks over an in-memory store.

use super::*;

fn identities() -> Identities {
    let secret = crate::auth::token::Secret::from_bytes(&[7; 32]);
    Identities::new(Arc::new(weft_events::memory::MemoryStore::default()), secret)
}

#[tokio::test]
async fn a_user_logs_in_with_its_password_only_until_disabled() {
    let ids = identities();
    ids.add_user("alice@acme.example", "user", &["acme".into()], Password::Clear("correct horse".into()), "admin")
        .await
        .unwrap();
    let acme = ["acme".to_owned()];
    let again = ids.add_user("alice@acme.example", "user", &acme, Password::Clear("x".repeat(9)), "a").await;
    assert!(matches!(again, Err(IdentityError::Exists(_))));
    let login = ids.login("alice@acme.example", "correct horse").await.unwrap();
    assert_eq!((login.identity.subject.as_str(), login.identity.role), ("alice@acme.example", Role::User));
    assert!(ids.login("alice@acme.example", "wrong horse").await.is_err());
    assert!(ids.login("bob", "correct horse").await.is_err());
    ids.login_holds("alice@acme.example", login.version).await.unwrap();
    ids.set_password("alice@acme.example", Password::Clear("battery staple".into()), "alice").await.unwrap();
    assert_eq!(ids.login_holds("alice@acme.example", login.version).await, Err(Refused::Revoked));
    let again = ids.login("alice@acme.example", "battery staple").await.unwrap();
    ids.login_holds("alice@acme.example", again.version).await.unwrap();
    ids.disable_user("alice@acme.example", "left", "admin").await.unwrap();
    assert!(ids.login("alice@acme.example", "battery staple").await.is_err());
    assert_eq!(ids.login_holds("alice@acme.example", again.version).await, Err(Refused::Revoked));
}

#[tokio::test]
async fn an_imported_bcrypt_hash_logs_in_and_a_bad_hash_is_refused() {
    let ids = identities();
    let hash = bcrypt::hash("imported secret", 4).unwrap();
    ids.add_user("carol", "guest", &["*".into()], Password::Hash(hash), "admin").await.unwrap();
    assert_eq!(ids.login("carol", "imported secret").await.unwrap().identity.role, Role::Guest);
    let bad = ids.add_user("dave", "guest", &["a".into()], Password::Hash("plain".into()), "admin").await;
    assert!(matches!(bad, Err(IdentityError::Invalid(_))));
    let short = ids.add_user("erin", "guest", &["a".into()], Password::Clear("short".into()), "admin").await;
    assert!(matches!(short, Err(IdentityError::Invalid(_))));
    for name in ["", "has space", "a:b", &"x".repeat(65)] {
        let refused = ids.add_user(name, "guest", &["a".into()], Password::Clear("long enough".into()), "a").await;
        assert!(matches!(refused, Err(IdentityError::Invalid(_))), "{name:?}");
    }
}

#[tokio::test]
async fn a_key_works_until_revoked_and_a_forged_one_never() {
    let ids = identities();
    let made = ids.create_key("ingest", "operator", &["acme".into()], None, "admin").await.unwrap();
    let identity = ids.key(&made.key).await.unwrap();
    assert_eq!((identity.subject.as_str(), identity.role), ("key:ingest", Role::Operator));
    let mut forged = made.key.clone();
    forged.replace_range(forged.len() - 3.., "AAA");
    assert_eq!(ids.key(&forged).await, Err(Refused::Invalid("unknown API key")));
    for bad in ["weft_", "weft_x", &made.key[..40], &format!("{}_", made.key)] {
        assert!(ids.key(bad).await.is_err(), "{bad:?}");
    }
    ids.revoke_key(&made.id, "rotated", "admin").await.unwrap();
    assert_eq!(ids.key(&made.key).await, Err(Refused::Revoked));
    assert!(matches!(ids.revoke_key(&made.id, "again", "admin").await, Err(IdentityError::Exists(_))));
    // A key whose life is zero has expired by the time it is first used.
    let expired = ids.create_key("old", "guest", &["a".into()], Some(Duration::ZERO), "admin").await.unwrap();
    assert_eq!(ids.key(&expired.key).await, Err(Refused::Expired));
}
