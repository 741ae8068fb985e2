//! Picking free loopback ports for servers the harness starts.
//!
//! A port is only known to be free at the moment it is probed; the server
//! binds it a little later. Two measures keep that window harmless:
//!
//! - ports come from below the kernel's ephemeral range
//!   (`/proc/sys/net/ipv4/ip_local_port_range`), so the kernel never hands
//!   one out as the local port of an outgoing connection in the meantime;
//! - a port is handed out at most once per process, so tests running in
//!   parallel threads never get the same one (which also keeps a killed
//!   server's port reserved for its restart).
//!
//! Separate test processes (for example under cargo-nextest) pick at random
//! and probe, so they collide only by rare chance.

use std::collections::BTreeSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// Lowest port the harness hands out: above the registered ports of the
/// usual services (Postgres 5432, Redis 6379, etcd 2379/2380, ...).
const LOWEST_PORT: u16 = 20_000;

/// Used when the ephemeral range cannot be read (non-Linux systems).
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// How many random ports to probe before giving up.
const MAX_ATTEMPTS: usize = 1_000;

/// Ports already handed out by this process.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns a TCP port on `127.0.0.1` that is free right now and that this
/// process has not handed out before.
///
/// # Errors
///
/// Returns an error if no free port was found after many attempts.
pub fn pick_free_port() -> io::Result<u16> {
    let highest = ephemeral_range_start().saturating_sub(1);
    if highest <= LOWEST_PORT {
        return Err(io::Error::other(format!(
            "no ports between {LOWEST_PORT} and the ephemeral range to pick from"
        )));
    }
    let span = u64::from(highest - LOWEST_PORT) + 1;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..MAX_ATTEMPTS {
        let offset = random_u64() % span;
        let Ok(offset) = u16::try_from(offset) else {
            continue;
        };
        let port = LOWEST_PORT + offset;
        if handed_out.contains(&port) || !is_free(port) {
            continue;
        }
        handed_out.insert(port);
        return Ok(port);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free port found in {LOWEST_PORT}..={highest} after {MAX_ATTEMPTS} attempts"),
    ))
}

/// Returns `count` distinct free ports, as [`pick_free_port`] would.
///
/// # Errors
///
/// Returns an error if not enough free ports were found.
pub fn pick_free_ports(count: usize) -> io::Result<Vec<u16>> {
    (0..count).map(|_| pick_free_port()).collect()
}

fn is_free(port: u16) -> bool {
    // Binding the wildcard address too would be stricter, but servers here
    // only ever listen on 127.0.0.1.
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

/// A random number from the standard library's per-instance hash keys, so
/// no random-number crate is needed for something this modest.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        // Whether a port is still free a moment later depends on every other
        // process on the machine, so only what the picker promises is
        // checked here.
        let ports = pick_free_ports(20).unwrap();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for port in ports {
            assert!(port >= LOWEST_PORT);
            assert!(port < ephemeral_range_start(), "{port}");
        }
    }
}
