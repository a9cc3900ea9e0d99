//! The watching agent's connections to the store: the poller that asks for the other nodes' news
//! without holding up the watch, and the heartbeat that tells them this node's agent still watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinHandle;

use crate::store::StoreClient;

/// The connection that polls the store for the other nodes' news. Each poll runs on a blocking thread
/// while the agent goes on watching its ranks and signals, and each call is answered within
/// [`POLL_REPLY`] or fails: a store whose host froze (its connection open, silent) holds up nothing,
/// and the watch finds it lost after `STORE_LOSS`. A connection a call failed on is replaced by a new
/// one.
pub(super) struct Poller {
    client: Option<StoreClient>,
    /// The check under way: it hands the connection back (none if it could not connect).
    polling: Option<JoinHandle<Checked>>,
    addr: String,
    token: String,
    who: String,
}

/// Bumps this node's watch counter ([`beat_key`]) every [`BEAT_EVERY`] on a connection of its own (a
/// thread: the agent's own calls, a stop's grace, never hold it up), from the start of the watch until
/// dropped, when the agent has said how its ranks ended (or is about to).
pub(super) struct Heartbeat {
    stop: Arc<AtomicBool>,
}

/// How often a watching agent bumps its counter.
const BEAT_EVERY: Duration = Duration::from_millis(200);

impl Heartbeat {
    pub(super) fn start(addr: &str, token: &str, who: &str, key: String) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, addr, token, who) = (stop.clone(), addr.to_string(), token.to_string(), who.to_string());
        let beat = move || {
            let mut client = None;
            while !flag.load(Ordering::Relaxed) {
                // (a failed call breaks the connection: the next beat connects anew)
                if let Ok(mut c) = Poller::connected(client.take(), &addr, &token, &who) {
                    let _ = c.add(&key, 1);
                    client = Some(c);
                }
                std::thread::sleep(BEAT_EVERY);
            }
        };
        if let Err(e) = std::thread::Builder::new().name("watch-beat".into()).spawn(beat) {
            console_err!("[launch] warning: starting the watch counter's thread: {e}; the other nodes may take this one for lost");
        }
        Heartbeat { stop }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Store key of the counter node `node`'s agent bumps as it watches its ranks of attempt `prefix`.
pub(super) fn beat_key(prefix: &str, node: usize) -> String {
    format!("{prefix}/watching/{node}")
}

/// Where node `node`'s agent posts who it is for attempt `prefix` (`HOST, agent pid PID`): a message about
/// a lost node names its machine, which an elastic group's numbering (by order of joining) does not.
pub(super) fn agent_key(prefix: &str, node: usize) -> String {
    format!("{prefix}/agent/{node}")
}

/// This agent as [`agent_key`] records it.
pub(super) fn agent_name() -> String {
    format!("{}, agent pid {}", crate::env::hostname().unwrap_or_else(|| "host".into()), std::process::id())
}

type Checked = (Option<StoreClient>, Result<Vec<bool>>);

/// How long the watching agent's calls may wait for the store's answer.
const POLL_REPLY: Duration = Duration::from_secs(2);

impl Poller {
    pub(super) fn new(addr: &str, token: &str, who: &str) -> Poller {
        Poller { client: None, polling: None, addr: addr.into(), token: token.into(), who: who.into() }
    }

    /// A connection to the store: the poller's own unless a call failed on it, else a new one.
    fn connected(c: Option<StoreClient>, addr: &str, token: &str, who: &str) -> Result<StoreClient> {
        match c {
            Some(c) if !c.is_broken() => Ok(c),
            _ => {
                let mut c = StoreClient::connect(addr, token, who, POLL_REPLY)?;
                c.set_reply_timeout(POLL_REPLY);
                Ok(c)
            }
        }
    }

    /// Starts a check of `keys`, unless one is under way.
    pub(super) fn start(&mut self, keys: &[String]) {
        if self.polling.is_some() {
            return;
        }
        let (c, keys) = (self.client.take(), keys.to_vec());
        let (addr, token, who) = (self.addr.clone(), self.token.clone(), self.who.clone());
        self.polling = Some(tokio::task::spawn_blocking(move || match Self::connected(c, &addr, &token, &who) {
            Ok(mut c) => {
                let present = c.check(&keys);
                (Some(c), present)
            }
            Err(e) => (None, Err(e)),
        }));
    }

    /// The answer of the check under way (pending while there is none). Cancel-safe: a check that a
    /// `select!` left unfinished stays under way.
    pub(super) async fn answer(&mut self) -> Result<Vec<bool>> {
        let Some(h) = self.polling.as_mut() else { return std::future::pending().await };
        let (c, present) = h.await.unwrap_or_else(|e| (None, Err(e.into())));
        (self.polling, self.client) = (None, c);
        present
    }

    /// The connection, for a call of the agent's own, once the check under way has answered.
    pub(super) async fn client(&mut self) -> Result<&mut StoreClient> {
        if self.polling.is_some() {
            let _ = self.answer().await;
        }
        let (c, addr, token, who) = (self.client.take(), self.addr.clone(), self.token.clone(), self.who.clone());
        let c = tokio::task::spawn_blocking(move || Self::connected(c, &addr, &token, &who)).await??;
        Ok(self.client.insert(c))
    }

    /// Posts `value` at `key` (on a blocking thread: the caller's other work goes on meanwhile).
    pub(super) async fn post(&mut self, key: &str, value: &str) {
        if let Err(e) = self.client().await {
            console_err!("[launch] warning: store: posting {key}: {e:#}");
            return;
        }
        let (mut c, k, v) = (self.client.take().expect("connected"), key.to_string(), value.to_string());
        if let Ok((c, r)) = tokio::task::spawn_blocking(move || {
            let r = c.set(&k, v.as_bytes());
            (c, r)
        })
        .await
        {
            self.client = Some(c);
            if let Err(e) = r {
                console_err!("[launch] warning: store: posting {key}: {e:#}");
            }
        }
    }
}
