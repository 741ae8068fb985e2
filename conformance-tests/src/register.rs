//! A fenced register: the downstream resource of the fencing recipe.

use std::sync::{Mutex, MutexGuard, PoisonError};

use lock_core::FencingToken;

/// A counter that accepts an increment only with a fencing token greater
/// than the last one it accepted, the way a real resource guards its writes
/// (`UPDATE ... WHERE fence < $token`).
///
/// In the contention race every grant increments once, so the final value
/// must equal the number of acknowledged increments (none lost) and no
/// stale token may ever be accepted.
#[derive(Debug, Default)]
pub struct FencedRegister {
    state: Mutex<RegisterState>,
}

#[derive(Debug, Default)]
struct RegisterState {
    last: Option<FencingToken>,
    value: u64,
    accepted: Vec<FencingToken>,
    rejected: Vec<FencingToken>,
}

/// An increment refused because its token was not greater than the last
/// accepted one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {offered} (last accepted {last})")]
pub struct StaleToken {
    /// The refused token.
    pub offered: FencingToken,
    /// The last accepted token.
    pub last: FencingToken,
}

impl FencedRegister {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, RegisterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one if `token` is greater than every token accepted so far;
    /// returns the new value.
    ///
    /// # Errors
    ///
    /// [`StaleToken`] when a token at least as large was accepted before.
    pub fn increment(&self, token: &FencingToken) -> Result<u64, StaleToken> {
        let mut state = self.state();
        if let Some(last) = &state.last
            && token <= last
        {
            let error = StaleToken {
                offered: token.clone(),
                last: last.clone(),
            };
            state.rejected.push(token.clone());
            return Err(error);
        }
        state.last = Some(token.clone());
        state.value += 1;
        state.accepted.push(token.clone());
        Ok(state.value)
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.state().value
    }

    /// Every accepted token, in order.
    pub fn accepted(&self) -> Vec<FencingToken> {
        self.state().accepted.clone()
    }

    /// Every refused token, in order.
    pub fn rejected(&self) -> Vec<FencingToken> {
        self.state().rejected.clone()
    }
}
