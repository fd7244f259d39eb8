//! Errors as each API family shapes them: OpenAI's `{"error": {"message", "type", "param",
//! "code"}}` and text-embeddings-inference's `{"error", "error_type"}`.
//!
//! An [`ApiError`] says what went wrong; a route picks the shape through its error type,
//! [`OpenAiError`] or [`TeiError`], into which `?` converts every [`ApiError`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::Error;

/// Which API's error body a route answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Tei,
}

/// What went wrong, which decides the status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON (400).
    Malformed,
    /// A field is missing, of the wrong type or out of range; an input cannot be embedded (422).
    Validation,
    /// Too many inputs or too many bytes in one request (413).
    TooLarge,
    /// Missing or wrong API key (401).
    Unauthorized,
    /// The queue is full (429).
    Overloaded,
    /// No such route (404).
    NotFound,
    /// A route asked with a method it does not answer (405).
    MethodNotAllowed,
    /// The request body stopped arriving (408).
    Timeout,
    /// The backend failed or the engine stopped (500; TEI: 424).
    Backend,
    /// The health probe failed (503).
    Unhealthy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The request field at fault (OpenAI's `param`), when one is.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
        }
    }

    /// A validation error on request field `param`.
    pub fn field(param: &str, message: impl std::fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Validation,
            message: format!("`{param}`: {message}"),
            param: Some(param.to_string()),
        }
    }

    /// `error`, and when it is about one input ([`Error::Input`]) a validation error on the
    /// request field `field(index)` names for it.
    pub fn naming_input(error: Error, field: impl FnOnce(usize) -> String) -> Self {
        match error {
            Error::Input { index, message } => Self::field(&field(index), message),
            other => Self::from(other),
        }
    }

    /// The same error inside object `parent`: on its field (`parent.field`), or, when no field
    /// was at fault, on `parent` itself.
    pub fn within(mut self, parent: &str) -> Self {
        match self.param.take() {
            Some(param) => {
                let nested = format!("{parent}.{param}");
                let named = format!("`{param}`");
                self.message = if self.message.contains(&named) {
                    self.message.replacen(&named, &format!("`{nested}`"), 1)
                } else {
                    format!("`{nested}`: {}", self.message)
                };
                self.param = Some(nested);
            }
            None => {
                self.message = format!("`{parent}`: {}", self.message);
                self.param = Some(parent.to_string());
            }
        }
        self
    }

    /// The answer in `flavor`'s shape. A full queue's 429 says when to try again (`Retry-After`,
    /// which the `openai` clients honour): about when a batch or two will have gone.
    pub fn respond(self, flavor: Flavor) -> Response {
        let mut response = (self.status(flavor), Json(self.body(flavor))).into_response();
        if self.kind == ErrorKind::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }

    pub fn status(&self, flavor: Flavor) -> StatusCode {
        match (self.kind, flavor) {
            (ErrorKind::Malformed, _) => StatusCode::BAD_REQUEST,
            (ErrorKind::Validation, _) => StatusCode::UNPROCESSABLE_ENTITY,
            (ErrorKind::TooLarge, _) => StatusCode::PAYLOAD_TOO_LARGE,
            (ErrorKind::Unauthorized, _) => StatusCode::UNAUTHORIZED,
            (ErrorKind::Overloaded, _) => StatusCode::TOO_MANY_REQUESTS,
            (ErrorKind::NotFound, _) => StatusCode::NOT_FOUND,
            (ErrorKind::MethodNotAllowed, _) => StatusCode::METHOD_NOT_ALLOWED,
            (ErrorKind::Timeout, _) => StatusCode::REQUEST_TIMEOUT,
            (ErrorKind::Backend, Flavor::OpenAi) => StatusCode::INTERNAL_SERVER_ERROR,
            (ErrorKind::Backend, Flavor::Tei) => StatusCode::FAILED_DEPENDENCY,
            (ErrorKind::Unhealthy, _) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(&self, flavor: Flavor) -> serde_json::Value {
        match flavor {
            Flavor::OpenAi => {
                let (error_type, code) = match self.kind {
                    ErrorKind::Malformed
                    | ErrorKind::Validation
                    | ErrorKind::NotFound
                    | ErrorKind::MethodNotAllowed
                    | ErrorKind::Timeout => ("invalid_request_error", None),
                    ErrorKind::TooLarge => ("invalid_request_error", Some("request_too_large")),
                    ErrorKind::Unauthorized => ("invalid_request_error", Some("invalid_api_key")),
                    ErrorKind::Overloaded => ("rate_limit_error", Some("rate_limit_exceeded")),
                    ErrorKind::Backend | ErrorKind::Unhealthy => ("server_error", None),
                };
                json!({"error": {
                    "message": self.message,
                    "type": error_type,
                    "param": self.param,
                    "code": code,
                }})
            }
            Flavor::Tei => {
                let error_type = match self.kind {
                    ErrorKind::Malformed | ErrorKind::Validation | ErrorKind::TooLarge => {
                        "Validation"
                    }
                    ErrorKind::Unauthorized => "Unauthorized",
                    ErrorKind::Overloaded => "Overloaded",
                    ErrorKind::NotFound => "NotFound",
                    ErrorKind::MethodNotAllowed => "MethodNotAllowed",
                    ErrorKind::Timeout => "Timeout",
                    ErrorKind::Backend => "Backend",
                    ErrorKind::Unhealthy => "Unhealthy",
                };
                json!({"error": self.message, "error_type": error_type})
            }
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let kind = match &error {
            Error::Overloaded(_) => ErrorKind::Overloaded,
            Error::BeyondQueueCapacity(_) => ErrorKind::TooLarge,
            Error::Input { .. }
            | Error::Dimensions { .. }
            | Error::EmptyRequest
            | Error::UnknownPrompt { .. } => ErrorKind::Validation,
            _ => ErrorKind::Backend,
        };
        let param = match &error {
            Error::Input { index, .. } => Some(format!("input[{index}]")),
            Error::Dimensions { .. } => Some("dimensions".to_string()),
            Error::UnknownPrompt { .. } => Some("prompt_name".to_string()),
            _ => None,
        };
        Self {
            kind,
            message: error.to_string(),
            param,
        }
    }
}

/// The error of the OpenAI routes: an [`ApiError`] answered in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.respond(Flavor::OpenAi)
    }
}

/// The error of the TEI routes: an [`ApiError`] answered in TEI's shape.
#[derive(Debug)]
pub struct TeiError(pub ApiError);

impl From<ApiError> for TeiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        self.0.respond(Flavor::Tei)
    }
}
