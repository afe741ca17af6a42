//! Optional bearer-token authentication: when `http.auth_token` is set, every endpoint except
//! `/health` and `/ready` need `Authorization: Bearer <token>`; the comparison takes the same time wherever
//! the tokens differ.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};

/// Middleware that rejects requests without the configured token with a 401 JSON error.
pub(super) async fn require_token(
    State(api): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &api.http.auth_token {
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match given {
            None => {
                return ApiError::Unauthorized(
                    "this endpoint needs the header `Authorization: Bearer <token>`",
                )
                .into_response()
            }
            Some(token) if !constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
                return ApiError::Unauthorized("the bearer token is wrong").into_response()
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

/// Compares two byte strings in time that depends only on their lengths.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_matches_only_identical_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
