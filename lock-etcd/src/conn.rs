//! The connection: the etcd client, the request timeout, and fail-over of
//! requests that never left.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, DeleteResponse, Error, GetResponse, Txn, TxnResponse};

/// The etcd client with the store's request timeout and fail-over rule.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) timeout: Duration,
    attempts: usize,
}

impl Conn {
    pub(crate) fn new(client: Client, timeout: Duration, endpoints: usize) -> Self {
        Self {
            client,
            timeout,
            attempts: 2 * endpoints + 1,
        }
    }

    /// Runs `call`, and runs it again at once while it fails before reaching
    /// any server. etcd-client balances requests over every endpoint and
    /// keeps picking one that is down (a killed member) with a connect
    /// error; such a request was never sent, so sending it again (on
    /// another endpoint) is safe even for writes. Bounded by twice the
    /// number of endpoints.
    pub(crate) async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(&Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut left = self.attempts;
        loop {
            match call(&self.client).await {
                Err(error) if left > 1 && is_unsent(&error) => {
                    left -= 1;
                    tracing::trace!(%error, "request not sent; trying another endpoint");
                }
                other => return other,
            }
        }
    }

    /// A transaction, with fail-over.
    pub(crate) async fn txn(&self, txn: &Txn) -> Result<TxnResponse, Error> {
        self.call(|client| {
            let (mut kv, txn) = (client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// A deletion of one key, with fail-over.
    pub(crate) async fn delete(&self, key: &[u8]) -> Result<DeleteResponse, Error> {
        self.call(|client| {
            let (mut kv, key) = (client.kv_client(), key.to_vec());
            async move { kv.delete(key, None).await }
        })
        .await
    }

    /// A read of one key, with fail-over.
    pub(crate) async fn get(&self, key: &[u8]) -> Result<GetResponse, Error> {
        self.call(|client| {
            let (mut kv, key) = (client.kv_client(), key.to_vec());
            async move { kv.get(key, None).await }
        })
        .await
    }
}

/// Whether `error` says the request could not be sent at all (connecting
/// to the chosen endpoint failed).
pub(crate) fn is_unsent(error: &Error) -> bool {
    match error {
        Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && {
                let message = status.message();
                message.contains("connect error") || message.contains("onnection refused")
            }
        }
        _ => false,
    }
}
