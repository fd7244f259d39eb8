//! `GET /openapi.json` describes the server as it answers: every operation of the document is
//! called on the tiny fixture model with its request example, with a body it must refuse and
//! without the API key, and every answer is checked against the document's schema for its status
//! code (JSON Schema 2020-12, which OpenAPI 3.1 schemas are).

mod common;

use std::collections::BTreeSet;

use common::{HttpAnswer, Server};
use serde_json::{json, Value};

/// Every (method, path) the router serves.
const ROUTES: [(&str, &str); 17] = [
    ("post", "/v1/embeddings"),
    ("post", "/embeddings"),
    ("get", "/v1/models"),
    ("post", "/embed"),
    ("post", "/"),
    ("post", "/invocations"),
    ("post", "/vertex"),
    ("post", "/similarity"),
    ("post", "/tokenize"),
    ("post", "/decode"),
    ("get", "/info"),
    ("get", "/health"),
    ("get", "/"),
    ("get", "/ping"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/api-doc/openapi.json"),
];

const API_KEY: &str = "sk-openapi-test";

/// `value`, or what its `$ref` (`#/...` in `document`) points to.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = document
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}"));
            resolve(document, target)
        }
        None => value,
    }
}

/// Check `answer` against the response the operation documents for its status.
fn check_answer(document: &Value, operation: &Value, what: &str, answer: &HttpAnswer) {
    let status = answer.status.to_string();
    let response = operation["responses"]
        .get(&status)
        .map(|r| resolve(document, r))
        .unwrap_or_else(|| panic!("{what}: status {status} is not documented: {}", answer.body));
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return;
    };
    let content_type = answer.header("content-type").unwrap_or_default();
    let (media, spec) = content
        .iter()
        .find(|(media, _)| content_type.starts_with(media.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{what}: content-type {content_type} is not documented for {status}: {:?}",
                content.keys().collect::<Vec<_>>()
            )
        });
    if media != "application/json" {
        assert!(!answer.body.is_empty(), "{what}: empty {media} answer");
        return;
    }
    let errors = schema_errors(document, &spec["schema"], &answer.json());
    assert!(
        errors.is_empty(),
        "{what}: the {status} answer does not match the document: {errors:?}\n{}",
        answer.body
    );
}

/// Where `value` breaks `schema` (one of the document's), as messages.
fn schema_errors(document: &Value, schema: &Value, value: &Value) -> Vec<String> {
    // The schema with the document's components beside it, so that its `$ref`s resolve.
    let mut schema = schema.clone();
    schema["components"] = document["components"].clone();
    let validator = jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|e| panic!("a schema that does not compile: {e}"));
    validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The request example of an operation that takes a body.
fn request_example<'a>(document: &'a Value, operation: &'a Value) -> Option<&'a Value> {
    let body = resolve(document, operation.get("requestBody")?);
    let json = &body["content"]["application/json"];
    Some(json.get("example").unwrap_or_else(|| {
        json["examples"]
            .as_object()
            .and_then(|examples| examples.values().next())
            .map(|example| &resolve(document, example)["value"])
            .expect("a request example")
    }))
}

fn call(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> HttpAnswer {
    let bearer = key.map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect();
    match method {
        "get" => server.get(path, &headers),
        "post" => server.post_bytes(
            path,
            body.map_or_else(String::new, Value::to_string).as_bytes(),
            &headers,
        ),
        other => panic!("no {other} route is served"),
    }
}

#[test]
fn the_openapi_document_describes_every_answer() {
    let server = Server::tiny_on_cpu(&["--api-key", API_KEY]);
    let document = server.get("/openapi.json", &[]);
    assert_eq!(document.status, 200, "{}", document.body);
    let document = document.json();
    assert_eq!(document, server.get("/api-doc/openapi.json", &[]).json());
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));

    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            documented.insert((method.clone(), path.clone()));
            let what = format!("{} {path}", method.to_uppercase());
            let example = request_example(&document, operation);
            if let Some(example) = example {
                let body = resolve(&document, &operation["requestBody"]);
                let schema = &body["content"]["application/json"]["schema"];
                let errors = schema_errors(&document, schema, example);
                assert!(
                    errors.is_empty(),
                    "{what}: its example breaks its schema: {errors:?}"
                );
            }
            let answer = call(&server, method, path, example, Some(API_KEY));
            assert_eq!(answer.status, 200, "{what}: {}", answer.body);
            check_answer(&document, operation, &what, &answer);

            let protected = operation
                .get("security")
                .or_else(|| document.get("security"))
                .and_then(Value::as_array)
                .is_some_and(|schemes| {
                    !schemes.is_empty() && !schemes[0].as_object().unwrap().is_empty()
                });
            let keyless = call(&server, method, path, example, None);
            if protected {
                assert_eq!(
                    keyless.status, 401,
                    "{what} without the key: {}",
                    keyless.body
                );
            } else {
                assert_eq!(keyless.status, 200, "{what} needs no key: {}", keyless.body);
            }
            check_answer(
                &document,
                operation,
                &format!("{what} without the key"),
                &keyless,
            );

            if example.is_some() {
                for bad in [json!({}), json!([1, 2]), json!({"inputs": 7, "input": 7})] {
                    let refused = call(&server, method, path, Some(&bad), Some(API_KEY));
                    assert!(
                        (400..500).contains(&refused.status),
                        "{what} with {bad}: {} {}",
                        refused.status,
                        refused.body
                    );
                    check_answer(
                        &document,
                        operation,
                        &format!("{what} with {bad}"),
                        &refused,
                    );
                }
                let not_json = server.post_bytes(
                    path,
                    b"{not json",
                    &[("authorization", &format!("Bearer {API_KEY}"))],
                );
                check_answer(
                    &document,
                    operation,
                    &format!("{what} with bad JSON"),
                    &not_json,
                );
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "the document's operations are the router's"
    );
}
