//! How a message's text is shown to a person (a terminal or a page): control characters
//! escaped, Toss's payment `secret` masked. The dead letters shown here and the inbox payloads
//! the console shows go through the same code.

use shared::providers::escape_controls;

/// A body: pretty JSON with every `secret` member masked, else the text with its control
/// characters escaped.
pub fn body(data: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(json) => serde_json::to_string_pretty(&mask_secrets(json)).unwrap_or_default(),
        Err(_) => escape_controls(&String::from_utf8_lossy(data)).into_owned(),
    }
}

/// Toss puts a payment `secret` in bodies (the deposit callback's proof); every non-null
/// `secret` member, at any depth, is shown as `***`.
pub fn mask_secrets(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if k == "secret" && !v.is_null() {
                        (k, Value::String("***".into()))
                    } else {
                        (k, mask_secrets(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mask_secrets).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_at_any_depth_is_masked_and_nothing_else_changes() {
        let shown = body(br#"{"secret":"ps_1","data":{"secret":"ps_2","orderId":"o-1"},"list":[{"secret":null}]}"#);
        assert!(!shown.contains("ps_1") && !shown.contains("ps_2"), "{shown}");
        assert!(shown.contains("\"orderId\": \"o-1\"") && shown.contains("\"secret\": null"), "{shown}");
    }

    #[test]
    fn text_that_is_not_json_has_its_control_characters_escaped() {
        let shown = body(b"not json \x1b[31m red");
        assert!(!shown.contains('\x1b'), "{shown:?}");
    }
}
