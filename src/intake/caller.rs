//! Who sent a command, and what it may do: the intake's half of authentication (`docs/security.md`).
//!
//! On a node with authentication on, every command carries `Authorization: Bearer <token>`, checked as the
//! HTTP routes check theirs:
//! - no token, or one that does not verify: `unauthenticated`;
//! - a role without the command's permission ([`crate::auth::command_permission`]): `forbidden`;
//! - the tenant: `Weft-Tenant` (else a tenant the payload names) picks one of the identity's tenants, and one it
//!   does not reach is `forbidden`; a payload naming another tenant than the command's is `forbidden`
//!   ([`Confined::confine`]); an instance of another tenant answers `not_found`, as a missing one does (the
//!   host checks it against the instance's first event);
//! - a `user` reaches only the documents it owns and registers documents only as their owner.
//!
//! The subject is the actor the events record; `Weft-Actor`, `Weft-Owner` and a tenant outside the identity's
//! decide nothing. Only the node's own token ([`crate::auth::token::NodeToken`]), which its components send
//! after checking their own callers, has its `Weft-Actor`, `Weft-Tenant` and `Weft-Owner` taken as sent.
//! Without authentication (`--insecure-no-auth`) the headers are taken as sent, as before it existed.

use weft_actors::Aggregate;
use weft_actors::agent::Agent;
use weft_actors::document::{self, Document};
use weft_actors::host::Metadata;
use weft_actors::job::Job;
use weft_actors::schedule::{self, Schedule};
use weft_actors::trigger::{self, Trigger};
use weft_actors::workflow::Workflow;
use weft_events::domain::ids::Uuid;
use weft_events::domain::schedule::Target;
use weft_events::envelope::check_label;

use crate::auth::Identity;
use crate::auth::token::Verifier;
use crate::bus::{ACTOR, AUTHORIZATION, CORRELATION_ID, Headers, OWNER, TENANT};
use crate::protocol::Reply;

/// What a command's payload says about tenants and owners, checked against its caller.
pub trait Confined: Aggregate {
    /// The tenant the command's payload names, if any (a document's registration does).
    fn named_tenant(_command: &Self::Command) -> Option<&str> {
        None
    }

    /// Checks the payload against the tenant the command is for and, for a caller confined to what it owns,
    /// its subject; may fill in the tenant where the payload leaves it open. The error is the message of an
    /// `forbidden` reply.
    fn confine(_command: &mut Self::Command, _tenant: &str, _owner: Option<&str>) -> Result<(), String> {
        Ok(())
    }
}

impl Confined for Document {
    fn named_tenant(command: &document::Command) -> Option<&str> {
        match command {
            document::Command::Register { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    fn confine(command: &mut document::Command, tenant: &str, owner: Option<&str>) -> Result<(), String> {
        let document::Command::Register { tenant: named, owner: registered, .. } = command else { return Ok(()) };
        if named != tenant {
            return Err(format!("the payload names tenant {named:?}; the command is for {tenant:?}"));
        }
        match owner {
            Some(owner) if registered != owner => {
                Err(format!("a user registers documents as their owner: {owner:?}, not {registered:?}"))
            }
            _ => Ok(()),
        }
    }
}

impl Confined for Schedule {
    fn named_tenant(command: &schedule::Command) -> Option<&str> {
        match command {
            schedule::Command::Create { target: Target::Selector { tenant, .. }, .. } => tenant.as_deref(),
            _ => None,
        }
    }

    /// A schedule's selector picks documents of the schedule's tenant only: one naming none is given it.
    fn confine(command: &mut schedule::Command, tenant: &str, _: Option<&str>) -> Result<(), String> {
        let schedule::Command::Create { target: Target::Selector { tenant: named, .. }, .. } = command else {
            return Ok(());
        };
        match named {
            Some(named) if named != tenant => {
                Err(format!("the selector names tenant {named:?}; the schedule is for {tenant:?}"))
            }
            _ => {
                *named = Some(tenant.to_owned());
                Ok(())
            }
        }
    }
}

impl Confined for Trigger {
    fn named_tenant(command: &trigger::Command) -> Option<&str> {
        match command {
            trigger::Command::Create { selector, .. } => selector.tenant.as_deref(),
            _ => None,
        }
    }

    /// A trigger fires on documents of its own tenant only: a selector naming none is given it.
    fn confine(command: &mut trigger::Command, tenant: &str, _: Option<&str>) -> Result<(), String> {
        let trigger::Command::Create { selector, .. } = command else { return Ok(()) };
        match &selector.tenant {
            Some(named) if named != tenant => {
                Err(format!("the selector names tenant {named:?}; the trigger is for {tenant:?}"))
            }
            _ => {
                selector.tenant = Some(tenant.to_owned());
                Ok(())
            }
        }
    }
}

impl Confined for Job {}
impl Confined for Workflow {}
impl Confined for Agent {}

/// The caller's identity, from its token, before anything of its command is read (a caller that cannot
/// say who it is learns nothing of what is wrong with its command); `None` on a node without authentication.
pub async fn identify<A: Confined>(
    headers: &Headers,
    verifier: Option<&Verifier>,
) -> Result<Option<Identity>, Reply<A::Rejection>> {
    let Some(verifier) = verifier else { return Ok(None) };
    let identity = verifier
        .authorization(headers.get(AUTHORIZATION).map(String::as_str))
        .await
        .map_err(|why| Reply::unauthenticated(why.to_string()))?;
    Ok(Some(identity))
}

/// The metadata a command of `identity` (from [`identify`]) runs with, from its headers, or the reply
/// refusing it.
pub fn metadata<A: Confined>(
    headers: &Headers,
    kind: &str,
    command: &mut A::Command,
    verifier: Option<&Verifier>,
    identity: Option<Identity>,
) -> Result<Metadata, Reply<A::Rejection>> {
    let correlation_id = match headers.get(CORRELATION_ID) {
        Some(c) => Some(
            Uuid::parse_str(c).map_err(|_| Reply::invalid(format!("header {CORRELATION_ID} {c:?} is not a UUID")))?,
        ),
        None => None,
    };
    let label = |name: &str, what: &'static str| -> Result<Option<String>, Reply<A::Rejection>> {
        let Some(value) = headers.get(name) else { return Ok(None) };
        check_label(what, value).map_err(|e| Reply::invalid(format!("header {name}: {e}")))?;
        Ok(Some(value.clone()))
    };
    let (actor, tenant, owner) = (label(ACTOR, "actor")?, label(TENANT, "tenant")?, label(OWNER, "owner")?);
    let as_sent = Metadata { tenant, actor, correlation_id, owner };
    let (Some(verifier), Some(identity)) = (verifier, identity) else { return Ok(as_sent) };
    if identity.delegate {
        return Ok(as_sent);
    }
    verifier.spend(&identity, as_sent.tenant.as_deref()).map_err(Reply::rate_limited)?;
    let refused = Reply::forbidden;
    if !identity.role.may(crate::auth::command_permission(A::KIND, kind)) {
        return Err(refused(format!("a {} may not send {kind:?} to a {}", identity.role.as_str(), A::KIND)));
    }
    let asked = as_sent.tenant.as_deref().or(A::named_tenant(command)).map(str::to_owned);
    let owner = identity.owns_only().then(|| identity.subject.clone());
    // An identity of every tenant naming none leaves the tenant to the instance (the host refuses another
    // tenant's on its own); any other names one of its own, or has only one.
    let tenant = if asked.is_none() && identity.reaches_all() {
        None
    } else {
        Some(identity.tenant_for(asked.as_deref()).ok_or_else(|| {
            refused(match &asked {
                Some(asked) => format!("{asked:?} is not one of your tenants"),
                None => format!("name one of your tenants in {TENANT}"),
            })
        })?)
    };
    if let Some(tenant) = &tenant {
        A::confine(command, tenant, owner.as_deref()).map_err(refused)?;
    }
    Ok(Metadata { tenant, actor: Some(identity.subject), correlation_id, owner })
}
