//! Reading a Compose file the way `docker compose` does before it runs anything: YAML, then
//! variable interpolation, then strict deserialization into the Compose specification
//! (`compose_spec` refuses unknown keys and malformed values) and its cross-references.

use std::collections::BTreeMap;

use compose_spec::{Compose, YamlValue};

/// Compose's variable interpolation, as `docker compose` applies it before validating:
/// `$$` is `$`; `${VAR}` and `$VAR` are the variable or ""; `${VAR:-d}` / `${VAR-d}` fall back
/// to `d` when unset or empty / unset; `${VAR:?e}` / `${VAR?e}` are errors when unset.
pub fn interpolate(text: &str, env: &BTreeMap<&str, &str>) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                chars.next();
                let mut inner = String::new();
                let mut depth = 1;
                for c in chars.by_ref() {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        break;
                    }
                    inner.push(c);
                }
                if depth != 0 {
                    return Err(format!("unclosed ${{ in {text:?}"));
                }
                let name_end = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
                let (name, rest) = inner.split_at(name_end);
                let value = env.get(name).copied();
                let set_and_non_empty = value.is_some_and(|v| !v.is_empty());
                let resolved = match rest {
                    "" => value.unwrap_or("").to_string(),
                    _ if rest.starts_with(":-") => {
                        if set_and_non_empty {
                            value.unwrap().to_string()
                        } else {
                            interpolate(&rest[2..], env)?
                        }
                    }
                    _ if rest.starts_with('-') => match value {
                        Some(v) => v.to_string(),
                        None => interpolate(&rest[1..], env)?,
                    },
                    _ if rest.starts_with(":?") || rest.starts_with('?') => match value {
                        Some(v) if set_and_non_empty || rest.starts_with('?') => v.to_string(),
                        _ => return Err(format!("required variable {name}: {}", rest.trim_start_matches([':', '?']))),
                    },
                    _ if rest.starts_with(":+") => {
                        if set_and_non_empty {
                            interpolate(&rest[2..], env)?
                        } else {
                            String::new()
                        }
                    }
                    _ => return Err(format!("unsupported substitution ${{{inner}}}")),
                };
                out.push_str(&resolved);
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || c == '_') {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                out.push_str(env.get(name.as_str()).copied().unwrap_or(""));
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

fn interpolate_values(value: &mut YamlValue, env: &BTreeMap<&str, &str>) -> Result<(), String> {
    match value {
        YamlValue::String(s) => *s = interpolate(s, env)?,
        YamlValue::Sequence(items) => items.iter_mut().try_for_each(|v| interpolate_values(v, env))?,
        YamlValue::Mapping(map) => map.iter_mut().try_for_each(|(_, v)| interpolate_values(v, env))?,
        _ => {}
    }
    Ok(())
}

/// Parses compose text the way `docker compose config` does: YAML, interpolation with `env`,
/// then strict deserialization into the Compose specification and its cross-references.
pub fn parse_compose(text: &str, env: &BTreeMap<&str, &str>) -> Result<Compose, String> {
    let mut value: YamlValue = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    interpolate_values(&mut value, env)?;
    let compose = Compose::options().from_yaml_value(value).map_err(|e| e.to_string())?;
    compose.validate_all().map_err(|e| e.to_string())?;
    Ok(compose)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_follows_compose() {
        let env = BTreeMap::from([("SET", "x"), ("EMPTY", "")]);
        let cases = [
            ("${SET:-d}", "x"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${UNSET-d}", "d"),
            ("a$${SET}b", "a${SET}b"),
            ("$SET/$UNSET.", "x/."),
            ("${SET:+alt}", "alt"),
            ("${UNSET:-${SET}}", "x"),
        ];
        for (input, expected) in cases {
            assert_eq!(interpolate(input, &env).unwrap(), expected, "{input}");
        }
        assert!(interpolate("${UNSET:?needed}", &env).is_err());
    }
}
