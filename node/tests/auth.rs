//! Authentication and authorization on a real member with `auth_enabled`: users and roles
//! made through the admin API, then every route walked with every principal (the
//! authorization matrix): allowed answers are neither 401 nor 403, denied ones are 403
//! `forbidden`, requests without a known token are 401 `unauthenticated`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{within, TestGrid};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "bootstrap-admin-secret-0123456789";

struct Api<'a> {
    http: &'a reqwest::Client,
    url: String,
}

impl Api<'_> {
    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, bool) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("answered");
        let status = resp.status();
        let challenge = resp.headers().contains_key("www-authenticate");
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, challenge)
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Value {
        let (status, body, _) = self.call(Some(ADMIN_TOKEN), method, path, Some(body)).await;
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_allows_exactly_the_roles_that_grant_it() {
    within(180, async {
        let secrets = tempfile::tempdir().expect("tempdir");
        let token_file = secrets.path().join("admin-token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("token file");
        let mut grid = TestGrid::new(
            1,
            8,
            &[
                "--auth-enabled",
                "true",
                "--auth-bootstrap-token-file",
                token_file.to_str().expect("utf-8"),
            ],
        );
        grid.spawn(1);
        grid.wait_ready(Duration::from_secs(60)).await;
        let api = Api {
            http: &grid.http,
            url: grid.url(1),
        };
        // The bootstrap admin appears once the grid is up.
        let mut whoami = Value::Null;
        for _ in 0..100 {
            let (s, b, _) = api.call(Some(ADMIN_TOKEN), Method::GET, "/v1/auth/whoami", None).await;
            if s.is_success() {
                whoami = b;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(whoami, json!({"user": "admin", "roles": ["admin"]}));

        let grant = |actions: &[&str], kind: &str, names: &str| {
            json!({"actions": actions, "kind": kind, "names": names})
        };
        for (role, grants) in [
            (
                "reader",
                vec![
                    grant(&["read"], "maps", "*"),
                    grant(&["read"], "cluster", "*"),
                    grant(&["read"], "members", "*"),
                ],
            ),
            ("writer", vec![grant(&["read", "write"], "maps", "dev*")]),
            ("ops", vec![grant(&["admin"], "members", "*")]),
        ] {
            api.admin(
                Method::PUT,
                &format!("/v1/admin/roles/{role}"),
                json!({ "grants": grants }),
            )
            .await;
        }
        let mut tokens: BTreeMap<&str, String> = BTreeMap::new();
        tokens.insert("admin", ADMIN_TOKEN.into());
        for user in ["reader", "writer", "ops"] {
            let issued = api
                .admin(
                    Method::PUT,
                    &format!("/v1/admin/users/{user}"),
                    json!({ "roles": [user] }),
                )
                .await;
            tokens.insert(user, issued["token"].as_str().expect("token").to_string());
        }

        // (method, path, body, who may)
        let entry = json!({"fw": "1"});
        let batch_put = json!({"entries": [{"key": "k2", "value": {"a": 1}}]});
        let batch_get = json!({"keys": ["k2"]});
        let shadow = json!({"processor": "merge_patch", "args": {"patch": {"b": 2}}});
        let all_users: &[&str] = &["admin", "reader", "writer", "ops"];
        let matrix: Vec<(Method, &str, Option<Value>, &[&str])> = vec![
            (Method::PUT, "/v1/maps/devices/k1", Some(entry.clone()), &["admin", "writer"]),
            (Method::PUT, "/v1/maps/other/k1", Some(entry.clone()), &["admin"]),
            (Method::GET, "/v1/maps/devices/k1", None, &["admin", "reader", "writer"]),
            (Method::GET, "/v1/maps/other/k1", None, &["admin", "reader"]),
            (Method::POST, "/v1/maps/devices/k1/process", Some(shadow), &["admin", "writer"]),
            (Method::POST, "/v1/batch/maps/devices/put", Some(batch_put), &["admin", "writer"]),
            (Method::POST, "/v1/batch/maps/devices/get", Some(batch_get.clone()), &["admin", "reader", "writer"]),
            (Method::POST, "/v1/batch/maps/other/get", Some(batch_get), &["admin", "reader"]),
            (Method::DELETE, "/v1/maps/devices/k1", None, &["admin", "writer"]),
            (Method::GET, "/v1/members", None, &["admin", "reader"]),
            (Method::GET, "/v1/members/1", None, &["admin", "reader"]),
            (Method::POST, "/v1/members/9/drain", None, &["admin", "ops"]),
            (Method::GET, "/v1/cluster", None, &["admin", "reader"]),
            (Method::GET, "/v1/partitions", None, &["admin", "reader"]),
            (Method::GET, "/metrics", None, &["admin", "reader"]),
            (Method::GET, "/v1/auth/whoami", None, all_users),
            (Method::GET, "/v1/admin/users", None, &["admin"]),
            (Method::GET, "/v1/admin/users/reader", None, &["admin"]),
            (Method::PUT, "/v1/admin/users/ghost", Some(json!({"roles": ["nope"]})), &["admin"]),
            (Method::POST, "/v1/admin/users/ghost/token", None, &["admin"]),
            (Method::DELETE, "/v1/admin/users/ghost", None, &["admin"]),
            (Method::GET, "/v1/admin/roles", None, &["admin"]),
            (Method::GET, "/v1/admin/roles/reader", None, &["admin"]),
            (Method::PUT, "/v1/admin/roles/extra", Some(json!({"grants": [grant(&["read"], "maps", "x")]})), &["admin"]),
            (Method::DELETE, "/v1/admin/roles/ghost", None, &["admin"]),
            (Method::GET, "/healthz", None, all_users),
            (Method::GET, "/readyz", None, all_users),
        ];
        for (method, path, body, allowed) in &matrix {
            let public = matches!(*path, "/healthz" | "/readyz");
            for (user, token) in &tokens {
                let (status, answer, _) = api
                    .call(Some(token), method.clone(), path, body.clone())
                    .await;
                let denied = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
                if allowed.contains(user) {
                    assert!(!denied, "{user} {method} {path}: {status} {answer}");
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{user} {method} {path}: {answer}");
                    assert_eq!(answer["error"]["code"], "forbidden", "{user} {method} {path}");
                }
            }
            for (who, token) in [("no token", None), ("unknown token", Some("dgt_0000"))] {
                let (status, answer, challenge) =
                    api.call(token, method.clone(), path, body.clone()).await;
                if public {
                    assert!(status.is_success(), "{who} {method} {path}: {status}");
                } else {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{who} {method} {path}: {answer}");
                    assert_eq!(answer["error"]["code"], "unauthenticated");
                    assert!(challenge, "{who} {method} {path}: WWW-Authenticate");
                }
            }
        }

        // A renewed token replaces the old one; a deleted user's token stops working.
        let old = tokens["reader"].clone();
        let renewed = api
            .admin(Method::POST, "/v1/admin/users/reader/token", json!({}))
            .await;
        let new = renewed["token"].as_str().expect("token");
        let api = &api;
        let whoami = |t: String| async move {
            api.call(Some(&t), Method::GET, "/v1/auth/whoami", None)
                .await
                .0
        };
        assert_eq!(whoami(old).await, StatusCode::UNAUTHORIZED);
        assert_eq!(whoami(new.to_string()).await, StatusCode::OK);
        let (s, _, _) = api
            .call(Some(ADMIN_TOKEN), Method::DELETE, "/v1/admin/roles/reader", None)
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "a role in use stays");
        let (s, b, _) = api
            .call(Some(ADMIN_TOKEN), Method::DELETE, "/v1/admin/users/admin", None)
            .await;
        assert_eq!((s, &b["error"]["code"]), (StatusCode::CONFLICT, &json!("last_admin")));
        let (s, _, _) = api
            .call(Some(ADMIN_TOKEN), Method::DELETE, "/v1/admin/users/reader", None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert_eq!(whoami(new.to_string()).await, StatusCode::UNAUTHORIZED);
        // Bad names and bodies are 400s.
        let (s, b, _) = api
            .call(Some(ADMIN_TOKEN), Method::PUT, "/v1/admin/users/Bad%20Name", Some(json!({"roles": []})))
            .await;
        assert_eq!((s, &b["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("invalid_name")));
        let (s, b, _) = api
            .call(Some(ADMIN_TOKEN), Method::PUT, "/v1/admin/roles/r2", Some(json!({"grants": [{"actions": ["fly"], "kind": "maps", "names": "*"}]})))
            .await;
        assert_eq!((s, &b["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("invalid_json")));

        // The same through `devicegrid admin`.
        let cli = |token: &str, args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_devicegrid"))
                .args(["admin", "--url", &grid.url(1), "--token", token])
                .args(args)
                .output()
                .expect("run devicegrid admin")
        };
        let out = cli(
            ADMIN_TOKEN,
            &["roles", "put", "fleet", "--grant", "read,write:maps:fleet-*"],
        );
        assert!(out.status.success(), "{out:?}");
        let out = cli(ADMIN_TOKEN, &["users", "put", "fleet-app", "--role", "fleet"]);
        assert!(out.status.success(), "{out:?}");
        let issued: Value = serde_json::from_slice(&out.stdout).expect("json");
        let app = issued["token"].as_str().expect("token");
        let out = cli(app, &["whoami"]);
        let me: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(me, json!({"user": "fleet-app", "roles": ["fleet"]}));
        let out = cli(app, &["users", "list"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{out:?}");
        let out = cli("dgt_bogus", &["whoami"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"), "{out:?}");
        let out = cli(ADMIN_TOKEN, &["roles", "put", "x", "--grant", "fly:maps:*"]);
        assert!(!out.status.success(), "a bad grant is refused before sending");
    })
    .await;
}
