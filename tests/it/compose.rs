//! `docker-compose.yml` cannot run here (no Docker on the build machine). What can be checked without it: the
//! Weft nodes' config file parses as `weft serve` options (the node gets as far as connecting to NATS), and
//! MinIO's notifications go to the subject and bucket the nodes use.

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_compose_nodes_config_parses_and_minio_notifies_the_subject_weft_listens_on() {
    let text = std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap();
    let compose = &yaml_rust2::YamlLoader::load_from_str(&text).expect("the compose file is YAML")[0];
    let config: toml::Table = std::fs::read_to_string(format!("{ROOT}/deploy/weft.toml")).unwrap().parse().unwrap();
    let services = &compose["services"];
    let subject = weft::objects::notification::SUBJECT;
    let minio = &services["minio"]["environment"];
    assert_eq!(minio["MINIO_NOTIFY_NATS_SUBJECT_WEFT"].as_str(), Some(subject), "MinIO notifies {subject}");
    assert_eq!(minio["MINIO_NOTIFY_NATS_ENABLE_WEFT"].as_str(), Some("on"));
    let setup = services["minio-setup"]["command"][0].as_str().expect("minio-setup runs one shell command");
    assert!(setup.contains("--event put,delete"), "MinIO sends creations and removals");
    let bucket = config["s3-bucket"].as_str().expect("the config names the bucket");
    assert!(setup.contains(&format!("mc mb --ignore-existing local/{bucket}")), "the bucket is made");
    assert!(setup.contains(&format!("local/{bucket} arn:minio:sqs::WEFT:nats")), "its notifications are set");
    for node in ["weft1", "weft2"] {
        assert!(!services[node].is_badvalue(), "the compose runs {node}");
    }

    // The config parses: the node fails only where this machine differs, at the NATS servers' names.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--config", &format!("{ROOT}/deploy/weft.toml")])
        .env("WEFT_S3_ACCESS_KEY_ID", "weft")
        .env("WEFT_S3_SECRET_ACCESS_KEY", "secret")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nats1"), "the node tried the compose's NATS servers: {stderr}");
    assert!(!stderr.contains("config") && !stderr.contains("Usage"), "{stderr}");
}
