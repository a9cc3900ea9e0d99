//! The rendezvous store server: a key-value map behind a TCP port, served by node 0's agent (or by rank 0
//! itself when a scheduler started the ranks). Every connection must first say the run's token; a
//! malformed, oversized or unauthenticated message closes that connection and nothing else. A wrong
//! token, or an agent of another run, is remembered ([`Refusals`]) for the agents waiting for that node.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::refusals::{Refusals, Why};
use super::wire::{body_len, frame, Request, Response};

#[derive(Default)]
struct State {
    map: Mutex<HashMap<String, Vec<u8>>>,
    /// Woken on every write, so blocked `get`/`wait` calls re-check their keys.
    changed: Notify,
    token: String,
    /// The run an agent's store serves (`None`: any, as a rank's store).
    run_id: Option<String>,
    refused: Mutex<Refusals>,
}

/// A running store; dropping it stops the server.
pub struct StoreServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreServer {
    /// Bind `addr` (port 0 picks a free one) and serve on a background thread with its own runtime, so
    /// synchronous code (a training process) can host the store too.
    pub fn spawn(addr: SocketAddr, token: String) -> Result<StoreServer> {
        Self::spawn_for(addr, token, None)
    }

    /// [`spawn`](Self::spawn) for the agents of run `run_id`: an agent that says another run id
    /// ([`StoreClient::for_run`](super::StoreClient::for_run)) is refused.
    pub fn spawn_for(addr: SocketAddr, token: String, run_id: Option<String>) -> Result<StoreServer> {
        let std_listener = std::net::TcpListener::bind(addr).with_context(|| {
            format!("store: binding {addr} (is another agent with node rank 0, the store's host, using this port?)")
        })?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new().name("rdzv-store".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("a tokio listener");
                tokio::select! {
                    _ = serve(listener, token, run_id) => {}
                    _ = rx => {}
                }
            });
        })?;
        Ok(StoreServer { addr: local, shutdown: Some(tx), thread: Some(thread) })
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Largest hello the store reads before the token is checked: a token and a name are a few dozen bytes,
/// and a stranger's connection should not hold a frame's megabyte.
pub const MAX_HELLO: usize = 16 << 10;

/// How long a connection may take to say hello (a client sends it as it connects).
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// Connections that have not said hello yet, at most: strangers (a port scanner, a flood) cannot take
/// the store host's file descriptors, which its agent and ranks need.
const MAX_BEFORE_HELLO: usize = 256;

/// How long the rest of a request may take once its length has come (between requests a client may
/// wait as long as it likes).
const BODY_WAIT: Duration = Duration::from_secs(30);

/// The key under which a store holds its own instance id, set as it starts (`pid-nanoseconds`): a store
/// started again at the same address (its host's pod restarted) holds another, and an agent that met in
/// the first tells the two apart (the group's state went with the first).
pub const INSTANCE_KEY: &str = "store/instance";

/// Accept connections forever.
async fn serve(listener: TcpListener, token: String, run_id: Option<String>) {
    let state = Arc::new(State { token, run_id, ..State::default() });
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let instance = format!("{}-{}", std::process::id(), since_epoch.as_nanos());
    state.map.lock().expect("not poisoned: no panics while held").insert(INSTANCE_KEY.into(), instance.into_bytes());
    let before_hello = Arc::new(tokio::sync::Semaphore::new(MAX_BEFORE_HELLO));
    let mut said_full: Option<std::time::Instant> = None;
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // (out of file descriptors, most often: retrying at once would spin a core until one frees)
                tracing::warn!("store: accepting a connection: {e}; trying again in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = before_hello.clone().try_acquire_owned() else {
            // (closed at once; said at most every 10 s)
            if said_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    "store: {MAX_BEFORE_HELLO} connections have not said hello yet: closing new ones (the last from \
                     {peer}) until they do or time out ({} s)",
                    HELLO_WAIT.as_secs()
                );
                said_full = Some(std::time::Instant::now());
            }
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(sock, peer.ip(), &state, permit).await {
                tracing::debug!("store: connection from {peer} closed: {e}");
            }
        });
    }
}

/// The next request, of at most `max` bytes.
async fn read_request(sock: &mut TcpStream, max: usize) -> Result<Option<Request>, String> {
    let mut header = [0u8; 4];
    match sock.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let n = body_len(header)?;
    if n > max {
        return Err(format!("a first message of {n} bytes (a hello is at most {max})"));
    }
    let mut body = vec![0u8; n];
    match tokio::time::timeout(BODY_WAIT, sock.read_exact(&mut body)).await {
        Ok(read) => read.map_err(|e| e.to_string())?,
        Err(_) => return Err(format!("a request of {n} bytes not sent whole within {} s", BODY_WAIT.as_secs())),
    };
    serde_json::from_slice(&body).map(Some).map_err(|e| format!("malformed request: {e}"))
}

async fn reply(sock: &mut TcpStream, r: &Response) -> std::io::Result<()> {
    sock.write_all(&frame(r)).await
}

/// Refuses the peer, telling it why and remembering it.
async fn refuse(sock: &mut TcpStream, state: &State, who: &str, ip: IpAddr, why: Why) -> String {
    let _ = reply(sock, &Response::Error { message: why.to_peer(who) }).await;
    state.refused.lock().unwrap().add(who, ip, why.clone());
    format!("{}: {}", super::refusals::shown_name(who), why.to_peer(&super::refusals::shown_name(who)))
}

/// One client: its hello (holding `before_hello`, a place among the connections that have not said it),
/// then its requests.
async fn connection(
    mut sock: TcpStream,
    ip: IpAddr,
    state: &State,
    before_hello: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    sock.set_nodelay(true).ok();
    // a connection that never says hello is dropped after a while instead of holding a task forever
    let hello = tokio::time::timeout(HELLO_WAIT, read_request(&mut sock, MAX_HELLO))
        .await
        .map_err(|_| format!("no hello within {} s", HELLO_WAIT.as_secs()))??;
    drop(before_hello);
    let who = match hello {
        Some(Request::Hello { token, who }) if token == state.token => who,
        Some(Request::Hello { who, .. }) => return Err(refuse(&mut sock, state, &who, ip, Why::WrongToken).await),
        _ => {
            let _ = reply(&mut sock, &Response::Error { message: "expected hello".into() }).await;
            return Err("first message was not a hello".into());
        }
    };
    reply(&mut sock, &Response::Ok).await.map_err(|e| e.to_string())?;
    loop {
        let req = match read_request(&mut sock, super::wire::MAX_FRAME).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                let _ = reply(&mut sock, &Response::Error { message: e.clone() }).await;
                return Err(e);
            }
        };
        if let (Request::ForRun { run_id: asked }, Some(serves)) = (&req, &state.run_id) {
            if asked != serves {
                let why = Why::OtherRun { asked: asked.clone(), serves: serves.clone() };
                return Err(refuse(&mut sock, state, &who, ip, why).await);
            }
        }
        let resp = handle(state, req).await;
        reply(&mut sock, &resp).await.map_err(|e| e.to_string())?;
    }
}

async fn handle(state: &State, req: Request) -> Response {
    match req {
        Request::Hello { .. } => Response::Error { message: "hello twice".into() },
        // (another run's agent was refused by `connection`)
        Request::ForRun { .. } => Response::Ok,
        Request::Refusals => Response::Refused { refused: state.refused.lock().unwrap().lines() },
        Request::Set { key, value } => {
            state.map.lock().unwrap().insert(key, value);
            state.changed.notify_waiters();
            Response::Ok
        }
        Request::Add { key, delta } => {
            let mut map = state.map.lock().unwrap();
            let current = match map.get(&key) {
                None => 0,
                Some(v) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) {
                    Some(i) => i,
                    None => return Response::Error { message: format!("`{key}` does not hold an integer") },
                },
            };
            let next = current.saturating_add(delta);
            map.insert(key, next.to_string().into_bytes());
            drop(map);
            state.changed.notify_waiters();
            Response::Int { value: next }
        }
        Request::Check { keys } => {
            let map = state.map.lock().unwrap();
            Response::Present { present: keys.iter().map(|k| map.contains_key(k)).collect() }
        }
        Request::Get { key, timeout_ms } => match wait_for(state, std::slice::from_ref(&key), timeout_ms).await {
            Ok(()) => Response::Value { value: state.map.lock().unwrap()[&key].clone() },
            Err(missing) => Response::Timeout { missing },
        },
        Request::Wait { keys, timeout_ms } => match wait_for(state, &keys, timeout_ms).await {
            Ok(()) => Response::Ok,
            Err(missing) => Response::Timeout { missing },
        },
    }
}

/// Wait until every key is present; on timeout, the missing ones.
async fn wait_for(state: &State, keys: &[String], timeout_ms: u64) -> Result<(), Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        // register for the wake-up before checking, so a set between the check and the wait is not lost
        let notified = state.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let missing: Vec<String> = {
            let map = state.map.lock().unwrap();
            keys.iter().filter(|k| !map.contains_key(*k)).cloned().collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(missing);
        }
    }
}
