//! The `weft` command line, run as a real process: what it prints, and what it does with bad arguments.

use std::process::Command;

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft")).args(args).output().expect("the weft binary runs")
}

#[test]
fn bench_store_prints_one_json_line_per_case_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        weft(&["bench", "store", "--events", "1000", "--synchronous", "off", "--path", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let cases: Vec<String> = stdout
        .lines()
        .map(|line| {
            let report: serde_json::Value = serde_json::from_str(line).expect("each stdout line is JSON");
            for field in ["ops_per_s", "p50_ms", "p99_ms", "baseline_ops_per_s"] {
                assert!(report[field].as_f64().is_some_and(|v| v >= 0.0), "{field} missing in {line}");
            }
            assert_eq!(report["bench"], "store");
            report["case"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        cases,
        ["append-1", "append-16", "append-256", "append-batch-100", "read-all", "read-all-payloads", "catch-up"]
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("baseline ops/s"), "no table on stderr: {stderr}");
    // The benchmark cleans up after itself.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_replay_prints_one_json_line_per_case() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let out = weft(&["bench", "replay", "--events", "1000", "--copy-events", "1000", "--path", path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cases: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let report: serde_json::Value = serde_json::from_str(line).expect("each stdout line is JSON");
            assert_eq!(report["bench"], "replay");
            assert!(report["ops_per_s"].as_f64().is_some_and(|v| v > 0.0), "{line}");
            assert!(report["baseline_ops_per_s"].as_f64().is_some_and(|v| v > 0.0), "{line}");
            report["case"].as_str().unwrap().to_owned()
        })
        .collect();
    let all = ["cat", "cat-sealed", "export", "verify", "rebuild", "rebuild-jobs", "import", "copy-sqlite-jetstream"];
    assert_eq!(cases, all);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the benchmark cleans up after itself");
}

#[test]
fn bad_arguments_are_refused_with_a_message_and_no_panic() {
    for (args, expected) in [
        (&["bench", "store", "--events", "many"][..], "invalid value 'many'"),
        (&["bench", "store", "--events", "5"][..], "not in 1000..=100000000"),
        (&["bench", "store", "--synchronous", "sometimes"][..], "invalid value 'sometimes'"),
        (&["bench", "actors", "--commands", "5"][..], "not in 100..=10000000"),
        (&["bench", "actors", "--commands", "-3"][..], "unexpected argument '-3'"),
        (&["bench", "actors", "--synchronous", "never"][..], "invalid value 'never'"),
        (&["bench", "actors", "--touch", "5"][..], "not in 1000..=10000000"),
        (&["bench", "actors", "--touch", "a-million"][..], "invalid value 'a-million'"),
        (&["bench", "nats", "--commands", "5"][..], "not in 256..=10000000"),
        (&["bench", "nats", "--synchronous", "never"][..], "invalid value 'never'"),
        (&["bench", "projections", "--events", "5"][..], "not in 1000..=50000000"),
        (&["bench", "projections", "--rate", "0"][..], "not in 1..=1000000"),
        (&["bench", "projections", "--seconds", "soon"][..], "invalid value 'soon'"),
        (&["bench", "documents", "--uploads", "1"][..], "not in 10..=100000"),
        (&["bench", "documents", "--concurrency", "0"][..], "not in 1..=1024"),
        (&["bench", "jobs", "--jobs", "1"][..], "not in 10..=1000000"),
        (&["bench", "replay", "--events", "5"][..], "not in 1000..=100000000"),
        (&["events", "cat"][..], "<STREAM>"),
        (&["tenant", "erase", "acme"][..], "--reason"),
        (&["tenant", "erase", "--reason", "ticket 7"][..], "<TENANT>"),
        (&["tenant", "erase", "acme", "--reason", "ticket 7"][..], "--confirm"),
        (&["serve", "--body-timeout-secs", "0"][..], "not in 1..=3600"),
        (&["serve", "--max-connections-per-client", "0"][..], "not in 1..=1000000"),
        (&["serve", "--max-live-actors", "0"][..], "not in 1..=10000000"),
        (&["serve", "--lease-ttl-secs", "1"][..], "not in 2..=600"),
        (&["serve", "--actor-idle-secs", "0"][..], "not in 1..=86400"),
        (&["serve", "--webhook-secret", "a", "--webhook-secret-file", "f"][..], "cannot be used with"),
        (&["serve", "--s3-bucket", "b", "--s3-secret-access-key-file", "f"][..], "--s3-access-key-id"),
        (&["events", "diff", "job-x", "one", "2"][..], "invalid value 'one'"),
        (&["events", "import", "f", "--on-conflict", "merge"][..], "invalid value 'merge'"),
        (&["events", "cat", "job-x", "--from", "yesterday"][..], "yesterday"),
        (&["bench", "nothing"][..], "unrecognized subcommand"),
        (&["--no-such-flag"][..], "unexpected argument"),
    ] {
        let out = weft(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("SECRET-NOT-A-SEED"), "a secret file's content is in the error: {stderr}");
    }
}

#[test]
fn an_unusable_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    for bench in ["store", "actors", "documents"] {
        let out = weft(&["bench", bench, "--path", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bench}: {stderr}");
        assert!(stderr.contains("a-file"), "{bench}: {stderr}");
        assert!(!stderr.contains("panicked"), "{bench}: {stderr}");
    }
    // A key file the node cannot make: it does not start, and says where.
    let keys = file.join("keys.db");
    let store = dir.path().join("events.db");
    let out = weft(&[
        "serve",
        "--http-addr",
        "127.0.0.1:0",
        "--store",
        store.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a-file") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_runs_on_the_embedded_defaults_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/events.db");
    // Run from a folder of its own: everything the node keeps goes beside `--store`, nothing here.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let mut child = crate::reaped::Reaped(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--http-addr", "127.0.0.1:0", "--store", store.to_str().unwrap()])
            .current_dir(&cwd)
            .env_remove("WEFT_NATS")
            .env_remove("WEFT_READ_MODELS")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("serving on the in-process bus"), "{line}");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(store.exists(), "no store at {}", store.display());
    for beside in ["read.db", "keys.db", "objects"] {
        assert!(dir.path().join("data").join(beside).exists(), "no {beside} beside the store");
    }
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "the node wrote into the folder it ran from");
}

#[test]
fn serve_refuses_a_bad_nats_url_or_store_path_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events.db");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let under_a_file = blocker.join("events.db");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = listener.local_addr().unwrap().to_string();
    let read_models = dir.path().join("read.db").to_str().unwrap().to_owned();
    let not_a_seed = dir.path().join("seed");
    std::fs::write(&not_a_seed, "SECRET-NOT-A-SEED\n").unwrap();
    let not_a_seed = not_a_seed.to_str().unwrap();
    let store_path = store.to_str().unwrap();
    // `weft serve --store <store>` and the rest.
    fn on_store<'a>(store: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        [&["serve", "--store", store][..], rest].concat()
    }
    for (args, expected) in [
        (vec!["serve", "--store", store.to_str().unwrap(), "--nats", "nats://bad host:-1"], "NATS URL"),
        (vec!["serve", "--store", under_a_file.to_str().unwrap()], "cannot create"),
        (vec!["serve", "--max-body-bytes", "lots"], "invalid value 'lots'"),
        (vec!["serve", "--url-expiry-secs", "0"], "not in 1..=604800"),
        (
            vec![
                "serve",
                "--store",
                store.to_str().unwrap(),
                "--read-models",
                &read_models,
                "--openai-api-key-file",
                "/no/such/key",
            ],
            "the key file /no/such/key",
        ),
        (vec!["serve", "--provider-timeout-secs", "0"], "not in 1..=3600"),
        (vec!["serve", "--s3-endpoint", "http://127.0.0.1:1"], "--s3-bucket <S3_BUCKET>"),
        (vec!["serve", "--s3-bucket", "b", "--s3-access-key-id", "k"], "--s3-secret-access-key"),
        (
            vec![
                "serve",
                "--store",
                store.to_str().unwrap(),
                "--read-models",
                &read_models,
                "--objects-dir",
                under_a_file.to_str().unwrap(),
            ],
            "the object store in",
        ),
        (vec!["serve", "--jetstream"], "--nats <NATS>"),
        (vec!["serve", "--nats", "nats://127.0.0.1:1", "--jetstream", "--jetstream-replicas", "9"], "1..=5"),
        (vec!["bench", "nats", "--nats", "nats://bad host:-1"], "NATS URL"),
        (vec!["serve", "--nats", "nats://127.0.0.1:1", "--nats-user", "u"], "--nats-password-file"),
        (vec!["serve", "--oidc-issuer", "https://idp"], "--oidc-audience"),
        (vec!["serve", "--cors-origin", "https://app.example/path"], "is not an origin"),
        (vec!["serve", "--cors-origin", "ftp://app.example"], "is not an origin"),
        (vec!["serve", "--rate-limit-identity", "lots"], "invalid value 'lots'"),
        (vec!["serve", "--oidc-jwks-refresh-secs", "0"], "not in 1..=86400"),
        (
            on_store(store_path, &["--oidc-issuer", "https://idp", "--oidc-audience", "weft"]),
            "--oidc-issuer needs --oidc-jwks-url or --oidc-jwks-file",
        ),
        (
            on_store(
                store_path,
                &["--oidc-issuer", "https://idp", "--oidc-audience", "weft", "--oidc-jwks-url", "http://idp.example/c"],
            ),
            "keys are fetched over https",
        ),
        (vec!["serve", "--insecure-no-auth", "--oidc-issuer", "i", "--oidc-audience", "a"], "cannot be used with"),
        (vec!["serve", "--nats", "nats://127.0.0.1:1", "--nats-tls-cert", "c.pem"], "--nats-tls-key"),
        (
            on_store(store_path, &["--nats", "nats://127.0.0.1:1", "--nats-token-file", "/no/such"]),
            "reading the token file /no/such",
        ),
        (
            on_store(store_path, &["--nats", "nats://127.0.0.1:1", "--nats-nkey-file", not_a_seed]),
            "holds no user NKey seed",
        ),
        (on_store(store_path, &["--nats", "nats://127.0.0.1:1", "--nats-creds", not_a_seed]), "is not a .creds file"),
        (
            on_store(store_path, &["--nats", "nats://127.0.0.1:1", "--nats-tls-ca", "/no/ca.pem"]),
            "the TLS CA file /no/ca.pem",
        ),
        (
            vec!["serve", "--store", store.to_str().unwrap(), "--read-models", under_a_file.to_str().unwrap()],
            "cannot create",
        ),
        (
            vec!["serve", "--store", store.to_str().unwrap(), "--read-models", &read_models, "--http-addr", &taken],
            "cannot listen",
        ),
    ] {
        let out = weft(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Runs `weft serve` with `args` and `env` until it announces itself, then stops it; returns the announcement.
fn serve_line(args: &[&str], env: &[(&str, &str)]) -> String {
    use std::io::{BufRead, BufReader};
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command.args(args).stderr(std::process::Stdio::piped());
    for variable in ["WEFT_STORE", "WEFT_READ_MODELS", "WEFT_HTTP_ADDR", "WEFT_NATS", "WEFT_CONFIG"] {
        command.env_remove(variable);
    }
    command.envs(env.iter().copied());
    let mut child = crate::reaped::Reaped(command.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    line
}

#[test]
fn serve_takes_its_options_from_a_config_file_below_the_environment_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let config = at("weft.toml");
    std::fs::write(
        &config,
        format!(
            "store = {:?}\nread_models = {:?}\nhttp-addr = \"127.0.0.1:0\"\nmax-body-bytes = 4096\nno-processes = true\n",
            at("file.db"),
            at("read.db")
        ),
    )
    .unwrap();
    let line = serve_line(&["serve", "--config", &config], &[]);
    assert!(line.contains(&format!("SQLite {}", at("file.db"))), "the file's store: {line}");
    let line = serve_line(&["serve"], &[("WEFT_CONFIG", &config), ("WEFT_STORE", &at("env.db"))]);
    assert!(line.contains(&format!("SQLite {}", at("env.db"))), "the environment wins over the file: {line}");
    let line = serve_line(&["serve", "--config", &config, "--store", &at("cli.db")], &[("WEFT_STORE", &at("env.db"))]);
    assert!(line.contains(&format!("SQLite {}", at("cli.db"))), "the command line wins: {line}");
    // A list is the comma-separated form of an option that takes several values (`--price`).
    let prices = "[providers]\nprice = [\"openai/gpt-4o-mini=0.15:0.6\", \"anthropic/*=3:15\"]\n";
    std::fs::write(
        &config,
        format!(
            "store = {:?}\nread_models = {:?}\nhttp-addr = \"127.0.0.1:0\"\n{prices}",
            at("file.db"),
            at("read.db")
        ),
    )
    .unwrap();
    let line = serve_line(&["serve", "--config", &config], &[]);
    assert!(line.contains(&format!("SQLite {}", at("file.db"))), "a list of prices is taken: {line}");

    // Bad files: refused with the file and the key named, nothing started.
    for (text, expected) in [
        ("colour = \"red\"", "unknown key \"colour\""),
        ("config = \"other.toml\"", "unknown key"),
        ("store = [1, 2]", "store must be"),
        ("nats = [\"nats://a:1\", 2]", "nats must be"),
        // `[store]` is the store section's table (see `weft serve --help`): what it holds must be of it.
        ("[store]\npath = 1", "[store] has no key \"path\""),
        ("[store]\nstore = [1]", "store.store must be"),
        ("[colours]\nred = 1", "[colours] has no key"),
        ("store = ", "config"),
        ("max-body-bytes = \"lots\"", "invalid value 'lots'"),
        ("jetstream = true", "--nats"),
        ("[providers]\nprice = [\"openai/gpt=1:2\", 3]", "providers.price must be"),
        ("[providers]\nprice = [\"openai/gpt\"]", "PROVIDER/MODEL=INPUT:OUTPUT"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weft")).args(["serve", "--config", &config]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(stderr.contains(expected), "{text:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{text:?}: {stderr}");
    }
    let out = weft(&["serve", "--config", &at("missing.toml")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"), "{out:?}");
}

#[test]
fn bench_documents_measures_both_stores_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let out = weft(&["bench", "documents", "--documents", "10", "--uploads", "10", "--path", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let reports: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let cases: Vec<&str> = reports.iter().map(|r| r["case"].as_str().unwrap()).collect();
    assert_eq!(cases, ["register", "upload-to-uploaded-local", "upload-to-uploaded-s3"], "{stderr}");
    for report in &reports {
        assert_eq!(report["bench"], "documents");
        assert!(report["ops_per_s"].as_f64().unwrap() > 0.0 && report["p99_ms"].as_f64().unwrap() > 0.0, "{report}");
    }
    assert!(reports[0]["baseline_ops_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_jobs_runs_jobs_to_the_end_on_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    let out = weft(&["bench", "jobs", "--jobs", "10", "--path", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let reports: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let cases: Vec<&str> = reports.iter().map(|r| r["case"].as_str().unwrap()).collect();
    assert_eq!(
        cases,
        ["builtin-embedded", "builtin-embedded-1", "dag3-embedded-1", "trigger-embedded", "builtin-nats"],
        "{stderr}"
    );
    assert!(reports.iter().all(|r| r["ops_per_s"].as_f64().unwrap() > 0.0), "{stdout}");
    assert!(stderr.contains("mean task"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn serve_refuses_a_lease_that_would_lapse_between_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events.db");
    let out = weft(&[
        "serve",
        "--http-addr",
        "127.0.0.1:0",
        "--store",
        store.to_str().unwrap(),
        "--lease-ttl-secs",
        "5",
        "--lease-renew-secs",
        "5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--lease-renew-secs (5) must be under --lease-ttl-secs (5)"), "{stderr}");
    assert!(!store.exists(), "nothing was opened");
}

#[test]
fn serve_refuses_cluster_timings_that_would_lapse_and_partitions_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events.db");
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--http-addr", "127.0.0.1:0", "--store", store.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = weft(&args);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = serve(&["--cluster-ttl-ms", "3000", "--cluster-beat-ms", "2000"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--cluster-beat-ms (2000) must be at most half of --cluster-ttl-ms (3000)"), "{stderr}");
    for bad in [["--partitions", "0"], ["--partitions", "2000"], ["--cluster-ttl-ms", "10"], ["--cluster-beat-ms", "x"]]
    {
        let (code, stderr) = serve(&bad);
        assert_eq!(code, Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains(bad[0]), "{bad:?}: {stderr}");
    }
    assert!(!store.exists(), "nothing was opened");
}
