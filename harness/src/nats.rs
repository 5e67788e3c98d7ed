//! Local `nats-server` processes with JetStream, for the tests and for `weft bench`: one server or a
//! cluster, on free loopback ports, storing in a temporary folder, fsyncing every write
//! (`sync_interval: always`), killed when dropped.
//!
//! The binary is `$WEFT_NATS_SERVER`, else `nats-server` on `PATH`, else the one `scripts/test` installs into
//! `.tools/venv/bin`. It must be 2.12 or newer: older servers accept the atomic-batch setting of a stream and
//! silently ignore it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The oldest server with atomic batch publishes.
pub const MIN_VERSION: (u32, u32) = (2, 12);

/// How long a server may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No binary found.
    #[error("no nats-server found: set WEFT_NATS_SERVER, put it on PATH, or run scripts/test to install it")]
    NotFound,
    /// The binary is too old.
    #[error("{binary} is version {found}; Weft needs nats-server {}.{} or newer for atomic batches", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld {
        /// The binary.
        binary: String,
        /// Its version.
        found: String,
    },
    /// Starting it or waiting for it failed.
    #[error("nats-server {node}: {reason}")]
    Start {
        /// Which node.
        node: String,
        /// What happened.
        reason: String,
    },
}

struct Node {
    name: String,
    port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// One `nats-server` or a cluster of them. Dropping it kills them.
pub struct NatsServer {
    binary: PathBuf,
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// Finds the binary and checks its version.
pub fn binary() -> Result<PathBuf, ServerError> {
    let mut too_old = None;
    for candidate in crate::candidates("WEFT_NATS_SERVER", "nats-server") {
        let Ok(output) = Command::new(&candidate).arg("--version").output() else { continue };
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        match parse_version(&text) {
            Some(version) if version >= MIN_VERSION => return Ok(candidate),
            _ => too_old = Some(ServerError::TooOld { binary: candidate.display().to_string(), found: text }),
        }
    }
    Err(too_old.unwrap_or(ServerError::NotFound))
}

/// `nats-server: v2.15.1` -> (2, 15).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let version = text.rsplit('v').next()?;
    let mut parts = version.split('.');
    Some((parts.next()?.trim().parse().ok()?, parts.next()?.trim().parse().ok()?))
}

fn free_ports(count: usize) -> Result<Vec<u16>, ServerError> {
    crate::free_ports(count).map_err(|e| ServerError::Start { node: "-".into(), reason: format!("no free port: {e}") })
}

/// How often starting a cluster is tried afresh when a port chosen for it was taken before a node bound it.
const START_ATTEMPTS: usize = 5;

impl NatsServer {
    /// Starts one server.
    pub fn start() -> Result<Self, ServerError> {
        Self::cluster(1)
    }

    /// Starts one server whose configuration ends with `extra` (blocks such as `tls { ... }` and
    /// `authorization { ... }`); its health is still read from the monitoring port, which `extra` does not
    /// secure.
    pub fn start_with(extra: &str) -> Result<Self, ServerError> {
        Self::retried(|| Self::try_cluster(1, extra))
    }

    /// Starts `size` servers; more than one form a JetStream cluster.
    ///
    /// A free port can be taken by another process (a parallel test's client socket) between choosing it and the
    /// server binding it; such a start is retried on fresh ports.
    pub fn cluster(size: usize) -> Result<Self, ServerError> {
        Self::retried(|| Self::try_cluster(size, ""))
    }

    /// [`NatsServer::cluster`] with `extra` at the end of every node's configuration (a subject mapping).
    pub fn cluster_with(size: usize, extra: &str) -> Result<Self, ServerError> {
        Self::retried(|| Self::try_cluster(size, extra))
    }

    fn retried(start: impl Fn() -> Result<Self, ServerError>) -> Result<Self, ServerError> {
        let mut attempt = 1;
        loop {
            match start() {
                Err(ServerError::Start { reason, .. })
                    if reason.contains("address already in use") && attempt < START_ATTEMPTS =>
                {
                    tracing::debug!(attempt, %reason, "a port was taken; starting on fresh ports");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn try_cluster(size: usize, extra: &str) -> Result<Self, ServerError> {
        let binary = binary()?;
        let dir = tempfile::tempdir()
            .map_err(|e| ServerError::Start { node: "-".into(), reason: format!("no temp dir: {e}") })?;
        let ports: Vec<(u16, u16, u16)> = free_ports(3 * size)?.chunks(3).map(|p| (p[0], p[1], p[2])).collect();
        let routes: Vec<String> =
            ports.iter().map(|(_, cluster, _)| format!("nats-route://127.0.0.1:{cluster}")).collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster_port, http_port)) in ports.iter().copied().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let mut config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http_port}\n\
                 max_payload: 8MB\n\
                 jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n"
            );
            if size > 1 {
                config.push_str(&format!(
                    "cluster {{\n  name: weft\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            config.push_str(extra);
            let path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&path, config)
                .map_err(|e| ServerError::Start { node: name.clone(), reason: format!("writing its config: {e}") })?;
            let log = dir.path().join(format!("{name}.log"));
            nodes.push(Node { name, port, http_port, config: path, log, child: None });
        }
        let mut server = Self { binary, nodes, _dir: dir };
        for i in 0..size {
            server.spawn(i)?;
        }
        for i in 0..size {
            server.wait_healthy(i)?;
        }
        Ok(server)
    }

    /// The URLs of every node, comma separated: what a client connects to.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The URL of one node.
    pub fn node_url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].port)
    }

    /// Kills a node with SIGKILL.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on the same ports and store, and waits until it is healthy.
    pub fn restart(&mut self, node: usize) -> Result<(), ServerError> {
        self.kill(node);
        self.spawn(node)?;
        self.wait_healthy(node)
    }

    fn spawn(&mut self, i: usize) -> Result<(), ServerError> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| ServerError::Start { node: node.name.clone(), reason: format!("opening its log: {e}") })?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| ServerError::Start { node: node.name.clone(), reason: e.to_string() })?;
        node.child = Some(child);
        Ok(())
    }

    /// Polls the node's `/healthz` (which includes JetStream) until it answers 200.
    fn wait_healthy(&mut self, i: usize) -> Result<(), ServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let node = &mut self.nodes[i];
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(ServerError::Start {
                    node: node.name.clone(),
                    reason: format!("exited with {status}: {tail}"),
                });
            }
            if healthz(node.http_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ServerError::Start {
                    node: node.name.clone(),
                    reason: format!("not healthy after {START_TIMEOUT:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `GET /healthz` answers 200.
fn healthz(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse() {
        assert_eq!(super::parse_version("nats-server: v2.15.1"), Some((2, 15)));
        assert_eq!(super::parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(super::parse_version("garbage"), None);
    }
}
