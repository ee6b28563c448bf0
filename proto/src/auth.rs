//! Users, roles and what they may do. Users and roles live in the metadata group; a request
//! carries a bearer token, the member finds the user by the token's SHA-256 and checks the
//! route's [`Permission`] against the user's roles.
//!
//! A role is a list of [`Grant`]s: actions on a kind of resource whose names match a pattern
//! (`*`, a prefix ending in `*`, or an exact name). The role `admin` is built in and grants
//! everything.

use serde::{Deserialize, Serialize};

/// The built-in role that grants every action on every resource.
pub const ADMIN_ROLE: &str = "admin";
/// Longest user or role name.
pub const MAX_NAME_BYTES: usize = 63;
/// Most grants in one role, roles of one user.
pub const MAX_GRANTS: usize = 64;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read entries, views and metrics.
    Read,
    /// Change entries.
    Write,
    /// Change the grid: drain members, manage users and roles.
    Admin,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::wire_name(self))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::wire_name(self))
    }
}

/// The kinds of things a grant covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Maps, by map name.
    Maps,
    /// Members, by member id.
    Members,
    /// The grid's views, partitions and metrics (name `*`).
    Cluster,
    /// Users and roles, by name.
    Users,
}

/// Actions on resources of one kind whose names match `names`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// What may be done.
    pub actions: Vec<Action>,
    /// To what kind of resource.
    pub kind: Kind,
    /// Which names: `*`, `prefix*` or an exact name.
    pub names: String,
}

impl Grant {
    /// Whether this grant allows `p`.
    pub fn allows(&self, p: &Permission) -> bool {
        self.kind == p.kind
            && self.actions.contains(&p.action)
            && name_matches(&self.names, &p.name)
    }
}

/// Whether `name` matches `pattern` (`*`, `prefix*`, or exact).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// A named set of grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// The grants.
    pub grants: Vec<Grant>,
}

/// What one request needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// The action.
    pub action: Action,
    /// The kind of resource.
    pub kind: Kind,
    /// The resource's name (map name, member id, user name; `*` for the cluster).
    pub name: String,
}

/// A user as the metadata group keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Role names.
    pub roles: Vec<String>,
    /// SHA-256 of the user's token, lowercase hex (the token itself is never stored).
    pub token_sha256: String,
}

/// `PUT /v1/admin/users/{name}`: the user's roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    /// Role names (each must exist).
    pub roles: Vec<String>,
}

/// A user as the admin API shows it (no token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// User name.
    pub name: String,
    /// Role names.
    pub roles: Vec<String>,
}

/// The answer to creating a user or renewing its token: the only time the token is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// User name.
    pub name: String,
    /// The bearer token.
    pub token: String,
}

/// A role as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleView {
    /// Role name.
    pub name: String,
    /// Its grants.
    pub grants: Vec<Grant>,
}

/// `GET /v1/auth/whoami`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// User name (`anonymous` when authentication is off).
    pub user: String,
    /// Its roles.
    pub roles: Vec<String>,
}

/// Whether `name` may name a user or a role: 1-63 of `a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_kind_action_and_name() {
        let g = Grant {
            actions: vec![Action::Read, Action::Write],
            kind: Kind::Maps,
            names: "sensor-*".into(),
        };
        let p = |action, kind, name: &str| Permission {
            action,
            kind,
            name: name.into(),
        };
        assert!(g.allows(&p(Action::Write, Kind::Maps, "sensor-1")));
        assert!(g.allows(&p(Action::Read, Kind::Maps, "sensor-")));
        assert!(!g.allows(&p(Action::Admin, Kind::Maps, "sensor-1")));
        assert!(!g.allows(&p(Action::Read, Kind::Maps, "devices")));
        assert!(!g.allows(&p(Action::Read, Kind::Members, "sensor-1")));
        assert!(name_matches("*", "anything"));
        assert!(name_matches("devices", "devices"));
        assert!(!name_matches("devices", "devices2"));
        assert!(valid_name("ops.team-1_a"));
        assert!(!valid_name("Ops") && !valid_name("") && !valid_name(&"a".repeat(64)));
    }
}
