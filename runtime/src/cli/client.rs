//! A small HTTP/1.1 client for the client commands: hyper's connection API over a tokio
//! `TcpStream`, one kept-alive connection, JSON in and out. Plain `http://` only (put a TLS
//! terminator in front of a box that must be reached over the network).

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of talking to a running box.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The `--server` value is not a usable URL.
    #[error("invalid --server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// No connection could be made.
    #[error("cannot reach Outpost at {server}: {source} (is `outpost run` running there?)")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// The server did not answer in time.
    #[error("{server} did not answer within {timeout_ms} ms")]
    Timeout { server: String, timeout_ms: u64 },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {server} failed: {source}")]
    Http {
        server: String,
        #[source]
        source: hyper::Error,
    },
    /// The server answered with an error.
    #[error("{server} answered {status}: {message}")]
    Server {
        server: String,
        status: u16,
        message: String,
        /// The answer's `next_offset`, when it has one (a fetch at a lost or damaged range).
        next_offset: Option<u64>,
    },
    /// The answer is not what Outpost sends.
    #[error("{server} sent an unexpected answer: {detail}")]
    BadAnswer { server: String, detail: String },
}

/// A connection to one Outpost box.
#[derive(Debug)]
pub struct Client {
    server: String,
    host: String,
    port: u16,
    authority: String,
    base_path: String,
    token: Option<String>,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client for `server` (`http://host[:port][/base]`), sending `token` as a bearer token.
    pub fn new(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: server.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = server
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported by the client commands; use http:// (through a \
                     local TLS terminator if needed)",
                ))
            }
            _ => {
                return Err(bad(
                    "use the form http://HOST:PORT, e.g. http://127.0.0.1:8080",
                ))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("the URL has no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(bad("user:password@ is not supported; use --token"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.query().is_some() {
            return Err(bad("the URL must not have a query"));
        }
        Ok(Client {
            server: server.trim_end_matches('/').to_string(),
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            token,
            connection: None,
        })
    }

    /// The server URL as given (for messages).
    pub fn server(&self) -> &str {
        &self.server
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Timeout {
                server: self.server.clone(),
                timeout_ms: CONNECT_TIMEOUT.as_millis() as u64,
            })?
            .map_err(|source| ClientError::Connect {
                server: self.server.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Http {
                server: self.server.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "The HTTP connection to Outpost ended with an error.");
            }
        });
        Ok(sender)
    }

    /// A ready connection: the kept-alive one if it is still usable, else a new one.
    async fn ready(&mut self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        if let Some(mut sender) = self.connection.take() {
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let mut sender = self.connect().await?;
        sender.ready().await.map_err(|source| ClientError::Http {
            server: self.server.clone(),
            source,
        })?;
        Ok(sender)
    }

    /// Sends one request and returns the status and body; `timeout` covers the whole exchange.
    pub async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let exchange = async {
            let mut sender = self.ready().await?;
            let mut request = Request::builder()
                .method(method)
                .uri(format!("{}{}", self.base_path, path_and_query))
                .header(header::HOST, &self.authority)
                .header(header::ACCEPT, "application/json");
            if let Some(ct) = content_type {
                request = request.header(header::CONTENT_TYPE, ct);
            }
            if let Some(token) = &self.token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request =
                request
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| ClientError::BadUrl {
                        url: format!("{}{}", self.server, path_and_query),
                        reason: e.to_string(),
                    })?;
            let http_error = |source| ClientError::Http {
                server: self.server.clone(),
                source,
            };
            let response = sender.send_request(request).await.map_err(http_error)?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(http_error)?
                .to_bytes();
            self.connection = Some(sender);
            Ok((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                self.connection = None;
                Err(ClientError::Timeout {
                    server: self.server.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Sends a request and parses a JSON answer; an error status becomes [`ClientError::Server`]
    /// with the server's message.
    pub async fn json(
        &mut self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.json_as(method, path_and_query, content_type, body, timeout)
            .await
    }

    /// [`Client::json`] into a type of the caller's (e.g. one that keeps parts of the answer as
    /// their raw JSON text).
    pub async fn json_as<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let (status, body) = self
            .send(method, path_and_query, content_type, body, timeout)
            .await?;
        if !status.is_success() {
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            let message = parsed
                .as_ref()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            let next_offset = parsed
                .as_ref()
                .and_then(|v| v.get("next_offset").and_then(Value::as_u64));
            return Err(ClientError::Server {
                server: self.server.clone(),
                status: status.as_u16(),
                message,
                next_offset,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer {
            server: self.server.clone(),
            detail: format!("not JSON ({e})"),
        })
    }

    /// `GET` with a JSON answer.
    pub async fn get_json(
        &mut self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.json(Method::GET, path_and_query, None, Vec::new(), timeout)
            .await
    }

    /// Turns a missing or mistyped field of an answer into an error.
    pub fn bad_answer(&self, detail: impl Into<String>) -> ClientError {
        ClientError::BadAnswer {
            server: self.server.clone(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_parsed_into_host_port_and_base_path() {
        let c = Client::new("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.base_path.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let c = Client::new("http://box.local/outpost/", None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.base_path.as_str()),
            ("box.local", 80, "/outpost")
        );
        let c = Client::new("http://[::1]:9000", None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 9000));
        assert_eq!(c.authority, "[::1]:9000");
    }

    #[test]
    fn unusable_server_urls_are_refused_with_the_reason() {
        for (url, needle) in [
            ("https://box:8443", "https is not supported"),
            ("127.0.0.1:8080", "http://HOST:PORT"),
            ("http://u:p@box:1", "--token"),
            ("not a url", "invalid --server URL"),
        ] {
            let err = Client::new(url, None).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_connect_error_naming_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut c = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let err = c
            .get_json("/health", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert!(
            err.to_string().contains("is `outpost run` running"),
            "{err}"
        );
    }
}
