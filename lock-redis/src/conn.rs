//! The connection: one reconnecting connection to a server, or the Cluster
//! client's connection. Both speak RESP3, so change notifications share
//! them with the commands.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lock_core::StoreError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, IntoConnectionInfo, ProtocolVersion, PushInfo, RedisResult, ScriptInvocation,
    TlsCertificates, Value,
};

use crate::error::map_redis_error;
use crate::target::Target;
use crate::waiters::Waiters;

/// The connection: a reconnecting single-server connection, or the Cluster
/// client's. Both speak RESP3, so subscriptions share them.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How to open a [`Conn`].
pub(crate) struct ConnSettings<'a> {
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Option<Duration>,
    /// The CA to trust instead of the system's, for TLS.
    pub(crate) root_certificate: Option<&'a [u8]>,
}

impl Conn {
    /// Connects to `target`, handing push messages (notifications, lost
    /// connections) to `waiters` for as long as they exist.
    ///
    /// # Errors
    ///
    /// The mapped `redis` error of the connection attempt.
    pub(crate) async fn open(
        target: &Target,
        settings: &ConnSettings<'_>,
        waiters: &Arc<Waiters>,
    ) -> Result<Self, StoreError> {
        if target.is_tls() {
            ensure_crypto_provider();
        }
        let push_waiters = Arc::downgrade(waiters);
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            if let Some(waiters) = push_waiters.upgrade() {
                waiters.on_push(&push);
            }
            Ok(())
        };
        let map = |error| map_redis_error("connect", None, error);
        let root_certificate = settings.root_certificate.filter(|_| target.is_tls());
        Ok(match target {
            Target::Single { url, .. } => {
                let info = url.expose().into_connection_info().map_err(map)?;
                let redis_settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let info = info.set_redis_settings(redis_settings);
                let client = match root_certificate {
                    Some(pem) => Client::build_with_tls(info, certificates(pem)),
                    None => Client::open(info),
                }
                .map_err(map)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(settings.response_timeout)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_secs(1))
                    .set_number_of_retries(4)
                    .set_push_sender(on_push)
                    .set_automatic_resubscription();
                // The manager retries a failed first connection (a refused
                // one fails fast, in about 0.3 s for all attempts); a server
                // that never answers costs each attempt the whole timeout,
                // so the attempts together are bounded by it too.
                let connecting = client.get_connection_manager_with_config(config);
                Self::Single(
                    within(settings.connect_timeout, connecting)
                        .await?
                        .map_err(map)?,
                )
            }
            Target::Cluster { nodes, .. } => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(settings.connect_timeout)
                    .push_sender(on_push);
                if let Some(timeout) = settings.response_timeout {
                    builder = builder.response_timeout(timeout);
                }
                if let Some(pem) = root_certificate {
                    builder = builder.certs(certificates(pem));
                }
                let client = builder.build().map_err(map)?;
                Self::Cluster(
                    within(settings.connect_timeout, client.get_async_connection())
                        .await?
                        .map_err(map)?,
                )
            }
        })
    }

    /// Runs a script (loading it again after `NOSCRIPT`).
    pub(crate) async fn eval(&self, invocation: &ScriptInvocation<'_>) -> RedisResult<Value> {
        match self {
            Self::Single(conn) => invocation.invoke_async(&mut conn.clone()).await,
            Self::Cluster(conn) => invocation.invoke_async(&mut conn.clone()).await,
        }
    }

    /// Subscribes to `channel` (sharded in Cluster mode).
    pub(crate) async fn subscribe(&self, channel: &[u8]) -> RedisResult<()> {
        match self {
            Self::Single(conn) => conn.clone().subscribe(channel).await,
            Self::Cluster(conn) => conn.clone().ssubscribe(channel).await,
        }
    }

    pub(crate) async fn unsubscribe(&self, channel: &[u8]) -> RedisResult<()> {
        match self {
            Self::Single(conn) => conn.clone().unsubscribe(channel).await,
            Self::Cluster(conn) => conn.clone().sunsubscribe(channel).await,
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// `connecting`, failed as a connect timeout when it takes longer than
/// `timeout`.
async fn within<T>(
    timeout: Duration,
    connecting: impl Future<Output = RedisResult<T>>,
) -> Result<RedisResult<T>, StoreError> {
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| {
            StoreError::timeout(format!("redis connect: no connection within {timeout:?}"))
        })
}

fn certificates(pem: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// Installs rustls's `ring` provider for `rediss://` unless the program
/// installed a provider of its own.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
