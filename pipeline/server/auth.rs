//! Authentication and roles, as explicit steps with typed results.
//!
//! Owns turning a request into a [`Caller`] (the `Authorization: Bearer` token, checked
//! against the hashed tokens; every failure audited) and a caller into a capability for
//! one project: [`Analyst`], [`Checker`] or [`Member`] (either role). Handlers can only
//! act on a project through a capability, so they cannot forget the role check. Danger:
//! identity comes from the token alone; no header, environment variable or body field
//! names anyone. Failed attempts go through [`super::limiter`]: over the limit an
//! address or token prefix gets 429 without its token being looked up, and only the
//! first failure of a window and those naming a person (a revoked or expired token) are
//! audited one by one (the rest as one aggregate).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::App;
use super::error::ApiError;
use crate::policy::Policy;
use crate::tre::id::Id;
use crate::tre::users::{self, Token, UserError};
use crate::tre::workspace::{Role, roles_of};

/// The authenticated person making a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Their user id.
    pub user: Id,
}

fn bearer(parts: &Parts) -> Result<Token, ApiError> {
    let h = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::NoToken)?;
    let v = h
        .to_str()
        .map_err(|_| ApiError::BadToken(UserError::UnknownToken))?;
    let t = v.strip_prefix("Bearer ").ok_or(ApiError::NoToken)?.trim();
    if t.is_empty() {
        return Err(ApiError::NoToken);
    }
    Ok(Token::new(t))
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let token = bearer(parts);
        let prefix = token
            .as_ref()
            .ok()
            .map(|t| super::limiter::prefix_of(t.expose()));
        let presented = prefix.as_deref();
        if let Err(e) = app.auth_gate(addr, presented) {
            return Err(axum::response::IntoResponse::into_response(e));
        }
        let result = token.and_then(|t| {
            users::authenticate(&app.ws, &t, app.auditor.clock().now()).map_err(ApiError::BadToken)
        });
        match result {
            Ok(user) => Ok(Caller { user }),
            Err(e)
                if matches!(
                    e,
                    ApiError::BadToken(UserError::UnknownToken)
                        | ApiError::NoToken
                        | ApiError::BadToken(UserError::Revoked { .. })
                        | ApiError::BadToken(UserError::Expired { .. })
                ) && !app.auth_failed(addr, presented, names_person(&e)) =>
            {
                Err(axum::response::IntoResponse::into_response(e))
            }
            Err(e) => {
                let actor = match &e {
                    ApiError::BadToken(UserError::Revoked { user })
                    | ApiError::BadToken(UserError::Expired { user, .. }) => user.to_string(),
                    _ => "anonymous".to_string(),
                };
                let route = format!("{} {}", parts.method, super::route_of(parts));
                Err(app.refusal(&actor, "auth", None, Some(route), e))
            }
        }
    }
}

/// Whether a failed authentication names a person (their revoked or expired token).
fn names_person(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::BadToken(UserError::Revoked { .. } | UserError::Expired { .. })
    )
}

/// A caller's standing in one project, with the project's installed policy.
#[derive(Debug)]
pub struct Member {
    /// The caller.
    pub user: Id,
    /// The project.
    pub project: Id,
    /// Its policy.
    pub policy: Policy,
    /// The caller's roles there (at least one).
    pub roles: Vec<Role>,
}

/// Capability: the caller is an analyst of the project.
#[derive(Debug)]
pub struct Analyst(pub Member);

/// Capability: the caller is an output checker of the project.
#[derive(Debug)]
pub struct Checker(pub Member);

impl Caller {
    fn standing(&self, app: &App, project: &str, need: Option<Role>) -> Result<Member, ApiError> {
        let project = Id::parse("project", project)?;
        let policy = app.ws.project(&project, &app.schemas)?;
        let roles = roles_of(&policy, self.user.as_str());
        let ok = match need {
            Some(r) => roles.contains(&r),
            // Members see jobs and safe tables: analysts and checkers, never an auditor
            // by that role alone.
            None => roles.iter().any(|r| *r != Role::Auditor),
        };
        if !ok {
            return Err(ApiError::Forbidden {
                user: self.user.clone(),
                role: need.unwrap_or(Role::Analyst),
                project,
            });
        }
        Ok(Member {
            user: self.user.clone(),
            project,
            policy,
            roles,
        })
    }

    /// Any role in the project.
    pub fn member(&self, app: &App, project: &str) -> Result<Member, ApiError> {
        self.standing(app, project, None)
    }

    /// The analyst role in the project.
    pub fn analyst(&self, app: &App, project: &str) -> Result<Analyst, ApiError> {
        self.standing(app, project, Some(Role::Analyst))
            .map(Analyst)
    }

    /// May read the project's audit trail: an auditor or an output checker of it.
    pub fn audit_reader(&self, app: &App, project: &str) -> Result<Member, ApiError> {
        self.standing(app, project, Some(Role::Auditor))
            .or_else(|_| self.standing(app, project, Some(Role::Checker)))
    }

    /// The output-checker role in the project.
    pub fn checker(&self, app: &App, project: &str) -> Result<Checker, ApiError> {
        self.standing(app, project, Some(Role::Checker))
            .map(Checker)
    }
}
