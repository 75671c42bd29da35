//! The API's authentication step: the `Authorization: Bearer` header turned into the
//! action library's [`Actor`] by [`auth::authenticate`] (the failed sign-in limiter and
//! the auditing of failures live there).
//!
//! Owns only reading the header and the client's address. Danger: identity comes from
//! the token alone; no other header names anyone.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::IntoResponse;

use super::App;
use crate::tre::actions::ActionError;
use crate::tre::actions::auth::{self, Actor};
use crate::tre::actions::{Token, UserError};

/// The authenticated person making a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Actor);

fn bearer(parts: &Parts) -> Result<Token, ActionError> {
    let h = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ActionError::NoToken)?;
    let v = h
        .to_str()
        .map_err(|_| ActionError::BadToken(UserError::UnknownToken))?;
    let t = v
        .strip_prefix("Bearer ")
        .ok_or(ActionError::NoToken)?
        .trim();
    if t.is_empty() {
        return Err(ActionError::NoToken);
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
        let route = format!("{} {}", parts.method, super::route_of(parts));
        auth::authenticate(&app.tre, addr, bearer(parts), "auth", Some(route))
            .map(Caller)
            .map_err(IntoResponse::into_response)
    }
}
