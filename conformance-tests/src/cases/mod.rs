//! The case functions: each checks one contract and panics, naming what
//! broke, when the store under test breaks it. Every case takes a
//! [`StoreFactory`](crate::StoreFactory), uses keys of its own and can run
//! in parallel with the others against one server; the two cases outside
//! the suite, for stores that wake their own process's waiters
//! ([`same_process_release_wakes_only_the_entry_it_promotes`] and
//! [`a_release_before_the_wait_still_wakes_the_promoted_entry`]), take a
//! store.

mod fair;
mod kinds;
mod locker;
mod queue;
mod race;
mod shared;
mod store;

pub use fair::*;
pub use kinds::*;
pub use locker::*;
pub use queue::*;
pub use race::*;
pub use shared::*;
pub use store::*;

/// Calls `$callback!` with the given arguments and every case with its
/// [`Requirement`](crate::Requirement): the one list of cases, from which the
/// test macro and [`run_all`](crate::run_all) are made.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_case {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { $($args)* ;
            acquire_grants_a_free_key: Fencing,
            acquire_of_a_held_key_reports_the_holder: Nothing,
            acquire_takes_over_an_expired_lease: Nothing,
            acquire_after_release_reports_no_previous_owner: Nothing,
            acquire_holds_for_the_whole_ttl: Nothing,
            concurrent_acquires_grant_exactly_one: Nothing,
            renew_extends_a_live_lease: Nothing,
            renew_of_a_superseded_lease_is_lost: Nothing,
            renew_of_an_expired_lease_is_lost: Nothing,
            renew_of_a_released_lease_is_lost: Nothing,
            renew_never_creates_a_lease: Nothing,
            renew_answers_a_mixed_batch_in_order: Nothing,
            renew_takes_a_full_batch: Nothing,
            release_frees_the_key: Nothing,
            release_by_a_superseded_lease_changes_nothing: Nothing,
            release_by_an_expired_lease_changes_nothing: Nothing,
            release_with_a_foreign_lease_id_keeps_the_holder: Nothing,
            release_twice_and_unknown_keys_are_not_held: Nothing,
            fencing_tokens_increase_across_release: Fencing,
            fencing_tokens_increase_across_expiry_and_takeover: Fencing,
            fencing_tokens_increase_per_key_when_keys_interleave: Fencing,
            fencing_disabled_grants_without_a_token: Nothing,
            inspect_reports_holder_remaining_and_token: Nothing,
            queue_grants_waiters_in_arrival_order: Fencing,
            queue_release_and_ask_again_goes_behind_the_waiters: Nothing,
            queue_dead_waiter_delays_by_at_most_its_waiter_ttl: Nothing,
            queue_dead_holder_delays_by_at_most_its_ttl: Fencing,
            queue_released_waiter_leaves_no_entry: Fencing,
            queue_waiting_entries_renew_in_the_holders_batch: Nothing,
            queue_retried_request_adds_no_second_entry: Nothing,
            queue_waiters_arriving_together_all_line_up: Nothing,
            queue_refuses_a_limit_mismatch: Nothing,
            wait_for_grant_hears_the_handoff: NativeWait,
            wait_for_grant_returns_by_its_maximum: Nothing,
            weird_ids_are_stored_and_matched_exactly: Nothing,
            keys_of_the_maximum_length_work: Nothing,
            locker_try_lock_reports_the_holder: Nothing,
            locker_lock_waits_for_a_release: Nothing,
            locker_lock_times_out_naming_the_holder: Nothing,
            locker_heartbeat_keeps_a_lock_past_its_lease: Nothing,
            locker_detects_a_lost_lease_at_the_next_renewal: Nothing,
            locker_dropping_a_guard_releases_it: Nothing,
            locker_close_releases_every_lock: Nothing,
            locker_cancelled_lock_calls_leave_no_renewed_lease: Nothing,
            locker_rejects_a_lease_below_the_store_minimum: MinimumTtl,
            locker_waiters_acquire_when_notifications_are_lost: Nothing,
            locker_cut_off_holder_warns_then_expires_before_the_store: Nothing,
            locker_stale_unlock_leaves_the_new_holder: Nothing,
            locker_waiters_are_granted_in_arrival_order: Fencing,
            locker_releasing_holder_goes_behind_the_waiters: Fencing,
            locker_promoted_waiter_makes_no_acquire_call: Fencing,
            locker_abandoned_waits_leave_no_entry: Nothing,
            locker_dead_waiter_delays_the_queue_by_at_most_its_waiter_ttl: Nothing,
            locker_waiting_entries_ride_the_renewal_batch: Nothing,
            semaphore_never_has_more_holders_than_permits: Fencing,
            semaphore_grants_permits_in_arrival_order: Fencing,
            semaphore_dead_holder_frees_its_permit_within_its_lease: Nothing,
            rwlock_readers_share_and_a_writer_holds_alone: Nothing,
            rwlock_a_waiting_writer_is_not_starved_by_readers: Nothing,
            mixed_permit_counts_on_one_id_are_refused: Nothing,
            shared_requests_wait_behind_an_exclusive_holder: Nothing,
            shared_a_semaphore_grants_up_to_its_limit_and_hands_a_freed_permit_to_the_next: Fencing,
            shared_a_waiting_writer_waits_for_the_readers_before_it_and_blocks_those_after: Fencing,
            shared_an_exclusive_release_promotes_the_shared_entries_behind_it_up_to_the_limit: Fencing,
            shared_releasing_a_waiting_writer_promotes_the_readers_it_blocked: Fencing,
            shared_concurrent_shared_requests_never_exceed_the_limit: Fencing,
            inspect_shows_every_holder_and_how_many_wait: Nothing,
            contention_race_with_a_fenced_register: Fencing,
        }
    };
}
