//! The process managers' way to the aggregates over the bus: commands go out as requests on
//! `weft.cmd.<aggregate>.<id>` and whichever node's intake takes them runs them; state is read from the
//! shared store, through this node's own actors when it has them ([`BusGateway::with_hosts`]). With those
//! actors, a command the intake would run as it came (every one but a job's submission and an upload's
//! record that an intake checks against storage) runs on them straight, without the bus: the intake would
//! only decode it again and check the node's own token. With NATS
//! configured, a job on one node drives an agent on another, and nothing in the domain knows which node
//! holds which actor.

use std::sync::Arc;
use std::time::Duration;

use weft_actors::Aggregate;
use weft_actors::host::{self, Execute, Outcome};
use weft_actors::process::Gateway;
use weft_events::domain::ids::Uuid;
use weft_events::{EventStore, StreamName};

use crate::auth::token::NodeToken;
use crate::bus::{ACTOR, AUTHORIZATION, Bus, COMMAND_ID, CORRELATION_ID, Headers, Message, OWNER, TENANT};
use crate::protocol::{self, CommandRequest, Reply};

/// How long a command may take over the bus by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// See the module doc. Cheap to clone.
#[derive(Clone)]
pub struct BusGateway {
    bus: Arc<dyn Bus>,
    store: Arc<dyn EventStore>,
    timeout: Duration,
    token: Option<NodeToken>,
    hosts: Option<weft_actors::process::Hosts>,
    partitions: Option<crate::cluster::ownership::Partitions>,
}

impl BusGateway {
    /// A gateway sending commands over `bus` and reading state from `store`.
    pub fn new(bus: Arc<dyn Bus>, store: Arc<dyn EventStore>, timeout: Duration) -> Self {
        Self { bus, store, timeout, token: None, hosts: None, partitions: None }
    }

    /// The same gateway, reading state through `hosts` (this node's actors over the same store): an instance
    /// live here reads only the events appended since it last looked (by any node: the actor catches up
    /// from the store before it answers), instead of its snapshot and events every time; one not live is
    /// loaded once and stays, within the hosts' `max_live`.
    pub fn with_hosts(self, hosts: weft_actors::process::Hosts) -> Self {
        Self { hosts: Some(hosts), ..self }
    }

    /// The same gateway on a node that routes commands by partition: only commands to instances of the
    /// partitions it holds run on its hosts straight; the others go over the bus to their partition's owner.
    pub fn with_partitions(self, partitions: Option<crate::cluster::ownership::Partitions>) -> Self {
        Self { partitions, ..self }
    }

    /// The same gateway, sending its commands with the node's own token (needed by intakes that authenticate:
    /// they take the actor, tenant and owner headers from it).
    pub fn with_token(self, token: Option<NodeToken>) -> Self {
        Self { token, ..self }
    }

    /// The bus commands go out on.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// The store state is read from.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }
}

/// The instance id in a stream name `<kind>-<uuid>`.
fn instance<A: Aggregate>(stream: &StreamName) -> Result<Uuid, host::Error<A::Rejection>> {
    stream
        .as_str()
        .strip_prefix(A::KIND)
        .and_then(|s| s.strip_prefix('-'))
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| host::Error::Unavailable(format!("{stream} is not a {} stream", A::KIND)))
}

#[async_trait::async_trait(?Send)]
impl Gateway for BusGateway {
    async fn execute<A: Aggregate>(
        &self,
        stream: &StreamName,
        execute: Execute<A>,
    ) -> Result<Outcome, host::Error<A::Rejection>> {
        let id = instance::<A>(stream)?;
        // A command the intake would run as it came goes to this node's hosts straight: the intake would only
        // decode it and check the node's own token. The others are prepared by an intake.
        if let Some(hosts) = &self.hosts
            && crate::intake::runs_as_is(&execute)
            && self.partitions.as_ref().is_none_or(|p| p.holds(stream))
        {
            return hosts.execute(stream, execute).await;
        }
        let mut headers = Headers::from([(COMMAND_ID.to_owned(), execute.command_id.to_string())]);
        // The trace goes on on the node that runs the command (W3C trace context).
        crate::telemetry::traces::inject(&mut headers);
        if let Some(correlation) = execute.metadata.correlation_id {
            headers.insert(CORRELATION_ID.into(), correlation.to_string());
        }
        if let Some(actor) = &execute.metadata.actor {
            headers.insert(ACTOR.into(), actor.clone());
        }
        if let Some(tenant) = &execute.metadata.tenant {
            headers.insert(TENANT.into(), tenant.clone());
        }
        if let Some(owner) = &execute.metadata.owner {
            headers.insert(OWNER.into(), owner.clone());
        }
        if let Some(token) = &self.token {
            headers.insert(AUTHORIZATION.into(), token.header());
        }
        let body = CommandRequest {
            command_id: execute.command_id,
            id: None,
            command: execute.command,
            expected_version: execute.expected_version,
        };
        let request = Message {
            subject: protocol::command_subject(A::KIND, id),
            reply: None,
            headers,
            payload: protocol::encode(&body, false).into(),
        };
        let reply = crate::bus::request_command(&*self.bus, request, self.timeout)
            .await
            .map_err(|e| host::Error::Unavailable(e.to_string()))?;
        let reply: Reply<A::Rejection> = protocol::decode(&reply.payload, reply.is_json())
            .map_err(|e| host::Error::Unavailable(format!("a reply from {stream} does not decode: {e}")))?;
        reply.into_host()
    }

    async fn state<A: Aggregate>(&self, stream: &StreamName) -> Result<A, host::Error<A::Rejection>> {
        match &self.hosts {
            Some(hosts) => hosts.state::<A>(stream).await,
            None => host::load_state::<A>(&*self.store, stream).await.map(|(state, _)| state),
        }
    }
}
