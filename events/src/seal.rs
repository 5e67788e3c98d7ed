//! Crypto-shredding: personal payload fields sealed with their tenant's key, so that destroying the key erases
//! them from every event, backup and copy of the log at once, while the log itself stays append-only.
//!
//! A payload is a MessagePack map of named fields ([`crate::codec`]). [`seal`] replaces the value of each
//! personal field of the event type ([`personal_fields`]) by a MessagePack extension value of type
//! [`SEALED_EXT`]:
//!
//! ```text
//! [format = 1] [kind] [key id: u32 BE] [nonce: 24 bytes] [XChaCha20-Poly1305 ciphertext of the value + tag]
//! ```
//!
//! `kind` says what the value was (`s` string, `m` map, `a` array, `n` anything else), so that a field whose key
//! is gone still reads as a value of its type: a string reads as a marker such as [`ERASED`], a map as `{}`, an
//! array as `[]`, anything else as nil. The associated data binds the ciphertext to its event id, tenant and
//! field name: a sealed value copied into another event or field does not open. [`open`] undoes [`seal`]
//! with the key, or puts the marker in. The other fields, and the events of types without personal fields,
//! are untouched, byte for byte; so is a payload written before sealing existed (its fields are in the clear).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use uuid::Uuid;

use crate::codec;

/// The MessagePack extension type of a sealed value.
pub const SEALED_EXT: i8 = 83;

/// What a sealed string reads as once its tenant is erased.
pub const ERASED: &str = "[erased]";

/// What a sealed string reads as where the key is not at hand (a tool run without the key store).
pub const SEALED: &str = "[sealed]";

/// The format byte this build writes and reads.
const FORMAT: u8 = 1;

/// Bytes of a sealed value's header: format, kind, key id, nonce.
const HEADER: usize = 1 + 1 + 4 + 24;

/// The event types with personal data, and the fields of their payloads that hold it: a document's file name,
/// owner and labels (at registration and when changed). Fields are only ever added here with a new schema
/// version of the event type.
pub const PERSONAL: &[(&str, &[&str])] =
    &[("document.registered", &["name", "owner", "labels"]), ("document.labels_changed", &["labels"])];

/// The fields of `event_type`'s payload that hold personal data (see [`PERSONAL`]).
pub fn personal_fields(event_type: &str) -> &'static [&'static str] {
    PERSONAL.iter().find(|(t, _)| *t == event_type).map_or(&[], |(_, fields)| fields)
}

/// Whether the aggregate `kind` (`document`) has events with personal data: its snapshots, which would hold
/// them in the clear, are not kept.
pub fn has_personal_events(kind: &str) -> bool {
    PERSONAL.iter().any(|(t, _)| t.split_once('.').is_some_and(|(aggregate, _)| aggregate == kind))
}

/// A tenant's key: 32 random bytes and a random id, kept in the key store, never in the log.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantKey {
    id: u32,
    bytes: [u8; 32],
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl TenantKey {
    /// A new key from the operating system's random source (through `rand`'s thread generator, a CSPRNG
    /// seeded from it).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        let mut rng = rand::rng();
        rng.fill_bytes(&mut bytes);
        Self { id: rng.next_u32(), bytes }
    }

    /// A key read back from a key store.
    pub fn from_parts(id: u32, bytes: [u8; 32]) -> Self {
        Self { id, bytes }
    }

    /// Its id, written beside each value it seals.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its bytes, for the key store.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

/// How [`open`] reads a payload's sealed values.
#[derive(Debug, Clone, Copy)]
pub enum Opening<'a> {
    /// With the tenant's key.
    Key(&'a TenantKey),
    /// Without: every sealed value reads as this marker (strings) or as an empty value of its kind.
    Marker(&'a str),
}

/// Why a payload could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The payload is not one MessagePack value, or a sealed value is malformed.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The value was sealed with another key than the tenant's.
    #[error("field {field:?} was sealed with key {sealed:08x}, the tenant's key is {have:08x}")]
    WrongKey {
        /// The field.
        field: String,
        /// The id of the key it was sealed with.
        sealed: u32,
        /// The id of the key at hand.
        have: u32,
    },
    /// The ciphertext does not open with the right key: changed, or moved from another event or field.
    #[error("field {field:?} does not open: its ciphertext was changed or belongs to another event")]
    Tampered {
        /// The field.
        field: String,
    },
}

/// The span of one field of a top-level payload map.
struct Field {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

/// The top-level map's fields, or `None` when the payload is not a map (not an aggregate's payload: left
/// alone).
fn fields(payload: &[u8]) -> Result<Option<Vec<Field>>, SealError> {
    let malformed = |e: codec::Error| SealError::Malformed(e.to_string());
    let be = |b: &[u8]| b.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let (header, count) = match payload.first() {
        Some(m @ 0x80..=0x8f) => (1, usize::from(m & 0x0f)),
        Some(0xde) if payload.len() >= 3 => (3, be(&payload[1..3])),
        Some(0xdf) if payload.len() >= 5 => (5, be(&payload[1..5])),
        _ => return Ok(None),
    };
    let mut at = header;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let key_len = codec::value_len(payload.get(at..).unwrap_or_default()).map_err(malformed)?;
        let name = match payload[at] {
            m @ 0xa0..=0xbf => at + 1..at + 1 + usize::from(m & 0x1f),
            0xd9 => at + 2..at + key_len,
            0xda => at + 3..at + key_len,
            0xdb => at + 5..at + key_len,
            _ => return Err(SealError::Malformed("a field name is not a string".into())),
        };
        at += key_len;
        let value_len = codec::value_len(payload.get(at..).unwrap_or_default()).map_err(malformed)?;
        out.push(Field { name, value: at..at + value_len });
        at += value_len;
    }
    if at != payload.len() {
        return Err(SealError::Malformed(format!("{} bytes after the payload", payload.len() - at)));
    }
    Ok(Some(out))
}

/// The sealed value's bytes (format byte onwards), when `value` is one.
fn sealed_data(value: &[u8]) -> Option<&[u8]> {
    let be = |b: &[u8]| b.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let (start, len) = match value.first()? {
        0xc7 => (3, be(value.get(1..2)?)),
        0xc8 => (4, be(value.get(1..3)?)),
        0xc9 => (6, be(value.get(1..5)?)),
        _ => return None,
    };
    let ext_type = *value.get(start - 1)? as i8;
    (ext_type == SEALED_EXT).then(|| value.get(start..start + len)).flatten()
}

/// Whether any field of `payload` is sealed.
pub fn is_sealed(payload: &[u8]) -> bool {
    matches!(fields(payload), Ok(Some(fields)) if fields.iter().any(|f| sealed_data(&payload[f.value.clone()]).is_some()))
}

fn aad(event_id: Uuid, tenant: &str, field: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + tenant.len() + field.len() + 2);
    aad.extend_from_slice(event_id.as_bytes());
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field);
    aad
}

fn kind(value: &[u8]) -> u8 {
    match value.first() {
        Some(0xa0..=0xbf | 0xd9 | 0xda | 0xdb) => b's',
        Some(0x80..=0x8f | 0xde | 0xdf) => b'm',
        Some(0x90..=0x9f | 0xdc | 0xdd) => b'a',
        _ => b'n',
    }
}

fn write_ext(out: &mut Vec<u8>, data_len: usize) {
    if let Ok(len) = u8::try_from(data_len) {
        out.extend_from_slice(&[0xc7, len]);
    } else if let Ok(len) = u16::try_from(data_len) {
        out.push(0xc8);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0xc9);
        out.extend_from_slice(&(data_len as u32).to_be_bytes());
    }
    out.push(SEALED_EXT as u8);
}

fn marker(out: &mut Vec<u8>, kind: u8, text: &str) {
    match kind {
        b's' => {
            // Markers are short: a fixstr (up to 31 bytes) or a str8.
            if text.len() < 32 {
                out.push(0xa0 | text.len() as u8);
            } else {
                out.extend_from_slice(&[0xd9, text.len().min(255) as u8]);
            }
            out.extend_from_slice(&text.as_bytes()[..text.len().min(255)]);
        }
        b'm' => out.push(0x80),
        b'a' => out.push(0x90),
        _ => out.push(0xc0),
    }
}

/// Seals the personal fields of a payload of `event_type` for event `event_id` of `tenant`. `None`: nothing to
/// seal (no personal field, or all already sealed), keep the payload as it is.
pub fn seal(
    event_type: &str,
    event_id: Uuid,
    tenant: &str,
    payload: &[u8],
    key: &TenantKey,
) -> Result<Option<Vec<u8>>, SealError> {
    let personal = personal_fields(event_type);
    if personal.is_empty() {
        return Ok(None);
    }
    let Some(fields) = fields(payload)? else { return Ok(None) };
    let to_seal = |f: &Field| {
        personal.iter().any(|p| p.as_bytes() == &payload[f.name.clone()])
            && sealed_data(&payload[f.value.clone()]).is_none()
    };
    if !fields.iter().any(to_seal) {
        return Ok(None);
    }
    let cipher = XChaCha20Poly1305::new((&key.bytes).into());
    let mut rng = rand::rng();
    let mut out = Vec::with_capacity(payload.len() + fields.len() * (HEADER + 20));
    // Everything up to each sealed value (the map's header and the fields before it) is copied as it is.
    let mut at = 0;
    for field in &fields {
        if !to_seal(field) {
            continue;
        }
        out.extend_from_slice(&payload[at..field.value.start]);
        let value = &payload[field.value.clone()];
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let aad = aad(event_id, tenant, &payload[field.name.clone()]);
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value, aad: &aad })
            .map_err(|_| SealError::Malformed("the value is too large to seal".into()))?;
        write_ext(&mut out, HEADER + ciphertext.len());
        out.extend_from_slice(&[FORMAT, kind(value)]);
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        at = field.value.end;
    }
    out.extend_from_slice(&payload[at..]);
    Ok(Some(out))
}

/// Opens the sealed fields of a payload of event `event_id` of `tenant`, with the key or with markers. `None`:
/// nothing is sealed, read the payload as it is.
pub fn open(event_id: Uuid, tenant: &str, payload: &[u8], how: Opening<'_>) -> Result<Option<Vec<u8>>, SealError> {
    // The common case, a payload without an extension value of a sealed size, is one scan for the marker.
    if !payload.iter().any(|b| matches!(b, 0xc7..=0xc9)) {
        return Ok(None);
    }
    let Some(fields) = fields(payload)? else { return Ok(None) };
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0;
    for field in &fields {
        let Some(data) = sealed_data(&payload[field.value.clone()]) else { continue };
        let name = &payload[field.name.clone()];
        let field_name = || String::from_utf8_lossy(name).into_owned();
        if data.len() < HEADER + 16 || data[0] != FORMAT {
            return Err(SealError::Malformed(format!(
                "field {:?} is not a sealed value this build reads",
                field_name()
            )));
        }
        let out = out.get_or_insert_with(|| Vec::with_capacity(payload.len()));
        out.extend_from_slice(&payload[at..field.value.start]);
        at = field.value.end;
        let (kind, key_id, nonce, ciphertext) =
            (data[1], u32::from_be_bytes(data[2..6].try_into().expect("4 bytes")), &data[6..30], &data[30..]);
        match how {
            Opening::Marker(text) => marker(out, kind, text),
            Opening::Key(key) => {
                if key.id != key_id {
                    return Err(SealError::WrongKey { field: field_name(), sealed: key_id, have: key.id });
                }
                let cipher = XChaCha20Poly1305::new((&key.bytes).into());
                let aad = aad(event_id, tenant, name);
                let value = cipher
                    .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
                    .map_err(|_| SealError::Tampered { field: field_name() })?;
                if codec::value_len(&value).ok() != Some(value.len()) {
                    return Err(SealError::Malformed(format!("field {:?} opens to no single value", field_name())));
                }
                out.extend_from_slice(&value);
            }
        }
    }
    Ok(out.map(|mut out| {
        out.extend_from_slice(&payload[at..]);
        out
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::document::Registered;
    use crate::envelope::Timestamp;

    fn registered() -> Registered {
        Registered {
            name: "ann's tax return.pdf".into(),
            content_type: "application/pdf".into(),
            declared_size_bytes: 10,
            tenant: "acme".into(),
            owner: "user:ann".into(),
            labels: [("patient".to_owned(), "ann".to_owned())].into(),
            at: Timestamp(7),
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn sealed_fields_leave_no_plaintext_and_open_with_the_key_byte_for_byte() {
        let (id, key) = (Uuid::now_v7(), TenantKey::generate());
        let payload = codec::encode(&registered()).unwrap();
        let sealed = seal("document.registered", id, "acme", &payload, &key).unwrap().unwrap();
        assert!(is_sealed(&sealed) && !is_sealed(&payload));
        for secret in ["ann's tax", "user:ann", "patient"] {
            assert!(!contains(&sealed, secret.as_bytes()), "{secret} is in the clear");
        }
        assert!(contains(&sealed, b"application/pdf"), "a field that is not personal stays in the clear");
        // Sealing twice seals nothing more.
        assert_eq!(seal("document.registered", id, "acme", &sealed, &key).unwrap(), None);
        let opened = open(id, "acme", &sealed, Opening::Key(&key)).unwrap().unwrap();
        assert_eq!(opened, payload);
    }

    #[test]
    fn without_the_key_each_field_reads_as_a_marker_of_its_type() {
        let (id, key) = (Uuid::now_v7(), TenantKey::generate());
        let payload = codec::encode(&registered()).unwrap();
        let sealed = seal("document.registered", id, "acme", &payload, &key).unwrap().unwrap();
        let opened = open(id, "acme", &sealed, Opening::Marker(ERASED)).unwrap().unwrap();
        let read: Registered = codec::decode(&opened).unwrap();
        assert_eq!(
            read,
            Registered { name: ERASED.into(), owner: ERASED.into(), labels: BTreeMap::new(), ..registered() }
        );
    }

    #[test]
    fn another_key_event_tenant_or_a_changed_byte_does_not_open() {
        let (id, key) = (Uuid::now_v7(), TenantKey::generate());
        let payload = codec::encode(&registered()).unwrap();
        let sealed = seal("document.registered", id, "acme", &payload, &key).unwrap().unwrap();
        let other = TenantKey::generate();
        assert!(matches!(open(id, "acme", &sealed, Opening::Key(&other)), Err(SealError::WrongKey { .. })));
        let same_id = TenantKey::from_parts(key.id(), *other.bytes());
        assert!(matches!(open(id, "acme", &sealed, Opening::Key(&same_id)), Err(SealError::Tampered { .. })));
        assert!(matches!(open(Uuid::now_v7(), "acme", &sealed, Opening::Key(&key)), Err(SealError::Tampered { .. })));
        assert!(matches!(open(id, "other", &sealed, Opening::Key(&key)), Err(SealError::Tampered { .. })));
        let mut changed = sealed.clone();
        let last = changed.len() - 20;
        changed[last] ^= 1;
        assert!(open(id, "acme", &changed, Opening::Key(&key)).is_err());
    }

    #[test]
    fn payloads_without_personal_fields_or_not_maps_are_left_alone() {
        let key = TenantKey::generate();
        let id = Uuid::now_v7();
        let payload = codec::encode(&registered()).unwrap();
        assert_eq!(seal("document.uploaded", id, "acme", &payload, &key).unwrap(), None);
        assert_eq!(open(id, "acme", &payload, Opening::Marker(ERASED)).unwrap(), None);
        assert_eq!(seal("document.registered", id, "acme", &[0x91, 0x01], &key).unwrap(), None);
        // Garbage is an error, not a panic.
        for bad in [&[0x81u8][..], &[0x81, 0xa1, b'n'], &[0x81, 0x01, 0x01], &[0x81, 0xa1, b'n', 0xc7, 0xff, 83]] {
            let _ = seal("document.registered", id, "acme", bad, &key);
            let _ = open(id, "acme", bad, Opening::Marker(ERASED));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::Rng;
        let key = TenantKey::generate();
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Some(first) = bytes.first_mut() {
                *first = 0x80 | (*first & 0x0f);
            }
            let _ = seal("document.registered", Uuid::nil(), "t", &bytes, &key);
            let _ = open(Uuid::nil(), "t", &bytes, Opening::Key(&key));
            let _ = open(Uuid::nil(), "t", &bytes, Opening::Marker(SEALED));
        }
    }
}
