//! The document aggregate's decisions.

use super::*;
use crate::testkit::given;

const AT: Timestamp = Timestamp(1_000);

fn register() -> Command {
    Command::Register {
        name: "report.pdf".into(),
        content_type: "application/pdf".into(),
        declared_size_bytes: 100,
        tenant: "acme".into(),
        owner: "user:alice".into(),
        labels: [("project".to_owned(), "q3".to_owned())].into(),
        at: AT,
    }
}

fn registered() -> Event {
    Registered {
        name: "report.pdf".into(),
        content_type: "application/pdf".into(),
        declared_size_bytes: 100,
        tenant: "acme".into(),
        owner: "user:alice".into(),
        labels: [("project".to_owned(), "q3".to_owned())].into(),
        at: AT,
    }
    .into()
}

fn uploaded() -> Event {
    Uploaded { size_bytes: 80, etag: "e1".into(), source: UploadSource::Notification, at: AT }.into()
}

fn deleted() -> Event {
    Deleted { reason: "gdpr".into(), at: AT }.into()
}

fn mark_uploaded(size_bytes: u64, etag: &str) -> Command {
    Command::MarkUploaded { size_bytes, etag: etag.into(), source: UploadSource::Notification, at: AT }
}

#[test]
fn registering_a_new_document_records_it_pending_upload() {
    given::<Document>([]).when(register()).then([registered()]);
}

#[test]
fn registering_twice_is_rejected() {
    given::<Document>([registered()]).when(register()).then_rejected(Rejection::AlreadyRegistered);
}

#[test]
fn registering_with_a_bad_size_name_or_content_type_is_rejected() {
    let with = |f: &dyn Fn(&mut Command)| {
        let mut c = register();
        f(&mut c);
        c
    };
    let set_size = |n: u64| {
        with(&move |c| {
            if let Command::Register { declared_size_bytes, .. } = c {
                *declared_size_bytes = n
            }
        })
    };
    given::<Document>([])
        .when(set_size(0))
        .then_rejected(Rejection::BadDeclaredSize { size: 0, limit: MAX_DOCUMENT_BYTES });
    given::<Document>([])
        .when(set_size(MAX_DOCUMENT_BYTES + 1))
        .then_rejected(Rejection::BadDeclaredSize { size: MAX_DOCUMENT_BYTES + 1, limit: MAX_DOCUMENT_BYTES });
    let bad_labels = with(&|c| {
        if let Command::Register { labels, .. } = c {
            labels.insert("no spaces allowed".into(), "v".into());
        }
    });
    assert!(
        matches!(Document::default().decide(&bad_labels), Err(Rejection::Invalid { field, .. }) if field == "labels")
    );
    let too_many = with(&|c| {
        if let Command::Register { labels, .. } = c {
            labels.extend((0..=MAX_LABELS).map(|i| (format!("k{i}"), String::new())));
        }
    });
    assert!(
        matches!(Document::default().decide(&too_many), Err(Rejection::Invalid { field, .. }) if field == "labels")
    );
    let blank_name = with(&|c| {
        if let Command::Register { name, .. } = c {
            *name = "  ".into()
        }
    });
    assert!(
        matches!(Document::default().decide(&blank_name), Err(Rejection::Invalid { field, .. }) if field == "name")
    );
    let bad_type = with(&|c| {
        if let Command::Register { content_type, .. } = c {
            *content_type = "pdf".into()
        }
    });
    assert!(
        matches!(Document::default().decide(&bad_type), Err(Rejection::Invalid { field, .. }) if field == "content type")
    );
    let with_params = with(&|c| {
        if let Command::Register { content_type, .. } = c {
            *content_type = "text/plain; charset=utf-8".into()
        }
    });
    assert!(Document::default().decide(&with_params).is_ok());
}

#[test]
fn marking_a_pending_document_uploaded_records_the_upload() {
    given::<Document>([registered()]).when(mark_uploaded(80, "e1")).then([uploaded()]);
}

#[test]
fn an_upload_over_the_declared_size_is_rejected() {
    given::<Document>([registered()])
        .when(mark_uploaded(101, "e1"))
        .then_rejected(Rejection::OverDeclaredSize { size: 101, declared: 100 });
}

#[test]
fn the_same_upload_notified_twice_changes_nothing() {
    given::<Document>([registered(), uploaded()]).when(mark_uploaded(80, "e1")).then([]);
}

#[test]
fn a_different_upload_of_an_uploaded_document_is_rejected() {
    given::<Document>([registered(), uploaded()])
        .when(mark_uploaded(50, "e2"))
        .then_rejected(Rejection::AlreadyUploaded { etag: "e1".into() });
}

#[test]
fn uploading_a_deleted_document_is_rejected() {
    given::<Document>([registered(), deleted()]).when(mark_uploaded(80, "e1")).then_rejected(Rejection::Deleted);
}

#[test]
fn uploading_an_unregistered_document_is_rejected() {
    given::<Document>([]).when(mark_uploaded(80, "e1")).then_rejected(Rejection::NotRegistered);
}

#[test]
fn recording_a_derivative_of_an_uploaded_document_records_it() {
    let (child, job) = (DocumentId::new(), JobId::new());
    given::<Document>([registered(), uploaded()])
        .when(Command::RecordDerivative { child, job, step: "summarise".into(), version: Some(1), at: AT })
        .then([DerivativeRecorded { child, job, step: "summarise".into(), version: Some(1), at: AT }.into()]);
    given::<Document>([registered(), uploaded()])
        .when(Command::RecordDerivative { child, job, step: "summarise".into(), version: Some(2), at: AT })
        .then_rejected(Rejection::NoSuchVersion { version: 2, versions: 1 });
}

#[test]
fn deriving_from_a_document_that_never_finished_uploading_is_rejected() {
    given::<Document>([registered()])
        .when(Command::RecordDerivative {
            child: DocumentId::new(),
            job: JobId::new(),
            step: "s".into(),
            version: None,
            at: AT,
        })
        .then_rejected(Rejection::NotUploaded);
}

#[test]
fn adding_a_version_to_an_uploaded_document_records_it() {
    given::<Document>([registered(), uploaded()])
        .when(Command::AddVersion { size_bytes: 90, etag: "e2".into(), key: None, at: AT })
        .then([VersionAdded { size_bytes: 90, etag: "e2".into(), key: None, at: AT }.into()]);
}

#[test]
fn versions_in_objects_of_their_own_keep_every_content_and_one_is_never_rewritten() {
    let key = |slot: &str| Some(format!("acme/v/d/{slot}"));
    let add = |size: u64, etag: &str, key: Option<String>| Command::AddVersion {
        size_bytes: size,
        etag: etag.into(),
        key,
        at: AT,
    };
    let second: Event = VersionAdded { size_bytes: 90, etag: "e2".into(), key: key("a"), at: AT }.into();
    given::<Document>([registered(), uploaded()]).when(add(90, "e2", key("a"))).then([second.clone()]);
    // The same object again (a notification delivered twice): nothing; other content in it: refused.
    given::<Document>([registered(), uploaded(), second.clone()]).when(add(90, "e2", key("a"))).then([]);
    given::<Document>([registered(), uploaded(), second.clone()])
        .when(add(91, "e3", key("a")))
        .then_rejected(Rejection::VersionRewritten { version: 2, key: key("a").unwrap() });
    // A key of another tenant, or not a version's.
    for bad in ["other/v/d/a", "acme/d"] {
        assert!(matches!(
            given::<Document>([registered(), uploaded()]).state().decide(&add(9, "e", Some(bad.to_owned()))),
            Err(Rejection::Invalid { field, .. }) if field == "key"
        ));
    }
    let third: Event = VersionAdded { size_bytes: 95, etag: "e3".into(), key: None, at: AT }.into();
    let state = Document::replay(&[registered(), uploaded(), second, third]);
    // Version 1 was in the document's own key, which version 3 replaced; version 2 has its own object.
    let kept: Vec<(u64, bool)> = state.contents.iter().map(|c| (c.size_bytes, c.kept)).collect();
    assert_eq!(kept, [(80, false), (90, true), (95, true)]);
    assert_eq!(state.content(2).and_then(|c| c.key.clone()), key("a"));
    assert_eq!((state.content(0), state.content(4)), (None, None));
}

#[test]
fn adding_a_version_before_the_upload_or_over_the_size_is_rejected() {
    given::<Document>([registered()])
        .when(Command::AddVersion { size_bytes: 90, etag: "e2".into(), key: None, at: AT })
        .then_rejected(Rejection::NotUploaded);
    given::<Document>([registered(), uploaded()])
        .when(Command::AddVersion { size_bytes: 190, etag: "e2".into(), key: None, at: AT })
        .then_rejected(Rejection::OverDeclaredSize { size: 190, declared: 100 });
}

#[test]
fn deleting_a_document_records_why() {
    given::<Document>([registered(), uploaded()])
        .when(Command::Delete { reason: "gdpr".into(), at: AT })
        .then([deleted()]);
}

#[test]
fn deleting_twice_or_without_a_reason_is_rejected() {
    given::<Document>([registered(), deleted()])
        .when(Command::Delete { reason: "again".into(), at: AT })
        .then_rejected(Rejection::Deleted);
    assert!(matches!(
        given::<Document>([registered()]).state().decide(&Command::Delete { reason: "".into(), at: AT }),
        Err(Rejection::Invalid { field, .. }) if field == "reason"
    ));
}

#[test]
fn the_state_counts_versions_and_derivatives() {
    let state = Document::replay(&[
        registered(),
        uploaded(),
        VersionAdded { size_bytes: 60, etag: "e2".into(), key: None, at: AT }.into(),
        DerivativeRecorded { child: DocumentId::new(), job: JobId::new(), step: "s".into(), version: None, at: AT }
            .into(),
    ]);
    assert_eq!((state.status, state.versions, state.derivatives, state.size_bytes), (Status::Uploaded, 2, 1, 60));
}

fn label(set: &[(&str, &str)], remove: &[&str]) -> Command {
    Command::Label {
        set: set.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        remove: remove.iter().map(|k| (*k).to_owned()).collect(),
        at: AT,
    }
}

fn labels_changed(labels: &[(&str, &str)]) -> Event {
    let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    LabelsChanged { labels, at: AT }.into()
}

#[test]
fn labels_are_set_replaced_and_removed_as_one_whole_new_set() {
    given::<Document>([registered()])
        .when(label(&[("stage", "draft")], &[]))
        .then([labels_changed(&[("project", "q3"), ("stage", "draft")])]);
    given::<Document>([registered(), uploaded(), labels_changed(&[("project", "q3"), ("stage", "draft")])])
        .when(label(&[("stage", "final")], &["project"]))
        .then([labels_changed(&[("stage", "final")])]);
    let state = Document::replay(&[registered(), labels_changed(&[("stage", "final")])]);
    assert_eq!(state.labels, [("stage".to_owned(), "final".to_owned())].into());
}

#[test]
fn a_label_change_that_changes_nothing_records_nothing() {
    given::<Document>([registered()]).when(label(&[("project", "q3")], &["absent"])).then([]);
}

#[test]
fn bad_label_changes_are_rejected_and_record_nothing() {
    let invalid = |events: Vec<Event>, command: Command| {
        let state = Document::replay(&events);
        assert!(
            matches!(state.decide(&command), Err(Rejection::Invalid { ref field, .. }) if field == "labels"),
            "{command:?}"
        );
    };
    invalid(vec![registered()], label(&[], &[]));
    invalid(vec![registered()], label(&[("has space", "v")], &[]));
    invalid(vec![registered()], label(&[], &["bad\nkey"]));
    invalid(vec![registered()], label(&[("k", "v")], &["k"]));
    invalid(vec![registered()], label(&[("k", &"v".repeat(257))], &[]));
    let many: Vec<(String, String)> = (0..MAX_LABELS).map(|i| (format!("k{i}"), String::new())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    invalid(vec![registered()], label(&many, &[]));
    given::<Document>([]).when(label(&[("k", "v")], &[])).then_rejected(Rejection::NotRegistered);
    given::<Document>([registered(), deleted()]).when(label(&[("k", "v")], &[])).then_rejected(Rejection::Deleted);
}
