//! Bad input gets a clear error: every malformed request to a real member answers a 4xx with
//! the right machine-readable code, and nothing it names is written.

mod common;

use std::time::Duration;

use common::{within, TestGrid};
use serde_json::{json, Value};

/// (method, path, headers, body, expected status, expected error code)
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    String,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors() {
    within(120, async {
        let grid = TestGrid::start(1, 8);
        grid.wait_ready(Duration::from_secs(60)).await;
        let u = grid.url(1);
        let http = &grid.http;
        grid.put(1, "devices", "plain", &json!({"fw": "1", "name": "x"}))
            .await
            .expect("seed");
        let big = format!("\"{}\"", "x".repeat(1024 * 1024 + 10));
        let long_key = "k".repeat(513);
        let m = |method: &str| reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        // (method, path, headers, body, status, code)
        let cases: Vec<Case> = [
            (
                "PUT",
                "/v1/maps/devices/d".into(),
                vec![],
                "{not json".into(),
                400,
                "invalid_json",
            ),
            (
                "PUT",
                "/v1/maps/devices/d".into(),
                vec![],
                "".into(),
                400,
                "invalid_json",
            ),
            (
                "PUT",
                "/v1/maps/devices/d".into(),
                vec![],
                big,
                413,
                "body_too_large",
            ),
            (
                "PUT",
                format!("/v1/maps/devices/{long_key}"),
                vec![],
                "1".into(),
                400,
                "invalid_key",
            ),
            (
                "PUT",
                "/v1/maps/bad%20map/d".into(),
                vec![],
                "1".into(),
                400,
                "invalid_map_name",
            ),
            (
                "PUT",
                "/v1/maps/devices/d".into(),
                vec![("If-Match", "abc")],
                "1".into(),
                400,
                "invalid_version",
            ),
            (
                "PUT",
                "/v1/maps/devices/d".into(),
                vec![("If-None-Match", "\"3\"")],
                "1".into(),
                400,
                "invalid_version",
            ),
            (
                "PUT",
                "/v1/maps/devices/d?ttl=abc".into(),
                vec![],
                "1".into(),
                400,
                "invalid_ttl",
            ),
            (
                "PUT",
                "/v1/maps/devices/d?ttl=0".into(),
                vec![],
                "1".into(),
                400,
                "invalid_ttl",
            ),
            (
                "PUT",
                "/v1/maps/devices/plain".into(),
                vec![("If-Match", "999")],
                "1".into(),
                412,
                "version_mismatch",
            ),
            (
                "GET",
                "/v1/maps/devices/d?consistency=weird".into(),
                vec![],
                "".into(),
                400,
                "invalid_consistency",
            ),
            (
                "GET",
                "/v1/maps/devices/d?colour=red".into(),
                vec![],
                "".into(),
                400,
                "invalid_query",
            ),
            (
                "DELETE",
                "/v1/maps/devices/plain".into(),
                vec![("If-Match", "x")],
                "".into(),
                400,
                "invalid_version",
            ),
            (
                "POST",
                "/v1/maps/devices/d/process".into(),
                vec![],
                r#"{"processor":"nope","args":{}}"#.into(),
                400,
                "unknown_processor",
            ),
            (
                "POST",
                "/v1/maps/devices/d/process".into(),
                vec![],
                r#"{"args":{}}"#.into(),
                400,
                "invalid_processor",
            ),
            (
                "POST",
                "/v1/maps/devices/d/process".into(),
                vec![],
                "[1,2".into(),
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/v1/maps/devices/d/process".into(),
                vec![],
                r#"{"processor":"increment","args":{"field":"/n"}}"#.into(),
                400,
                "invalid_processor_args",
            ),
            (
                "POST",
                "/v1/maps/devices/d/process".into(),
                vec![],
                r#"{"processor":"increment","args":{"field":"n","by":1}}"#.into(),
                400,
                "invalid_processor_args",
            ),
            (
                "POST",
                "/v1/maps/devices/d/process".into(),
                vec![],
                r#"{"processor":"shadow","args":{"state":{"desired":5}}}"#.into(),
                400,
                "invalid_processor_args",
            ),
            (
                "POST",
                "/v1/maps/devices/plain/process".into(),
                vec![],
                r#"{"processor":"increment","args":{"field":"/fw","by":1}}"#.into(),
                409,
                "not_a_number",
            ),
            (
                "POST",
                "/v1/maps/devices/plain/process".into(),
                vec![],
                r#"{"processor":"increment","args":{"field":"/fw/count","by":1}}"#.into(),
                409,
                "invalid_field",
            ),
            (
                "POST",
                "/v1/maps/devices/plain/process".into(),
                vec![],
                r#"{"processor":"update_if","args":{"field":"/fw","equals":"2","patch":{}}}"#
                    .into(),
                409,
                "condition_failed",
            ),
            (
                "POST",
                "/v1/maps/devices/plain/process".into(),
                vec![],
                r#"{"processor":"shadow","args":{"state":{"desired":{}}}}"#.into(),
                409,
                "not_a_shadow",
            ),
            (
                "POST",
                "/v1/batch/maps/devices/put".into(),
                vec![],
                r#"{"entries":[]}"#.into(),
                400,
                "invalid_batch",
            ),
            (
                "POST",
                "/v1/batch/maps/devices/put".into(),
                vec![],
                r#"{"entries":[{"key":"a"}]}"#.into(),
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/v1/batch/maps/devices/get".into(),
                vec![],
                "nope".into(),
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/v1/batch/maps/devices/get".into(),
                vec![],
                serde_json::to_string(&json!({"keys": vec!["k"; 1001]})).expect("json"),
                400,
                "invalid_batch",
            ),
            (
                "POST",
                "/v1/batch/maps/devices/get".into(),
                vec![],
                r#"{"keys":["a"],"consistency":"eventual"}"#.into(),
                400,
                "invalid_consistency",
            ),
            (
                "GET",
                "/v2/nothing".into(),
                vec![],
                "".into(),
                404,
                "not_found",
            ),
            (
                "PATCH",
                "/v1/maps/devices/d".into(),
                vec![],
                "{}".into(),
                405,
                "method_not_allowed",
            ),
        ]
        .into_iter()
        // Reads and deletes of what does not exist.
        .chain(["GET", "DELETE"].map(|method| {
            (
                method,
                "/v1/maps/devices/nothing-here".to_string(),
                vec![],
                String::new(),
                404,
                "not_found",
            )
        }))
        .collect();
        let mut failures = Vec::new();
        for (method, path, headers, body, status, code) in cases {
            let mut req = http.request(m(method), format!("{u}{path}")).body(body);
            for (h, v) in headers {
                req = req.header(h, v);
            }
            let resp = req.send().await.expect("request");
            let got_status = resp.status().as_u16();
            let got: Value = resp.json().await.unwrap_or(Value::Null);
            let ok = got_status == status
                && got["error"]["code"] == json!(code)
                && got["error"]["message"].is_string();
            if !ok {
                failures.push(format!(
                    "{method} {}: expected {status} {code}, got {got_status} {got}",
                    &path[..path.len().min(60)]
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Nothing above hurt the member.
        assert_eq!(
            http.get(format!("{u}/healthz"))
                .send()
                .await
                .expect("healthz")
                .status(),
            200
        );
        assert!(grid
            .get(1, "devices", "plain", false)
            .await
            .expect("get")
            .is_some());
    })
    .await;
}

/// What PUT accepts, GET returns exactly as written; what could not be returned is refused
/// at the door with 400 `invalid_value`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_exactly_or_are_refused() {
    within(120, async {
        let grid = TestGrid::start(1, 4);
        grid.wait_ready(Duration::from_secs(60)).await;
        let u = grid.url(1);
        let nested = |n: usize| format!("{}1{}", "[".repeat(n - 1), "]".repeat(n - 1));
        let kept = [
            "123456789012345678901234567890".to_string(),
            "-98765432109876543210".to_string(),
            "{\"id\":18446744073709551616,\"f\":1.5e300,\"z\":-0.0}".to_string(),
            "\"caf\\u00e9 \\ud83d\\ude00\"".to_string(),
            nested(100),
        ];
        for (i, text) in kept.iter().enumerate() {
            let url = format!("{u}/v1/maps/values/k{i}");
            let put = grid
                .http
                .put(&url)
                .body(text.clone())
                .send()
                .await
                .expect("put");
            assert_eq!(put.status(), 200, "{text}");
            let got = grid.http.get(&url).send().await.expect("get");
            let body = got.text().await.expect("text");
            let want = format!("\"value\":{text},");
            assert!(body.contains(&want), "{text} came back as {body}");
        }
        let refused = [
            "1e400".to_string(),
            "[-1e309]".to_string(),
            nested(101),
            nested(300),
        ];
        for (i, text) in refused.iter().enumerate() {
            let url = format!("{u}/v1/maps/values/r{i}");
            let put = grid
                .http
                .put(&url)
                .body(text.clone())
                .send()
                .await
                .expect("put");
            assert_eq!(put.status(), 400, "{text}");
            let body: Value = put.json().await.expect("json");
            assert_eq!(body["error"]["code"], "invalid_value", "{text}");
            let get = grid.http.get(&url).send().await.expect("get");
            assert_eq!(get.status(), 404, "nothing stored for {text}");
        }
        // Batch puts meet the same rule, entry by entry.
        let batch = grid
            .http
            .post(format!("{u}/v1/batch/maps/values/put"))
            .body("{\"entries\": [{\"key\": \"b1\", \"value\": 1e400}]}")
            .send()
            .await
            .expect("batch");
        assert_eq!(batch.status(), 400);
    })
    .await;
}
