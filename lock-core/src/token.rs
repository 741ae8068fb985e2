//! Fencing tokens.

use std::fmt;
use std::str::FromStr;

use num_bigint::BigUint;

/// A fencing token: per lock id, every grant's token is strictly greater than
/// the token of every earlier grant, across release, expiry, takeover and
/// store restarts (see each store's documentation for the conditions).
///
/// A lease lock alone cannot stop a holder that was paused (GC, swapping,
/// `SIGSTOP`, a blocked executor) from acting after its lease ended and
/// someone else took over. A resource that remembers the largest token it
/// has accepted and refuses smaller ones can. Send the token with every
/// write to the protected resource, and have the resource check it in the
/// same atomic step as the write:
///
/// ```sql
/// UPDATE report SET body = $1, fence = $2 WHERE id = $3 AND fence <= $2
/// -- zero rows updated: a newer holder has written; stop.
/// ```
///
/// Tokens are never negative (by type) and never change for a given grant.
///
/// # Examples
///
/// ```
/// use lock_core::FencingToken;
///
/// let older: FencingToken = "41".parse()?;
/// let newer = FencingToken::from(42u64);
/// assert!(newer > older);
/// assert_eq!(newer.to_u64(), Some(42));
/// assert_eq!(newer.to_string(), "42");
/// # Ok::<(), lock_core::ParseTokenError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(BigUint);

impl FencingToken {
    /// Wraps a big unsigned integer.
    pub fn new(value: BigUint) -> Self {
        Self(value)
    }

    /// The token as a big unsigned integer.
    pub fn as_biguint(&self) -> &BigUint {
        &self.0
    }

    /// The token as a `u64`, when it fits.
    pub fn to_u64(&self) -> Option<u64> {
        u64::try_from(&self.0).ok()
    }

    /// The token as a `u128`, when it fits.
    pub fn to_u128(&self) -> Option<u128> {
        u128::try_from(&self.0).ok()
    }

    /// Big-endian bytes without leading zeros (`[0]` for zero).
    pub fn to_bytes_be(&self) -> Vec<u8> {
        self.0.to_bytes_be()
    }

    /// Reads big-endian bytes, as written by [`FencingToken::to_bytes_be`].
    pub fn from_bytes_be(bytes: &[u8]) -> Self {
        Self(BigUint::from_bytes_be(bytes))
    }
}

impl From<u64> for FencingToken {
    fn from(value: u64) -> Self {
        Self(BigUint::from(value))
    }
}

impl From<u128> for FencingToken {
    fn from(value: u128) -> Self {
        Self(BigUint::from(value))
    }
}

impl From<BigUint> for FencingToken {
    fn from(value: BigUint) -> Self {
        Self(value)
    }
}

impl From<FencingToken> for BigUint {
    fn from(token: FencingToken) -> Self {
        token.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencingToken({})", self.0)
    }
}

/// A string that is not a decimal fencing token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fencing token (expected decimal digits): {input:?}")]
pub struct ParseTokenError {
    input: String,
}

impl FromStr for FencingToken {
    type Err = ParseTokenError;

    /// Parses decimal digits only: no sign, no spaces, no other radix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseTokenError {
            input: s.chars().take(64).collect(),
        };
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        BigUint::parse_bytes(s.as_bytes(), 10)
            .map(Self)
            .ok_or_else(error)
    }
}
