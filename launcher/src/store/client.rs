//! A blocking store client (training processes are synchronous; agents call it from blocking tasks).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::wire::{body_len, frame, Request, Response};

pub struct StoreClient {
    sock: TcpStream,
    addr: String,
}

impl StoreClient {
    /// Connect to `addr` and authenticate, retrying until `timeout` (the store may still be starting).
    pub fn connect(addr: &str, token: &str, who: &str, timeout: Duration) -> Result<StoreClient> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::new();
        while Instant::now() < deadline {
            let target = addr.to_socket_addrs().with_context(|| format!("store address {addr}"))?.next();
            let target = target.with_context(|| format!("store address {addr} resolves to nothing"))?;
            match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(sock) => {
                    sock.set_nodelay(true).ok();
                    let mut c = StoreClient { sock, addr: addr.to_string() };
                    match c.call(&Request::Hello { token: token.into(), who: who.into() }, Duration::from_secs(30))? {
                        Response::Ok => return Ok(c),
                        Response::Error { message } => bail!("store {addr} refused {who}: {message}"),
                        other => bail!("store {addr}: unexpected reply to hello: {other:?}"),
                    }
                }
                Err(e) => last_err = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("store {addr} not reachable within {:.0} s: {last_err}", timeout.as_secs_f64())
    }

    /// This side's address of the store connection: an address the store's network reaches us at.
    pub fn local_ip(&self) -> Result<std::net::IpAddr> {
        Ok(self.sock.local_addr()?.ip())
    }

    /// The store's address as this side reaches it.
    pub fn peer_ip(&self) -> Result<std::net::IpAddr> {
        Ok(self.sock.peer_addr()?.ip())
    }

    fn call(&mut self, req: &Request, timeout: Duration) -> Result<Response> {
        let ctx = || format!("store {}", self.addr);
        self.sock.set_read_timeout(Some(timeout + Duration::from_secs(5))).with_context(ctx)?;
        self.sock.write_all(&frame(req)).with_context(ctx)?;
        let mut header = [0u8; 4];
        self.sock.read_exact(&mut header).with_context(|| format!("store {}: no reply", self.addr))?;
        let n = body_len(header).map_err(|e| anyhow::anyhow!("store {}: {e}", self.addr))?;
        let mut body = vec![0u8; n];
        self.sock.read_exact(&mut body).with_context(ctx)?;
        serde_json::from_slice(&body).with_context(|| format!("store {}: malformed reply", self.addr))
    }

    fn expect_ok(&mut self, req: Request, timeout: Duration) -> Result<Response> {
        match self.call(&req, timeout)? {
            Response::Error { message } => bail!("store {}: {message}", self.addr),
            r => Ok(r),
        }
    }

    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.expect_ok(Request::Set { key: key.into(), value: value.to_vec() }, Duration::from_secs(30))?;
        Ok(())
    }

    pub fn get(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let req = Request::Get { key: key.into(), timeout_ms: timeout.as_millis() as u64 };
        match self.expect_ok(req, timeout)? {
            Response::Value { value } => Ok(value),
            Response::Timeout { .. } => {
                bail!("store {}: `{key}` not set within {:.0} s", self.addr, timeout.as_secs_f64())
            }
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    pub fn add(&mut self, key: &str, delta: i64) -> Result<i64> {
        match self.expect_ok(Request::Add { key: key.into(), delta }, Duration::from_secs(30))? {
            Response::Int { value } => Ok(value),
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    /// Wait until all `keys` are set; `Err(missing)` lists those that never were.
    pub fn wait(&mut self, keys: &[String], timeout: Duration) -> Result<std::result::Result<(), Vec<String>>> {
        let req = Request::Wait { keys: keys.to_vec(), timeout_ms: timeout.as_millis() as u64 };
        match self.expect_ok(req, timeout)? {
            Response::Ok => Ok(Ok(())),
            Response::Timeout { missing } => Ok(Err(missing)),
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    pub fn check(&mut self, keys: &[String]) -> Result<Vec<bool>> {
        match self.expect_ok(Request::Check { keys: keys.to_vec() }, Duration::from_secs(30))? {
            Response::Present { present } => Ok(present),
            r => bail!("store {}: unexpected reply {r:?}", self.addr),
        }
    }

    /// Every rank announces itself under `prefix/rank/{r}` and waits for the others. Refused: a rank
    /// outside the world, a rank that joins twice, a world size that differs from rank 0's; a timeout
    /// names the ranks that never arrived.
    pub fn rendezvous(&mut self, prefix: &str, rank: usize, world: usize, timeout: Duration) -> Result<()> {
        if rank >= world {
            bail!("rendezvous {prefix}: rank {rank} is outside a world of {world}");
        }
        if self.add(&format!("{prefix}/claims/{rank}"), 1)? > 1 {
            bail!("rendezvous {prefix}: rank {rank} joined twice (two processes with the same RANK?)");
        }
        if rank == 0 {
            self.set(&format!("{prefix}/world"), world.to_string().as_bytes())?;
        } else {
            let w = self.get(&format!("{prefix}/world"), timeout).context("waiting for rank 0")?;
            let w0 = String::from_utf8_lossy(&w).to_string();
            if w0 != world.to_string() {
                bail!("rendezvous {prefix}: rank {rank} has WORLD_SIZE {world}, rank 0 has {w0}");
            }
        }
        self.set(&format!("{prefix}/rank/{rank}"), b"1")?;
        let keys: Vec<String> = (0..world).map(|r| format!("{prefix}/rank/{r}")).collect();
        if let Err(missing) = self.wait(&keys, timeout)? {
            let ranks: Vec<&str> = missing.iter().filter_map(|k| k.rsplit('/').next()).collect();
            bail!(
                "rendezvous {prefix}: ranks [{}] of {world} never arrived within {:.0} s",
                ranks.join(", "),
                timeout.as_secs_f64()
            );
        }
        Ok(())
    }
}
