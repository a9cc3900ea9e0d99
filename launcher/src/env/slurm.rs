//! SLURM's job steps: their node lists (`node[01-03,07],gpu5`), and the store port and run id each step
//! of a job takes.

use anyhow::{bail, Context, Result};

/// A store port of its own for SLURM job `job_id`'s step `step_id`: `base + (job + step × 6173) mod
/// 10000`, so two jobs sharing a node, or two sruns of one allocation, do not meet at one default port
/// (`None` outside SLURM). A requeued job's steps count from 0 again and find the same ports. A job id
/// that is not a number is an error naming it; a step named rather than numbered (as [`slurm_run_id`]
/// keeps it: `JOB.NAME`) counts as a hash of its name, so it keeps apart from step 0 too.
pub fn job_port(base: u16, job_id: Option<&str>, step_id: Option<&str>) -> Result<Option<u16>> {
    let Some(job_id) = job_id else { return Ok(None) };
    let job = (job_id.trim().parse::<u64>())
        .with_context(|| format!("SLURM_JOB_ID={job_id:?}: expected SLURM's job number"))?;
    let named = |s: &str| s.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let step = step_id.map(str::trim).map_or(0, |s| s.parse::<u64>().unwrap_or_else(|_| named(s)));
    // (coprime to 10000: a job's first 10000 steps take distinct ports; step 1 lands far from job + 1)
    const STEP_STRIDE: u64 = 6173;
    Ok(Some(base + ((job % 10_000 + (step % 10_000) * STEP_STRIDE) % 10_000) as u16))
}

/// The run id SLURM gives a job step: `JOB` for the first (step 0, or outside a step), `JOB.STEP` for a
/// later srun of the allocation, so that its store keys and log folders keep apart from the first's.
pub fn slurm_run_id(job_id: Option<String>, step_id: Option<&str>) -> Option<String> {
    let job = job_id?.trim().to_string();
    Some(match step_id.map(str::trim) {
        None | Some("0") => job,
        Some(step) => format!("{job}.{step}"),
    })
}

/// Expand a SLURM node list: `node[01-03,07],gpu5` → node01, node02, node03, node07, gpu5; a host
/// with several bracket groups takes every combination, the first group outermost (as `scontrol show
/// hostnames`): `r[1-2]-g[3-4]` → r1-g3, r1-g4, r2-g3, r2-g4.
pub fn parse_nodelist(list: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        // one item: a host expression with any number of bracketed range lists, up to the next
        // top-level comma
        let end = {
            let mut depth = 0;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    ',' if depth == 0 => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
                if !(0..=1).contains(&depth) {
                    bail!("node list {list:?}: unbalanced brackets");
                }
            }
            if depth != 0 {
                bail!("node list {list:?}: unbalanced brackets");
            }
            end
        };
        let item = &rest[..end];
        rest = rest[end..].trim_start_matches(',');
        // (each group is a level of expand_host's recursion)
        if item.matches('[').count() > MAX_GROUPS {
            let shown: String = item.chars().take(40).collect();
            bail!("node list of {} bytes: a host with more than {MAX_GROUPS} bracket groups (`{shown}…`)", list.len());
        }
        out.extend(expand_host(list, item)?);
        if out.len() > MAX_NODES {
            bail!("node list {list:?}: more than {MAX_NODES} hosts");
        }
    }
    Ok(out)
}

/// The most hosts a node list may expand to (a typo's range would otherwise allocate without bound).
const MAX_NODES: usize = 100_000;

/// The most bracket groups one host of a node list may have (`rack[1-4]-node[01-16]` has two).
const MAX_GROUPS: usize = 16;

/// Every host one expression of a node list names (`list` for errors); brackets are balanced.
fn expand_host(list: &str, item: &str) -> Result<Vec<String>> {
    let Some(open) = item.find('[') else { return Ok(vec![item.to_string()]) };
    let close = open + item[open..].find(']').with_context(|| format!("node list {list:?}: `{item}`"))?;
    let (prefix, ranges) = (&item[..open], &item[open + 1..close]);
    let suffixes = expand_host(list, &item[close + 1..])?;
    let mut out = Vec::new();
    for range in ranges.split(',') {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let width = a.len();
        let bad = || format!("node list {list:?}: range `{range}` in `{item}` (expected N or N-M, digits)");
        let (lo, hi): (u64, u64) = (a.parse().with_context(bad)?, b.parse().with_context(bad)?);
        if hi < lo {
            bail!("{}", bad());
        }
        // (counted before any host is made, the ranges of this group together)
        let hosts = (hi - lo).checked_add(1).and_then(|n| n.checked_mul(suffixes.len() as u64));
        if hosts.is_none_or(|n| n.saturating_add(out.len() as u64) > MAX_NODES as u64) {
            bail!("node list {list:?}: more than {MAX_NODES} hosts");
        }
        for i in lo..=hi {
            out.extend(suffixes.iter().map(|s| format!("{prefix}{i:0width$}{s}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_expand() {
        assert_eq!(parse_nodelist("node[01-03,07],gpu5").unwrap(), ["node01", "node02", "node03", "node07", "gpu5"]);
        assert_eq!(parse_nodelist("a1").unwrap(), ["a1"]);
        assert_eq!(parse_nodelist("x[8-10]").unwrap(), ["x8", "x9", "x10"]);
        assert!(parse_nodelist("n[1-2").is_err());
        assert!(parse_nodelist("n[3-1]").is_err());
        // (a crafted list of 40,000 groups overflowed the stack)
        let e = parse_nodelist(&format!("a{}", "[1]".repeat(40_000))).unwrap_err().to_string();
        assert!(e.contains("a host with more than 16 bracket groups"), "{e}");
        assert_eq!(parse_nodelist(&format!("a{}", "[1]".repeat(16))).unwrap(), [format!("a{}", "1".repeat(16))]);
        // (a range's count near u64::MAX added to the hosts before it overflowed)
        let e = parse_nodelist("n[1,1-18446744073709551615]").unwrap_err().to_string();
        assert!(e.contains("more than 100000 hosts"), "{e}");
        // several bracket groups in one host: every combination, zero padding kept (scontrol's order)
        assert_eq!(
            parse_nodelist("rack1-[01-02]-gpu[3-4]").unwrap(),
            ["rack1-01-gpu3", "rack1-01-gpu4", "rack1-02-gpu3", "rack1-02-gpu4"]
        );
        assert_eq!(parse_nodelist("a[1,3]b[08-09],c").unwrap(), ["a1b08", "a1b09", "a3b08", "a3b09", "c"]);
        assert!(parse_nodelist("n[[1-2]]").is_err());
        assert!(parse_nodelist("n[1-2]x[a]").is_err());
        assert!(parse_nodelist("n[0-99999]m[0-99999]").is_err());
        // many ranges in one group, each within the bound, and a range at u64's end: refused, not made
        let many = format!("a[1-2]b[{}]", ["0-99999"; 8].join(","));
        assert!(parse_nodelist(&many).unwrap_err().to_string().contains("more than 100000 hosts"));
        assert!(parse_nodelist("n[0-18446744073709551615]").is_err());
    }
}
