//! Releasing an entry: one conditional write (or, with fencing off and
//! the entry alone on its key, one conditional delete of the key item).

use super::*;

impl DynamoStore {
    /// Removes the live entry of `lease_id`; `NotHeld` when it is gone or
    /// expired. When this process has waits on the key, the write returns
    /// the item as it left it, and the waits of the entries that hold now
    /// are woken, and only those (one request each, not one per waiter).
    pub(super) async fn release_entry(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        let now = self.now();
        if !fencing.is_enabled()
            && let Some(outcome) = self.release_by_delete(key, lease_id, now).await?
        {
            return Ok(outcome);
        }
        let mut update = Update::default();
        let expiry = update.name(&expiry_attribute(lease_id));
        let now_value = update.value(number(now));
        let count = update.name(COUNT);
        let one = update.value(number(1));
        update.remove(&entry_attribute(lease_id));
        update.remove(&seq_attribute(lease_id));
        update.remove_name(expiry.clone());
        update.set(count.clone(), format!("{count} - {one}"));
        if let Some(at) = self.idle_expiry_at(now) {
            update.set_value(IDLE_EXPIRY, number(at));
        }
        update.condition(format!("{expiry} > {now_value}"));
        let local_waits = self.inner.wakers.waits(key) > 0;
        let return_values = if local_waits {
            ReturnValue::AllNew
        } else {
            ReturnValue::None
        };
        match self
            .update("release", key, update, return_values, false)
            .await?
        {
            Written::Applied(item) => {
                // Whoever this release promotes must not read the item from
                // before it.
                self.forget_shared_read(key);
                if local_waits {
                    self.wake_promoted(key, &item, now);
                }
                Ok(ReleaseOutcome::Released)
            }
            Written::Refused(_) => Ok(ReleaseOutcome::NotHeld),
        }
    }

    /// Wakes this process's waits on `key` whose entries hold in `item` (as
    /// a release left it).
    fn wake_promoted(&self, key: &str, item: &HashMap<String, AttributeValue>, now: u64) {
        match KeyState::parse(key, item) {
            Ok(state) => {
                let view = state.view(now, self.inner.skew_override_ms.unwrap_or(0));
                self.inner
                    .wakers
                    .wake_where(key, |lease_id| view.holds(lease_id) == Some(true));
            }
            // The waiters find out at their next poll.
            Err(error) => tracing::debug!(key, %error, "reading the released item failed"),
        }
    }

    /// With fencing off: deletes the whole item when the entry is its only
    /// one. `Ok(None)` when the entry has company (release it by update).
    async fn release_by_delete(
        &self,
        key: &str,
        lease_id: LeaseId,
        now: u64,
    ) -> Result<Option<ReleaseOutcome>, StoreError> {
        let mut update = Update::default();
        let expiry = update.name(&expiry_attribute(lease_id));
        let count = update.name(COUNT);
        let one = update.value(number(1));
        let now_value = update.value(number(now));
        update.condition(format!("{count} = {one} AND {expiry} > {now_value}"));
        let (_, condition, names, values) = update.finish();
        let result = self
            .inner
            .client
            .delete_item()
            .table_name(&self.inner.context.table)
            .set_key(Some(Self::key_value(key)))
            .set_condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(ReleaseOutcome::Released)),
            Err(SdkError::ServiceError(service))
                if matches!(
                    service.err(),
                    DeleteItemError::ConditionalCheckFailedException(_)
                ) =>
            {
                let item = match service.into_err() {
                    DeleteItemError::ConditionalCheckFailedException(failed) => failed.item,
                    _ => None,
                };
                let live = match item {
                    Some(item) => KeyState::parse(key, &item)?
                        .find(lease_id)
                        .is_some_and(|entry| entry.expires_at > now),
                    None => false,
                };
                Ok((!live).then_some(ReleaseOutcome::NotHeld))
            }
            Err(error) => Err(store_error("release", &self.inner.context, error).with_key(key)),
        }
    }
}
