//! `${env:NAME}` and `${env:NAME:-default}` in the configuration text. The substitution is textual (so line
//! numbers stay those of the file), but every value becomes exactly one YAML scalar, as in the OpenTelemetry
//! Collector, whose substitution works on parsed values: a value with a line break, `: `, ` #` or flow
//! characters cannot add keys, listeners or comments.
//!
//! - Inside a double-quoted scalar the value is escaped for it.
//! - Inside a single-quoted scalar `'` is doubled; a line break, which that style cannot hold, is an error.
//! - A reference that is a whole plain scalar (`key: ${env:X}`, `- ${env:X}`) is inserted as it is when plain YAML
//!   reads it as one scalar (so `port: ${env:PORT}` stays a number), else as a double-quoted string. An empty
//!   value is `""`, an empty string, never a null that would switch a setting off.
//! - A reference inside a longer plain scalar (`${env:HOST}:4317`) must be plain-safe; otherwise the error asks
//!   for quotes around the scalar.
//!
//! Hand-written because the YAML crates substitute nothing, and the Collector's rules (one scalar per value,
//! `$$` for a literal `$`) are not any library's.

use crate::config::ConfigError;

/// The expanded text, and a warning for each variable that was unset and had no default.
#[derive(Debug, Default, PartialEq)]
pub struct Expanded {
    pub text: String,
    pub warnings: Vec<String>,
}

/// Where in a line a reference stands.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Context {
    Plain,
    DoubleQuoted,
    SingleQuoted,
    Comment,
}

/// The context at the end of `line` (the output so far on this line), and whether a plain scalar has begun there.
/// A quote opens a quoted scalar only where a scalar begins (after `: `, `- `, a flow indicator, or indentation);
/// inside a plain scalar (`--x "..."`) it is an ordinary character.
fn context_after(line: &str) -> (Context, bool) {
    let mut context = Context::Plain;
    let mut in_scalar = false;
    let mut flow_depth = 0usize;
    let mut previous: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let next_is_blank = chars.peek().is_none_or(|n| n.is_whitespace());
        match context {
            Context::Plain => match c {
                '#' if previous.is_none_or(char::is_whitespace) => context = Context::Comment,
                c if c.is_whitespace() => {}
                ':' if next_is_blank => in_scalar = false,
                '-' | '?' if !in_scalar && next_is_blank => {}
                '[' | '{' if !in_scalar => flow_depth += 1,
                ',' if flow_depth > 0 => in_scalar = false,
                ']' | '}' if flow_depth > 0 => {
                    flow_depth -= 1;
                    in_scalar = true;
                }
                '"' if !in_scalar => context = Context::DoubleQuoted,
                '\'' if !in_scalar => context = Context::SingleQuoted,
                _ => in_scalar = true,
            },
            Context::DoubleQuoted => {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    context = Context::Plain;
                    in_scalar = true;
                }
            }
            Context::SingleQuoted => {
                if c == '\'' {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        context = Context::Plain;
                        in_scalar = true;
                    }
                }
            }
            Context::Comment => {}
        }
        previous = Some(c);
    }
    (context, in_scalar)
}

/// Whether plain YAML reads `value` as it is, as one scalar, wherever it stands in a plain scalar.
fn plain_safe(value: &str, starts_scalar: bool) -> bool {
    if value.chars().any(|c| c.is_control() || ",[]{}#".contains(c)) {
        return false;
    }
    if value.contains(": ") || value.ends_with(':') || value.starts_with(' ') || value.ends_with(' ') {
        return false;
    }
    if !starts_scalar {
        return true;
    }
    // `-`, `?` and `:` are indicators only before a space (or alone); the others always are at a scalar's start.
    let second_blank = value.chars().nth(1).is_none_or(char::is_whitespace);
    !(value.starts_with(['!', '&', '*', '|', '>', '\'', '"', '%', '@', '`'])
        || (value.starts_with(['-', '?', ':']) && second_blank))
}

fn double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether the text before a reference on its line (`before`) and after it (`after`) make it a whole scalar.
fn is_whole_scalar(before: &str, after: &str) -> bool {
    let head = before.trim_end();
    let starts = head.is_empty()
        || (before.ends_with([' ', '\t']) && (head.ends_with(':') || head.ends_with('-')))
        || head.ends_with(['[', '{', ',']);
    let tail = after.trim_start_matches([' ', '\t']);
    let ends = tail.trim_end().is_empty()
        || (after.starts_with([' ', '\t']) && tail.starts_with('#'))
        || tail.starts_with([',', ']', '}']);
    starts && ends
}

/// The text that stands for `value` of variable `name` in its place on the line.
fn encode(name: &str, value: &str, before: &str, after: &str, line: u64) -> Result<String, ConfigError> {
    let (context, in_scalar) = context_after(before);
    match context {
        Context::Comment => Ok(value.replace(['\n', '\r'], " ")),
        Context::DoubleQuoted => {
            let quoted = double_quoted(value);
            Ok(quoted[1..quoted.len() - 1].to_string())
        }
        Context::SingleQuoted => {
            if value.contains(['\n', '\r']) {
                return Err(ConfigError::at(
                    Some(line),
                    format!(
                        "environment variable {name} holds a line break, which a single-quoted value cannot \
                         hold; put the reference in double quotes"
                    ),
                ));
            }
            Ok(value.replace('\'', "''"))
        }
        Context::Plain if is_whole_scalar(before, after) => {
            if !value.is_empty() && plain_safe(value, true) {
                Ok(value.to_string())
            } else {
                Ok(double_quoted(value))
            }
        }
        Context::Plain => {
            if plain_safe(value, !in_scalar) {
                Ok(value.to_string())
            } else {
                Err(ConfigError::at(
                    Some(line),
                    format!(
                        "environment variable {name} holds characters that would change the structure of the \
                         configuration here (a line break, `: `, `#`, or a flow character); put the whole value in \
                         double quotes"
                    ),
                ))
            }
        }
    }
}

/// Replaces `${env:NAME}` and `${env:NAME:-default}`; `$$` stands for a literal `$`. An unset variable without a
/// default becomes the empty string, as in the OpenTelemetry Collector, with a warning in the result.
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, ConfigError> {
    let mut expanded = Expanded {
        text: String::with_capacity(text.len()),
        warnings: Vec::new(),
    };
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index as u64 + 1;
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
                continue;
            }
            let Some(body_start) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let Some(end) = body_start.find('}') else {
                return Err(ConfigError::at(Some(line_no), "unterminated `${` in the configuration"));
            };
            let (name, default) = reference(&body_start[..end], line_no)?;
            let value = match (lookup(name), default) {
                (Some(v), _) if !v.is_empty() || default.is_none() => v,
                (_, Some(d)) => d.to_string(),
                (_, None) => {
                    expanded.warnings.push(format!(
                        "line {line_no}: environment variable {name} is not set; using an empty value"
                    ));
                    String::new()
                }
            };
            rest = &body_start[end + 1..];
            out.push_str(&encode(name, &value, &out, rest, line_no)?);
        }
        out.push_str(rest);
        expanded.text.push_str(&out);
    }
    Ok(expanded)
}

/// The variable name and default of the body of `${...}`.
fn reference(body: &str, line: u64) -> Result<(&str, Option<&str>), ConfigError> {
    let Some(reference) = body.strip_prefix("env:") else {
        return Err(ConfigError::at(
            Some(line),
            format!(
                "unsupported substitution `${{{body}}}`; infercol supports `${{env:NAME}}` and `${{env:NAME:-default}}`"
            ),
        ));
    };
    let (name, default) = match reference.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(ConfigError::at(
            Some(line),
            format!("invalid environment variable name `{name}`"),
        ));
    }
    Ok((name, default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("9999".into()),
            "EVIL" => Some("x\n  http: { endpoint: 0.0.0.0:1 }".into()),
            "QUOTE" => Some("a\"b'c".into()),
            "COLON" => Some("a: b".into()),
            "DASH" => Some("-abc".into()),
            _ => None,
        }
    }

    fn expand(text: &str) -> String {
        expand_env(text, &lookup).unwrap().text
    }

    #[test]
    fn defaults_escapes_and_warnings() {
        let out = expand_env(
            "a: ${env:PORT}\nb: ${env:NOPE:-x:1}\nc: $${env:PORT}\nd: ${env:NOPE}\n",
            &lookup,
        )
        .unwrap();
        assert_eq!(out.text, "a: 9999\nb: x:1\nc: ${env:PORT}\nd: \"\"\n");
        assert_eq!(out.warnings.len(), 1);
        assert!(out.warnings[0].contains("line 4: environment variable NOPE is not set"));
        let err = expand_env("a: 1\nb: ${file:/x}\n", &lookup).unwrap_err();
        assert!(err.to_string().contains("unsupported substitution"));
    }

    #[test]
    fn every_value_is_one_scalar() {
        assert_eq!(
            expand("token: ${env:EVIL}\n"),
            "token: \"x\\n  http: { endpoint: 0.0.0.0:1 }\"\n"
        );
        assert_eq!(
            expand("t: \"${env:EVIL}\"\n"),
            "t: \"x\\n  http: { endpoint: 0.0.0.0:1 }\"\n"
        );
        assert_eq!(expand("t: \"<${env:QUOTE}>\"\n"), "t: \"<a\\\"b'c>\"\n");
        assert_eq!(expand("t: '${env:QUOTE}'\n"), "t: 'a\"b''c'\n");
        assert_eq!(expand("- ${env:COLON}\n"), "- \"a: b\"\n");
        assert_eq!(
            expand("e: ${env:NOPE:-127.0.0.1}:4317 # x\n"),
            "e: 127.0.0.1:4317 # x\n"
        );
        assert!(expand_env("t: '${env:EVIL}'\n", &lookup).is_err());
        assert!(expand_env("e: ${env:EVIL}:4317\n", &lookup).is_err());
        assert_eq!(expand("l: [${env:PORT}, ${env:COLON}]\n"), "l: [9999, \"a: b\"]\n");
        // Inside a plain scalar a quote is an ordinary character, and a value may start with `-`.
        assert_eq!(expand("args: --x \"${env:PORT}\"\n"), "args: --x \"9999\"\n");
        assert_eq!(expand("h: Bearer ${env:DASH}\n"), "h: Bearer -abc\n");
        assert_eq!(expand("h: ${env:DASH}:1\n"), "h: -abc:1\n");
        assert_eq!(expand("- ${env:DASH}\n"), "- -abc\n");
    }
}
