//! A local SeaweedFS S3 server (`weed mini`), for the tests and `weft bench documents`: on free loopback
//! ports, storing in a temporary folder, enforcing SigV4 with one key pair, killed when dropped.
//!
//! The binary is `$WEFT_WEED`, else `weed` on `PATH`, else the one `scripts/test` installs into
//! `.tools/venv/bin`. SeaweedFS sends no S3 notifications: tests publish them as S3 would.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to serve S3 requests.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The access key id the server accepts.
pub const ACCESS_KEY_ID: &str = "weft-test";

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No binary found.
    #[error("no weed found: set WEFT_WEED, put it on PATH, or run scripts/test to install it")]
    NotFound,
    /// It did not start.
    #[error("weed mini did not start: {0}")]
    Start(String),
}

/// See the module doc.
pub struct Seaweed {
    child: Child,
    s3_port: u16,
    secret: String,
    dir: tempfile::TempDir,
}

fn binary() -> Result<PathBuf, Error> {
    crate::candidates("WEFT_WEED", "weed").into_iter().next().ok_or(Error::NotFound)
}

impl Seaweed {
    /// Starts a server and waits until its S3 port accepts connections.
    pub fn start() -> Result<Self, Error> {
        let binary = binary()?;
        let dir = tempfile::tempdir().map_err(|e| Error::Start(format!("no temp dir: {e}")))?;
        let ports = crate::free_ports(8).map_err(|e| Error::Start(format!("no free port: {e}")))?;
        let secret = format!("secret-{}", rand::random::<u64>());
        let log = std::fs::File::create(dir.path().join("weed.log")).map_err(|e| Error::Start(e.to_string()))?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| Error::Start(e.to_string()))?;
        let child = Command::new(&binary)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-master.port.grpc={}", ports[1]))
            .arg(format!("-volume.port={}", ports[2]))
            .arg(format!("-volume.port.grpc={}", ports[3]))
            .arg(format!("-filer.port={}", ports[4]))
            .arg(format!("-filer.port.grpc={}", ports[5]))
            .arg(format!("-s3.port={}", ports[6]))
            .arg(format!("-s3.port.grpc={}", ports[7]))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::Start(format!("{}: {e}", binary.display())))?;
        let mut server = Self { child, s3_port: ports[6], secret, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", server.s3_port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Error::Start(format!("exited with {status}: {}", server.log_tail())));
            }
            if Instant::now() > deadline {
                return Err(Error::Start(format!("no S3 port after {START_TIMEOUT:?}: {}", server.log_tail())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    }

    /// The S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The access key id and secret it accepts.
    pub fn credentials(&self) -> (String, String) {
        (ACCESS_KEY_ID.to_owned(), self.secret.clone())
    }

    /// The `weft serve` options of a node keeping its documents in `bucket` here.
    pub fn node_args(&self, bucket: &str) -> Vec<String> {
        let (id, secret) = self.credentials();
        [
            "--s3-bucket",
            bucket,
            "--s3-endpoint",
            &self.endpoint(),
            "--s3-path-style",
            "--s3-access-key-id",
            &id,
            "--s3-secret-access-key",
            &secret,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
