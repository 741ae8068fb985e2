//! Running the cases: capability gating, the test macro and `run_all`.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{Capabilities, LeaseStore};

use crate::support::{BoxFuture, StoreFactory};

/// What a case needs from the store; cases whose need is unmet are skipped
/// with the reason [`Requirement::unmet`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Runs on every store.
    Nothing,
    /// Needs fencing tokens ([`Capabilities::fencing`]).
    Fencing,
    /// Needs change notifications ([`Capabilities::native_wait`]).
    NativeWait,
    /// Needs a minimum ttl of at least 10 ms, so a shorter lease can be
    /// refused ([`Capabilities::min_ttl`]).
    MinimumTtl,
}

impl Requirement {
    /// Why a store with `caps` can not run a case with this requirement, or
    /// `None` when it can.
    pub fn unmet(self, caps: &Capabilities) -> Option<&'static str> {
        match self {
            Self::Nothing => None,
            Self::Fencing if !caps.fencing => Some("the store has no fencing tokens"),
            Self::NativeWait if !caps.native_wait => Some("the store has no change notifications"),
            Self::MinimumTtl if caps.min_ttl < Duration::from_millis(10) => {
                Some("the store's minimum ttl is too small to go below")
            }
            _ => None,
        }
    }
}

/// Why the case with `requirement` is skipped for the factory's store, or
/// `None` to run it.
pub async fn skip_reason<F: StoreFactory>(factory: &F, requirement: Requirement) -> Option<String> {
    let store = factory.connect().await;
    requirement.unmet(&store.capabilities()).map(str::to_owned)
}

/// Expands to one `#[tokio::test]` per case, in a module named `$name`,
/// running the case against stores from `$factory` (an expression giving a
/// [`StoreFactory`], evaluated once per test). Cases a store's capabilities
/// rule out print why and pass. The calling crate needs `tokio` (with the
/// `macros` and `rt-multi-thread` features) among its dev-dependencies.
///
/// With `skip_if = FUTURE` (a future giving `Option<String>`, awaited
/// before each test), a test prints the reason and passes when it gives
/// `Some`: use it for servers that may be missing, with
/// `harness::skip_unless_available` (feature `harness`).
///
/// # Examples
///
/// ```no_run
/// conformance_tests::conformance_suite!(
///     memory,
///     conformance_tests::shared(lock_core::MemoryStore::new())
/// );
/// ```
///
/// ```ignore
/// use conformance_tests::harness::{shared_redis, skip_unless_available};
///
/// conformance_tests::conformance_suite!(
///     redis_single,
///     || async { RedisStore::connect(shared_redis().await.unwrap().url()).await.unwrap() },
///     skip_if = skip_unless_available(shared_redis())
/// );
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $factory:expr) => {
        $crate::conformance_suite!($name, $factory, skip_if = async { None::<String> });
    };
    ($name:ident, $factory:expr, skip_if = $skip:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::__for_each_case! { __case_tests { $factory, $skip } }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_tests {
    ($factory:expr, $skip:expr ; $($case:ident : $requirement:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(reason) = $skip.await {
                    eprintln!("skipped {}: {}", stringify!($case), reason);
                    return;
                }
                let factory = $factory;
                let requirement = $crate::Requirement::$requirement;
                if let Some(reason) = $crate::skip_reason(&factory, requirement).await {
                    eprintln!("skipped {}: {}", stringify!($case), reason);
                    return;
                }
                $crate::cases::$case(&factory).await;
            }
        )*
    };
}

/// The whole message of a panic: an `assert_eq!` keeps its left and right
/// values.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked with a value that is not a message".into())
}

/// What [`run_all`] did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Cases that passed.
    pub passed: Vec<&'static str>,
    /// Cases skipped, with the reason.
    pub skipped: Vec<(&'static str, &'static str)>,
    /// Cases that failed, with their panic message.
    pub failed: Vec<(&'static str, String)>,
}

impl Summary {
    /// Panics listing every failed case, if any failed.
    pub fn assert_passed(&self) {
        if !self.failed.is_empty() {
            let mut message = format!("{} conformance case(s) failed:\n", self.failed.len());
            for (name, why) in &self.failed {
                message.push_str(&format!("- {name}: {why}\n"));
            }
            panic!("{message}");
        }
    }
}

#[doc(hidden)]
pub type __CaseFn<F> = fn(Arc<F>) -> BoxFuture<'static, ()>;

#[doc(hidden)]
#[macro_export]
macro_rules! __collect_cases {
    ($cases:ident, $factory:ident ; $($case:ident : $requirement:ident,)*) => {
        $(
            $cases.push((
                stringify!($case),
                $crate::Requirement::$requirement,
                (|f: ::std::sync::Arc<$factory>| -> $crate::BoxFuture<'static, ()> {
                    ::std::boxed::Box::pin(async move { $crate::cases::$case(&*f).await })
                }) as $crate::__CaseFn<$factory>,
            ));
        )*
    };
}

/// Runs every case concurrently against stores from `factory` and reports
/// which passed, were skipped or failed (for crates that want one test, or
/// a custom harness). Call [`Summary::assert_passed`] to fail on failures.
pub async fn run_all<F: StoreFactory>(factory: F) -> Summary {
    let factory = Arc::new(factory);
    let caps = factory.connect().await.capabilities();
    let mut cases: Vec<(&'static str, Requirement, __CaseFn<F>)> = Vec::new();
    crate::__for_each_case! { __collect_cases { cases, F } }
    let mut summary = Summary::default();
    let mut running = Vec::new();
    for (name, requirement, run) in cases {
        if let Some(reason) = requirement.unmet(&caps) {
            summary.skipped.push((name, reason));
            continue;
        }
        running.push((name, tokio::spawn(run(factory.clone()))));
    }
    for (name, handle) in running {
        match handle.await {
            Ok(()) => summary.passed.push(name),
            Err(error) => {
                let why = match error.try_into_panic() {
                    Ok(panic) => panic_text(&*panic),
                    Err(error) => error.to_string(),
                };
                summary.failed.push((name, why));
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_case_keeps_its_whole_assertion_text() {
        let failed = tokio::spawn(async {
            let held = 2;
            assert_eq!(held, 1, "holders of {:?}", "key");
        })
        .await
        .unwrap_err()
        .try_into_panic()
        .unwrap();
        let text = panic_text(&*failed);
        assert!(text.contains("holders of \"key\""), "{text}");
        assert!(text.contains("left: 2"), "{text}");
        assert!(text.contains("right: 1"), "{text}");
    }
}
