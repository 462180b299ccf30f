//! HTTP pieces the control API and the assist API share: RFC 9457 problem documents (and how the
//! errors of lower layers map to them), `Authorization: Bearer` parsing, and the OpenMetrics response.
//! Specs: `protocols/control-api.md`, `protocols/assist.md`.

use axum::{
    Json,
    extract::rejection::{JsonRejection, QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use crate::node::{self, SharedRegistry};

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// 429 only: seconds to wait (also in the `Retry-After` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<Option<String>>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after_seconds: None,
        }
    }

    /// 429 Too Many Requests, retry after `secs`.
    pub fn rate_limited(secs: u64) -> Self {
        Self {
            retry_after_seconds: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many requests from this address; retry in {secs} s"),
            )
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(&self)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_seconds {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<node::Error> for Problem {
    fn from(e: node::Error) -> Self {
        let status = match &e {
            node::Error::NotFound(_) => StatusCode::NOT_FOUND,
            node::Error::Busy(..) | node::Error::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            node::Error::Dial(_) => StatusCode::BAD_GATEWAY,
            node::Error::NameTaken { .. } | node::Error::NameConflict { .. } => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(status, e.to_string())
    }
}

impl From<QueryRejection> for Problem {
    /// A query string that does not fit: 400, as a problem document like every other error.
    fn from(e: QueryRejection) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<JsonRejection> for Problem {
    /// 413 (too large) and 415 (not JSON) as axum tells; malformed and ill-fitting JSON alike: 400.
    fn from(e: JsonRejection) -> Self {
        let status = match e.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        Problem::new(status, e.body_text())
    }
}

/// The token of an `Authorization: Bearer <token>` header (control and assist APIs).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The registry in the OpenMetrics text format (control API `/v1/metrics`, assist `/metrics`).
pub fn metrics_response(registry: &SharedRegistry) -> Result<Response, Problem> {
    let mut body = String::new();
    let registry = registry.read().map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics registry poisoned".to_string(),
        )
    })?;
    prometheus_client::encoding::text::encode(&mut body, &registry)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
