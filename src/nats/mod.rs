//! NATS: connecting (the servers the tests and benchmarks start are in the `weft-harness` crate).

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A URL of the list does not parse.
    #[error("NATS URL {url:?} is invalid: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No server of the list answered.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Unreachable {
        /// The URLs.
        urls: String,
        /// Why.
        reason: String,
    },
}

/// Connects to one of `urls` (comma separated), naming the connection `name` for the server's monitoring.
pub async fn connect(urls: &str, name: &str) -> Result<async_nats::Client, ConnectError> {
    let addresses = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| ConnectError::InvalidUrl { url: url.to_owned(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addresses.is_empty() {
        return Err(ConnectError::InvalidUrl { url: urls.to_owned(), reason: "no URL given".into() });
    }
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(addresses)
        .await
        .map_err(|e| ConnectError::Unreachable { urls: urls.to_owned(), reason: e.to_string() })
}
