//! Users and roles in the metadata state, and what a user may do. [`apply`] is the part of
//! the metadata state machine for users and roles (pure, like `meta::apply`); [`Principal`]
//! is a user resolved from the state, asked [`Principal::allows`] by the API.

use devicegrid_proto::auth::{valid_name, Grant, Permission, Role, User, ADMIN_ROLE, MAX_GRANTS};
use devicegrid_proto::entries::{MetaCommand, MetaOutcome, MetaState};
use devicegrid_proto::ErrorCode;

fn refused(code: ErrorCode, message: impl Into<String>) -> MetaOutcome {
    MetaOutcome::Refused {
        code,
        message: message.into(),
    }
}

fn valid_hash(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Users holding `admin`.
fn admins(s: &MetaState) -> usize {
    s.users
        .values()
        .filter(|u| u.roles.iter().any(|r| r == ADMIN_ROLE))
        .count()
}

/// Applies a user or role command (the other commands are `meta::apply`'s).
pub fn apply(s: &mut MetaState, cmd: &MetaCommand) -> MetaOutcome {
    match cmd {
        MetaCommand::PutUser {
            name,
            roles,
            token_sha256,
        } => {
            if !valid_name(name) {
                return refused(
                    ErrorCode::InvalidName,
                    format!("invalid user name {name:?}"),
                );
            }
            if roles.len() > MAX_GRANTS {
                return refused(ErrorCode::InvalidRole, "too many roles");
            }
            if let Some(r) = roles
                .iter()
                .find(|r| *r != ADMIN_ROLE && !s.roles.contains_key(*r))
            {
                return refused(ErrorCode::InvalidRole, format!("no role {r:?}"));
            }
            if token_sha256.as_deref().is_some_and(|h| !valid_hash(h)) {
                return refused(ErrorCode::InvalidName, "a token hash is 64 hex digits");
            }
            let mut roles = roles.clone();
            roles.sort();
            roles.dedup();
            let loses_admin = s
                .users
                .get(name)
                .is_some_and(|u| u.roles.iter().any(|r| r == ADMIN_ROLE))
                && !roles.iter().any(|r| r == ADMIN_ROLE);
            if loses_admin && admins(s) == 1 {
                return refused(
                    ErrorCode::LastAdmin,
                    format!("{name} is the last user holding admin"),
                );
            }
            match (s.users.get_mut(name), token_sha256) {
                (Some(u), token) => {
                    let token = token.clone().unwrap_or_else(|| u.token_sha256.clone());
                    if u.roles == roles && u.token_sha256 == token {
                        return MetaOutcome::Unchanged;
                    }
                    u.roles = roles;
                    u.token_sha256 = token;
                }
                (None, Some(token)) => {
                    s.users.insert(
                        name.clone(),
                        User {
                            roles,
                            token_sha256: token.clone(),
                        },
                    );
                }
                (None, None) => {
                    return refused(ErrorCode::UserNotFound, format!("no user {name:?}"))
                }
            }
            MetaOutcome::Applied
        }
        MetaCommand::DeleteUser { name } => match s.users.get(name) {
            None => refused(ErrorCode::UserNotFound, format!("no user {name:?}")),
            Some(u) if u.roles.iter().any(|r| r == ADMIN_ROLE) && admins(s) == 1 => refused(
                ErrorCode::LastAdmin,
                format!("{name} is the last user holding admin"),
            ),
            Some(_) => {
                s.users.remove(name);
                MetaOutcome::Applied
            }
        },
        MetaCommand::PutRole { name, role } => {
            if !valid_name(name) {
                return refused(
                    ErrorCode::InvalidName,
                    format!("invalid role name {name:?}"),
                );
            }
            if name == ADMIN_ROLE {
                return refused(ErrorCode::InvalidRole, "admin is built in");
            }
            if role.grants.is_empty() || role.grants.len() > MAX_GRANTS {
                return refused(
                    ErrorCode::InvalidRole,
                    format!("a role has 1-{MAX_GRANTS} grants"),
                );
            }
            if role.grants.iter().any(|g| !valid_grant(g)) {
                return refused(
                    ErrorCode::InvalidRole,
                    "a grant names at least one action and a pattern of 1-128 characters",
                );
            }
            if s.roles.get(name) == Some(role) {
                return MetaOutcome::Unchanged;
            }
            s.roles.insert(name.clone(), role.clone());
            MetaOutcome::Applied
        }
        MetaCommand::DeleteRole { name } => {
            if !s.roles.contains_key(name) {
                return refused(ErrorCode::RoleNotFound, format!("no role {name:?}"));
            }
            if let Some((user, _)) = s.users.iter().find(|(_, u)| u.roles.contains(name)) {
                return refused(ErrorCode::RoleInUse, format!("user {user} holds {name}"));
            }
            s.roles.remove(name);
            MetaOutcome::Applied
        }
        MetaCommand::BootstrapAdmin { token_sha256 } => {
            if !s.users.is_empty() || !valid_hash(token_sha256) {
                return MetaOutcome::Unchanged;
            }
            s.users.insert(
                ADMIN_ROLE.into(),
                User {
                    roles: vec![ADMIN_ROLE.into()],
                    token_sha256: token_sha256.clone(),
                },
            );
            MetaOutcome::Applied
        }
        _ => MetaOutcome::Unchanged,
    }
}

fn valid_grant(g: &Grant) -> bool {
    !g.actions.is_empty() && (1..=128).contains(&g.names.len())
}

/// The stored form of a token: SHA-256, lowercase hex.
pub fn token_sha256(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A user as a request carries it: its name, roles and the grants they add up to.
#[derive(Clone, Debug)]
pub struct Principal {
    /// User name (`anonymous` when authentication is off).
    pub user: String,
    /// Role names.
    pub roles: Vec<String>,
    admin: bool,
    grants: Vec<Grant>,
}

impl Principal {
    /// Everyone, when authentication is off.
    pub fn anonymous() -> Principal {
        Principal {
            user: "anonymous".into(),
            roles: vec![ADMIN_ROLE.into()],
            admin: true,
            grants: Vec::new(),
        }
    }

    /// The user whose token hashes to `token_sha256`, if any.
    pub fn by_token(s: &MetaState, token_sha256: &str) -> Option<Principal> {
        let (name, user) = s
            .users
            .iter()
            .find(|(_, u)| constant_time_eq(u.token_sha256.as_bytes(), token_sha256.as_bytes()))?;
        Some(Principal {
            user: name.clone(),
            roles: user.roles.clone(),
            admin: user.roles.iter().any(|r| r == ADMIN_ROLE),
            grants: user
                .roles
                .iter()
                .filter_map(|r| s.roles.get(r))
                .flat_map(|r: &Role| r.grants.iter().cloned())
                .collect(),
        })
    }

    /// Whether the user may do `p`.
    pub fn allows(&self, p: &Permission) -> bool {
        self.admin || self.grants.iter().any(|g| g.allows(p))
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use devicegrid_proto::auth::{Action, Kind};

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn put_user(s: &mut MetaState, name: &str, roles: &[&str], token: Option<&str>) -> MetaOutcome {
        apply(
            s,
            &MetaCommand::PutUser {
                name: name.into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                token_sha256: token.map(str::to_string),
            },
        )
    }

    fn code(o: MetaOutcome) -> Option<ErrorCode> {
        match o {
            MetaOutcome::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    #[test]
    fn users_and_roles_keep_an_admin_and_their_references() {
        let mut s = MetaState::default();
        let boot = MetaCommand::BootstrapAdmin {
            token_sha256: H1.into(),
        };
        assert_eq!(apply(&mut s, &boot), MetaOutcome::Applied);
        assert_eq!(apply(&mut s, &boot), MetaOutcome::Unchanged, "only once");
        let reader = Role {
            grants: vec![Grant {
                actions: vec![Action::Read],
                kind: Kind::Maps,
                names: "*".into(),
            }],
        };
        let put_role = |name: &str, role: &Role| MetaCommand::PutRole {
            name: name.into(),
            role: role.clone(),
        };
        assert_eq!(
            apply(&mut s, &put_role("reader", &reader)),
            MetaOutcome::Applied
        );
        assert_eq!(
            code(apply(&mut s, &put_role("admin", &reader))),
            Some(ErrorCode::InvalidRole)
        );
        assert_eq!(
            code(apply(&mut s, &put_role("empty", &Role::default()))),
            Some(ErrorCode::InvalidRole)
        );
        assert_eq!(
            code(put_user(&mut s, "bob", &["nope"], Some(H2))),
            Some(ErrorCode::InvalidRole)
        );
        assert_eq!(
            code(put_user(&mut s, "Bob", &["reader"], Some(H2))),
            Some(ErrorCode::InvalidName)
        );
        assert_eq!(
            code(put_user(&mut s, "carol", &["reader"], None)),
            Some(ErrorCode::UserNotFound),
            "a new user needs a token"
        );
        assert_eq!(
            put_user(&mut s, "bob", &["reader"], Some(H2)),
            MetaOutcome::Applied
        );
        assert_eq!(
            code(apply(
                &mut s,
                &MetaCommand::DeleteRole {
                    name: "reader".into()
                }
            )),
            Some(ErrorCode::RoleInUse)
        );
        assert_eq!(
            code(put_user(&mut s, "admin", &["reader"], None)),
            Some(ErrorCode::LastAdmin)
        );
        assert_eq!(
            code(apply(
                &mut s,
                &MetaCommand::DeleteUser {
                    name: "admin".into()
                }
            )),
            Some(ErrorCode::LastAdmin)
        );
        let bob = Principal::by_token(&s, H2).expect("bob");
        let read = |name: &str| Permission {
            action: Action::Read,
            kind: Kind::Maps,
            name: name.into(),
        };
        assert!(bob.allows(&read("devices")));
        assert!(!bob.allows(&Permission {
            action: Action::Write,
            ..read("devices")
        }));
        assert!(Principal::by_token(&s, H1)
            .expect("admin")
            .allows(&Permission {
                action: Action::Admin,
                kind: Kind::Users,
                name: "bob".into(),
            }));
        assert!(Principal::by_token(&s, &"3".repeat(64)).is_none());
        assert_eq!(
            apply(&mut s, &MetaCommand::DeleteUser { name: "bob".into() }),
            MetaOutcome::Applied
        );
        assert_eq!(
            apply(
                &mut s,
                &MetaCommand::DeleteRole {
                    name: "reader".into()
                }
            ),
            MetaOutcome::Applied
        );
    }
}
