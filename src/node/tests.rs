//! A node's own tests: its options, and a node run until its shutdown.

use clap::Parser;

use super::NodeOptions;

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    options: NodeOptions,
}

fn options(args: &[&str]) -> NodeOptions {
    Serve::try_parse_from([&["serve"][..], args].concat()).unwrap().options
}

#[test]
fn the_tuning_options_reach_the_host_the_intake_and_the_lease() {
    let tuned = options(&[
        "--snapshot-every",
        "7",
        "--actor-idle-secs",
        "30",
        "--max-live-actors",
        "50",
        "--lease-ttl-secs",
        "20",
        "--lease-renew-secs",
        "5",
    ]);
    let host = tuned.host.options();
    assert_eq!((host.snapshot_every, host.idle_timeout_ms, host.max_live), (7, 30_000, 50));
    let lease = tuned.processes.lease(3).unwrap();
    assert_eq!((lease.ttl.as_secs(), lease.renew_every.as_secs(), lease.replicas), (20, 5, 3));
    let defaults = options(&[]);
    let host = defaults.host.options();
    let built_in = weft_actors::host::Options::default();
    assert_eq!(
        (host.snapshot_every, host.idle_timeout_ms, host.max_live),
        (built_in.snapshot_every, built_in.idle_timeout_ms, built_in.max_live)
    );
    assert_eq!(defaults.intake.max_commands_in_flight, crate::intake::IntakeOptions::default().max_in_flight);
    let lease = defaults.processes.lease(1).unwrap();
    let built_in = crate::lease::LeaseOptions::default();
    assert_eq!((lease.ttl, lease.renew_every), (built_in.ttl, built_in.renew_every));
    // A lease renewed no sooner than it lapses is refused.
    let lapsing = options(&["--lease-ttl-secs", "5", "--lease-renew-secs", "5"]);
    assert!(lapsing.processes.lease(1).unwrap_err().to_string().contains("must be under --lease-ttl-secs"));
}

#[test]
fn a_node_runs_until_its_shutdown_future_completes() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let store = dir.path().join("events.db");
    let node = options(&["--store", store.to_str().unwrap(), "--http-addr", &addr]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let asker = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let answer = loop {
            let asked = std::net::TcpStream::connect(&addr).and_then(|mut stream| {
                stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer)
            });
            match asked {
                Ok(answer) => break answer,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("the node never answered: {e}"),
            }
        };
        stop.send(()).unwrap();
        answer
    });
    let ran = actix_rt::System::new().block_on(super::serve_until(node, async {
        let _ = stopped.await;
    }));
    ran.unwrap();
    assert!(asker.join().unwrap().starts_with("HTTP/1.1 200"));
    assert!(store.exists(), "the node used the store it was given");
}

#[test]
fn every_option_of_serve_is_in_exactly_one_section() {
    use clap::CommandFactory;
    let command = Serve::command();
    let mut all: Vec<String> = command.get_arguments().filter_map(|a| a.get_long().map(str::to_owned)).collect();
    all.retain(|long| long != "config");
    all.sort();
    let mut sectioned: Vec<String> = super::sections().into_iter().flat_map(|(_, longs)| longs).collect();
    sectioned.sort();
    assert_eq!(sectioned, all, "an option in no section, or in two");
    // The help groups them under the sections' headings.
    let help = Serve::command().render_long_help().to_string();
    for heading in ["Store:", "Bus:", "HTTP:", "Actor host:", "Command intake:", "Process managers:", "Objects:"] {
        assert!(help.contains(heading), "no {heading} in the help");
    }
}

#[test]
fn a_config_file_sets_options_at_the_top_or_in_their_sections_tables() {
    use clap::CommandFactory;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weft.toml");
    let read = |text: &str| {
        std::fs::write(&file, text).unwrap();
        crate::config::settings(&file, &Serve::command(), &super::sections())
    };
    let settings = read(
        "snapshot-every = 7\n[http]\naddr = \"127.0.0.1:9999\"\nmax_body_bytes = 1000\n\
         [store]\njetstream-replicas = 3\n[objects]\ns3-bucket = \"docs\"\n",
    )
    .unwrap();
    let mut got: Vec<(String, String)> = settings.into_iter().map(|s| (s.long, s.value)).collect();
    got.sort();
    let want = [
        ("http-addr", "127.0.0.1:9999"),
        ("jetstream-replicas", "3"),
        ("max-body-bytes", "1000"),
        ("s3-bucket", "docs"),
        ("snapshot-every", "7"),
    ];
    assert_eq!(got, want.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec());
    // A key of another section, a table that is no section, and an option set twice are refused by name.
    let wrong = read("[http]\nsnapshot-every = 7\n").unwrap_err().to_string();
    assert!(wrong.contains("[http] has no key \"snapshot-every\""), "{wrong}");
    let wrong = read("[nowhere]\nx = 1\n").unwrap_err().to_string();
    assert!(wrong.contains("[nowhere]") && wrong.contains("store, bus, http"), "{wrong}");
    let wrong = read("http-addr = \"127.0.0.1:1\"\n[http]\naddr = \"127.0.0.1:2\"\n").unwrap_err().to_string();
    assert!(wrong.contains("sets --http-addr, which another key sets too"), "{wrong}");
}
