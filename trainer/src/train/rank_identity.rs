//! Who each rank is, as rank 0 sees it at the start: its host and its build (the package version and a
//! checksum of the running executable). Gathered once, in the config agreement's collective (dist.rs):
//! rank 0 names the ranks whose config or build differs, and the straggler report a slow rank's host.

use std::fmt;
use std::io::Read;
use std::sync::OnceLock;

/// One rank's host and build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankIdentity {
    pub host: String,
    pub build: Build,
}

/// What a rank runs: nodes with other binaries may compute differently (another kernel, another
/// default) and train apart without any error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    pub version: String,
    /// crc32c of the executable's bytes (none when it cannot be read).
    pub exe_crc32c: Option<u32>,
}

impl fmt::Display for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.exe_crc32c {
            Some(c) => write!(f, "infinity {} (executable crc32c {c:08x})", self.version),
            None => write!(f, "infinity {} (executable unreadable)", self.version),
        }
    }
}

static THIS_RANK: OnceLock<RankIdentity> = OnceLock::new();

/// This process's identity, computed once: the checksum reads the whole executable (about 10 ms for
/// the 45 MB debug binary from the page cache, more from a cold network file system), so [`prefetch`]
/// starts it while the run sets up.
pub fn this_rank() -> &'static RankIdentity {
    THIS_RANK.get_or_init(|| RankIdentity {
        host: infinity_launcher::env::hostname().unwrap_or_else(|| "?".into()),
        build: Build { version: env!("CARGO_PKG_VERSION").into(), exe_crc32c: exe_crc32c() },
    })
}

/// Compute [`this_rank`] on a thread of its own (its first caller waits for it).
pub fn prefetch() {
    std::thread::spawn(this_rank);
}

fn exe_crc32c() -> Option<u32> {
    let mut file = std::fs::File::open(std::env::current_exe().ok()?).ok()?;
    let (mut crc, mut buf) = (0u32, vec![0u8; 1 << 20]);
    loop {
        match file.read(&mut buf).ok()? {
            0 => return Some(crc),
            n => crc = crc32c::crc32c_append(crc, &buf[..n]),
        }
    }
}

/// f32s per rank in the gather: a flag, then the identity's text a byte per f32 (exact).
const SLOT: usize = 256;

/// This rank's slots of the gather (an all-reduce sum, every other rank's zero): `flag`, then `me`.
pub fn slots(rank: usize, world: usize, flag: bool, me: &RankIdentity) -> Vec<f32> {
    let crc = me.build.exe_crc32c.map_or(String::new(), |c| format!("{c:08x}"));
    let tail = format!("\n{}\n{crc}", me.build.version);
    // (a long host name is cut to fit)
    let mut end = me.host.len().min(SLOT - 1 - tail.len());
    while !me.host.is_char_boundary(end) {
        end -= 1;
    }
    let host = &me.host[..end];
    let mut v = vec![0.0; SLOT * world];
    let mine = &mut v[rank * SLOT..(rank + 1) * SLOT];
    mine[0] = flag as u8 as f32;
    for (s, b) in mine[1..].iter_mut().zip(host.bytes().chain(tail.bytes())) {
        *s = b as f32;
    }
    v
}

/// Every rank's flag and identity, from the slots summed over the ranks.
pub fn from_slots(sum: &[f32], world: usize) -> Vec<(bool, RankIdentity)> {
    sum.chunks(SLOT)
        .take(world)
        .map(|s| {
            let bytes: Vec<u8> = s[1..].iter().map(|&b| b as u8).take_while(|&b| b != 0).collect();
            let text = String::from_utf8_lossy(&bytes);
            let mut parts = text.splitn(3, '\n');
            let (host, version, crc) = (parts.next(), parts.next(), parts.next());
            let build = Build {
                version: version.unwrap_or("?").into(),
                exe_crc32c: crc.and_then(|c| u32::from_str_radix(c, 16).ok()),
            };
            (s[0] > 0.5, RankIdentity { host: host.unwrap_or("?").into(), build })
        })
        .collect()
}

/// `rank 3 (node-b)` or `ranks 1 (node-a), 3 (node-b)`, the first 8 of `ranks` named.
pub fn name_ranks(ranks: &[usize], ids: &[RankIdentity]) -> String {
    let named: Vec<String> = ranks
        .iter()
        .take(8)
        .map(|&r| match ids.get(r) {
            Some(id) => format!("{r} ({})", id.host),
            None => r.to_string(),
        })
        .collect();
    let more = if ranks.len() > 8 { format!(" and {} more", ranks.len() - 8) } else { String::new() };
    format!("{} {}{more}", if ranks.len() == 1 { "rank" } else { "ranks" }, named.join(", "))
}

/// Rank 0's warning when some ranks run another build than its own (each other build with its ranks).
/// A warning, not a refusal: the same source built twice may differ byte for byte.
pub fn build_warning(ids: &[RankIdentity]) -> Option<String> {
    let leader = &ids.first()?.build;
    let mut others: Vec<(&Build, Vec<usize>)> = Vec::new();
    for (r, id) in ids.iter().enumerate().filter(|(_, id)| &id.build != leader) {
        match others.iter_mut().find(|(b, _)| *b == &id.build) {
            Some((_, ranks)) => ranks.push(r),
            None => others.push((&id.build, vec![r])),
        }
    }
    if others.is_empty() {
        return None;
    }
    let runs = |ranks: &[usize]| if ranks.len() == 1 { "runs" } else { "run" };
    let others: Vec<String> =
        others.iter().map(|(b, ranks)| format!("{} {} {b}", name_ranks(ranks, ids), runs(ranks))).collect();
    Some(format!(
        "ranks run different builds: rank 0 ({}) runs {leader}; {}; the same source built twice may differ byte \
         for byte, but different code may train apart: run one binary on every node",
        ids[0].host,
        others.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(host: &str, version: &str, crc: Option<u32>) -> RankIdentity {
        RankIdentity { host: host.into(), build: Build { version: version.into(), exe_crc32c: crc } }
    }

    #[test]
    fn identities_travel_through_the_summed_slots() {
        let ids = [id("node-a", "0.1.0", Some(0xdead_beef)), id(&"h".repeat(400), "0.2.0", None)];
        let mut sum = vec![0.0; 2 * SLOT];
        for (r, me) in ids.iter().enumerate() {
            sum.iter_mut().zip(slots(r, 2, r == 1, me)).for_each(|(a, b)| *a += b);
        }
        let got = from_slots(&sum, 2);
        assert_eq!(got[0], (false, ids[0].clone()));
        let (flag, long) = &got[1];
        assert!(*flag && long.build == ids[1].build && long.host.len() < 256 && long.host.starts_with("hhh"));
    }

    #[test]
    fn rank_0_names_the_ranks_of_each_other_build() {
        let a = id("node-a", "0.1.0", Some(1));
        assert_eq!(build_warning(&[a.clone(), a.clone()]), None);
        let ids =
            [a.clone(), a, id("node-b", "0.1.0", Some(2)), id("node-b", "0.1.0", Some(2)), id("c", "0.2.0", None)];
        let w = build_warning(&ids).unwrap();
        assert!(w.contains("rank 0 (node-a) runs infinity 0.1.0 (executable crc32c 00000001)"), "{w}");
        assert!(w.contains("ranks 2 (node-b), 3 (node-b) run infinity 0.1.0 (executable crc32c 00000002)"), "{w}");
        assert!(w.contains("; rank 4 (c) runs infinity 0.2.0 (executable unreadable); the same"), "{w}");
    }

    #[test]
    fn this_rank_has_a_version_and_the_executables_checksum() {
        let me = this_rank();
        assert_eq!(me.build.version, env!("CARGO_PKG_VERSION"));
        assert!(me.build.exe_crc32c.is_some() && !me.host.is_empty(), "{me:?}");
    }
}
