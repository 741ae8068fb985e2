//! The fenced register: a counter per key that accepts a write only with a
//! fencing token at least as large as the largest it accepted (a holder
//! writes more than once with its token). Served on a Unix
//! socket to the worker processes (`W <key> <token>` answered `OK` or
//! `STALE`), and every decision logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// One decision of the register.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    pub(crate) key: String,
    pub(crate) token: u64,
    pub(crate) accepted: bool,
}

#[derive(Default)]
struct State {
    last: HashMap<String, u64>,
    decisions: Vec<Decision>,
}

/// The register's shared state.
#[derive(Clone, Default)]
pub(crate) struct Register {
    state: Arc<Mutex<State>>,
}

impl Register {
    fn decide(&self, key: &str, token: u64) -> bool {
        let mut state = self.state.lock().expect("register lock");
        let accepted = state.last.get(key).is_none_or(|last| token >= *last);
        if accepted {
            state.last.insert(key.to_owned(), token);
        }
        state.decisions.push(Decision {
            key: key.to_owned(),
            token,
            accepted,
        });
        accepted
    }

    /// Every decision so far.
    pub(crate) fn decisions(&self) -> Vec<Decision> {
        self.state.lock().expect("register lock").decisions.clone()
    }

    /// Serves the register on `path` until the runtime ends.
    pub(crate) fn serve(&self, path: &Path) -> std::io::Result<()> {
        let listener = UnixListener::bind(path)?;
        let register = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let register = register.clone();
                tokio::spawn(async move {
                    let _ = register.session(stream).await;
                });
            }
        });
        Ok(())
    }

    async fn session(&self, stream: UnixStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            let mut parts = line.splitn(3, ' ');
            let (Some("W"), Some(token), Some(key)) = (parts.next(), parts.next(), parts.next())
            else {
                write.write_all(b"ERR\n").await?;
                continue;
            };
            let Ok(token) = token.parse::<u64>() else {
                write.write_all(b"ERR\n").await?;
                continue;
            };
            let answer: &[u8] = if self.decide(key, token) {
                b"OK\n"
            } else {
                b"STALE\n"
            };
            write.write_all(answer).await?;
        }
        Ok(())
    }
}

/// A worker's connection to the register.
pub(crate) struct RegisterClient {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl RegisterClient {
    pub(crate) async fn connect(path: &Path) -> std::io::Result<Self> {
        let (read, write) = UnixStream::connect(path).await?.into_split();
        Ok(Self {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// Offers a write with `token`; whether the register accepted it.
    pub(crate) async fn write(&mut self, key: &str, token: u64) -> std::io::Result<bool> {
        self.write
            .write_all(format!("W {token} {key}\n").as_bytes())
            .await?;
        Ok(self.lines.next_line().await?.as_deref() == Some("OK"))
    }
}
