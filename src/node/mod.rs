//! A Weft node: the store, the actor hosts, the command intake on the bus, the process managers and the event
//! publisher, wired together. `weft serve` runs one.
//!
//! Without a NATS URL the bus is in process (the embedded default: no network); with one, commands come
//! from NATS and events go out on it, and several nodes may share the command load in queue group `weft`.
//! The store is a SQLite file by default; with `--jetstream` it is JetStream on the NATS servers, which
//! nodes on several machines share. Nodes that share a store run their process managers and the publisher
//! one at a time: the node holding a lease in JetStream (`crate::lease`) runs them, the others take over
//! when it dies. A node with `--no-processes` never runs them.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use weft_actors::process::Hosts;
use weft_actors::process::worker::Executor;

use crate::agents::executor::DocumentExecutor;
use crate::bus::Bus;
use crate::bus::memory::MemoryBus;
use crate::bus::nats::NatsBus;
use crate::gateway::BusGateway;
use crate::health::Board;
use crate::http::HttpApi;
use crate::intake::{Intake, IntakeOptions};
use crate::objects::ObjectStore;
use crate::objects::documents::Documents;
use crate::objects::local::LocalStore;
use crate::objects::s3::{S3Options, S3Store};
use crate::objects::sweep::serve_notifications;
use crate::query::Reads;
use crate::store::open::{self as store, Opened};

mod duty;
mod error;
mod members;
mod options;

use duty::Duty;
pub use error::Error;

pub use options::{
    ADMIN_TOKEN_FILE, AuthSection, BusSection, ClusterSection, HostSection, HttpSection, IntakeSection, LapsingCluster,
    LapsingLease, NodeOptions, ProcessesSection, StoreSection, sections,
};

/// A running node.
pub struct Node {
    store: Opened,
    bus: Arc<dyn Bus>,
    intake: Intake,
    duty: Duty,
    projections: Projections,
    rebuilds: actix_rt::task::JoinHandle<()>,
    query: HttpApi,
    queries: tokio::task::JoinHandle<()>,
    notifications: actix_rt::task::JoinHandle<()>,
    sweeps: Option<actix_rt::task::JoinHandle<()>>,
    tmp_sweeps: Option<actix_rt::task::JoinHandle<()>>,
    objects: String,
    /// Its entry among the nodes sharing its JetStream store, and the task that keeps it alive.
    membership: Option<(crate::cluster::members::Members, actix_rt::task::JoinHandle<()>)>,
    /// With `--partition-routing`, the partitions it holds and the routing of their commands.
    routing: Option<members::Routing>,
}

/// The read side a node runs: the projections, their maintenance, and the reads over them.
struct ReadSide {
    projections: Projections,
    rebuilds: actix_rt::task::JoinHandle<()>,
    rebuild_requests: tokio::sync::mpsc::Sender<crate::query::read::RebuildRequest>,
    reads: Reads,
}

impl ReadSide {
    /// Starts every projection on the read models `options` name, reading `reader`, each watched on `board`.
    fn start(options: &NodeOptions, reader: Arc<dyn weft_events::EventRead>, board: &Board) -> Result<Self, Error> {
        let read_models = options.read_models_path();
        if let Some(folder) = read_models.parent().filter(|f| !f.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .map_err(|source| Error::ReadModels { folder: folder.to_owned(), source })?;
        }
        let projections = weft_projections::start_all(&read_models, reader.clone())?;
        for projection in &projections {
            board.watch(format!("projection {}", projection.name()), projection.health());
        }
        let positions = projections.iter().map(|p| (p.name(), p.watch())).collect();
        let projections: Projections = Arc::new(tokio::sync::Mutex::new(projections));
        let (rebuild_requests, requests) = tokio::sync::mpsc::channel(8);
        let maintenance = Arc::new(crate::query::read::Maintenance::default());
        let rebuilds =
            actix_rt::spawn(serve_rebuilds(projections.clone(), requests, maintenance.clone(), reader.clone()));
        let reads = Reads { read_models, positions, store: reader, maintenance, health: board.clone() };
        Ok(Self { projections, rebuilds, rebuild_requests, reads })
    }
}

impl Node {
    /// Opens the store, connects the bus and starts everything, each part from its section of `options`.
    /// Must be called on an actix system.
    pub async fn start(options: &NodeOptions) -> Result<Self, Error> {
        // Checked before anything opens, whether or not this node will hold a lease.
        options.processes.lease(1)?;
        // Checked before anything opens, as the lease's are.
        let (members_options, ownership_options) = options.cluster.options(options.store.jetstream_replicas.into())?;
        let store = store::open(&options.store_options(), store::Mode::Node, "weft-store").await?;
        let shared = store.store().expect("a node's store writes");
        let (client, bus) = connect_bus(&options.bus).await?;
        let addr = options.http.addr;
        let listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
        let http_addr = listener.local_addr().map_err(|source| Error::Listen { addr, source })?;
        let partitions = members::partitions(options, &store, client.as_ref()).await?;
        let inboxes = partitions.clone().map(crate::cluster::routing::Inboxes::new);
        let auth = start_auth(options, shared.clone())?;
        let hosts = Hosts::new(shared.clone(), options.host.options());
        let gateway = BusGateway::new(bus.clone(), shared.clone(), crate::gateway::DEFAULT_TIMEOUT)
            .with_token(auth.as_ref().map(|(_, node)| node.clone()))
            .with_hosts(hosts.clone())
            .with_partitions(partitions.clone());
        let verifier = auth.map(|(verifier, _)| Arc::new(verifier));
        let objects_dir = options.objects_dir();
        let (objects, local) = open_objects(&options.objects, &objects_dir, http_addr, &bus).await?;
        let board = Board::default();
        #[cfg(feature = "kurrentdb")]
        if let Opened::KurrentDb(kurrent) = &store {
            board.watch("store follower", kurrent.inner().health());
        }
        let read_side = ReadSide::start(options, store.reader(), &board)?;
        let reads = read_side.reads.clone();
        // The command intake checks documents' upload commands against the object store, and a workflow's
        // deletion against the jobs read model.
        let intake_options = IntakeOptions {
            limits: crate::protocol::BodyLimits { max_bytes: options.http.max_body_bytes, ..Default::default() },
            max_in_flight: options.intake.max_commands_in_flight,
            verifier: verifier.clone(),
            running_jobs: Some(Arc::new(reads.clone())),
            inboxes: inboxes.clone(),
            ..IntakeOptions::default()
        };
        let intake = Intake::start_with_objects(bus.clone(), hosts, intake_options, Some(objects.clone())).await?;
        let tmp_sweeps = local.clone().map(sweep_tmp_every);
        let description = match &local {
            Some(_) => format!("folder {}", objects_dir.display()),
            None => format!("S3 bucket {}", objects.bucket()),
        };
        let expiry = Duration::from_secs(options.objects.url_expiry_secs);
        let documents = Documents::new(objects.clone(), gateway.clone(), expiry);
        // Routing by partition starts before this node sends its first command (the catalog's).
        let membership = match (&store, &client) {
            (Opened::JetStream(_), Some(client)) => {
                Some(members::join(client.clone(), http_addr, members_options, &board).await?)
            }
            _ => None,
        };
        let routing = match (inboxes, &membership, &client) {
            (Some(inboxes), Some((members, _)), Some(client)) => Some(
                members::Routing::start(client.clone(), members.clone(), inboxes, ownership_options, &board).await?,
            ),
            _ => None,
        };
        crate::agents::catalog::register(&gateway).await?;
        let providers = crate::agents::providers(&options.providers)?;
        let executor: Rc<dyn Executor> = Rc::new(DocumentExecutor::new(
            objects.clone(),
            gateway.clone(),
            providers.clone(),
            crate::agents::prices::Prices::new(&options.providers.prices),
        ));

        for (name, health) in intake.health() {
            board.watch(name.clone(), health.clone());
        }
        let query_health = weft_events::Health::default();
        board.watch("queries", query_health.clone());
        let queries = crate::bus::queries::start(bus.clone(), reads.clone(), query_health, verifier.clone()).await?;
        // Schedules over a document selector pick their documents from the documents read model.
        let select: Rc<dyn weft_actors::process::timers::Select> = Rc::new(reads.clone());
        let shares = members::shares(partitions.as_ref(), &store);
        let duty = Duty::start(options, &store, client, &gateway, (executor, select), shares, &board).await?;

        let subscription =
            bus.subscribe(crate::objects::notification::SUBJECT, Some(crate::protocol::QUEUE_GROUP)).await?;
        let notifications = actix_rt::spawn(crate::health::watched(
            &board,
            "object notifications",
            serve_notifications(documents.clone(), subscription, bus.clone()),
        ));
        let sweeps = (options.objects.sweep_every_secs > 0).then(|| {
            let every = Duration::from_secs(options.objects.sweep_every_secs);
            let health = weft_events::Health::default();
            board.watch("upload sweep", health.clone());
            actix_rt::spawn(crate::objects::sweep::sweep_every(
                documents.clone(),
                Arc::new(reads.clone()),
                every,
                health,
            ))
        });
        let webhook_secret = options.objects.webhook_secret().map_err(Error::Secret)?;
        let webhook_secret = webhook_secret.as_ref().map(|s| Arc::from(s.expose()));
        let objects_api = crate::http::documents::Objects { documents, local, webhook_secret };
        let admin = crate::http::admin::Admin { rebuilds: Some(read_side.rebuild_requests), erase: store.eraser() };
        let limits = crate::http::HttpLimits {
            max_body_bytes: options.http.max_body_bytes,
            body_idle_timeout: Duration::from_secs(options.http.body_timeout_secs),
            max_connections_per_client: options.http.max_connections_per_client,
        };
        let origins = options.http.cors_origin.clone();
        let objects = Some(objects_api);
        let cluster = Some(match &membership {
            Some((members, _)) => {
                crate::http::Cluster::Shared(Box::new(members.clone()), routing.as_ref().map(|r| Box::new(r.status())))
            }
            None => crate::http::Cluster::Alone(members::this_member(http_addr)),
        });
        let parts = crate::http::Parts { admin, limits, objects, providers, auth: verifier, origins, cluster };
        let query =
            HttpApi::start(listener, reads, bus.clone(), parts).map_err(|source| Error::Listen { addr, source })?;
        Ok(Self {
            store,
            bus,
            intake,
            duty,
            projections: read_side.projections,
            rebuilds: read_side.rebuilds,
            query,
            queries,
            notifications,
            sweeps,
            tmp_sweeps,
            objects: description,
            membership,
            routing,
        })
    }

    /// Starts a node on the embedded defaults with its files in `dir` and its query API on a free loopback port;
    /// `args` are further `weft serve` options. For benchmarks and `weft demo`.
    pub async fn start_in(dir: &std::path::Path, args: &[&str]) -> Result<Self, Error> {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            node: NodeOptions,
        }
        let mut all: Vec<std::ffi::OsString> = ["serve", "--http-addr", "127.0.0.1:0"].map(Into::into).to_vec();
        all.extend([
            "--store".into(),
            dir.join("events.db").into(),
            "--read-models".into(),
            dir.join("read.db").into(),
        ]);
        all.extend(args.iter().map(Into::into));
        let options = <Serve as clap::Parser>::try_parse_from(all)?.node;
        Self::start(&options).await
    }

    /// Where the query API listens.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.query.addr()
    }

    /// The bus the node serves on.
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    /// Stops taking commands, stops the processes (saving their checkpoints) and the projections, and
    /// closes the store. What fails to stop cleanly (a projection that had ended on a broken log, a
    /// checkpoint the store did not take) is logged, not returned: nothing acknowledged depends on it, and a
    /// stop must end whatever state the store is in. Only closing the store can fail it.
    pub async fn stop(self) -> Result<(), Error> {
        if let Some((members, beats)) = &self.membership {
            beats.abort();
            if let Err(error) = members.leave().await {
                tracing::warn!(%error, "leaving the membership");
            }
        }
        if let Some(routing) = self.routing {
            routing.stop().await;
        }
        self.query.stop().await;
        self.queries.abort();
        self.notifications.abort();
        for sweeps in self.sweeps.iter().chain(&self.tmp_sweeps) {
            sweeps.abort();
        }
        drop(self.intake);
        // A rebuild in progress ends first (the lock): its swap commits whole or not at all.
        let projections = std::mem::take(&mut *self.projections.lock().await);
        self.rebuilds.abort();
        for projection in projections {
            let name = projection.name();
            if let Err(error) = projection.stop() {
                tracing::warn!(projection = name, %error, "the projection had ended on a failure");
            }
        }
        self.duty.stop().await;
        self.bus.flush().await.ok();
        self.store.close().await?;
        Ok(())
    }
}

/// The verifier of bearer tokens and the node's own token, unless `--insecure-no-auth`: the node's secret
/// (made on first start) and, written afresh, the admin token the `weft` command line on this machine reads;
/// the users and API keys of `store`.
fn start_auth(
    options: &NodeOptions,
    store: Arc<dyn weft_events::EventStore>,
) -> Result<Option<(crate::auth::token::Verifier, crate::auth::token::NodeToken)>, Error> {
    use crate::auth::{Role, token};
    if options.auth.insecure_no_auth {
        let addr = options.http.addr;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "authentication is off (--insecure-no-auth) on an address others can reach");
        }
        return Ok(None);
    }
    let path = options.auth_secret_path();
    let secret = token::Secret::load_or_create(&path)?;
    let admin = token::issue(&secret, "admin", Role::Admin, &["*".to_owned()], token::ADMIN_TOKEN_TTL);
    let admin_path = options.admin_token_path();
    token::write_private(&admin_path, admin.as_bytes(), false)
        .map_err(|source| token::SecretError::Io { path: admin_path, source })?;
    let oidc = options.auth.oidc.provider().map_err(Error::Oidc)?;
    let limits = crate::auth::limits::RateLimits::new(&options.auth.limits);
    let identities = Arc::new(crate::auth::identities::Identities::new(store, secret.clone()));
    let verifier = token::Verifier::new(&secret).with_oidc(oidc).with_limits(limits).with_identities(identities);
    Ok(Some((verifier, token::NodeToken::new(&secret))))
}

/// The bus `options` name: NATS (and its client, which the lease uses), or the in-process bus.
async fn connect_bus(options: &BusSection) -> Result<(Option<async_nats::Client>, Arc<dyn Bus>), Error> {
    match &options.nats {
        Some(url) => {
            let client = crate::nats::connect_with(url, "weft", &options.auth).await?;
            Ok((Some(client.clone()), Arc::new(NatsBus::new(client))))
        }
        None => Ok((None, Arc::new(MemoryBus::default()))),
    }
}

/// Opens the object store the options name: an S3 bucket, or the local folder (whose URLs this node's HTTP
/// server at `http_addr` answers, and whose notifications go out on `bus`).
async fn open_objects(
    options: &crate::objects::ObjectsOptions,
    folder: &std::path::Path,
    http_addr: std::net::SocketAddr,
    bus: &Arc<dyn Bus>,
) -> Result<(Arc<dyn ObjectStore>, Option<LocalStore>), Error> {
    if let Some(bucket) = &options.s3_bucket {
        let s3 = S3Options {
            bucket: bucket.clone(),
            endpoint: options.s3_endpoint.clone(),
            public_endpoint: options.s3_public_endpoint.clone(),
            region: options.s3_region.clone(),
            path_style: options.s3_path_style,
            credentials: options
                .s3_access_key_id
                .clone()
                .zip(options.s3_secret_access_key().map_err(Error::Secret)?.map(|s| s.expose().to_owned())),
        };
        return Ok((Arc::new(S3Store::connect(&s3).await), None));
    }
    let base_url = options.public_url.clone().unwrap_or_else(|| format!("http://{http_addr}"));
    let local = LocalStore::open(folder, &base_url, Some(bus.clone()))
        .map_err(|source| Error::Objects { folder: folder.to_owned(), source })?;
    Ok((Arc::new(local.clone()), Some(local)))
}

/// Removes the local store's temporary files of uploads that never finished (the node killed mid-upload):
/// at open, and from then on every half of their staleness.
fn sweep_tmp_every(local: LocalStore) -> actix_rt::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        loop {
            actix_rt::time::sleep(crate::objects::local::STALE_TMP / 2).await;
            local.sweep_tmp();
        }
    })
}

/// `weft serve`: runs a node until Ctrl-C or SIGTERM.
pub async fn serve(options: NodeOptions) -> Result<(), Error> {
    // The node's metrics, served at `GET /metrics`.
    crate::telemetry::metrics::install();
    // Listen for SIGTERM before saying we are up: a supervisor may send it as soon as it reads that line.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(Error::Signals)?;
    let signalled = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    serve_until(options, signalled).await
}

/// Runs a node until `shutdown` completes, then stops it (what [`serve`] does until a signal; an embedder's
/// own shutdown otherwise). Says on stderr where it serves once it is up, and when it stops.
pub async fn serve_until(options: NodeOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    // Everything the node creates (the log, the keys, the read models, the objects, the signing key) is
    // its owner's alone: files 0600, folders 0700.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let node = Node::start(&options).await?;
    let store = node.store.describe(&options.store_options());
    let http = node.http_addr();
    match &options.bus.nats {
        Some(url) => eprintln!(
            "weft: serving commands on NATS {url}, store {store}, documents in {}, queries on http://{http}",
            node.objects
        ),
        None => eprintln!(
            "weft: serving on the in-process bus, store {store}, documents in {}, queries on http://{http}",
            node.objects
        ),
    }
    shutdown.await;
    eprintln!("weft: stopping");
    node.stop().await
}

/// The node's projections, behind a lock: a rebuild holds it while it works on one, a stop takes them all.
type Projections = Arc<tokio::sync::Mutex<Vec<weft_projections::Running>>>;

/// Rebuilds and resets projections as asked, one at a time, on the node's runtime (the projections' threads
/// read the log through it, so a rebuild must not start them on an HTTP worker's), recording each in
/// `maintenance`.
async fn serve_rebuilds(
    projections: Projections,
    mut requests: tokio::sync::mpsc::Receiver<crate::query::read::RebuildRequest>,
    maintenance: Arc<crate::query::read::Maintenance>,
    store: Arc<dyn weft_events::EventRead>,
) {
    use crate::query::read::{Failure, Work};
    while let Some((name, work, answer)) = requests.recv().await {
        let mut running = projections.lock().await;
        let Some(live) = running.iter_mut().find(|p| p.name() == name) else {
            let _ = answer.send(Err(Failure::not_found(format!("no projection named {name:?}"))));
            continue;
        };
        maintenance.started(&name, work);
        let result = match work {
            Work::Rebuild => {
                tracing::info!(projection = %name, "rebuilding a projection");
                let on_start = |position, target| maintenance.progress(&name, position, target);
                weft_projections::rebuild_running(live, on_start).await
            }
            Work::Reset => {
                tracing::info!(projection = %name, "resetting a projection: it applies the log again from 0");
                // Reads of the model answer 503 until it has applied the log as far as it stood now.
                // (The watch is the live model's, kept across the reset.)
                let head = store.head().await.unwrap_or(0);
                maintenance.progress(&name, live.watch(), head);
                weft_projections::reset_running(live).await.map(|()| 0)
            }
        };
        match &result {
            Ok(position) => tracing::info!(projection = %name, position, "a projection was rebuilt or reset"),
            Err(e) => tracing::error!(projection = %name, error = %e, "a projection's rebuild or reset failed"),
        }
        maintenance.ended(&name, result.as_ref().map(|p| *p).map_err(|e| e.to_string()));
        let _ = answer.send(result.map_err(|e| Failure::unavailable(e.to_string())));
    }
}

#[cfg(test)]
mod tests;
