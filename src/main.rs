//! The `weft` command line. Nouns, then verbs: `weft serve`, `weft bench store`, `weft job logs <id> --follow`.
//!
//! Data goes to stdout, diagnostics and tables to stderr.

use clap::{CommandFactory, Parser, Subcommand};
use mimalloc::MiMalloc;
use weft::cli;

/// Events are many small allocations (names, payloads) made on one thread and freed on another; mimalloc
/// does that several times faster than the system allocator.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// What is logged without `WEFT_LOG`: warnings and errors, but not actix's ERROR line for each request that
/// does not parse as HTTP. Such a request is answered 400 and is the client's fault; logging it at error level
/// let any client flood the node's log (`WEFT_LOG=warn,actix_http=debug` shows them again).
const DEFAULT_LOG: &str = "warn,actix_http::h1::dispatcher=off";

/// Weft: an event-sourced actor platform for AI document and job processing.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
struct Cli {
    /// How log lines are written to stderr: readable text, or one JSON object per line with the trace and
    /// span ids (the level is set by WEFT_LOG).
    #[arg(long, global = true, value_enum, default_value = "text", env = "WEFT_LOG_FORMAT")]
    log_format: weft::telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node: the event store, the actors, the command intake (on NATS with --nats, in process
    /// otherwise), the job orchestrator and timers, and the event publisher. Stops on Ctrl-C or SIGTERM.
    Serve(Box<weft::node::NodeOptions>),
    /// Benchmarks: each prints one JSON line per case on stdout and a table on stderr.
    #[command(subcommand)]
    Bench(Bench),
    /// Documents of a running node: list, show, upload, download, delete.
    Document {
        #[command(subcommand)]
        verb: cli::DocumentVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Jobs of a running node, and their logs.
    Job {
        #[command(subcommand)]
        verb: cli::JobVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Agents of a running node, and one-off runs of one.
    Agent {
        #[command(subcommand)]
        verb: cli::AgentVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Workflows of a running node: runs at a version, versions.
    Workflow {
        #[command(subcommand)]
        verb: cli::WorkflowVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Schedules of a running node.
    Schedule {
        #[command(subcommand)]
        verb: cli::Read,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Triggers of a running node: create, pause, resume, delete, and the reads.
    Trigger {
        #[command(subcommand)]
        verb: cli::TriggerVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Sends a command to a running node, through its command intake, and prints the reply.
    Send {
        #[command(flatten)]
        args: cli::SendArgs,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// A stream's events on a running node, oldest first: `weft stream events job-<id>`.
    Stream {
        #[command(subcommand)]
        verb: StreamVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Runs a node in a temporary folder, uploads a sample document, runs `redact-then-summarize` on it, and
    /// prints the progress, the outputs and the job's history.
    Demo,
    /// Prints a fresh id (a UUID v7) for a new document, job, agent, workflow or schedule.
    Id,
    /// Bearer tokens signed with a node's secret (run beside the node's data).
    Token {
        #[command(subcommand)]
        verb: cli::token::TokenVerb,
    },
    /// The operator's tools over a store's events, on the store itself (the SQLite file, JetStream with
    /// --jetstream, or KurrentDB with --kurrentdb): list, read, follow, fold, export, import, verify, copy.
    Events(Box<weft::replay::cli::Events>),
    /// Users of a running node, who log in with a password: add, passwd, disable, list (admins; passwd also
    /// for oneself).
    User {
        #[command(subcommand)]
        verb: cli::identity::UserVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// API keys of a running node, for services: create (shown once), revoke, list (admins).
    Key {
        #[command(subcommand)]
        verb: cli::identity::KeyVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Logs in to a running node with a user's password, and keeps the token for later commands
    /// (WEFT_LOGIN_FILE, else ~/.config/weft/token).
    Login {
        #[command(flatten)]
        args: cli::identity::LoginArgs,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Tenants of a running node: erase one (a GDPR request).
    Tenant {
        #[command(subcommand)]
        verb: cli::TenantVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// The nodes sharing a running node's store, and their share of the partitions.
    Cluster {
        #[command(subcommand)]
        verb: weft::cli::cluster::ClusterVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// The read models' projections of a running node: their lag, and rebuilds.
    #[command(alias = "projections")]
    Projection {
        #[command(subcommand)]
        verb: cli::ProjectionVerb,
        #[command(flatten)]
        connection: cli::Connection,
    },
}

#[derive(Debug, Subcommand)]
enum StreamVerb {
    /// Every event of the stream, with its metadata and payload.
    Events {
        /// The stream, such as `job-<uuid>`.
        stream: String,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The event store: appends from 1, 16 and 256 writers, 100-event appends, read-all and catch-up, each
    /// against raw rusqlite doing the same work.
    Store(weft::bench::store::Options),
    /// The actor host: commands to 1, 100 and 10,000 aggregates, activation with and without a snapshot,
    /// memory per idle actor.
    Actors(weft::bench::actors::Options),
    /// Commands over NATS (client -> NATS -> Weft -> SQLite -> reply) at 1, 16 and 256 in flight, against a
    /// no-op NATS request/reply. Starts its own nats-server unless given --nats.
    Nats(weft::bench::nats::Options),
    /// The read side: rebuilding the read models from a log, their lag behind paced commands, and job status
    /// reads over HTTP under that load, against plain read_all and plain rusqlite reads.
    Projections(weft::bench::projections::Options),
    /// Documents: registrations through the HTTP API against the plain command, and the time from the end of
    /// an upload to `uploaded` in the query API, on the local store and on SeaweedFS (started by the bench).
    Documents(weft::bench::documents::Options),
    /// Jobs: one-step builtin jobs from submit to done, on the embedded defaults and on NATS + JetStream (a
    /// local nats-server, started by the bench).
    Jobs(weft::bench::jobs::Options),
    /// The operator's tools over a log of --events events: cat, export, import, verify and projection
    /// rebuilds, against raw rusqlite scans and inserts of the same rows.
    Replay(weft::bench::replay::Options),
    /// The dashboard: the jobs and documents pages over 10,000 jobs and 20,000 documents, a job's page, and
    /// the time from a job's change being committed to its page's live feed, against the JSON reads beneath.
    Ui(weft::bench::ui::Options),
    /// Nodes routing commands by partition (one nats-server with the command mapping, started by the bench,
    /// and `weft serve` processes): commands with 1, 2 and 3 nodes, each node's share of partitions and
    /// commands, and the time from a node's SIGKILL to its partitions held again.
    Cluster(weft::bench::cluster::Options),
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Command::Serve(options) = &cli.command
        && let Some(file) = &options.config
    {
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("serve is a subcommand");
        let settings = weft::config::settings(file, serve, &weft::node::sections())?;
        let matches = Cli::command().get_matches();
        let serve_matches = matches.subcommand_matches("serve").expect("the command is serve");
        cli = Cli::parse_from(weft::config::with_file(std::env::args_os().collect(), &settings, serve_matches));
    }
    // `weft bench nats` exports its traces to a receiver of its own, started first.
    let sink = match &cli.command {
        Command::Bench(Bench::Nats(_)) => Some(weft::bench::nats::TraceSink::start()?),
        _ => None,
    };
    let _telemetry =
        weft::telemetry::init_with(cli.log_format, DEFAULT_LOG, sink.as_deref()).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Serve(options) => Ok(actix_rt::System::new().block_on(weft::node::serve(*options))?),
        Command::Bench(Bench::Store(options)) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(weft::bench::store::main(options)),
        // Actors live on an actix system.
        Command::Bench(Bench::Replay(options)) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(weft::bench::replay::main(options)),
        Command::Bench(Bench::Actors(options)) => actix_rt::System::new().block_on(weft::bench::actors::main(options)),
        Command::Bench(Bench::Nats(options)) => actix_rt::System::new().block_on(weft::bench::nats::main(options)),
        Command::Bench(Bench::Jobs(options)) => actix_rt::System::new().block_on(weft::bench::jobs::main(options)),
        Command::Bench(Bench::Documents(options)) => {
            actix_rt::System::new().block_on(weft::bench::documents::main(options))
        }
        Command::Bench(Bench::Ui(options)) => actix_rt::System::new().block_on(weft::bench::ui::main(options)),
        Command::Bench(Bench::Cluster(options)) => {
            actix_rt::System::new().block_on(weft::bench::cluster::main(options))
        }
        Command::Bench(Bench::Projections(options)) => {
            actix_rt::System::new().block_on(weft::bench::projections::main(options))
        }
        Command::Document { verb, connection } => run(cli::document::run(connection, verb)),
        Command::Job { verb, connection } => run(cli::job::run(connection, verb)),
        Command::Agent { verb, connection } => run(cli::agent::run(connection, verb)),
        Command::Workflow { verb, connection } => run(cli::workflow::run(connection, verb)),
        Command::Schedule { verb, connection } => run(cli::read(connection, "schedules", verb)),
        Command::Trigger { verb, connection } => run(cli::trigger::run(connection, verb)),
        Command::Projection { verb, connection } => run(cli::projection::run(connection, verb)),
        Command::Cluster { verb, connection } => run(cli::cluster::run(connection, verb)),
        Command::Tenant { verb, connection } => run(cli::tenant::run(connection, verb)),
        Command::User { verb, connection } => run(cli::identity::user(connection, verb)),
        Command::Key { verb, connection } => run(cli::identity::key(connection, verb)),
        Command::Login { args, connection } => run(cli::identity::login(connection, args)),
        Command::Send { args, connection } => run(cli::send::run(connection, args)),
        Command::Stream { verb: StreamVerb::Events { stream }, connection } => {
            run(cli::stream_events(connection, &stream))
        }
        Command::Events(events) => {
            let ran = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(weft::replay::cli::run(*events));
            match ran {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => {
                    eprintln!("weft: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Command::Demo => actix_rt::System::new().block_on(weft::demo::main()),
        Command::Token { verb } => {
            if let Err(e) = cli::token::run(verb) {
                eprintln!("weft: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Id => {
            println!("{}", uuid::Uuid::now_v7());
            Ok(())
        }
    }
}

/// Runs a client command on a small runtime of its own. A failure is one line on stderr (the node's error
/// kind and message, or why the node could not be reached) and exit status 1.
fn run(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    if let Err(e) = tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(command) {
        eprintln!("weft: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
