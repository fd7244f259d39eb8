//! `gemma-embed serve` over real loopback sockets, with the tiny random model (whose
//! sentence-transformers embeddings are in `tests/fixtures/tiny/expected.json`).

mod common;

use base64::Engine as _;
use common::{cosine, max_abs_diff, tiny_expected, HttpAnswer, Server};
use gemma_embed::server::Flavor;
use serde_json::{json, Value};

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The embeddings of an OpenAI answer, decoding base64 where given.
fn openai_vectors(answer: &HttpAnswer) -> Vec<Vec<f32>> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["object"], "list");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            match &d["embedding"] {
                Value::String(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                other => floats(other),
            }
        })
        .collect()
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let (cos, diff) = (cosine(got, want), max_abs_diff(got, want));
    assert!(
        cos >= 0.99999 && diff <= 1e-5,
        "{name}: cos {cos}, max diff {diff}"
    );
}

fn renormalized_prefix(v: &[f32], n: usize) -> Vec<f32> {
    let norm = v[..n].iter().map(|x| x * x).sum::<f32>().sqrt();
    v[..n].iter().map(|x| x / norm).collect()
}

#[test]
fn token_id_inputs_match_sentence_transformers_on_every_route() {
    let server = Server::tiny_on_cpu(&[]);
    let expected = tiny_expected();
    let ids: Vec<&Vec<u32>> = expected.cases.iter().map(|c| &c.token_ids).collect();
    let total_tokens: usize = ids.iter().map(|i| i.len()).sum();

    for format in ["float", "base64"] {
        let answer = server.post(
            "/v1/embeddings",
            &json!({"input": ids, "model": "tiny", "encoding_format": format}),
        );
        let vectors = openai_vectors(&answer);
        assert_eq!(vectors.len(), expected.cases.len());
        for (case, got) in expected.cases.iter().zip(&vectors) {
            assert_close(&format!("{format} {}", case.name), got, &case.embedding);
        }
        let body = answer.json();
        assert_eq!(body["usage"]["prompt_tokens"], total_tokens);
        assert_eq!(body["usage"]["total_tokens"], total_tokens);
        assert_eq!(
            answer.header("x-compute-tokens"),
            Some(total_tokens.to_string().as_str())
        );
        assert_eq!(answer.header("x-compute-characters"), Some("0"));
        assert_eq!(answer.header("x-compute-type"), Some("cpu"));
        for header in [
            "x-compute-time",
            "x-tokenization-time",
            "x-queue-time",
            "x-inference-time",
            "x-total-time",
        ] {
            let ms: f64 = answer.header(header).unwrap().parse().unwrap();
            assert!(ms >= 0.0, "{header}");
        }
    }

    let answer = server.post("/embed", &json!({"inputs": ids}));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let vectors: Vec<Vec<f32>> = answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    assert_eq!(vectors.len(), expected.cases.len());
    for (case, got) in expected.cases.iter().zip(&vectors) {
        assert_close(&format!("/embed {}", case.name), got, &case.embedding);
    }

    // One input given as a flat id array (OpenAI's "array of tokens").
    let case = &expected.cases[3];
    let single = openai_vectors(&server.post("/v1/embeddings", &json!({"input": case.token_ids})));
    assert_eq!(single.len(), 1);
    assert_close("flat ids", &single[0], &case.embedding);

    // Matryoshka: the renormalized prefix of the reference.
    for dims in [7, 16] {
        let answer = server.post(
            "/v1/embeddings",
            &json!({"input": [case.token_ids], "dimensions": dims}),
        );
        let got = &openai_vectors(&answer)[0];
        assert_close(
            &format!("dimensions {dims}"),
            got,
            &renormalized_prefix(&case.embedding, dims),
        );
    }

    // TEI's `normalize: false`: the Dense output before the pipeline's Normalize (its first
    // `dimensions` values), as sentence-transformers computes it without that module.
    for dims in [None, Some(16)] {
        let mut body = json!({"inputs": ids, "normalize": false});
        if let Some(dims) = dims {
            body["dimensions"] = json!(dims);
        }
        let answer = server.post("/embed", &body);
        assert_eq!(answer.status, 200, "{}", answer.body);
        let vectors = answer.json();
        for (case, got) in expected.cases.iter().zip(vectors.as_array().unwrap()) {
            let width = dims.unwrap_or(case.embedding.len());
            let want: Vec<f32> = case.embedding[..width]
                .iter()
                .map(|v| v * case.dense_norm)
                .collect();
            let name = format!("normalize false, dimensions {dims:?}, {}", case.name);
            assert_close(&name, &floats(got), &want);
        }
    }
}

/// The ids `/tokenize` reports for `text` (special tokens included).
fn tokenize(server: &Server, body: Value) -> Vec<Vec<u32>> {
    let answer = server.post("/tokenize", &body);
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|tokens| {
            tokens
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// The fixture's cases made from a text, with their text.
fn text_cases(expected: &common::TinyExpected) -> Vec<(&common::TinyCase, &str)> {
    expected
        .cases
        .iter()
        .filter_map(|c| Some((c, c.text.as_deref()?)))
        .collect()
}

#[test]
fn text_inputs_embed_as_their_tokens_with_prompts_and_truncation() {
    let server = Server::tiny_on_cpu(&[]);
    // The fixture's text cases: sentence-transformers' token ids and embeddings.
    let expected = tiny_expected();
    let text_cases = text_cases(&expected);
    assert!(!text_cases.is_empty(), "the fixture has text cases");
    let fixture_texts: Vec<&str> = text_cases.iter().map(|&(_, text)| text).collect();
    let fixture_ids = tokenize(&server, json!({ "inputs": fixture_texts }));
    let fixture_vectors =
        openai_vectors(&server.post("/v1/embeddings", &json!({ "input": fixture_texts })));
    assert_eq!(fixture_vectors.len(), text_cases.len());
    for (((case, _), ids), got) in text_cases.iter().zip(&fixture_ids).zip(&fixture_vectors) {
        assert_eq!(ids, &case.token_ids, "{}", case.name);
        assert_close(&format!("text {}", case.name), got, &case.embedding);
    }

    let texts = ["hello world", "the quick brown fox jumps over the lazy dog"];
    let ids = tokenize(&server, json!({"inputs": texts}));
    assert_eq!(ids[0].first(), Some(&2), "<bos> first");
    assert_eq!(ids[0].last(), Some(&1), "<eos> last");
    let by_text = openai_vectors(&server.post("/v1/embeddings", &json!({"input": texts})));
    let by_ids = openai_vectors(&server.post("/v1/embeddings", &json!({"input": ids})));
    assert_eq!(by_text, by_ids);
    let alias = server.post("/embeddings", &json!({"input": texts}));
    assert_eq!(openai_vectors(&alias), by_text);
    let characters: usize = texts.iter().map(|t| t.chars().count()).sum();
    assert_eq!(
        alias.header("x-compute-characters"),
        Some(characters.to_string().as_str())
    );

    // /tokenize shows the text each token covers.
    let answer = server
        .post("/tokenize", &json!({"inputs": "hello world"}))
        .json();
    let tokens = answer[0].as_array().unwrap();
    assert_eq!(tokens[0]["special"], true);
    assert_eq!(tokens[1]["text"], "hello");
    assert_eq!(
        (tokens[1]["start"].as_u64(), tokens[1]["stop"].as_u64()),
        (Some(0), Some(5))
    );
    let plain = tokenize(
        &server,
        json!({"inputs": "hello world", "add_special_tokens": false}),
    );
    assert_eq!(plain[0], ids[0][1..ids[0].len() - 1]);

    // A prompt is prepended to the text.
    let prompted_ids = tokenize(
        &server,
        json!({"inputs": "hello world", "prompt_name": "query"}),
    );
    let info = server.get("/info", &[]).json();
    let query_prompt = info["prompts"]["query"].as_str().unwrap();
    let direct = tokenize(
        &server,
        json!({"inputs": format!("{query_prompt}hello world")}),
    );
    assert_eq!(prompted_ids, direct);
    let prompted = server.post(
        "/embed",
        &json!({"inputs": "hello world", "prompt_name": "query"}),
    );
    assert_eq!(
        floats(&prompted.json()[0]),
        openai_vectors(&server.post("/v1/embeddings", &json!({"input": prompted_ids})))[0]
    );

    // Longer than max_input_length (64 for the tiny model): refused, or truncated on request.
    let max_len = info["max_input_length"].as_u64().unwrap() as usize;
    let long = (0..100)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let full = tokenize(&server, json!({"inputs": long}))[0].clone();
    assert!(full.len() > max_len);
    let refused = server.post("/v1/embeddings", &json!({"input": ["short", long]}));
    assert_eq!(refused.status, 422, "{}", refused.body);
    let refusal = &refused.json()["error"];
    let message = refusal["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with("`input[1]`: ") && message.contains(&format!("{} tokens", full.len())),
        "{message}"
    );
    assert_eq!(refusal["param"], "input[1]");
    let (bos, eos) = (full[0], full[full.len() - 1]);
    let body = &full[1..full.len() - 1];
    let keep = max_len - 2;
    let right: Vec<u32> = [&[bos][..], &body[..keep], &[eos]].concat();
    let left: Vec<u32> = [&[bos][..], &body[body.len() - keep..], &[eos]].concat();
    for (direction, ids) in [("Right", right), ("Left", left)] {
        let truncated = server.post(
            "/embed",
            &json!({"inputs": long, "truncate": true, "truncation_direction": direction}),
        );
        assert_eq!(truncated.status, 200, "{}", truncated.body);
        assert_eq!(
            floats(&truncated.json()[0]),
            openai_vectors(&server.post("/v1/embeddings", &json!({"input": [ids]})))[0],
            "{direction}"
        );
    }
    let openai_truncated = server.post("/v1/embeddings", &json!({"input": long, "truncate": true}));
    assert_eq!(openai_truncated.status, 200);
    assert_eq!(openai_truncated.json()["usage"]["prompt_tokens"], max_len);
}

/// The message of an error body, once the body is checked to hold exactly `shape`'s fields:
/// OpenAI's `{"error": {"message", "type", "param", "code"}}` or TEI's `{"error", "error_type"}`.
fn error_message(name: &str, body: &Value, shape: Flavor) -> String {
    let keys = |v: &Value| -> Vec<String> {
        let mut keys: Vec<String> = v
            .as_object()
            .unwrap_or_else(|| panic!("{name}: not an object: {body}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    match shape {
        Flavor::OpenAi => {
            assert_eq!(keys(body), ["error"], "{name}: {body}");
            let error = &body["error"];
            assert_eq!(
                keys(error),
                ["code", "message", "param", "type"],
                "{name}: {body}"
            );
            assert!(error["type"].is_string(), "{name}: {body}");
            error["message"].as_str().unwrap().to_string()
        }
        Flavor::Tei => {
            assert_eq!(keys(body), ["error", "error_type"], "{name}: {body}");
            assert!(body["error_type"].is_string(), "{name}: {body}");
            body["error"].as_str().unwrap().to_string()
        }
    }
}

#[test]
fn bad_inputs_get_clear_errors_and_leave_the_server_healthy() {
    let server =
        Server::tiny_on_cpu(&["--payload-limit", "100000", "--max-client-batch-size", "64"]);
    let openai = |body: &[u8]| server.post_bytes("/v1/embeddings", body, &[]);
    let tei = |body: &[u8]| server.post_bytes("/embed", body, &[]);
    let huge = format!(r#"{{"input": "{}"}}"#, "a ".repeat(100_000));
    let many = json!({"input": vec!["x"; 10_000]}).to_string();
    let tei_many = json!({"inputs": vec!["x"; 65]}).to_string();
    let similarity = |body: &[u8]| server.post_bytes("/similarity", body, &[]);
    use Flavor::{OpenAi, Tei};
    let cases: Vec<(&str, HttpAnswer, u16, Flavor, &str)> = vec![
        (
            "malformed",
            openai(b"{\"input\": "),
            400,
            OpenAi,
            "not valid JSON",
        ),
        (
            "not an object",
            openai(b"[\"a\"]"),
            400,
            OpenAi,
            "must be a JSON object",
        ),
        (
            "invalid UTF-8",
            openai(b"{\"input\": \"\xff\xfe\"}"),
            400,
            OpenAi,
            "not valid JSON",
        ),
        (
            "missing input",
            openai(b"{}"),
            422,
            OpenAi,
            "`input`: is required",
        ),
        (
            "wrong type",
            openai(br#"{"input": 5}"#),
            422,
            OpenAi,
            "`input`: must be a string",
        ),
        (
            "empty string",
            openai(br#"{"input": ""}"#),
            422,
            OpenAi,
            "must not be an empty string",
        ),
        (
            "empty array",
            openai(br#"{"input": []}"#),
            422,
            OpenAi,
            "must not be an empty array",
        ),
        (
            "mixed array",
            openai(br#"{"input": ["a", {}]}"#),
            422,
            OpenAi,
            "`input[1]`",
        ),
        (
            "negative id",
            openai(br#"{"input": [[2, -1]]}"#),
            422,
            OpenAi,
            "`input[0][1]`",
        ),
        (
            "id out of range",
            openai(br#"{"input": [[2, 100000, 1]]}"#),
            422,
            OpenAi,
            "outside the model's vocabulary",
        ),
        (
            "zero dims",
            openai(br#"{"input": "a", "dimensions": 0}"#),
            422,
            OpenAi,
            "`dimensions`",
        ),
        (
            "too many dims",
            openai(br#"{"input": "a", "dimensions": 49}"#),
            422,
            OpenAi,
            "dimensions must be in 1..=48",
        ),
        (
            "dims type",
            openai(br#"{"input": "a", "dimensions": "big"}"#),
            422,
            OpenAi,
            "`dimensions`",
        ),
        (
            "encoding",
            openai(br#"{"input": "a", "encoding_format": "hex"}"#),
            422,
            OpenAi,
            "`encoding_format`",
        ),
        (
            "prompt",
            openai(br#"{"input": "a", "prompt_name": "nope"}"#),
            422,
            OpenAi,
            "unknown prompt name `nope`",
        ),
        (
            "model type",
            openai(br#"{"input": "a", "model": 3}"#),
            422,
            OpenAi,
            "`model`",
        ),
        (
            "huge string",
            openai(huge.as_bytes()),
            413,
            OpenAi,
            "larger than the payload limit",
        ),
        (
            "10k inputs",
            openai(many.as_bytes()),
            413,
            OpenAi,
            "10000 inputs",
        ),
        (
            "alias malformed",
            server.post_bytes("/embeddings", b"{", &[]),
            400,
            OpenAi,
            "not valid JSON",
        ),
        (
            "openai no route",
            server.post_bytes("/v1/nope", b"{}", &[]),
            404,
            OpenAi,
            "no route /v1/nope",
        ),
        ("tei malformed", tei(b"{"), 400, Tei, "not valid JSON"),
        (
            "tei normalize",
            tei(br#"{"inputs": "a", "normalize": "no"}"#),
            422,
            Tei,
            "`normalize`",
        ),
        (
            "tei direction",
            tei(br#"{"inputs": "a", "truncate": true, "truncation_direction": "Up"}"#),
            422,
            Tei,
            "`truncation_direction`: must be `Right` or `Left`, got `Up`",
        ),
        (
            "tei direction without truncate",
            tei(br#"{"inputs": "a", "truncation_direction": {}}"#),
            422,
            Tei,
            "`truncation_direction`: must be a string",
        ),
        (
            "tei inputs",
            tei(br#"{"input": "a"}"#),
            422,
            Tei,
            "`inputs`: is required",
        ),
        (
            "tei id out of range",
            tei(br#"{"inputs": [[2, 100000, 1]]}"#),
            422,
            Tei,
            "outside the model's vocabulary",
        ),
        (
            "tei prompt",
            tei(br#"{"inputs": "a", "prompt_name": "nope"}"#),
            422,
            Tei,
            "unknown prompt name `nope`",
        ),
        (
            "tei 65 inputs",
            tei(tei_many.as_bytes()),
            413,
            Tei,
            "65 inputs",
        ),
        (
            "tei huge string",
            tei(huge.as_bytes()),
            413,
            Tei,
            "larger than the payload limit",
        ),
        (
            "tokenize ids",
            server.post_bytes("/tokenize", br#"{"inputs": [[1, 2]]}"#, &[]),
            422,
            Tei,
            "`inputs[0]`",
        ),
        (
            "tokenize malformed",
            server.post_bytes("/tokenize", b"[1]", &[]),
            400,
            Tei,
            "must be a JSON object",
        ),
        (
            "similarity without sentences",
            similarity(br#"{"inputs": {"source_sentence": "a"}}"#),
            422,
            Tei,
            "`inputs.sentences`: is required",
        ),
        (
            "similarity inputs as a list",
            similarity(br#"{"inputs": ["a", "b"]}"#),
            422,
            Tei,
            "`inputs`: must be an object",
        ),
        (
            "similarity empty sentence",
            similarity(br#"{"inputs": {"source_sentence": "a", "sentences": ["b", ""]}}"#),
            422,
            Tei,
            "`inputs.sentences[1]`: must not be an empty string",
        ),
        (
            "similarity too long",
            similarity(
                json!({
                    "inputs": {"source_sentence": "a", "sentences": ["b", "w1 ".repeat(100)]},
                    "parameters": {"truncate": false},
                })
                .to_string()
                .as_bytes(),
            ),
            422,
            Tei,
            "`inputs.sentences[1]`: 102 tokens, more than max_seq_length = 64",
        ),
        (
            "similarity 64 sentences",
            similarity(
                json!({"inputs": {"source_sentence": "a", "sentences": vec!["x"; 64]}})
                    .to_string()
                    .as_bytes(),
            ),
            413,
            Tei,
            "65 texts",
        ),
        (
            "similarity parameters",
            similarity(
                br#"{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": []}"#,
            ),
            422,
            Tei,
            "`parameters`: must be an object",
        ),
        (
            "one id list, one bad id",
            openai(br#"{"input": [2, 5, 100000, 1]}"#),
            422,
            OpenAi,
            "`input`: token 2: id 100000 is outside the model's vocabulary",
        ),
        (
            "one text too long",
            tei(json!({"inputs": "w1 ".repeat(100), "truncate": false})
                .to_string()
                .as_bytes()),
            422,
            Tei,
            "`inputs`: 102 tokens, more than max_seq_length = 64",
        ),
        (
            "similarity parameters.truncate",
            similarity(
                br#"{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"truncate": "yes"}}"#,
            ),
            422,
            Tei,
            "`parameters.truncate`: must be a boolean",
        ),
        (
            "decode empty list",
            server.post_bytes("/decode", br#"{"ids": [[2, 1], []]}"#, &[]),
            422,
            Tei,
            "`ids[1]`: must not be an empty array",
        ),
        (
            "vertex instances over the limit together",
            server.post_bytes(
                "/vertex",
                json!({"instances": [{"inputs": vec!["x"; 40]}, {"inputs": vec!["x"; 40]}]})
                    .to_string()
                    .as_bytes(),
                &[],
            ),
            413,
            Tei,
            "the instances hold 80 inputs in all",
        ),
        (
            "vertex instance over the limit",
            server.post_bytes(
                "/vertex",
                json!({"instances": [{"inputs": "x"}, {"inputs": vec!["x"; 65]}]})
                    .to_string()
                    .as_bytes(),
                &[],
            ),
            413,
            Tei,
            "`instances[1]`: `inputs` holds 65 inputs",
        ),
        (
            "vertex unknown prompt",
            server.post_bytes(
                "/vertex",
                br#"{"instances": [{"inputs": "x"}, {"inputs": "x", "prompt_name": "nope"}]}"#,
                &[],
            ),
            422,
            Tei,
            "`instances[1].prompt_name`: unknown prompt name `nope`",
        ),
        (
            "decode text",
            server.post_bytes("/decode", br#"{"ids": "hello"}"#, &[]),
            422,
            Tei,
            "`ids`: must be an array",
        ),
        (
            "decode unknown id",
            server.post_bytes("/decode", br#"{"ids": [[2, 1], [2, 4000000]]}"#, &[]),
            422,
            Tei,
            "`ids[1]`: token 1: id 4000000 is outside the tokenizer's vocabulary",
        ),
        (
            "decode negative id",
            server.post_bytes("/decode", br#"{"ids": [2, -1]}"#, &[]),
            422,
            Tei,
            "`ids[1]`: must be a token id",
        ),
        (
            "tei no route",
            server.post_bytes("/nope", b"{}", &[]),
            404,
            Tei,
            "no route /nope",
        ),
    ];
    for (name, answer, status, shape, message) in &cases {
        assert_eq!(answer.status, *status, "{name}: {}", answer.body);
        let text = error_message(name, &answer.json(), *shape);
        assert!(text.contains(message), "{name}: {text}");
    }
    // One body of each shape, byte for byte.
    assert_eq!(
        openai(b"{}").body,
        r#"{"error":{"code":null,"message":"`input`: is required","param":"input","type":"invalid_request_error"}}"#
    );
    assert_eq!(
        tei(b"{}").body,
        r#"{"error":"`inputs`: is required","error_type":"Validation"}"#
    );
    assert_eq!(server.get("/health", &[]).status, 200);
    let ok = server.post("/v1/embeddings", &json!({"input": "still fine"}));
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn similarity_and_decode_answer_as_tei_does() {
    let server = Server::tiny_on_cpu(&[]);
    let expected = tiny_expected();
    let text_cases = text_cases(&expected);
    assert!(text_cases.len() >= 2, "the fixture has text cases");

    // The cosine of sentence-transformers' embeddings, the source among the sentences too.
    let (source_case, source) = text_cases[0];
    let sentences: Vec<&str> = text_cases.iter().rev().map(|&(_, text)| text).collect();
    let answer = server.post(
        "/similarity",
        &json!({"inputs": {"source_sentence": source, "sentences": sentences}}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let scores = floats(&answer.json());
    assert_eq!(scores.len(), sentences.len());
    for ((case, _), score) in text_cases.iter().rev().zip(&scores) {
        let want = cosine(&source_case.embedding, &case.embedding);
        assert!(
            (f64::from(*score) - want).abs() <= 1e-5,
            "{} against {}: {score}, sentence-transformers {want}",
            source_case.name,
            case.name
        );
    }
    let tokens: usize = [source_case]
        .into_iter()
        .chain(text_cases.iter().rev().map(|&(case, _)| case))
        .map(|case| case.token_ids.len())
        .sum();
    assert_eq!(
        answer.header("x-compute-tokens"),
        Some(tokens.to_string().as_str())
    );

    // `parameters.prompt_name` applies to the source and to every sentence.
    let prompted = server.post(
        "/similarity",
        &json!({
            "inputs": {"source_sentence": source, "sentences": sentences},
            "parameters": {"prompt_name": "query"},
        }),
    );
    assert_eq!(prompted.status, 200, "{}", prompted.body);
    let mut texts = vec![source];
    texts.extend(&sentences);
    let vectors: Vec<Vec<f32>> = server
        .post("/embed", &json!({"inputs": texts, "prompt_name": "query"}))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    for (vector, score) in vectors[1..].iter().zip(floats(&prompted.json())) {
        assert!((f64::from(score) - cosine(&vectors[0], vector)).abs() <= 1e-6);
    }
    assert_ne!(
        floats(&prompted.json()),
        scores,
        "the prompt changes the scores"
    );

    // /decode of sentence-transformers' token ids for the fixture's texts. What Python's
    // `tokenizers` answers for this word-level tokenizer: `nonsense` is outside its vocabulary,
    // became `<unk>`, and is skipped with the other special tokens unless they are asked for.
    let ids: Vec<&Vec<u32>> = text_cases.iter().map(|(c, _)| &c.token_ids).collect();
    assert_eq!(
        text_cases.iter().map(|&(_, text)| text).collect::<Vec<_>>(),
        ["w10 w11 w12", "w250 w7 nonsense w299 w4"]
    );
    let decoded = server.post("/decode", &json!({ "ids": ids }));
    assert_eq!(decoded.status, 200, "{}", decoded.body);
    assert_eq!(decoded.json(), json!(["w10 w11 w12", "w250 w7 w299 w4"]));
    let single = server.post(
        "/decode",
        &json!({"ids": ids[1], "skip_special_tokens": false}),
    );
    assert_eq!(single.json(), json!(["<bos> w250 w7 <unk> w299 w4 <eos>"]));
}

#[test]
fn api_key_guards_every_route_but_health_and_metrics() {
    let server = Server::tiny_on_cpu(&["--api-key", "s3cret"]);
    let body = json!({"input": "hi"}).to_string();
    let denied = server.post_bytes("/v1/embeddings", body.as_bytes(), &[]);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"]["code"], "invalid_api_key");
    let wrong = server.post_bytes(
        "/v1/embeddings",
        body.as_bytes(),
        &[("authorization", "Bearer nope")],
    );
    assert_eq!(wrong.status, 401);
    let allowed = server.post_bytes(
        "/v1/embeddings",
        body.as_bytes(),
        &[("authorization", "Bearer s3cret")],
    );
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(server.get("/info", &[]).status, 401);
    assert_eq!(server.post("/embed", &json!({"inputs": "hi"})).status, 401);
    let pair = json!({"inputs": {"source_sentence": "hi", "sentences": ["ho"]}});
    assert_eq!(server.post("/similarity", &pair).status, 401);
    assert_eq!(server.post("/decode", &json!({"ids": [2, 1]})).status, 401);
    assert_eq!(server.get("/health", &[]).status, 200);
    assert_eq!(server.get("/metrics", &[]).status, 200);
}

#[test]
fn a_body_far_past_the_payload_limit_gets_its_413_not_a_reset_connection() {
    // Without draining, the server answers after reading the first 100 kB and closes the
    // connection while a 4 MB body is still being written: the client sees a broken pipe or a
    // reset instead of the answer.
    let server = Server::tiny_on_cpu(&["--payload-limit", "100000"]);
    let body = format!(r#"{{"input": "{}"}}"#, "a ".repeat(2_000_000));
    for round in 0..3 {
        for (path, shape) in [("/v1/embeddings", Flavor::OpenAi), ("/embed", Flavor::Tei)] {
            for chunked in [false, true] {
                let name = format!("round {round}, {path}, chunked {chunked}");
                let answer = if chunked {
                    server.post_chunked(path, body.as_bytes())
                } else {
                    server.post_bytes(path, body.as_bytes(), &[])
                };
                assert_eq!(answer.status, 413, "{name}: {}", answer.body);
                let message = error_message(&name, &answer.json(), shape);
                assert!(
                    message.contains("100000 bytes") && message.contains("--payload-limit"),
                    "{name}: {message}"
                );
            }
        }
    }
    // A client that waits for `100 Continue` before sending 10 MB is refused at once, and
    // never invited to send them.
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!(
            "POST /embed HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("--payload-limit"),
        "{answer}"
    );
    let fine = server.post("/v1/embeddings", &json!({"input": "a"}));
    assert_eq!(fine.status, 200, "{}", fine.body);
}

#[test]
fn a_wrong_method_gets_405_in_the_route_s_error_shape() {
    let server = Server::tiny_on_cpu(&["--api-key", "k"]);
    for (method, path, allow, shape) in [
        ("GET", "/v1/embeddings", "POST", Flavor::OpenAi),
        ("DELETE", "/v1/embeddings", "POST", Flavor::OpenAi),
        ("GET", "/embed", "POST", Flavor::Tei),
        ("DELETE", "/health", "GET,HEAD", Flavor::Tei),
    ] {
        let answer = if method == "GET" {
            server.get(path, &[])
        } else {
            server.delete(path)
        };
        let name = format!("{method} {path}");
        assert_eq!(answer.status, 405, "{name}: {}", answer.body);
        assert_eq!(answer.header("allow"), Some(allow), "{name}");
        let message = error_message(&name, &answer.json(), shape);
        assert_eq!(
            message,
            format!("{path} does not answer {method} (see the Allow header)")
        );
    }
}

#[test]
fn a_request_larger_than_the_whole_queue_gets_413_at_once() {
    // It could never be admitted: 413, not a 429 that a client would retry.
    let server = Server::tiny_on_cpu(&["--max-queued-inputs", "4"]);
    let start = std::time::Instant::now();
    let answer = server.post("/v1/embeddings", &json!({"input": vec!["x"; 5]}));
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(answer.json()["error"]["code"], "request_too_large");
    let message = error_message("openai", &answer.json(), Flavor::OpenAi);
    assert!(
        message.contains("a request of 5 inputs") && message.contains("max_queued_inputs = 4"),
        "{message}"
    );
    let tei = server.post("/embed", &json!({"inputs": vec!["x"; 5]}));
    assert_eq!(tei.status, 413);
    assert_eq!(tei.json()["error_type"], "Validation");
    assert_eq!(
        server
            .post("/embed", &json!({"inputs": vec!["x"; 4]}))
            .status,
        200
    );
    // Vertex instances asking for the same embedding are admitted together, as one /embed
    // body's inputs are: too many for the queue in all is 413 too, and what fits goes through
    // (apart, the two halves raced each other and one got 429).
    let vertex = |sizes: [usize; 2]| {
        let instances: Vec<Value> = sizes
            .iter()
            .map(|&n| json!({"inputs": vec!["x"; n]}))
            .collect();
        server.post("/vertex", &json!({ "instances": instances }))
    };
    let too_many = vertex([3, 2]);
    assert_eq!(too_many.status, 413, "{}", too_many.body);
    assert_eq!(too_many.json()["error_type"], "Validation");
    // Instances of other options are admitted apart, but answered together: 413 as well.
    let instances = json!([{"inputs": vec!["x"; 4]}, {"inputs": "x", "dimensions": 16}]);
    let apart = server.post("/vertex", &json!({ "instances": instances }));
    assert_eq!(apart.status, 413, "{}", apart.body);
    assert!(
        apart
            .body
            .contains("a request of 5 inputs is more than the whole queue holds"),
        "{}",
        apart.body
    );
    // Their tokens, as reserved before tokenization (one per byte, at most max_seq_length = 64
    // a text: 2 x 5 x 64 = 640, more than 512), are capped at the whole budget between them, as
    // one request's are, then settle on their real count: admitted, as the same texts are as
    // one set of options.
    let server = Server::tiny_on_cpu(&["--max-queued-tokens", "512"]);
    let texts = vec!["word ".repeat(30); 5];
    let instances = json!([{"inputs": texts}, {"inputs": texts, "dimensions": 16}]);
    let apart = server.post("/vertex", &json!({ "instances": instances }));
    assert_eq!(apart.status, 200, "{}", apart.body);
    let predictions = apart.json()["predictions"].clone();
    assert_eq!(predictions[0].as_array().unwrap().len(), 5);
    assert_eq!(predictions[1][0].as_array().unwrap().len(), 16);
    let all_texts = [texts.clone(), texts].concat();
    let together = server.post("/embed", &json!({ "inputs": all_texts }));
    assert_eq!(together.status, 200, "{}", together.body);
    for _ in 0..5 {
        let fits = vertex([2, 2]);
        assert_eq!(fits.status, 200, "{}", fits.body);
        assert_eq!(fits.json()["predictions"][1].as_array().unwrap().len(), 2);
    }
}

/// The value of an unlabelled or labelled sample in Prometheus text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
        .parse()
        .unwrap()
}

#[test]
fn info_and_metrics_describe_the_server() {
    let server = Server::tiny_on_cpu(&[
        "--served-model-name",
        "tiny-gemma",
        "--max-batch-tokens",
        "4096",
        "--max-queued-inputs",
        "77",
        "--tokenization-workers",
        "1",
    ]);
    let info = server.get("/info", &[]).json();
    assert_eq!(info["model_id"], "tiny-gemma");
    // The engine's limits, as the flags set them.
    assert_eq!(info["max_batch_tokens"], 4096);
    assert_eq!(info["max_queued_inputs"], 77);
    assert_eq!(info["tokenization_workers"], 1);
    assert_eq!(info["embedding_dim"], 48);
    assert_eq!(info["backend"], "cpu");
    assert_eq!(info["max_input_length"], 64);
    assert!(info["prompts"]["query"].is_string());
    assert!(info["version"].is_string());

    let models = server.get("/v1/models", &[]).json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny-gemma");

    for _ in 0..3 {
        let answer = server.post("/v1/embeddings", &json!({"input": ["a b", "c"]}));
        assert_eq!(answer.json()["model"], "tiny-gemma");
    }
    server.post("/v1/embeddings", &json!({"input": ""}));
    // The root: a health check by GET, an embedding by POST, counted apart.
    assert_eq!(server.get("/", &[]).status, 200);
    assert_eq!(server.post("/", &json!({"inputs": "a"})).status, 200);
    let metrics = server.get("/metrics", &[]);
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = &metrics.body;
    for (labels, count) in [
        (r#"method="POST",route="/v1/embeddings",status="200""#, 3.0),
        (r#"method="POST",route="/v1/embeddings",status="422""#, 1.0),
        (r#"method="GET",route="/",status="200""#, 1.0),
        (r#"method="POST",route="/",status="200""#, 1.0),
    ] {
        let name = format!("gemma_embed_requests_total{{{labels}}}");
        assert_eq!(sample(text, &name), count, "{name}");
    }
    assert_eq!(sample(text, "gemma_embed_embedded_inputs_total"), 7.0);
    // The warm-up ran too; every request's inputs went through a batch.
    assert!(sample(text, "gemma_embed_batches_total") >= 2.0);
    assert!(sample(text, "gemma_embed_batch_sequences_count") >= 2.0);
    assert_eq!(sample(text, "gemma_embed_queue_inputs"), 0.0);
    assert_eq!(sample(text, "gemma_embed_tokenization_seconds_count"), 4.0);
    // One family per name in OpenMetrics' model, where a counter `x_total` is the family `x`:
    // no counter may share it with a histogram or gauge.
    let mut families = std::collections::BTreeSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        let family = match kind {
            "counter" => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        assert!(families.insert(family.to_string()), "two families {family}");
    }
}

#[test]
fn sigterm_stops_the_server_with_exit_code_zero() {
    let mut server = Server::tiny_on_cpu(&[]);
    assert_eq!(server.post("/embed", &json!({"inputs": "hi"})).status, 200);
    let status = server.terminate(std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("shutting down"));
    let url = server.url.clone();
    let refused = std::net::TcpStream::connect(url.trim_start_matches("http://"));
    assert!(refused.is_err(), "still accepting after exit");
}

#[test]
fn a_full_queue_says_when_to_retry_and_a_second_sigterm_ends_a_shutdown() {
    use std::io::Write;
    let mut server =
        Server::tiny_on_cpu(&["--shutdown-timeout", "300", "--max-queued-inputs", "1"]);
    // Seconds of tokenizing: 7 MB truncated from the left, so every byte is tokenized.
    let text = "abc def ghi ".repeat(600_000);
    let body =
        json!({"inputs": text, "truncate": true, "truncation_direction": "Left"}).to_string();
    let address = server.url.trim_start_matches("http://").to_string();
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    write!(
        client,
        "POST /embed HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let start = std::time::Instant::now();
    while sample(
        &server.get("/metrics", &[]).body,
        "gemma_embed_queue_inputs",
    ) < 1.0
    {
        assert!(
            start.elapsed().as_secs() < 60,
            "the request was not admitted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The queue holds that one input: a 429, with when to try again.
    let refused = server.post("/v1/embeddings", &json!({"input": "x"}));
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    server.send_sigterm();
    while !server.log().contains("shutting down") {
        assert!(
            start.elapsed().as_secs() < 60,
            "no shutdown: {}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The first one waits for the request (up to 300 s); the second one is SIGTERM's own end.
    server.send_sigterm();
    let status = server.wait_for_exit(std::time::Duration::from_secs(30));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15),
        "{status:?}: {}",
        server.log()
    );
    assert!(!server.log().contains("stopped"), "{}", server.log());
    drop(client);
}

/// A client with a small receive buffer that pipelines five large requests on one connection;
/// SIGTERMs the server (its pid, argv[2]) while the first answer is on its way, then reads to the
/// end. Prints the whole answers it got, the bytes left over, and how the connection ended.
const PIPELINING_CLIENT: &str = r#"
import json, os, signal, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
body = json.dumps({"inputs": ["w%d" % i for i in range(2048)]}).encode()
request = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", port))
s.sendall(request * 5)
time.sleep(2)
os.kill(pid, signal.SIGTERM)
time.sleep(1)
s.settimeout(60)
data, end = b"", "eof"
while True:
    try:
        chunk = s.recv(65536)
    except OSError as e:
        end = type(e).__name__
        break
    if not chunk:
        break
    data += chunk
answers = 0
while b"\r\n\r\n" in data:
    head, rest = data.split(b"\r\n\r\n", 1)
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0]
    if len(rest) < length:
        break
    json.loads(rest[:length])
    answers, data = answers + 1, rest[length:]
print(json.dumps({"answers": answers, "leftover": len(data), "end": end}))
"#;

#[test]
fn pipelined_requests_at_a_graceful_shutdown_get_whole_answers_and_a_clean_end() {
    let mut server = Server::tiny_on_cpu(&["--shutdown-timeout", "30"]);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let python = common::python();
    let out = std::process::Command::new(python)
        .args(["-c", PIPELINING_CLIENT, &port, &server.pid().to_string()])
        .output()
        .expect("run python3");
    let got = common::json_stdout("the pipelining client", &out);
    // Closed with unread requests, the socket used to reset the connection: the kernel dropped
    // the end of the answer being sent (about 1 MB of its 1.15 MB reached the client).
    assert_eq!(got["end"], "eof", "{got}");
    assert_eq!(got["leftover"], 0, "{got}");
    assert!(got["answers"].as_u64() >= Some(1), "{got}");
    let status = server.wait_for_exit(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

#[test]
fn auto_truncate_makes_truncation_the_default() {
    let server = Server::tiny_on_cpu(&["--auto-truncate"]);
    let long = (0..100)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(server.get("/info", &[]).json()["auto_truncate"], true);
    let truncated = server.post("/v1/embeddings", &json!({"input": long}));
    assert_eq!(truncated.status, 200, "{}", truncated.body);
    assert_eq!(truncated.json()["usage"]["prompt_tokens"], 64);
    let tei = server.post("/embed", &json!({"inputs": long}));
    assert_eq!(tei.status, 200, "{}", tei.body);
    assert_eq!(
        floats(&tei.json()[0]),
        openai_vectors(&truncated)[0],
        "both routes truncate on the right"
    );
    let refused = server.post("/embed", &json!({"inputs": long, "truncate": false}));
    assert_eq!(refused.status, 422, "{}", refused.body);
}

#[test]
fn a_default_prompt_applies_to_texts_that_name_none() {
    let expected = tiny_expected();
    let text_cases = text_cases(&expected);
    let (_, text) = text_cases[0];
    let plain = Server::tiny_on_cpu(&[]);
    let query_prompt = plain.get("/info", &[]).json()["prompts"]["query"]
        .as_str()
        .unwrap()
        .to_string();
    let prompted_ids = tokenize(&plain, json!({"inputs": format!("{query_prompt}{text}")}));
    let prompted = openai_vectors(&plain.post("/v1/embeddings", &json!({"input": prompted_ids})));
    let unprompted = openai_vectors(&plain.post("/v1/embeddings", &json!({"input": text})));
    assert_ne!(prompted, unprompted);

    let server = Server::tiny_on_cpu(&["--default-prompt-name", "query"]);
    let info = server.get("/info", &[]).json();
    assert_eq!(info["default_prompt_name"], "query");
    assert_eq!(info["default_prompt"], query_prompt.as_str());
    assert_eq!(tokenize(&server, json!({"inputs": text})), prompted_ids);
    assert_eq!(
        openai_vectors(&server.post("/v1/embeddings", &json!({"input": text}))),
        prompted
    );
    let tei = server.post("/embed", &json!({"inputs": text}));
    assert_eq!(vec![floats(&tei.json()[0])], prompted);
    // A request's own prompt wins; token ids are used as they are.
    let document = server.post(
        "/embed",
        &json!({"inputs": text, "prompt_name": "document"}),
    );
    let document_plain = plain.post(
        "/embed",
        &json!({"inputs": text, "prompt_name": "document"}),
    );
    assert_eq!(document.json(), document_plain.json());
    let ids = tokenize(&plain, json!({ "inputs": text }));
    assert_eq!(
        openai_vectors(&server.post("/v1/embeddings", &json!({ "input": ids }))),
        unprompted
    );
    drop(server);

    let literal = Server::tiny_on_cpu(&["--default-prompt", "w1 w2 "]);
    let info = literal.get("/info", &[]).json();
    assert_eq!(info["default_prompt_name"], Value::Null);
    assert_eq!(info["default_prompt"], "w1 w2 ");
    assert_eq!(
        tokenize(&literal, json!({ "inputs": text })),
        tokenize(&plain, json!({ "inputs": format!("w1 w2 {text}") }))
    );

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(["serve", "--backend", "cpu", "--port", "0", "--model"])
        .arg(common::tiny_model_dir())
        .args(["--default-prompt-name", "querry"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--default-prompt-name")
            && stderr.contains("unknown prompt name `querry`")
            && stderr.contains("query"),
        "{stderr}"
    );
}

#[test]
fn cors_headers_go_only_to_allowed_origins() {
    let allowed = "https://app.example";
    let server = Server::tiny_on_cpu(&[
        "--api-key",
        "s3cret",
        "--cors-allow-origin",
        allowed,
        "--cors-allow-origin",
        "http://localhost:3000",
    ]);
    // The preflight is answered without the API key, and allows the headers it asks for (OpenAI's
    // JavaScript SDK sends `x-stainless-*` ones).
    let preflight = server.options(
        "/v1/embeddings",
        &[
            ("origin", allowed),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type,authorization,x-stainless-os,x-stainless-retry-count",
            ),
        ],
    );
    assert_eq!(preflight.status, 200, "{}", preflight.body);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some(allowed)
    );
    let methods = preflight.header("access-control-allow-methods").unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let headers = preflight.header("access-control-allow-headers").unwrap();
    for asked in [
        "authorization",
        "content-type",
        "x-stainless-os",
        "x-stainless-retry-count",
    ] {
        assert!(headers.contains(asked), "{asked}: {headers}");
    }

    let body = json!({"inputs": "w1 w2"}).to_string();
    let key = ("authorization", "Bearer s3cret");
    let answer = server.post_bytes("/embed", body.as_bytes(), &[("origin", allowed), key]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some(allowed));
    let exposed = answer.header("access-control-expose-headers").unwrap();
    assert!(exposed.contains("x-compute-tokens"), "{exposed}");
    let other = server.post_bytes(
        "/embed",
        body.as_bytes(),
        &[("origin", "https://elsewhere.example"), key],
    );
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(other.header("access-control-allow-origin"), None);
    // A refusal carries the header too, so that the page can read why.
    let refused = server.post_bytes("/embed", body.as_bytes(), &[("origin", allowed)]);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("access-control-allow-origin"), Some(allowed));

    let any = Server::tiny_on_cpu(&["--cors-allow-origin", "*"]);
    let answer = any.post_bytes("/embed", body.as_bytes(), &[("origin", allowed)]);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    drop(any);

    let plain = Server::tiny_on_cpu(&[]);
    let answer = plain.post_bytes("/embed", body.as_bytes(), &[("origin", allowed)]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), None);

    // Origins no browser sends: they could never match.
    for origin in [
        "https://a.example\nx",
        "https://app.example/",
        "https://App.example",
        "app.example",
    ] {
        let (status, stderr) = serve_refused(&["--cors-allow-origin", origin]);
        assert_eq!(status.code(), Some(1), "{origin}: {stderr}");
        assert!(
            stderr.contains("CORS origin") && stderr.contains("not an origin as browsers send it"),
            "{origin}: {stderr}"
        );
    }
}

#[test]
fn tei_root_sagemaker_and_vertex_routes_answer_as_embed() {
    let server = Server::tiny_on_cpu(&["--api-key", "s3cret"]);
    let key = [("authorization", "Bearer s3cret")];
    let post = |path: &str, body: &Value| {
        let answer = server.post_bytes(path, body.to_string().as_bytes(), &key);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        answer.json()
    };
    let expected = tiny_expected();
    let (case, text) = text_cases(&expected)[1];
    let embed = post("/embed", &json!({ "inputs": text }));
    assert_close("/embed", &floats(&embed[0]), &case.embedding);
    // Hugging Face inference clients post to the root; SageMaker to /invocations.
    assert_eq!(post("/", &json!({ "inputs": text })), embed);
    assert_eq!(post("/invocations", &json!({ "inputs": [text] })), embed);
    let unkeyed = server.post("/", &json!({ "inputs": text }));
    assert_eq!(unkeyed.status, 401);
    // Their health checks stay open, like /health.
    assert_eq!(server.get("/", &[]).status, 200);
    assert_eq!(server.get("/ping", &[]).status, 200);

    // Vertex AI: one /embed answer per instance, in order.
    let vertex = post(
        "/vertex",
        &json!({"instances": [
            {"inputs": text},
            {"inputs": [text, "w1 w2"], "dimensions": 7},
        ]}),
    );
    let predictions = vertex["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    assert_eq!(predictions[0], embed);
    assert_eq!(
        predictions[1],
        post(
            "/embed",
            &json!({"inputs": [text, "w1 w2"], "dimensions": 7})
        )
    );
    assert_close(
        "vertex dimensions 7",
        &floats(&predictions[1][0]),
        &renormalized_prefix(&case.embedding, 7),
    );
    for (body, status, message) in [
        (
            json!({"instances": []}),
            422,
            "`instances`: must not be an empty array",
        ),
        (
            json!({"instances": ["w1"]}),
            422,
            "`instances[0]`: must be an object",
        ),
        (
            json!({"instances": [{"inputs": "w1"}, {"inputs": ["w2", ""]}]}),
            422,
            "`instances[1].inputs[1]`: must not be an empty string",
        ),
        (
            json!({"instances": [{"inputs": "w1"}, {"inputs": [[2, 99999]]}]}),
            422,
            "`instances[1].inputs[0]`: token 1: id 99999 is outside",
        ),
        (
            json!({"instances": [{"inputs": "w1"}, {"inputs": "w2", "dimensions": 100000}]}),
            422,
            "`instances[1].dimensions`: dimensions must be in 1..=",
        ),
    ] {
        let answer = server.post_bytes("/vertex", body.to_string().as_bytes(), &key);
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        let text = error_message("vertex", &answer.json(), Flavor::Tei);
        assert!(text.contains(message), "{body}: {text}");
    }
}

/// `gemma-embed serve` on the tiny model with `args`, for flags refused before it listens: its
/// exit status and stderr.
fn serve_refused(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gemma-embed"))
        .args(["serve", "--backend", "cpu", "--port", "0", "--model"])
        .arg(common::tiny_model_dir())
        .args(args)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn limits_that_admit_nothing_are_refused_at_start() {
    for (flag, value, message) in [
        (
            "--max-client-batch-size",
            "0",
            "--max-client-batch-size must be at least 1",
        ),
        ("--payload-limit", "0", "--payload-limit must be at least 1"),
        (
            "--header-timeout",
            "0",
            "--header-timeout must be a positive number",
        ),
        (
            "--header-timeout",
            "1e19",
            "--header-timeout must be a positive number of seconds, at most 86400",
        ),
        (
            "--shutdown-timeout",
            "1e20",
            "--shutdown-timeout must be a number of seconds from 0 to 86400",
        ),
        (
            "--max-queued-tokens",
            "10",
            "is below the model's max_seq_length 64",
        ),
    ] {
        let (status, stderr) = serve_refused(&[flag, value]);
        assert!(!status.success(), "{flag} {value} started: {stderr}");
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
    }
}

#[test]
fn clients_that_never_finish_a_request_are_disconnected_and_counted() {
    use std::io::{Read, Write};
    let server =
        Server::tiny_on_cpu(&["--header-timeout", "1", "--max-client-batch-size", "20000"]);
    let address = server.url.trim_start_matches("http://");
    let connect = || {
        let stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        stream
    };
    // A whole POST /embed of a JSON body, written by hand.
    let post_embed = |stream: &mut std::net::TcpStream, body: &str| {
        let head = format!(
            "POST /embed HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
    };
    // Headers cut off: the connection is closed (with a 408 or without an answer).
    let mut unfinished = connect();
    unfinished
        .write_all(format!("POST /embed HTTP/1.1\r\nHost: {address}\r\nAuth").as_bytes())
        .unwrap();
    let start = std::time::Instant::now();
    let mut answer = String::new();
    unfinished.read_to_string(&mut answer).unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(15));
    // A keep-alive connection left idle after its answer is closed too.
    let mut idle = connect();
    post_embed(&mut idle, r#"{"inputs": "hi"}"#);
    let mut answer = String::new();
    idle.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    // Requests that finish in time are served as before, and an invented method is counted
    // as `OTHER`, not under its own name.
    assert_eq!(server.post("/embed", &json!({"inputs": "hi"})).status, 200);
    let mut invented = connect();
    invented
        .write_all(format!("FROBNICATE /embed HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = [0u8; 12];
    invented.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 405");
    // A client that goes away before its answer is counted as 499, as nginx logs it.
    let mut gone = connect();
    let body = json!({"inputs": vec!["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"; 12000]}).to_string();
    post_embed(&mut gone, &body);
    drop(gone);
    let closed = r#"gemma_embed_requests_total{method="POST",route="/embed",status="499"}"#;
    let start = std::time::Instant::now();
    while !server.get("/metrics", &[]).body.contains(closed) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no 499 counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let metrics = server.get("/metrics", &[]).body;
    assert!(!metrics.contains("FROBNICATE"), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "gemma_embed_requests_total{method=\"OTHER\",route=\"/embed\",status=\"405\"}"
        ),
        1.0
    );
}
