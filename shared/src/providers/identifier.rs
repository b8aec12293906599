//! Control characters in the values the pipeline keys, routes and stores by.
//!
//! An event id, event type, order id or payment key becomes an AMQP routing key or header, a
//! Postgres `text` value and a log field. A control character there is never legitimate, and
//! U+0000 is the worst of them: Postgres refuses it in `text` (and `\u0000` anywhere in
//! `jsonb`), so one such value fails the whole statement that carries it, with every other row
//! of a batch. Control characters here are Unicode's `Cc` category: C0 (U+0000 to U+001F), DEL
//! (U+007F) and C1 (U+0080 to U+009F).

use std::borrow::Cow;
use std::fmt::Write;

use super::PayloadError;

/// The first control character in `value`, if any.
pub fn first_control_char(value: &str) -> Option<char> {
    value.chars().find(|c| c.is_control())
}

/// Refuses an identifier that holds a control character, naming `field` and the character
/// (never the value, which may be a secret).
pub fn check_identifier(field: &'static str, value: &str) -> Result<(), PayloadError> {
    match first_control_char(value) {
        Some(c) => Err(PayloadError::ControlCharacter(field, u32::from(c))),
        None => Ok(()),
    }
}

/// `value` with every control character written as a Rust-style escape (`\u{0}`, `\u{1b}`), so
/// what an operator sees and what is stored shows it instead of carrying it. Borrowed when
/// there is none.
pub fn escape_controls(value: &str) -> Cow<'_, str> {
    if first_control_char(value).is_none() {
        return Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c.is_control() {
            let _ = write!(escaped, "{}", c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c0_del_and_c1_are_control_characters_and_nothing_else_is() {
        for c in ['\0', '\t', '\n', '\x1b', '\x1f', '\x7f', '\u{80}', '\u{85}', '\u{9f}'] {
            let value = format!("evt_{c}1");
            assert_eq!(first_control_char(&value), Some(c), "{c:?}");
            assert_eq!(
                check_identifier("event id", &value),
                Err(PayloadError::ControlCharacter("event id", u32::from(c)))
            );
        }
        for value in ["evt_1PXaX2", "order 7", "결제-1", "\u{a0}", "\u{2028}", "\u{feff}", ""] {
            assert_eq!(first_control_char(value), None, "{value:?}");
            assert_eq!(check_identifier("order id", value), Ok(()));
        }
    }

    #[test]
    fn the_error_names_the_field_and_the_character_but_not_the_value() {
        let text = check_identifier("orderId", "secret-ish\0value").unwrap_err().to_string();
        assert_eq!(text, "orderId contains a control character (U+0000)");
        let text = check_identifier("paymentKey", "k\u{9b}").unwrap_err().to_string();
        assert_eq!(text, "paymentKey contains a control character (U+009B)");
    }

    #[test]
    fn escaping_shows_every_control_character_and_keeps_the_rest() {
        assert!(matches!(escape_controls("evt_1"), Cow::Borrowed("evt_1")));
        assert_eq!(escape_controls("evt\0x"), r"evt\u{0}x");
        assert_eq!(escape_controls("a\x1b[31mb\x7f\u{85}결"), r"a\u{1b}[31mb\u{7f}\u{85}결");
        assert_eq!(first_control_char(&escape_controls("\0\n\r\u{9f}")), None);
    }
}
