//! Who may do what: identities from bearer tokens, the four roles and what each may do, and the tenants an
//! identity's reads and commands are confined to. `docs/security.md` has the same table for operators.
//!
//! A node with authentication on (the default) verifies every request's `Authorization: Bearer <JWT>`
//! ([`token::Verifier`]); the token's subject is the actor its commands record, its tenants bound what it
//! reads and writes, and its role decides which routes and commands it may use ([`Role::may`]).
//! `Weft-Tenant` and `Weft-Actor` from a caller decide nothing then: the tenant header only picks one of the
//! identity's own tenants. With `--insecure-no-auth` (refused on a non-loopback address unless given on
//! purpose) a node is open as before: no identity, headers as the caller sends them.

pub mod identities;
pub mod limits;
pub mod oidc;
pub mod token;

use serde::{Deserialize, Serialize};

/// What a role may do: one of these per route or command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read documents, jobs, agents, workflows, schedules, logs and event streams of its tenants (a `user`
    /// only its own documents and its jobs' outputs).
    Read,
    /// Register, upload, version, confirm and delete documents; read their signed download URLs.
    WriteDocuments,
    /// Submit, cancel and retry jobs.
    RunJobs,
    /// Any command to any aggregate of its tenants (agents, workflows, schedules, a job's steps).
    Command,
    /// Read the node's own state: providers, projections' positions.
    Inspect,
    /// Rebuild and reset projections.
    Maintain,
    /// Erase a tenant (destroy its key).
    Erase,
    /// Add and disable users, make and revoke API keys, list them.
    Identities,
}

/// A role: what an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, in every tenant: tenants, erasure, projection maintenance.
    Admin,
    /// Every command and read inside its tenants.
    Operator,
    /// Documents and jobs of its own, and reads of its tenant's agents and workflows.
    User,
    /// Reads only.
    Guest,
}

/// The permissions of each role: the one table the node checks.
pub const PERMISSIONS: [(Role, &[Permission]); 4] = [
    (
        Role::Admin,
        &[
            Permission::Read,
            Permission::WriteDocuments,
            Permission::RunJobs,
            Permission::Command,
            Permission::Inspect,
            Permission::Maintain,
            Permission::Erase,
            Permission::Identities,
        ],
    ),
    (
        Role::Operator,
        &[Permission::Read, Permission::WriteDocuments, Permission::RunJobs, Permission::Command, Permission::Inspect],
    ),
    (Role::User, &[Permission::Read, Permission::WriteDocuments, Permission::RunJobs]),
    (Role::Guest, &[Permission::Read]),
];

impl Role {
    /// Whether this role has `permission`.
    pub fn may(self, permission: Permission) -> bool {
        PERMISSIONS.iter().any(|(role, granted)| *role == self && granted.contains(&permission))
    }

    /// The role named `name` (as in tokens), if there is one.
    pub fn parse(name: &str) -> Option<Role> {
        [Role::Admin, Role::Operator, Role::User, Role::Guest].into_iter().find(|r| r.as_str() == name)
    }

    /// Its name in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::User => "user",
            Role::Guest => "guest",
        }
    }
}

/// The permission a command needs: a job's submit, cancel and retry are [`Permission::RunJobs`], every
/// document command [`Permission::WriteDocuments`], anything else [`Permission::Command`].
pub fn command_permission(aggregate: &str, command_type: &str) -> Permission {
    match (aggregate, command_type) {
        ("document", _) => Permission::WriteDocuments,
        ("job", "submit" | "cancel" | "retry") => Permission::RunJobs,
        _ => Permission::Command,
    }
}

/// Who is asking, as a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject: the actor its commands record, the owner of the documents it registers.
    pub subject: String,
    /// Its role.
    pub role: Role,
    /// The tenants it may reach; `*` among them: every tenant.
    pub tenants: Vec<String>,
    /// Whether it acts for others (the node's own components, [`token::NodeToken`]): its commands carry the
    /// actor and tenant they are for in `Weft-Actor` and `Weft-Tenant`.
    pub delegate: bool,
}

/// The tenant of everything made without one.
pub const DEFAULT_TENANT: &str = "default";

impl Identity {
    /// Whether it may reach `tenant`'s data.
    pub fn reaches(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t == "*" || t == tenant)
    }

    /// Whether it reaches every tenant.
    pub fn reaches_all(&self) -> bool {
        self.tenants.iter().any(|t| t == "*")
    }

    /// The tenant a command or a registration of this identity is for: the one `asked` names if it reaches
    /// it, else its only tenant; `None` when it names one it does not reach, or names none and has several.
    pub fn tenant_for(&self, asked: Option<&str>) -> Option<String> {
        match asked {
            Some(tenant) => self.reaches(tenant).then(|| tenant.to_owned()),
            None => match self.tenants.as_slice() {
                [only] if only != "*" => Some(only.clone()),
                _ if self.reaches_all() => Some(DEFAULT_TENANT.to_owned()),
                _ => None,
            },
        }
    }

    /// Whether it sees only what it owns among documents (a `user`).
    pub fn owns_only(&self) -> bool {
        self.role == Role::User
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_grants_each_role_what_docs_security_md_says() {
        use Permission::*;
        let all = [Read, WriteDocuments, RunJobs, Command, Inspect, Maintain, Erase, Identities];
        let granted = |role: Role| all.iter().copied().filter(|p| role.may(*p)).collect::<Vec<_>>();
        assert_eq!(granted(Role::Admin), all.to_vec());
        assert_eq!(granted(Role::Operator), vec![Read, WriteDocuments, RunJobs, Command, Inspect]);
        assert_eq!(granted(Role::User), vec![Read, WriteDocuments, RunJobs]);
        assert_eq!(granted(Role::Guest), vec![Read]);
        assert_eq!(command_permission("job", "submit"), RunJobs);
        assert_eq!(command_permission("job", "complete_step"), Command);
        assert_eq!(command_permission("document", "delete"), WriteDocuments);
        assert_eq!(command_permission("schedule", "create"), Command);
    }

    #[test]
    fn docs_security_md_shows_the_same_table() {
        use Permission::*;
        let columns = [Read, WriteDocuments, RunJobs, Command, Inspect, Maintain, Erase, Identities];
        let doc = include_str!("../../docs/security.md");
        for role in [Role::Admin, Role::Operator, Role::User, Role::Guest] {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", role.as_str())))
                .unwrap_or_else(|| panic!("docs/security.md has no row for {}", role.as_str()));
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).skip(1).collect();
            assert_eq!(cells.len(), columns.len(), "{row}");
            for (cell, permission) in cells.iter().zip(columns) {
                assert_eq!(
                    cell != &"no",
                    role.may(permission),
                    "{}: {permission:?} is {cell:?} in the doc",
                    role.as_str()
                );
            }
        }
    }

    #[test]
    fn an_identity_reaches_its_tenants_only() {
        let one = Identity { subject: "ann".into(), role: Role::User, tenants: vec!["acme".into()], delegate: false };
        assert!(one.reaches("acme") && !one.reaches("globex"));
        assert_eq!(one.tenant_for(None).as_deref(), Some("acme"));
        assert_eq!(one.tenant_for(Some("acme")).as_deref(), Some("acme"));
        assert_eq!(one.tenant_for(Some("globex")), None);
        let two = Identity { tenants: vec!["acme".into(), "globex".into()], ..one.clone() };
        assert_eq!(two.tenant_for(None), None);
        let all = Identity { subject: "root".into(), role: Role::Admin, tenants: vec!["*".into()], delegate: false };
        assert!(all.reaches("anything"));
        assert_eq!(all.tenant_for(None).as_deref(), Some(DEFAULT_TENANT));
    }
}
