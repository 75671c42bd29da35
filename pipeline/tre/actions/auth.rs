//! Authentication and roles, as explicit steps with typed results.
//!
//! Owns the only way to make an [`Actor`]: a presented bearer token checked against the
//! hashed tokens ([`authenticate`], used by the API on every request and by the sign-in
//! page once per session), behind the failed sign-in limiter ([`super::limiter`]): over
//! the limit an address or token prefix is refused without its token being looked up,
//! and only the first failure of a window and those naming a person (a revoked or
//! expired token) are audited one by one (the rest as one aggregate). An actor is turned
//! into a capability for one project: [`Analyst`], [`Checker`] or [`Member`] (a role
//! that may see jobs); actions act on a project only through one, so none can forget
//! the role check. Danger: identity comes from the token alone; no header, environment
//! variable or body field names anyone, and an [`Actor`] cannot be built elsewhere.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::error::ActionError;
use super::{Tre, limiter};
use crate::audit::EntryDraft;
use crate::policy::Policy;
use crate::tre::id::Id;
use crate::tre::users::{self, Token, UserError};
use crate::tre::workspace::{Role, roles_of};

/// An authenticated person. Only [`authenticate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    user: Id,
}

impl Actor {
    /// Their user id.
    pub fn user(&self) -> &Id {
        &self.user
    }
}

/// A presented token, or why none was presented.
pub type Presented = Result<Token, ActionError>;

/// Check a presented token from `addr` and make its [`Actor`]. Refused with
/// [`ActionError::TooManyFailures`] (not looked up) when the address or the token's
/// prefix is over the failure limit; a failure is audited as a refusal of `action`
/// (with `route`) when the limiter says so, else counted into its window's aggregate.
pub fn authenticate(
    tre: &Tre,
    addr: Option<IpAddr>,
    token: Presented,
    action: &str,
    route: Option<String>,
) -> Result<Actor, ActionError> {
    let prefix = token.as_ref().ok().map(|t| limiter::prefix_of(t.expose()));
    let presented = prefix.as_deref();
    let now = std::time::Instant::now();
    let (gate, closed) = tre.limiter.check(addr, presented, now);
    tre.audit_failures(closed)?;
    gate.map_err(|wait| ActionError::TooManyFailures {
        retry_after: wait.as_secs().max(1),
    })?;
    let result = token.and_then(|t| {
        users::authenticate(&tre.ws, &t, tre.auditor.clock().now()).map_err(ActionError::BadToken)
    });
    let e = match result {
        Ok(user) => return Ok(Actor { user }),
        Err(e) => e,
    };
    let counted = matches!(
        e,
        ActionError::NoToken
            | ActionError::BadToken(
                UserError::UnknownToken | UserError::Revoked { .. } | UserError::Expired { .. }
            )
    );
    if counted && tre.limiter.fail(addr, presented, names_person(&e), now) != limiter::Note::Audit {
        return Err(e);
    }
    let actor = match &e {
        ActionError::BadToken(UserError::Revoked { user })
        | ActionError::BadToken(UserError::Expired { user, .. }) => user.to_string(),
        _ => "anonymous".to_string(),
    };
    Err(tre.refusal(&actor, action, None, route, e))
}

/// Whether a failed authentication names a person (their revoked or expired token).
fn names_person(e: &ActionError) -> bool {
    matches!(
        e,
        ActionError::BadToken(UserError::Revoked { .. } | UserError::Expired { .. })
    )
}

/// Sign in on the pages: [`authenticate`], then the sign-in audited (`web.sign_in`, with
/// the session's length) before the session may start.
pub fn sign_in(
    tre: &Tre,
    addr: Option<IpAddr>,
    token: Token,
    session_minutes: i64,
    route: String,
) -> Result<Actor, ActionError> {
    let actor = authenticate(tre, addr, Ok(token), "web.sign_in", Some(route))?;
    tre.record(
        EntryDraft::new(actor.user.as_str(), "web.sign_in").detail("minutes", session_minutes),
    )?;
    Ok(actor)
}

/// Sign out: audited (`web.sign_out`) before the session ends.
pub fn sign_out(tre: &Tre, actor: &Actor) -> Result<(), ActionError> {
    tre.record(EntryDraft::new(actor.user.as_str(), "web.sign_out"))
}

/// Whether `actor`'s token still works at `now` (not revoked, not expired): a session
/// made from it ends when it does not.
pub fn still_valid(tre: &Tre, actor: &Actor, now: DateTime<Utc>) -> bool {
    users::list(&tre.ws).is_ok_and(|all| {
        all.iter()
            .any(|r| r.user == actor.user && !r.revoked && r.expires_at > now)
    })
}

/// An actor's standing in one project, with the project's installed policy.
#[derive(Debug)]
pub struct Member {
    /// The actor.
    pub actor: Actor,
    /// The project.
    pub project: Id,
    /// Its policy.
    pub policy: Policy,
    /// The actor's roles there (at least one).
    pub roles: Vec<Role>,
}

impl Member {
    /// The actor's user id.
    pub fn user(&self) -> &Id {
        &self.actor.user
    }

    /// Whether they are an output checker of the project.
    pub fn is_checker(&self) -> bool {
        self.roles.contains(&Role::Checker)
    }

    /// Whether they are an analyst of the project.
    pub fn is_analyst(&self) -> bool {
        self.roles.contains(&Role::Analyst)
    }
}

/// Capability: the actor is an analyst of the project.
#[derive(Debug)]
pub struct Analyst(pub Member);

/// Capability: the actor is an output checker of the project.
#[derive(Debug)]
pub struct Checker(pub Member);

impl Actor {
    fn standing(
        &self,
        tre: &Tre,
        project: &str,
        need: Option<Role>,
    ) -> Result<Member, ActionError> {
        let project = Id::parse("project", project)?;
        let policy = tre.ws.project(&project, &tre.schemas)?;
        let roles = roles_of(&policy, self.user.as_str());
        let ok = match need {
            Some(r) => roles.contains(&r),
            // Members see jobs and safe tables: analysts and checkers, never an auditor
            // by that role alone.
            None => roles.iter().any(|r| *r != Role::Auditor),
        };
        if !ok {
            return Err(ActionError::Forbidden {
                user: self.user.clone(),
                role: need.unwrap_or(Role::Analyst),
                project,
            });
        }
        Ok(Member {
            actor: self.clone(),
            project,
            policy,
            roles,
        })
    }

    /// A role in the project that may see its jobs (analyst or output checker).
    pub fn member(&self, tre: &Tre, project: &str) -> Result<Member, ActionError> {
        self.standing(tre, project, None)
    }

    /// The analyst role in the project.
    pub fn analyst(&self, tre: &Tre, project: &str) -> Result<Analyst, ActionError> {
        self.standing(tre, project, Some(Role::Analyst))
            .map(Analyst)
    }

    /// May read the project's audit trail: an auditor or an output checker of it.
    pub fn audit_reader(&self, tre: &Tre, project: &str) -> Result<Member, ActionError> {
        self.standing(tre, project, Some(Role::Auditor))
            .or_else(|_| self.standing(tre, project, Some(Role::Checker)))
    }

    /// The output-checker role in the project.
    pub fn checker(&self, tre: &Tre, project: &str) -> Result<Checker, ActionError> {
        self.standing(tre, project, Some(Role::Checker))
            .map(Checker)
    }
}
