//! Roles and the authorization rules of README, Authentication and roles.
//!
//! Token verification lives in the api crate; this module only decides what an already
//! authenticated principal may do.

use std::{fmt, str::FromStr};

/// A role carried in the JWT `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Creates tasks and sees its own.
    Client,
    /// Runs tasks leased to it.
    Worker,
    /// Reads everything; cancels and retries any task.
    Operator,
    /// Operator plus queue and worker administration.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Client, Role::Worker, Role::Operator, Role::Admin];

    /// The claim spelling, e.g. `"operator"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or(UnknownRole)
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown role")]
pub struct UnknownRole;

/// An authenticated caller: the token's subject and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim; a worker's id, a client's creator name.
    pub subject: String,
    /// Recognised roles (unknown role names in the token are ignored).
    pub roles: Vec<Role>,
}

impl Principal {
    /// Builds a principal, dropping duplicate roles.
    pub fn new(subject: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Self {
        let mut roles: Vec<Role> = roles.into_iter().collect();
        roles.sort();
        roles.dedup();
        Principal { subject: subject.into(), roles }
    }

    /// Whether the principal has `role`. Admins are operators too.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || (role == Role::Operator && self.roles.contains(&Role::Admin))
    }

    /// Whether the principal has any of `roles`.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.has(*r))
    }

    /// Operators and admins see every task.
    pub fn sees_all_tasks(&self) -> bool {
        self.has(Role::Operator)
    }

    /// Whether the principal may read a task created by `created_by` and currently held
    /// by `worker_id`. An invisible task must be answered exactly like a missing one.
    pub fn can_read_task(&self, created_by: &str, worker_id: Option<&str>) -> bool {
        self.sees_all_tasks()
            || (self.has(Role::Client) && created_by == self.subject)
            || (self.has(Role::Worker) && worker_id == Some(self.subject.as_str()))
    }

    /// Whether the principal may cancel a task created by `created_by`.
    pub fn can_cancel_task(&self, created_by: &str) -> bool {
        self.sees_all_tasks() || (self.has(Role::Client) && created_by == self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_are_operators() {
        let admin = Principal::new("root", [Role::Admin]);
        assert!(admin.has(Role::Operator));
        assert!(!Principal::new("op", [Role::Operator]).has(Role::Admin));
    }

    #[test]
    fn task_visibility_follows_the_role_table() {
        let cases = [
            (Principal::new("alice", [Role::Client]), "alice", None, true, true, "client, own task"),
            (Principal::new("bob", [Role::Client]), "alice", None, false, false, "client, other's task"),
            (Principal::new("w1", [Role::Worker]), "alice", Some("w1"), true, false, "worker, leased to it"),
            (Principal::new("w2", [Role::Worker]), "alice", Some("w1"), false, false, "worker, leased to another"),
            (
                Principal::new("alice", [Role::Worker]),
                "alice",
                None,
                false,
                false,
                "worker role grants no creator rights",
            ),
            (Principal::new("op", [Role::Operator]), "alice", None, true, true, "operator"),
            (Principal::new("root", [Role::Admin]), "alice", None, true, true, "admin"),
            (Principal::new("nobody", []), "nobody", None, false, false, "no roles"),
        ];
        for (principal, creator, worker, read, cancel, why) in cases {
            assert_eq!(principal.can_read_task(creator, worker), read, "read: {why}");
            assert_eq!(principal.can_cancel_task(creator), cancel, "cancel: {why}");
        }
    }

    #[test]
    fn roles_parse_from_their_claim_spelling_only() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse(), Ok(role));
        }
        assert_eq!("Admin".parse::<Role>(), Err(UnknownRole));
    }
}
