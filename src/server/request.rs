//! Reading request bodies field by field, so that every error names the field (and the input
//! index) at fault instead of a position in the JSON text.

use axum::body::Bytes;
use serde_json::{Map, Value};

use super::error::{ApiError, ErrorKind};

/// One input as a client sent it.
#[derive(Clone, Debug, PartialEq)]
pub enum RawInput {
    Text(String),
    /// Token ids, used as they are (`<bos>`/`<eos>` included if the client wants them, as
    /// `/tokenize` returns them).
    Ids(Vec<u32>),
}

/// How a request names its inputs in errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputNames {
    /// One input given alone (a string, or one array of token ids): the field itself.
    Single(&'static str),
    /// An array of inputs: `field[i]`.
    List(&'static str),
    /// TEI's similarity: the source sentence first, then `inputs.sentences[i]`.
    Similarity,
    /// Inputs gathered from several parts of a request (the instances of a `/vertex` body):
    /// each one's name.
    Each(Vec<String>),
}

impl InputNames {
    /// The request field of input `index`.
    pub fn name(&self, index: usize) -> String {
        match (self, index) {
            (Self::Single(field), _) => field.to_string(),
            (Self::List(field), i) => format!("{field}[{i}]"),
            (Self::Similarity, 0) => "inputs.source_sentence".to_string(),
            (Self::Similarity, i) => format!("inputs.sentences[{}]", i - 1),
            (Self::Each(names), i) => names[i].clone(),
        }
    }
}

/// The body as a JSON object. The raw bytes go here: a handler keeps only the parsed request
/// while it waits for the engine (a large body is not held twice).
pub fn object(body: Bytes) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorKind::Malformed,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::new(
            ErrorKind::Malformed,
            format!("the body must be a JSON object, got {}", kind(&other)),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field `name`, absent when missing or null.
fn present<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

pub fn optional_bool(body: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    present(body, name)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| ApiError::field(name, format!("must be a boolean, got {}", kind(v))))
        })
        .transpose()
}

pub fn optional_str<'a>(
    body: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    present(body, name)
        .map(|v| {
            v.as_str()
                .ok_or_else(|| ApiError::field(name, format!("must be a string, got {}", kind(v))))
        })
        .transpose()
}

/// A positive integer field.
pub fn optional_count(body: &Map<String, Value>, name: &str) -> Result<Option<usize>, ApiError> {
    present(body, name)
        .map(|v| match v.as_u64() {
            Some(n) if n > 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => Err(ApiError::field(
                name,
                format!("must be a positive integer, got {v}"),
            )),
        })
        .transpose()
}

/// The inputs in field `name`, taken out of `body` (their texts are moved, not copied): a
/// string, an array of token ids (one input), or an array whose elements are strings or arrays
/// of token ids. At most `max_inputs` of them (else 413); no empty string or empty id list.
/// Returned with how errors should name them.
pub fn inputs(
    body: &mut Map<String, Value>,
    name: &'static str,
    max_inputs: usize,
) -> Result<(Vec<RawInput>, InputNames), ApiError> {
    let value = body
        .remove(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| ApiError::field(name, "is required"))?;
    let inputs = match value {
        Value::String(text) => {
            return Ok((vec![text_input(name, text)?], InputNames::Single(name)))
        }
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::field(name, "must not be an empty array"))
        }
        Value::Array(items) if items.iter().all(Value::is_number) => {
            let ids = RawInput::Ids(token_ids(name, &items)?);
            return Ok((vec![ids], InputNames::Single(name)));
        }
        Value::Array(items) => {
            within_client_limit(items.len(), max_inputs, || {
                format!("`{name}` holds {} inputs", items.len())
            })?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let field = || format!("{name}[{i}]");
                    match item {
                        Value::String(text) => text_input(&field(), text),
                        Value::Array(ids) if ids.is_empty() => {
                            Err(ApiError::field(&field(), "must not be an empty array"))
                        }
                        Value::Array(ids) => Ok(RawInput::Ids(token_ids(&field(), &ids)?)),
                        other => Err(ApiError::field(
                            &field(),
                            format!(
                                "must be a string or an array of token ids, got {}",
                                kind(&other)
                            ),
                        )),
                    }
                })
                .collect::<Result<_, _>>()?
        }
        other => {
            return Err(ApiError::field(
                name,
                format!(
                    "must be a string, an array of strings, an array of token ids or an array of \
                     such arrays, got {}",
                    kind(&other)
                ),
            ))
        }
    };
    Ok((inputs, InputNames::List(name)))
}

/// An object field, absent when missing or null.
pub fn optional_object(
    body: &Map<String, Value>,
    name: &str,
) -> Result<Option<Map<String, Value>>, ApiError> {
    present(body, name)
        .map(|v| match v {
            Value::Object(map) => Ok(map.clone()),
            other => Err(ApiError::field(
                name,
                format!("must be an object, got {}", kind(other)),
            )),
        })
        .transpose()
}

/// TEI's similarity inputs, taken out of `body`: `inputs.source_sentence` (a string) and
/// `inputs.sentences` (a non-empty array of strings); at most `max_inputs` texts in all.
pub fn similarity_inputs(
    body: &mut Map<String, Value>,
    max_inputs: usize,
) -> Result<(RawInput, Vec<RawInput>), ApiError> {
    let mut inputs = match body.remove("inputs").filter(|v| !v.is_null()) {
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(ApiError::field(
                "inputs",
                format!(
                    "must be an object with `source_sentence` and `sentences`, got {}",
                    kind(&other)
                ),
            ))
        }
        None => return Err(ApiError::field("inputs", "is required")),
    };
    let string_field = |field: &str, value: Option<Value>| match value.filter(|v| !v.is_null()) {
        Some(Value::String(text)) => text_input(field, text),
        Some(other) => Err(ApiError::field(
            field,
            format!("must be a string, got {}", kind(&other)),
        )),
        None => Err(ApiError::field(field, "is required")),
    };
    let source = string_field("inputs.source_sentence", inputs.remove("source_sentence"))?;
    let sentences = match inputs.remove("sentences").filter(|v| !v.is_null()) {
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::field(
                "inputs.sentences",
                "must not be an empty array",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::field(
                "inputs.sentences",
                format!("must be an array of strings, got {}", kind(&other)),
            ))
        }
        None => return Err(ApiError::field("inputs.sentences", "is required")),
    };
    within_client_limit(sentences.len() + 1, max_inputs, || {
        format!(
            "`inputs` holds {} texts (the source and {} sentences)",
            sentences.len() + 1,
            sentences.len()
        )
    })?;
    let sentences = sentences
        .into_iter()
        .enumerate()
        .map(|(i, item)| string_field(&format!("inputs.sentences[{i}]"), Some(item)))
        .collect::<Result<_, _>>()?;
    Ok((source, sentences))
}

/// Lists of token ids in field `name`: one list, or an array of lists (at most `max_lists`),
/// each with the field that names it in errors.
pub fn id_lists(
    body: &Map<String, Value>,
    name: &str,
    max_lists: usize,
) -> Result<Vec<(String, Vec<u32>)>, ApiError> {
    let items = match present(body, name) {
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::field(name, "must not be an empty array"))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::field(
                name,
                format!(
                    "must be an array of token ids or an array of such arrays, got {}",
                    kind(other)
                ),
            ))
        }
        None => return Err(ApiError::field(name, "is required")),
    };
    if items.iter().all(Value::is_number) {
        return Ok(vec![(name.to_string(), token_ids(name, items)?)]);
    }
    within_client_limit(items.len(), max_lists, || {
        format!("`{name}` holds {} lists", items.len())
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("{name}[{i}]");
            match item {
                Value::Array(ids) if ids.is_empty() => {
                    Err(ApiError::field(&field, "must not be an empty array"))
                }
                Value::Array(ids) => {
                    let ids = token_ids(&field, ids)?;
                    Ok((field, ids))
                }
                other => Err(ApiError::field(
                    &field,
                    format!("must be an array of token ids, got {}", kind(other)),
                )),
            }
        })
        .collect()
}

/// `count` items in one request, at most `limit` (`--max-client-batch-size`): else 413, the
/// message `what` says what was counted.
pub fn within_client_limit(
    count: usize,
    limit: usize,
    what: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    if count <= limit {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::TooLarge,
        format!(
            "{}, more than the server's limit of {limit} per request (--max-client-batch-size)",
            what()
        ),
    ))
}

fn text_input(field: &str, text: String) -> Result<RawInput, ApiError> {
    if text.is_empty() {
        return Err(ApiError::field(field, "must not be an empty string"));
    }
    Ok(RawInput::Text(text))
}

fn token_ids(field: &str, items: &[Value]) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    ApiError::field(
                        &format!("{field}[{i}]"),
                        format!("must be a token id (an integer in 0..2^32), got {item}"),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(mut value: Value) -> Result<Vec<RawInput>, ApiError> {
        inputs(value.as_object_mut().unwrap(), "input", 3).map(|(inputs, _)| inputs)
    }

    #[test]
    fn every_openai_input_shape_is_read() {
        assert_eq!(
            parse(json!({"input": "a"})).unwrap(),
            vec![RawInput::Text("a".into())]
        );
        assert_eq!(
            parse(json!({"input": ["a", "b"]})).unwrap(),
            vec![RawInput::Text("a".into()), RawInput::Text("b".into())]
        );
        assert_eq!(
            parse(json!({"input": [2, 7, 1]})).unwrap(),
            vec![RawInput::Ids(vec![2, 7, 1])]
        );
        assert_eq!(
            parse(json!({"input": [[2, 1], "x"]})).unwrap(),
            vec![RawInput::Ids(vec![2, 1]), RawInput::Text("x".into())]
        );
    }

    #[test]
    fn inputs_are_named_as_the_request_gave_them() {
        let names = |mut value: Value| {
            inputs(value.as_object_mut().unwrap(), "input", 3)
                .unwrap()
                .1
        };
        assert_eq!(names(json!({"input": "a"})).name(0), "input");
        assert_eq!(names(json!({"input": [2, 7, 1]})).name(0), "input");
        assert_eq!(names(json!({"input": ["a", "b"]})).name(1), "input[1]");
        assert_eq!(names(json!({"input": [[2, 1]]})).name(0), "input[0]");
        assert_eq!(InputNames::Similarity.name(0), "inputs.source_sentence");
        assert_eq!(InputNames::Similarity.name(3), "inputs.sentences[2]");
        let nested = ApiError::field("truncate", "must be a boolean").within("parameters");
        assert_eq!(nested.message, "`parameters.truncate`: must be a boolean");
        assert_eq!(nested.param.as_deref(), Some("parameters.truncate"));
        let whole = ApiError::new(ErrorKind::TooLarge, "too many").within("instances[2]");
        assert_eq!(whole.message, "`instances[2]`: too many");
        assert_eq!(whole.kind, ErrorKind::TooLarge);
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let cases = [
            (json!({}), "`input`: is required", ErrorKind::Validation),
            (
                json!({"input": null}),
                "`input`: is required",
                ErrorKind::Validation,
            ),
            (
                json!({"input": []}),
                "`input`: must not be an empty array",
                ErrorKind::Validation,
            ),
            (
                json!({"input": ""}),
                "`input`: must not be an empty string",
                ErrorKind::Validation,
            ),
            (
                json!({"input": ["a", ""]}),
                "`input[1]`: must not be an empty",
                ErrorKind::Validation,
            ),
            (
                json!({"input": ["a", 5]}),
                "`input[1]`: must be a string or",
                ErrorKind::Validation,
            ),
            (
                json!({"input": [[1, -2]]}),
                "`input[0][1]`: must be a token id",
                ErrorKind::Validation,
            ),
            (
                json!({"input": [1.5]}),
                "`input[0]`: must be a token id",
                ErrorKind::Validation,
            ),
            (
                json!({"input": {"a": 1}}),
                "got an object",
                ErrorKind::Validation,
            ),
            (
                json!({"input": ["a", "b", "c", "d"]}),
                "4 inputs, more than",
                ErrorKind::TooLarge,
            ),
        ];
        for (body, message, kind) in cases {
            let error = parse(body.clone()).unwrap_err();
            assert!(error.message.contains(message), "{body}: {}", error.message);
            assert_eq!(error.kind, kind, "{body}");
        }
    }

    #[test]
    fn scalar_fields_are_checked() {
        let body = json!({"d": 0, "b": "yes", "s": 3, "n": null});
        let body = body.as_object().unwrap();
        assert!(optional_count(body, "d").is_err());
        assert!(optional_bool(body, "b").is_err());
        assert!(optional_str(body, "s").is_err());
        assert_eq!(optional_count(body, "n").unwrap(), None);
        assert_eq!(optional_count(body, "missing").unwrap(), None);
        assert!(object(Bytes::from_static(b"[1]")).is_err());
        assert_eq!(
            object(Bytes::from_static(b"{oops")).unwrap_err().kind,
            ErrorKind::Malformed
        );
    }
}
