//! What the TCP ring sends besides values: a hello when a rank connects to the next one, and a header
//! at the start of every collective.
//!
//! The hello names the protocol's version, the sender's rank and world, and the group (a hash of its
//! store prefix: run and attempt), so a rank accepts only its own predecessor of its own attempt. The
//! header names the collective, its length, its root and its count since the ring was built: ranks
//! that call different collectives (a bug in the caller) fail on the first one that differs, naming
//! both sides, instead of reading each other's values as their own.
//!
//! Both are little-endian u32 words.

/// First word of a hello.
pub const MAGIC: u32 = 0x1f1e_7a11;
/// Bumped when what the ring sends changes.
pub const VERSION: u32 = 3;

/// Words of a hello: magic, version, rank, world, group hash (2 words).
pub const HELLO_WORDS: usize = 6;

/// A connecting rank's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub rank: u32,
    pub world: u32,
    pub group: u64,
}

impl Hello {
    /// The hello of `rank` of `world` in the group of store prefix `prefix` and token `token` (the
    /// rendezvous token: a connection that does not know it cannot pass for a rank).
    pub fn new(token: &str, prefix: &str, rank: usize, world: usize) -> Hello {
        Hello { version: VERSION, rank: rank as u32, world: world as u32, group: group_hash(token, prefix) }
    }

    pub fn encode(&self) -> [u32; HELLO_WORDS] {
        let g = self.group;
        [MAGIC, self.version, self.rank, self.world, g as u32, (g >> 32) as u32]
    }

    /// The hello in `words`; `None` when they do not start with [`MAGIC`] (not a ring at all).
    pub fn decode(words: &[u32; HELLO_WORDS]) -> Option<Hello> {
        (words[0] == MAGIC).then(|| Hello {
            version: words[1],
            rank: words[2],
            world: words[3],
            group: words[4] as u64 | (words[5] as u64) << 32,
        })
    }

    /// Why `self` (received) is not the hello `expected` (what this rank's predecessor would send), or
    /// `None` when it is.
    pub fn mismatch(&self, expected: &Hello) -> Option<String> {
        if self.version != expected.version {
            return Some(format!("ring protocol version {}, this rank speaks {}", self.version, expected.version));
        }
        if self.group != expected.group {
            return Some("a rank of another run or attempt (or a connection without the group's token)".into());
        }
        if self.world != expected.world {
            return Some(format!(
                "rank {} of a world of {}, this rank's world is {}",
                self.rank, self.world, expected.world
            ));
        }
        (self.rank != expected.rank).then(|| format!("rank {}, not rank {}", self.rank, expected.rank))
    }
}

/// FNV-1a of the token and the store prefix: equal prefixes of one token, equal groups. (Not a MAC: it
/// keeps a stranger who does not know the token, or a rank of another run, out of a ring.)
fn group_hash(token: &str, prefix: &str) -> u64 {
    let bytes = token.bytes().chain([0u8]).chain(prefix.bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Words of a header: op, root, count (2 words), length (2 words).
pub const HEADER_WORDS: usize = 6;

/// The collectives the ring runs, as headers name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    AllReduce = 1,
    Broadcast = 2,
    AllGather = 3,
    ReduceScatter = 4,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce",
            Op::Broadcast => "broadcast",
            Op::AllGather => "all_gather",
            Op::ReduceScatter => "reduce_scatter",
        }
    }

    fn from_code(code: u32) -> Option<Op> {
        [Op::AllReduce, Op::Broadcast, Op::AllGather, Op::ReduceScatter].into_iter().find(|&op| op as u32 == code)
    }
}

/// What a rank is about to do: the `count`-th collective since its ring was built, `op` of `len` values
/// (per rank, as the [`Communicator`](super::Communicator) method counts them) from `root` (broadcast; 0
/// otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    pub root: u32,
    pub count: u64,
    pub len: u64,
}

impl Header {
    pub fn encode(&self) -> [u32; HEADER_WORDS] {
        let (c, n) = (self.count, self.len);
        [self.op as u32, self.root, c as u32, (c >> 32) as u32, n as u32, (n >> 32) as u32]
    }

    /// Why the header in `words` (the previous rank's) is not `self` (this rank's), or `None` when the
    /// two ranks are in the same collective.
    pub fn mismatch(&self, words: &[u32; HEADER_WORDS]) -> Option<String> {
        let Some(op) = Op::from_code(words[0]) else {
            return Some(format!("sent {words:08x?}, not a collective's header (a different protocol?)"));
        };
        let theirs = Header {
            op,
            root: words[1],
            count: words[2] as u64 | (words[3] as u64) << 32,
            len: words[4] as u64 | (words[5] as u64) << 32,
        };
        (theirs != *self).then(|| {
            format!(
                "it is in {}, this rank in {}: the ranks called different collectives",
                theirs.describe(),
                self.describe()
            )
        })
    }

    fn describe(&self) -> String {
        let root = if self.op == Op::Broadcast { format!(" from rank {}", self.root) } else { String::new() };
        format!("collective #{} `{}` of {} values{root}", self.count, self.op.name(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_names_what_differs() {
        let mine = Hello::new("t", "run-a/attempt-0", 3, 8);
        let words = mine.encode();
        assert_eq!(Hello::decode(&words), Some(mine));
        assert_eq!(mine.mismatch(&mine), None);
        assert_eq!(Hello::decode(&[0; HELLO_WORDS]), None, "no magic, no hello");

        let why = |h: Hello| h.mismatch(&mine).unwrap();
        assert!(why(Hello::new("t", "run-a/attempt-1", 3, 8)).contains("another run or attempt"));
        assert!(why(Hello::new("other", "run-a/attempt-0", 3, 8)).contains("another run or attempt"));
        assert!(why(Hello::new("t", "run-a/attempt-0", 3, 4)).contains("world of 4, this rank's world is 8"));
        assert!(why(Hello::new("t", "run-a/attempt-0", 2, 8)).contains("rank 2, not rank 3"));
        assert!(why(Hello { version: 1, ..mine }).contains("version 1, this rank speaks 3"));
    }

    #[test]
    fn a_header_names_both_collectives_when_they_differ() {
        let mine = Header { op: Op::AllReduce, root: 0, count: 7, len: 1 << 33 };
        assert_eq!(mine.mismatch(&mine.encode()), None, "lengths past 32 bits round-trip");

        let bcast = Header { op: Op::Broadcast, root: 2, count: 7, len: 10 };
        let why = mine.mismatch(&bcast.encode()).unwrap();
        assert_eq!(
            why,
            "it is in collective #7 `broadcast` of 10 values from rank 2, this rank in collective #7 `all_reduce` \
             of 8589934592 values: the ranks called different collectives"
        );
        assert!(mine.mismatch(&Header { count: 8, ..mine }.encode()).unwrap().contains("collective #8"));
        assert!(bcast.mismatch(&Header { root: 1, ..bcast }.encode()).unwrap().contains("from rank 1"));
        assert!(mine.mismatch(&[9, 0, 0, 0, 0, 0]).unwrap().contains("not a collective's header"));
    }
}
