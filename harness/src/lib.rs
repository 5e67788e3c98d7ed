//! Local servers for Weft's tests and benchmarks, on free loopback ports, each storing in a temporary folder
//! and killed when dropped: [`NatsServer`] (`nats-server` with JetStream, one or a cluster) and [`Seaweed`]
//! (SeaweedFS's `weed mini` as an S3 server).
//!
//! Nothing here is part of a node: the `weft` library does not depend on this crate. The tests take it as a
//! dev-dependency; the `weft` binary takes it for `weft bench`, which starts its own servers when it is not
//! given one (`weft bench nats --nats URL` measures against a server of yours instead).

mod nats;
mod seaweed;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

pub use nats::{MIN_VERSION, NatsServer, ServerError, binary as nats_server_binary};
pub use seaweed::{ACCESS_KEY_ID, Error as SeaweedError, Seaweed};

/// Where a server binary may be, in order: the file `$variable` names, `name` on `PATH`, and the one
/// `scripts/test` installs into `.tools/venv/bin` (of the working folder, then of the workspace); only files
/// that exist.
fn candidates(variable: &str, name: &str) -> Vec<PathBuf> {
    let tools = Path::new(".tools/venv/bin").join(name);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    std::env::var_os(variable)
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).map(|dir| dir.join(name)).collect::<Vec<_>>()),
        )
        .chain([tools.clone(), workspace.join(tools)])
        .filter(|c| c.is_file())
        .collect()
}

/// `count` distinct free loopback ports. The listeners are held until all are chosen, so the kernel cannot hand
/// out one port twice; another process may still take one before the server binds it (see [`NatsServer::cluster`]).
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    Ok(listeners.iter().map(|l| l.local_addr().expect("a bound socket has an address").port()).collect())
}
