//! Which ports a rank's TCP ring listener may take: any free one (the kernel's choice), or, with
//! `INFINITY_RING_PORTS=LO-HI`, the first free one of that range, for nodes whose firewall opens only
//! some ports between them (each rank of a node takes one, so the range needs one per local rank).

use std::net::{IpAddr, TcpListener};
use std::ops::RangeInclusive;

use anyhow::{bail, Context, Result};

/// The variable naming the ports the ring listeners may take.
pub const RING_PORTS_VAR: &str = "INFINITY_RING_PORTS";

/// `INFINITY_RING_PORTS`'s range, if set: `LO-HI` or one port; anything else is an error naming it.
pub fn from_env() -> Result<Option<RangeInclusive<u16>>> {
    match std::env::var(RING_PORTS_VAR) {
        Ok(text) if !text.trim().is_empty() => parse(&text).map(Some),
        _ => Ok(None),
    }
}

fn parse(text: &str) -> Result<RangeInclusive<u16>> {
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p > 0);
    let range = match text.split_once('-') {
        Some((lo, hi)) => port(lo).zip(port(hi)).map(|(lo, hi)| lo..=hi),
        None => port(text).map(|p| p..=p),
    };
    match range {
        Some(r) if !r.is_empty() => Ok(r),
        _ => bail!("{RING_PORTS_VAR}={text:?}: expected a port range LO-HI (1 to 65535, LO ≤ HI) or one port"),
    }
}

/// A listener on `ip` at a free port of `ports` (the first free one), or at any port without a range.
pub fn bind(ip: IpAddr, ports: Option<&RangeInclusive<u16>>) -> Result<TcpListener> {
    let Some(ports) = ports else {
        return TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"));
    };
    for port in ports.clone() {
        match TcpListener::bind((ip, port)) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding {ip}:{port} ({RING_PORTS_VAR})")),
        }
    }
    let named = match ports.start() == ports.end() {
        true => ports.start().to_string(),
        false => format!("{}-{}", ports.start(), ports.end()),
    };
    bail!(
        "every port of {RING_PORTS_VAR}={named} is taken on {ip}: each rank of a node takes one, so give at least \
         as many as the node runs ranks, beside those other programs hold (`ss -ltnp` lists them); or another \
         range"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_or_one_port_reads_and_anything_else_is_refused() {
        assert_eq!(parse("40000-40007").unwrap(), 40000..=40007);
        assert_eq!(parse(" 40000 ").unwrap(), 40000..=40000);
        for bad in ["40007-40000", "0-10", "a-b", "70000", "40000-", "-"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("INFINITY_RING_PORTS={bad:?}: expected a port range")), "{e}");
        }
    }

    /// The first free port of the range, the next one where it is taken, and an error naming the range
    /// once all are.
    #[test]
    fn listeners_take_the_first_free_ports_of_the_range() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // (a range of free ports: one the kernel gives, and its neighbours, retried elsewhere if taken)
        let (first, range) = (0..20)
            .find_map(|_| {
                let p = TcpListener::bind((ip, 0)).ok()?.local_addr().ok()?.port();
                let range = p..=p.checked_add(1)?;
                let free = range.clone().all(|q| TcpListener::bind((ip, q)).is_ok());
                free.then(|| (bind(ip, Some(&range)).unwrap(), range))
            })
            .expect("two free neighbouring ports");
        assert_eq!(first.local_addr().unwrap().port(), *range.start());
        let second = bind(ip, Some(&range)).unwrap();
        assert_eq!(second.local_addr().unwrap().port(), *range.end());
        let e = bind(ip, Some(&range)).unwrap_err().to_string();
        assert!(e.contains(&format!("every port of INFINITY_RING_PORTS={}-{} is taken", range.start(), range.end())));
        assert!(bind(ip, None).unwrap().local_addr().unwrap().port() != 0);
    }
}
