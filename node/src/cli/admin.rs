//! `devicegrid admin`: users and roles of a grid through its admin API. The token comes from
//! `--token` or `DEVICEGRID_TOKEN`; answers are printed as JSON, refusals as the grid's
//! error message with a non-zero exit.

use anyhow::{bail, Context};
use devicegrid_proto::auth::{Action, Grant, Kind, Role, UserRequest};
use devicegrid_proto::ErrorBody;
use reqwest::Method;
use serde_json::Value;

/// Flags of `devicegrid admin`.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// A member's client URL.
    #[arg(long, env = "DEVICEGRID_URL", default_value = "http://127.0.0.1:7001")]
    url: String,
    /// Bearer token of a user holding `admin`.
    #[arg(long, env = "DEVICEGRID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(clap::Subcommand, Debug)]
enum AdminAction {
    /// The user behind the token.
    Whoami,
    /// Users.
    #[command(subcommand)]
    Users(UsersAction),
    /// Roles.
    #[command(subcommand)]
    Roles(RolesAction),
}

#[derive(clap::Subcommand, Debug)]
enum UsersAction {
    /// Every user and its roles.
    List,
    /// Create a user (prints its token, shown only now) or set an existing user's roles.
    Put {
        /// User name.
        name: String,
        /// A role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Replace a user's token (prints the new one).
    Token {
        /// User name.
        name: String,
    },
    /// Remove a user.
    Delete {
        /// User name.
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum RolesAction {
    /// Every role and its grants.
    List,
    /// Create or replace a role.
    Put {
        /// Role name.
        name: String,
        /// `ACTIONS:KIND:NAMES`, e.g. `read,write:maps:sensor-*` (repeatable).
        #[arg(long = "grant", value_parser = parse_grant, required = true)]
        grants: Vec<Grant>,
    },
    /// Remove a role no user holds.
    Delete {
        /// Role name.
        name: String,
    },
}

/// `read,write:maps:sensor-*` as a grant.
fn parse_grant(s: &str) -> Result<Grant, String> {
    let mut parts = s.splitn(3, ':');
    let (Some(actions), Some(kind), Some(names)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{s:?}: expected ACTIONS:KIND:NAMES"));
    };
    let word = |w: &str| Value::String(w.to_string());
    let actions = actions
        .split(',')
        .map(|a| {
            serde_json::from_value::<Action>(word(a))
                .map_err(|_| format!("{a:?} is not an action (read, write, admin)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let kind = serde_json::from_value::<Kind>(word(kind))
        .map_err(|_| format!("{kind:?} is not a kind (maps, members, cluster, users)"))?;
    Ok(Grant {
        actions,
        kind,
        names: names.to_string(),
    })
}

/// Runs `devicegrid admin`.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let (method, path, body) = match args.action {
        AdminAction::Whoami => (Method::GET, "/v1/auth/whoami".to_string(), None),
        AdminAction::Users(u) => match u {
            UsersAction::List => (Method::GET, "/v1/admin/users".into(), None),
            UsersAction::Put { name, roles } => (
                Method::PUT,
                format!("/v1/admin/users/{name}"),
                Some(serde_json::to_value(UserRequest { roles })?),
            ),
            UsersAction::Token { name } => {
                (Method::POST, format!("/v1/admin/users/{name}/token"), None)
            }
            UsersAction::Delete { name } => {
                (Method::DELETE, format!("/v1/admin/users/{name}"), None)
            }
        },
        AdminAction::Roles(r) => match r {
            RolesAction::List => (Method::GET, "/v1/admin/roles".into(), None),
            RolesAction::Put { name, grants } => (
                Method::PUT,
                format!("/v1/admin/roles/{name}"),
                Some(serde_json::to_value(Role { grants })?),
            ),
            RolesAction::Delete { name } => {
                (Method::DELETE, format!("/v1/admin/roles/{name}"), None)
            }
        },
    };
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut req = http.request(method, format!("{}{path}", args.url.trim_end_matches('/')));
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("reaching {}", args.url))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => bail!("{} ({}): {}", status, e.error.code, e.error.message),
            Err(_) => bail!("{status}: {text}"),
        }
    }
    if !text.is_empty() {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_from_the_command_line() {
        assert_eq!(
            parse_grant("read,write:maps:sensor-*"),
            Ok(Grant {
                actions: vec![Action::Read, Action::Write],
                kind: Kind::Maps,
                names: "sensor-*".into()
            })
        );
        for bad in ["read:maps", "fly:maps:*", "read:stars:*"] {
            assert!(parse_grant(bad).is_err(), "{bad}");
        }
    }
}
