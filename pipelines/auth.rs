//! Bearer authentication for every server of the collector (`auth: { bearer_token: ... }`): the OTLP receiver,
//! the Prometheus and dashboard endpoints, the collector's own metrics.

use std::sync::Arc;

use serde::{Deserialize, Deserializer};

/// `auth`: clients must send `Authorization: Bearer <token>` (gRPC metadata or HTTP header).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Usually from the environment: `bearer_token: ${env:INFERCOL_TOKEN}`. Present but empty is an error, never
    /// "no authentication": an unset variable must not open the endpoint.
    #[serde(deserialize_with = "present_token")]
    pub bearer_token: Option<String>,
}

fn present_token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(token) => Ok(Some(token)),
        None => Err(serde::de::Error::custom(
            "bearer_token is empty (is its environment variable set?); remove `auth` to serve without a token",
        )),
    }
}

impl AuthConfig {
    /// `prefix` names the section in the message (`auth.` or `metrics.auth.`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        let Some(token) = &self.bearer_token else { return Ok(()) };
        if token.trim().is_empty() {
            return Err(format!(
                "{prefix}bearer_token: empty (is its environment variable set?); remove `auth` to serve without a token"
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{prefix}bearer_token: contains whitespace or control characters, which no Authorization header can carry"
            ));
        }
        Ok(())
    }

    pub fn bearer(&self) -> Option<BearerAuth> {
        self.bearer_token.as_deref().map(|t| BearerAuth { token: Arc::from(t) })
    }

    /// Whether an `authorization` value carries the token; true when no token is configured.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        match &self.bearer_token {
            None => true,
            Some(token) => token_matches(token, authorization),
        }
    }
}

/// A configured bearer token, as servers check it.
#[derive(Debug, Clone)]
pub struct BearerAuth {
    token: Arc<str>,
}

impl BearerAuth {
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        token_matches(&self.token, authorization)
    }

    /// The 401 answer for a request without the token, or `None` when it may pass.
    pub fn refusal(&self, headers: &http::HeaderMap) -> Option<axum::response::Response> {
        let given = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if self.allows(given) {
            return None;
        }
        let mut response = axum::response::Response::new(axum::body::Body::from(
            "missing or wrong bearer token in the Authorization header\n",
        ));
        *response.status_mut() = http::StatusCode::UNAUTHORIZED;
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        Some(response)
    }
}

/// RFC 6750's `Bearer 1*SP token`, with the scheme case-insensitive (RFC 9110 section 11.1) and the value's
/// surrounding whitespace ignored, the same over HTTP/1.1, HTTP/2 and gRPC metadata. Compared in constant time.
fn token_matches(token: &str, authorization: Option<&str>) -> bool {
    let Some(value) = authorization else { return false };
    let value = value.trim_matches([' ', '\t']);
    let Some((scheme, rest)) = value.split_once([' ', '\t']) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let given = rest.trim_start_matches([' ', '\t']);
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_whitespace_rules_are_one() {
        let auth = AuthConfig {
            bearer_token: Some("s3cret".into()),
        };
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            " Bearer  s3cret ",
            "BeArEr\ts3cret",
        ] {
            assert!(auth.allows(Some(ok)), "{ok:?} should pass");
        }
        for refused in [
            "Bearer",
            "Bearer ",
            "Basic s3cret",
            "Bearers3cret",
            "Bearer s3cre",
            "Bearer s3cret x",
            "",
        ] {
            assert!(!auth.allows(Some(refused)), "{refused:?} should be refused");
        }
        assert!(!auth.allows(None));
        assert!(AuthConfig::default().allows(None));
    }

    #[test]
    fn an_empty_or_unusable_token_is_a_config_error() {
        let empty = AuthConfig {
            bearer_token: Some(" ".into()),
        };
        assert!(
            empty
                .validate("auth.")
                .unwrap_err()
                .contains("auth.bearer_token: empty")
        );
        let spaced = AuthConfig {
            bearer_token: Some("a b".into()),
        };
        assert!(spaced.validate("auth.").is_err());
    }
}
