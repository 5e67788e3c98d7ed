//! `docker-compose.yml` cannot run here (no Docker on the build machine). What can be checked without it: the
//! Weft nodes' config file parses as `weft serve` options (the node gets as far as connecting to NATS),
//! MinIO's notifications go to the subject and bucket the nodes use, Prometheus's scrape config passes
//! `promtool` and reaches both nodes, and the Grafana dashboard asks only for metrics a node exports.

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

#[test]
fn prometheus_scrapes_both_nodes_and_the_dashboard_asks_only_for_metrics_a_node_exports() {
    let text = std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap();
    let compose = &yaml_rust2::YamlLoader::load_from_str(&text).expect("the compose file is YAML")[0];
    let services = &compose["services"];
    for service in ["prometheus", "grafana"] {
        assert!(!services[service].is_badvalue(), "the compose runs {service}");
    }
    let checked = Command::new("promtool")
        .args(["check", "config", "--syntax-only", &format!("{ROOT}/deploy/prometheus.yml")])
        .output()
        .expect("promtool is on PATH (scripts/test unpacks Debian's prometheus package)");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let config = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus.yml")).unwrap();
    let config = &yaml_rust2::YamlLoader::load_from_str(&config).unwrap()[0];
    let scrape = &config["scrape_configs"][0];
    assert_eq!(scrape["metrics_path"].as_str(), Some("/metrics"));
    let targets: Vec<_> =
        scrape["static_configs"][0]["targets"].as_vec().unwrap().iter().filter_map(|t| t.as_str()).collect();
    assert_eq!(targets, ["weft1:8080", "weft2:8080"]);
    // The scrape authenticates with a token from the volume the nodes write theirs to.
    let token = scrape["authorization"]["credentials_file"].as_str().unwrap();
    let prometheus_volumes = format!("{:?}", services["prometheus"]["volumes"]);
    assert!(token.starts_with("/auth/") && prometheus_volumes.contains("weft-auth:/auth:ro"), "{prometheus_volumes}");

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{ROOT}/deploy/grafana/dashboards/weft.json")).unwrap())
            .expect("the dashboard is JSON");
    let names = regex::Regex::new(r"weft_[a-z_]+").unwrap();
    let exported = crate::telemetry::FAMILIES;
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in names.find_iter(expr).map(|m| m.as_str()) {
                let family = ["_bucket", "_count", "_sum"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(
                    exported.contains(&family),
                    "the panel {:?} asks for {name}, which no node exports",
                    panel["title"]
                );
                asked += 1;
            }
        }
    }
    assert!(asked >= 10, "the dashboard has its panels");
}
