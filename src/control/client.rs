//! Client side of the control API, used by the CLI: finds the running node of a data directory
//! through `control.addr` / `control.token` and calls it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

use super::{Problem, files};

/// Upper bound on one control call (a DHT lookup plus a dial fit well inside).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no commucat node is running for data dir {0} (start one with `commucat run`)")]
    NotRunning(PathBuf),
    #[error("{}", .0.detail.clone().unwrap_or_else(|| .0.title.clone()))]
    Api(Problem),
    #[error("control file {path} is unreadable or malformed: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("control API request failed: {0}")]
    Http(#[from] reqwest::Error),
}

pub struct Client {
    base: String,
    token: String,
    data_dir: PathBuf,
    http: reqwest::Client,
}

impl Client {
    /// Connects to the node running for `data_dir`, or says that none is.
    pub fn for_data_dir(data_dir: &Path) -> Result<Self, Error> {
        let (addr_path, token_path) = files(data_dir);
        let not_running = || Error::NotRunning(data_dir.to_owned());
        let addr = match std::fs::read_to_string(&addr_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_running()),
            Err(e) => {
                return Err(Error::BadFile {
                    path: addr_path,
                    reason: e.to_string(),
                });
            }
        };
        let addr: SocketAddr =
            addr.trim()
                .parse()
                .map_err(|e: std::net::AddrParseError| Error::BadFile {
                    path: addr_path.clone(),
                    reason: e.to_string(),
                })?;
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| Error::BadFile {
                path: token_path,
                reason: e.to_string(),
            })?
            .trim()
            .to_owned();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(Self {
            base: format!("http://{addr}"),
            token,
            data_dir: data_dir.to_owned(),
            http,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// Opens a server-sent-event stream and yields `(event, data)` pairs until it ends.
    pub async fn events(
        &self,
        path: &str,
    ) -> Result<impl futures::Stream<Item = Result<(String, String), Error>> + use<>, Error> {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        // No overall timeout: the stream lasts as long as the user wants.
        let req = req.timeout(Duration::from_secs(u64::from(u32::MAX)));
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Err(Error::NotRunning(self.data_dir.clone())),
            Err(e) => return Err(e.into()),
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(Error::Api(
                serde_json::from_str(&body).unwrap_or_else(|_| Problem::new(status, Some(body))),
            ));
        }
        let bytes = resp.bytes_stream();
        Ok(futures::stream::unfold(
            (bytes, String::new()),
            |(mut bytes, mut buf)| async move {
                use futures::StreamExt;
                loop {
                    if let Some(end) = buf.find("\n\n") {
                        let frame: String = buf.drain(..end + 2).collect();
                        let mut event = String::from("message");
                        let mut data = String::new();
                        for line in frame.lines() {
                            if let Some(v) = line.strip_prefix("event:") {
                                event = v.trim().to_owned();
                            } else if let Some(v) = line.strip_prefix("data:") {
                                if !data.is_empty() {
                                    data.push('\n');
                                }
                                data.push_str(v.strip_prefix(' ').unwrap_or(v));
                            }
                        }
                        if !data.is_empty() {
                            return Some((Ok((event, data)), (bytes, buf)));
                        }
                        continue; // a keep-alive comment
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                        Some(Err(e)) => return Some((Err(e.into()), (bytes, buf))),
                        None => return None,
                    }
                }
            },
        ))
    }

    /// A DELETE that answers 204 No Content.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        self.send_checked(self.http.delete(format!("{}{path}", self.base)))
            .await
            .map(drop)
    }

    /// DELETE that answers with a JSON body.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, Error> {
        Ok(self.send_checked(req).await?.json().await?)
    }

    /// Sends `req` with the token; a non-success status becomes [`Error::Api`].
    async fn send_checked(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let resp = match req.bearer_auth(&self.token).send().await {
            Ok(resp) => resp,
            // A stale control.addr left by a node that crashed: nothing listens there any more.
            Err(e) if e.is_connect() => return Err(Error::NotRunning(self.data_dir.clone())),
            Err(e) => return Err(e.into()),
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let problem =
            serde_json::from_str(&body).unwrap_or_else(|_| Problem::new(status, Some(body)));
        Err(Error::Api(problem))
    }
}
