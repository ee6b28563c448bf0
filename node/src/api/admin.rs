//! Users and roles (`/v1/admin/...`, action `admin` on kind `users`) and `GET
//! /v1/auth/whoami`. Changes are metadata commands; reads come from this member's copy of
//! the metadata. A user's token is shown once, when it is made (create, or
//! `POST .../token`); the grid keeps only its SHA-256.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;

use devicegrid_proto::auth::{
    valid_name, Issued, Role, RoleView, UserRequest, UserView, WhoAmI, ADMIN_ROLE,
};
use devicegrid_proto::ErrorCode;

use super::ApiError;
use crate::cluster::Grid;
use crate::structures::auth::{token_sha256, Principal};
use crate::structures::meta::MetaCommand;
use crate::{Error, Result};
use devicegrid_pki::new_token;

fn name(path: Result<Path<String>, PathRejection>) -> Result<String> {
    let Path(name) = path.map_err(|e| Error::bad_request(ErrorCode::InvalidPath, e.body_text()))?;
    if valid_name(&name) {
        Ok(name)
    } else {
        Err(Error::bad_request(
            ErrorCode::InvalidName,
            format!("{name:?}: names are 1-63 of a-z 0-9 . _ -"),
        ))
    }
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::bad_request(
            ErrorCode::InvalidJson,
            format!("the body is not valid: {e}"),
        )
    })
}

fn user_not_found(name: &str) -> Error {
    Error::Refused {
        code: ErrorCode::UserNotFound,
        message: format!("no user {name:?}"),
    }
}

/// `GET /v1/auth/whoami`: the caller's user and roles.
pub async fn whoami(Extension(p): Extension<Principal>) -> Response {
    Json(WhoAmI {
        user: p.user,
        roles: p.roles,
    })
    .into_response()
}

/// `GET /v1/admin/users`.
pub async fn list_users(State(grid): State<Arc<Grid>>) -> Response {
    let users: Vec<UserView> = grid
        .groups
        .meta_state()
        .users
        .iter()
        .map(|(name, u)| UserView {
            name: name.clone(),
            roles: u.roles.clone(),
        })
        .collect();
    Json(users).into_response()
}

/// `GET /v1/admin/users/{name}`.
pub async fn get_user(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    let meta = grid.groups.meta_state();
    let u = meta.users.get(&name).ok_or_else(|| user_not_found(&name))?;
    Ok(Json(UserView {
        name,
        roles: u.roles.clone(),
    })
    .into_response())
}

fn token() -> Result<String> {
    new_token().ok_or_else(|| Error::Internal("no randomness for a token".into()))
}

/// `PUT /v1/admin/users/{name}` `{"roles": [...]}`: a new user gets a token (201, shown
/// once); an existing one keeps its token and gets these roles (200).
pub async fn put_user(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    let req: UserRequest = body(&bytes)?;
    let exists = grid.groups.meta_state().users.contains_key(&name);
    let token = if exists { None } else { Some(token()?) };
    grid.meta
        .commit(MetaCommand::PutUser {
            name: name.clone(),
            roles: req.roles.clone(),
            token_sha256: token.as_deref().map(token_sha256),
        })
        .await?;
    Ok(match token {
        Some(token) => (StatusCode::CREATED, Json(Issued { name, token })).into_response(),
        None => Json(UserView {
            name,
            roles: req.roles,
        })
        .into_response(),
    })
}

/// `POST /v1/admin/users/{name}/token`: a new token replaces the user's token.
pub async fn renew_token(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    let roles = grid
        .groups
        .meta_state()
        .users
        .get(&name)
        .map(|u| u.roles.clone())
        .ok_or_else(|| user_not_found(&name))?;
    let token = token()?;
    grid.meta
        .commit(MetaCommand::PutUser {
            name: name.clone(),
            roles,
            token_sha256: Some(token_sha256(&token)),
        })
        .await?;
    Ok(Json(Issued { name, token }).into_response())
}

/// `DELETE /v1/admin/users/{name}`.
pub async fn delete_user(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    grid.meta.commit(MetaCommand::DeleteUser { name }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/admin/roles`: the defined roles (`admin` is built in and grants everything).
pub async fn list_roles(State(grid): State<Arc<Grid>>) -> Response {
    let roles: Vec<RoleView> = grid
        .groups
        .meta_state()
        .roles
        .iter()
        .map(|(name, r)| RoleView {
            name: name.clone(),
            grants: r.grants.clone(),
        })
        .collect();
    Json(roles).into_response()
}

/// `GET /v1/admin/roles/{name}`.
pub async fn get_role(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    let meta = grid.groups.meta_state();
    let r = meta.roles.get(&name).ok_or_else(|| Error::Refused {
        code: ErrorCode::RoleNotFound,
        message: format!("no role {name:?} (admin is built in)"),
    })?;
    Ok(Json(RoleView {
        name,
        grants: r.grants.clone(),
    })
    .into_response())
}

/// `PUT /v1/admin/roles/{name}` `{"grants": [{"actions": [...], "kind": "...", "names": "..."}]}`.
pub async fn put_role(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    if name == ADMIN_ROLE {
        return Err(Error::bad_request(ErrorCode::InvalidRole, "admin is built in").into());
    }
    let role: Role = body(&bytes)?;
    grid.meta
        .commit(MetaCommand::PutRole {
            name: name.clone(),
            role: role.clone(),
        })
        .await?;
    Ok(Json(RoleView {
        name,
        grants: role.grants,
    })
    .into_response())
}

/// `DELETE /v1/admin/roles/{name}`: refused (409 `role_in_use`) while a user holds it.
pub async fn delete_role(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name(path)?;
    grid.meta.commit(MetaCommand::DeleteRole { name }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
