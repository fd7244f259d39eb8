//! One JSON Lines line, read for the few fields a document needs. The other fields are skipped,
//! not read: a number past f64 there (`1e400`) is no error. Python's `json.dumps` writes `NaN`,
//! `Infinity` and `-Infinity` for non-finite floats (not JSON, though Python reads them back): a
//! line that holds them is read with each one as null.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// A line's object: the values of the wanted fields it has, and the names of all its fields.
#[derive(Debug, Default, PartialEq)]
pub struct JsonObject {
    values: BTreeMap<String, Value>,
    names: BTreeSet<String>,
}

impl JsonObject {
    /// A wanted field's value (the last one, where a name repeats, as Python reads it).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Every field's name, sorted, for messages.
    pub fn names(&self) -> String {
        self.names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `text` read as a JSON object keeping the `wanted` fields' values: `Ok(None)` for JSON that is
/// not an object, `Err` (the message) for a line that is not JSON.
pub fn parse(text: &str, wanted: &[&str]) -> Result<Option<JsonObject>, String> {
    // An object, or JSON of another type, as the whole line says.
    let read = |text: &str| match object(text, wanted) {
        Ok(object) => Ok(Some(object)),
        Err(error) if error.is_data() => serde_json::from_str::<IgnoredAny>(text).map(|_| None),
        Err(error) => Err(error),
    };
    read(text).or_else(|error| match non_finite_as_null(text) {
        None => Err(format!("invalid JSON: {error}")),
        // Its own fault, placed in the line as read with `null`s.
        Some(text) => read(&text)
            .map_err(|error| format!("invalid JSON: {error} (with NaN and Infinity read as null)")),
    })
}

fn object(text: &str, wanted: &[&str]) -> serde_json::Result<JsonObject> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let object = WantedFields(wanted).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(object)
}

/// `text` with each `NaN`, `Infinity` and `-Infinity` outside strings written as `null`; `None`
/// where it holds none.
fn non_finite_as_null(text: &str) -> Option<String> {
    const WORDS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut replaced) = (false, false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = WORDS.iter().find(|w| rest.starts_with(**w)) {
            out.push_str("null");
            rest = &rest[word.len()..];
            replaced = true;
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    replaced.then_some(out)
}

/// Reads a JSON object, keeping the values of the fields it names.
struct WantedFields<'a>(&'a [&'a str]);

impl<'de> DeserializeSeed<'de> for WantedFields<'_> {
    type Value = JsonObject;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<JsonObject, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for WantedFields<'_> {
    type Value = JsonObject;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
        let mut object = JsonObject::default();
        while let Some(name) = map.next_key::<String>()? {
            if self.0.contains(&name.as_str()) {
                object.values.insert(name.clone(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            object.names.insert(name);
        }
        Ok(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_wanted_fields_are_read_and_every_name_is_kept() {
        let line = r#"{"text": "hi", "id": 7, "score": 1e400, "nested": {"a": [1, 2]}, "id": 8}"#;
        let object = parse(line, &["text", "id"]).unwrap().unwrap();
        assert_eq!(object.get("text"), Some(&json!("hi")));
        // The last of a repeated name, as Python and serde_json's own maps read it.
        assert_eq!(object.get("id"), Some(&json!(8)));
        assert_eq!(object.get("score"), None);
        assert!(object.contains_key("score") && !object.contains_key("title"));
        assert_eq!(object.names(), "id, nested, score, text");
        // A number past f64 in a wanted field is still an error.
        let error = parse(r#"{"id": 1e400}"#, &["id"]).unwrap_err();
        assert!(
            error.starts_with("invalid JSON: number out of range"),
            "{error}"
        );
    }

    #[test]
    fn python_non_finite_floats_are_null_outside_strings() {
        let line = r#"{"text": "NaN and -Infinity stay", "score": NaN, "low": -Infinity, "xs": [Infinity]}"#;
        let object = parse(line, &["text", "score", "low", "xs"])
            .unwrap()
            .unwrap();
        assert_eq!(object.get("text"), Some(&json!("NaN and -Infinity stay")));
        assert_eq!(object.get("score"), Some(&Value::Null));
        assert_eq!(object.get("low"), Some(&Value::Null));
        assert_eq!(object.get("xs"), Some(&json!([null])));
        // An escaped quote does not end the string.
        let line = r#"{"text": "say \"NaN\"", "s": NaN}"#;
        let object = parse(line, &["text"]).unwrap().unwrap();
        assert_eq!(object.get("text"), Some(&json!("say \"NaN\"")));
        // Other broken JSON keeps its own message, beside a NaN too; a list is not an object.
        let error = parse(r#"{"text": "a", "s": NaN"#, &["text"]).unwrap_err();
        assert!(
            error.starts_with("invalid JSON: EOF while parsing"),
            "{error}"
        );
        assert!(
            error.ends_with("(with NaN and Infinity read as null)"),
            "{error}"
        );
        let error = parse(r#"{"s": NaN, "id": 1e400, "text": "a"}"#, &["id", "text"]).unwrap_err();
        assert!(
            error.starts_with("invalid JSON: number out of range"),
            "{error}"
        );
        assert_eq!(parse("[NaN]", &["text"]), Ok(None));
    }

    #[test]
    fn json_of_another_type_is_told_from_a_line_that_is_not_json() {
        assert_eq!(parse("[1, 2]", &["text"]), Ok(None));
        assert_eq!(parse("\"text\"", &["text"]), Ok(None));
        assert!(parse("[1,", &["text"])
            .unwrap_err()
            .starts_with("invalid JSON"));
        assert!(parse(r#"{"text": "a"} x"#, &["text"])
            .unwrap_err()
            .starts_with("invalid JSON: trailing characters"));
        assert!(parse("", &["text"])
            .unwrap_err()
            .starts_with("invalid JSON"));
    }
}
