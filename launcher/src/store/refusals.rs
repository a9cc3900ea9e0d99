//! The connections a store refused (a wrong token, an agent of another run), remembered so that the
//! agents waiting for a node can say why it never arrived: from the refused peer's side alone, the
//! node waiting for it would report a node that never came.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Distinct refusals kept (the oldest go first): a peer retrying in a loop must not grow the store.
const KEPT: usize = 16;

/// Longest peer name kept: the name comes from an unauthenticated hello.
const NAME_CHARS: usize = 64;

/// A peer's name as a log or a list shows it: at most [`NAME_CHARS`] characters, control characters
/// (a newline that would forge a log line) as `?`: a refused peer's name is anyone's to choose.
pub fn shown_name(who: &str) -> String {
    who.chars().take(NAME_CHARS).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Why a peer was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    WrongToken,
    /// It asked for run `asked`; the store serves `serves`.
    OtherRun {
        asked: String,
        serves: String,
    },
}

impl Why {
    /// The reason as the refused peer, `who` (`agent 1`, `rank 3`), reads it (in its error): a rank is
    /// refused only where a scheduler started it without the agent (which hands its ranks its token), so
    /// it is told of its own settings, not of the agent's flags.
    pub fn to_peer(&self, who: &str) -> String {
        match self {
            Why::WrongToken if who.starts_with("rank ") => "wrong token: INFINITY_RDZV_TOKEN differs from the one \
                 rank 0, the store's host, was started with; give every rank the same (or MASTER_ADDR:MASTER_PORT \
                 is another job's store: give this job a port of its own, MASTER_PORT or INFINITY_STORE_PORT)"
                .into(),
            Why::WrongToken => "wrong token: INFINITY_RDZV_TOKEN (or --token) differs from the one the store's host \
                                (node 0's agent, or rank 0) was started with; give every node the same (or the \
                                port is another job's store: give this job's --rdzv a port of its own)"
                .into(),
            Why::OtherRun { asked, serves } => format!(
                "it serves run {serves:?}, not {asked:?}: start every node with the same --run-id (or the port is \
                 another job's store: give this job's --rdzv a port of its own)"
            ),
        }
    }

    /// The reason as the agents waiting for the refused peer read it.
    fn to_waiting(&self) -> String {
        match self {
            Why::WrongToken => "wrong token (its INFINITY_RDZV_TOKEN or --token differs)".into(),
            Why::OtherRun { asked, serves } => {
                format!("it asked for run id {asked:?}, this group is {serves:?} (its --run-id differs)")
            }
        }
    }
}

struct Refusal {
    /// `agent 1 from 10.0.0.2`
    peer: String,
    why: Why,
    times: u32,
    last: Instant,
}

#[derive(Default)]
pub struct Refusals(Vec<Refusal>);

impl Refusals {
    /// Remembers that `who` (as its hello named itself) at `ip` was refused.
    pub fn add(&mut self, who: &str, ip: IpAddr, why: Why) {
        let name = shown_name(who);
        let peer = format!("{name} from {ip}");
        let now = Instant::now();
        match self.0.iter_mut().find(|r| r.peer == peer && r.why == why) {
            Some(r) => (r.times, r.last) = (r.times + 1, now),
            None => {
                if self.0.len() >= KEPT {
                    let oldest = (0..self.0.len()).min_by_key(|&i| self.0[i].last).expect("KEPT > 0");
                    self.0.remove(oldest);
                }
                self.0.push(Refusal { peer, why, times: 1, last: now });
            }
        }
    }

    /// One line each, oldest first: `agent 1 from 10.0.0.2 (2 times, last 5 s ago): wrong token (…)`.
    pub fn lines(&self) -> Vec<String> {
        let mut refusals: Vec<&Refusal> = self.0.iter().collect();
        refusals.sort_by_key(|r| r.last);
        let lines = refusals.iter().map(|r| {
            let when = ago(r.last.elapsed());
            let when = match r.times {
                1 => when,
                n => format!("{n} times, last {when}"),
            };
            format!("{} ({when}): {}", r.peer, r.why.to_waiting())
        });
        lines.collect()
    }
}

fn ago(d: Duration) -> String {
    match d.as_secs() {
        0 => "just now".into(),
        s => format!("{s} s ago"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_peer_and_reason_and_bounded() {
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let mut r = Refusals::default();
        r.add("agent 1", ip, Why::WrongToken);
        r.add("agent 1", ip, Why::WrongToken);
        r.add("agent\n2", ip, Why::OtherRun { asked: "b".into(), serves: "a".into() });
        assert_eq!(
            r.lines(),
            [
                "agent 1 from 10.0.0.2 (2 times, last just now): wrong token (its INFINITY_RDZV_TOKEN or --token differs)",
                "agent?2 from 10.0.0.2 (just now): it asked for run id \"b\", this group is \"a\" (its --run-id differs)",
            ]
        );
        for n in 0..3 * KEPT {
            r.add(&format!("x{n}"), ip, Why::WrongToken);
        }
        assert_eq!(r.lines().len(), KEPT);
        assert!(r.lines().last().unwrap().starts_with(&format!("x{} ", 3 * KEPT - 1)));
        r.add(&"y".repeat(1000), ip, Why::WrongToken);
        assert!(r.lines().iter().all(|l| l.len() < 200));
    }
}
