//! Role guards: the first line of authorization (ownership is checked in resolvers).

use async_graphql::{Context, Guard, Result};
use taskwire_domain::Role;

use super::context::principal;
use crate::error::ApiError;

/// Requires an authenticated caller with at least one of the roles (none listed: any
/// authenticated caller). Missing token → `UNAUTHENTICATED`; wrong role → `FORBIDDEN`.
#[derive(Debug, Clone, Copy)]
pub struct RoleGuard(&'static [Role]);

impl RoleGuard {
    /// Any of `roles`.
    pub const fn any_of(roles: &'static [Role]) -> Self {
        RoleGuard(roles)
    }

    /// Any authenticated caller.
    pub const fn authenticated() -> Self {
        RoleGuard(&[])
    }
}

impl Guard for RoleGuard {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        let caller = principal(ctx)?;
        if self.0.is_empty() || caller.has_any(self.0) { Ok(()) } else { Err(ApiError::Forbidden.into()) }
    }
}
