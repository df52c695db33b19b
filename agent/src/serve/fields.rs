//! Nothing silently ignored (issue 17): what the OpenAI and Ollama
//! surfaces do with every request field their APIs define.
//!
//! A surface lists each field once with a [`Rule`]: implemented (its own
//! parser reads it), accepted because it cannot change the answer (an
//! identifier for the provider's records, a load-time hint where the
//! assignment decides how the model is loaded), or accepted only at the
//! value that asks for nothing (`null` always is: clients serialise unset
//! fields as `null`). Any other value, and any field the table does not
//! know, is a 400 naming the field ([`ServeError::UnsupportedField`]), as
//! OpenAI itself refuses an unrecognised argument. The check runs on the
//! raw JSON before the typed parse, so a field the typed structs do not
//! declare cannot slip through.
//!
//! The tables live with their surfaces (`openai.rs`, `ollama.rs`); the
//! README's endpoint table says the same in prose.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ServeError;
use super::http::parse_json;

/// What a surface does with one field.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rule {
    /// Implemented: the surface's typed parser reads and validates it.
    Supported,
    /// Accepted whatever its value, because it does not change the answer;
    /// the README says why for each.
    NoEffect,
    /// Accepted only where `accepts` holds (always for `null`); `why`
    /// says what is accepted or why the feature is missing.
    DefaultOnly {
        accepts: fn(&Value) -> bool,
        why: &'static str,
    },
}

/// Checks that `object`'s fields are all in one of `tables` with values
/// their rules accept. `path` prefixes field names in messages (`""`, `"options."`,
/// `"messages[2]."`). A body that is not an object is left to the typed
/// parser, which says what it expected.
pub(super) fn check(
    object: &Value,
    tables: &[&[(&str, Rule)]],
    path: &str,
) -> Result<(), ServeError> {
    let Some(object) = object.as_object() else {
        return Ok(());
    };
    for (name, value) in object {
        let field = || format!("{path}{name}");
        let rule = tables
            .iter()
            .flat_map(|table| table.iter())
            .find(|(known, _)| known == name);
        match rule {
            None => {
                return Err(ServeError::UnsupportedField {
                    field: field(),
                    why: "this API has no such field, or this node does not implement it"
                        .to_owned(),
                });
            }
            Some((_, Rule::Supported | Rule::NoEffect)) => {}
            Some((_, Rule::DefaultOnly { accepts, why })) => {
                if !value.is_null() && !accepts(value) {
                    return Err(ServeError::UnsupportedField {
                        field: field(),
                        why: format!("{why} (got {})", shorten(value)),
                    });
                }
            }
        }
    }
    Ok(())
}

/// A field table.
pub(super) type Table = [(&'static str, Rule)];

/// Where a request body's fields are checked: its own against `top`, the
/// object under each key of `objects` (`options`) and the objects in the
/// list under each key of `lists` (`messages`) against theirs.
pub(super) struct Shape<'a> {
    pub top: &'a [&'a Table],
    pub objects: &'a [(&'a str, &'a Table)],
    pub lists: &'a [(&'a str, &'a Table)],
}

/// Parses a JSON body as `T` once every field passed its rule ([`check`],
/// in the order of `shape`), with `null` members dropped ([`drop_nulls`]).
pub(super) fn parse_checked<T: DeserializeOwned>(
    body: &[u8],
    shape: &Shape<'_>,
) -> Result<T, ServeError> {
    let mut value: Value = parse_json(body)?;
    check(&value, shape.top, "")?;
    for (key, table) in shape.objects {
        if let Some(object) = value.get(*key) {
            check(object, &[table], &format!("{key}."))?;
        }
    }
    for (key, table) in shape.lists {
        check_each(&value, key, table)?;
    }
    drop_nulls(&mut value);
    serde_json::from_value(value)
        .map_err(|error| ServeError::InvalidRequest(format!("invalid JSON body: {error}")))
}

/// Checks each element of the array `object[key]` (a list of messages, say)
/// against `table`, naming the element by its index.
pub(super) fn check_each(
    object: &Value,
    key: &str,
    table: &[(&str, Rule)],
) -> Result<(), ServeError> {
    if let Some(items) = object.get(key).and_then(Value::as_array) {
        for (index, item) in items.iter().enumerate() {
            check(item, &[table], &format!("{key}[{index}]."))?;
        }
    }
    Ok(())
}

/// Removes the members that are `null`, as if they were absent (clients
/// send unset fields as `null`: LangChain's older Ollama client sends every
/// option and `images` so), at the top of a body, in its objects
/// (`options`, `stream_options`) and in the objects of its lists
/// (`messages`); the typed parsers then see only what was set.
pub(super) fn drop_nulls(body: &mut Value) {
    fn drop_in(object: &mut serde_json::Map<String, Value>) {
        object.retain(|_, value| !value.is_null());
    }
    let Some(object) = body.as_object_mut() else {
        return;
    };
    drop_in(object);
    for value in object.values_mut() {
        match value {
            Value::Object(inner) => drop_in(inner),
            Value::Array(items) => {
                for item in items.iter_mut() {
                    if let Value::Object(inner) = item {
                        drop_in(inner);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A value as the error message shows it: its JSON, cut short.
fn shorten(value: &Value) -> String {
    const LIMIT: usize = 80;
    let text = value.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

// Values that ask for nothing, for the tables.

pub(super) fn is_false(value: &Value) -> bool {
    value == &Value::Bool(false)
}

pub(super) fn is_zero(value: &Value) -> bool {
    value.as_f64() == Some(0.0)
}

pub(super) fn is_one(value: &Value) -> bool {
    value.as_f64() == Some(1.0)
}

/// An empty string, list or object.
pub(super) fn is_empty(value: &Value) -> bool {
    match value {
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    }
}

pub(super) fn never(_: &Value) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TABLE: &[(&str, Rule)] = &[
        ("model", Rule::Supported),
        ("user", Rule::NoEffect),
        (
            "logprobs",
            Rule::DefaultOnly {
                accepts: is_false,
                why: "log probabilities are not implemented",
            },
        ),
    ];

    #[test]
    fn defaults_and_nulls_pass_and_anything_else_is_named() {
        let fine = json!({"model": "m", "user": "u-1", "logprobs": false});
        assert!(check(&fine, &[TABLE], "").is_ok());
        assert!(check(&json!({"logprobs": null}), &[TABLE], "").is_ok());
        let Err(ServeError::UnsupportedField { field, why }) =
            check(&json!({"logprobs": true}), &[TABLE], "")
        else {
            panic!("logprobs: true was accepted");
        };
        assert_eq!(field, "logprobs");
        assert!(why.contains("(got true)"), "{why}");
        let Err(ServeError::UnsupportedField { field, .. }) = check_each(
            &json!({"messages": [{}, {"surprise": 1}]}),
            "messages",
            TABLE,
        ) else {
            panic!("an unknown message field was accepted");
        };
        assert_eq!(field, "messages[1].surprise");
    }

    #[test]
    fn nulls_read_as_absent() {
        let mut body = json!({"model": "m", "images": null, "options": {"seed": null, "top_k": 4},
            "messages": [{"role": "user", "images": null}]});
        drop_nulls(&mut body);
        assert_eq!(
            body,
            json!({"model": "m", "options": {"top_k": 4}, "messages": [{"role": "user"}]})
        );
    }
}
