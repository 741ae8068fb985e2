//! Reads of key items, shared by the waiting entries' renewals.

use super::*;

impl DynamoStore {
    /// The key item, read strongly consistently.
    pub(super) async fn read(&self, key: &str) -> Result<Option<KeyState>, StoreError> {
        let item = get_item(
            self.inner.client.clone(),
            self.inner.context.clone(),
            key.to_owned(),
        )
        .await?;
        item.map(|item| KeyState::parse(key, &item)).transpose()
    }

    /// The key item, from a strongly consistent read that this call may
    /// share with others of this store already in flight for the same key
    /// (then `true`). The waiters of one process poll their keys often; a
    /// shared read is one request for all of them.
    ///
    /// A shared read may have been served before this call began: it may
    /// show an older state (harmless for a waiting entry: holding only ever
    /// starts, its own expiry only grows), or not yet show an entry added
    /// just before; callers read again before concluding an entry is gone.
    /// A release by this store ends the sharing of the key's read in flight
    /// ([`forget_shared_read`](Self::forget_shared_read)): the waiter it
    /// wakes must see the item the release left, not one read before.
    pub(super) async fn read_shared(
        &self,
        key: &str,
    ) -> Result<(Option<KeyState>, bool), StoreError> {
        let (read, shared) = {
            let mut reads = self
                .inner
                .reads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match reads.get(key) {
                Some((_, read)) => (read.clone(), true),
                None => {
                    let serial = self.inner.read_serials.fetch_add(1, Ordering::Relaxed);
                    let read = shared_read(&self.inner, key, serial);
                    reads.insert(key.to_owned(), (serial, read.clone()));
                    (read, false)
                }
            }
        };
        let item = read.await?;
        Ok((
            item.map(|item| KeyState::parse(key, &item)).transpose()?,
            shared,
        ))
    }

    /// Later reads of `key` do not join the read in flight (its callers
    /// still get it).
    pub(super) fn forget_shared_read(&self, key: &str) {
        self.inner
            .reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// A read of `key`'s item that removes itself from the store's reads in
/// flight when done (unless a later read took its place). It holds the
/// store weakly: an abandoned read does not keep a dropped store alive.
pub(super) fn shared_read(inner: &Arc<Inner>, key: &str, serial: u64) -> SharedRead {
    let (client, context, key) = (inner.client.clone(), inner.context.clone(), key.to_owned());
    let store: Weak<Inner> = Arc::downgrade(inner);
    async move {
        let item = get_item(client, context, key.clone()).await;
        if let Some(store) = store.upgrade() {
            let mut reads = store.reads.lock().unwrap_or_else(PoisonError::into_inner);
            if reads
                .get(&key)
                .is_some_and(|(current, _)| *current == serial)
            {
                reads.remove(&key);
            }
        }
        item
    }
    .boxed()
    .shared()
}

/// One strongly consistent `GetItem` of `key`'s item (`None` when absent).
pub(super) async fn get_item(
    client: Client,
    context: Context,
    key: String,
) -> Result<Option<Item>, StoreError> {
    let output = client
        .get_item()
        .table_name(&context.table)
        .set_key(Some(DynamoStore::key_value(&key)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|error| store_error("read", &context, error).with_key(&key))?;
    Ok(output.item.filter(|item| item.len() > 1))
}
