//! Reading the ranks' flight records back and what they say together.

use std::collections::BTreeMap;
use std::path::Path;

use super::files::{newest_attempt, read_all};
use super::{Dump, Entry, State};

/// The most ranks a record may claim (a larger `world` is a damaged file, not a group).
const MAX_WORLD: usize = 1 << 20;

/// The records in `dir` (`flight-rank*.json`) of one run's attempt, by rank, and notes: the files that
/// cannot be read (not JSON, a rank outside its world, a second record of one rank) and the records
/// of other runs or attempts left beside them (the newest run's and attempt's are read).
pub fn read_dumps(dir: &Path) -> (Vec<Dump>, Vec<String>) {
    let (dumps, mut notes) = read_all(dir, "flight-rank", "a flight record", |d: Dump| match (d.world, d.rank) {
        (w, _) if w == 0 || w > MAX_WORLD => Err(format!("a world of {w} ranks")),
        (w, r) if r >= w => Err(format!("rank {r} in a world of {w}")),
        _ => Ok(d),
    });
    // one run's attempt: the newest record's
    let (this, other) = newest_attempt(dumps, |d| (d.unix_time, d.run_id.clone(), d.attempt));
    if !other.is_empty() {
        let ranks: Vec<String> = other.iter().map(|d| d.rank.to_string()).collect();
        notes.push(format!(
            "left out: the records of ranks {} are of another run or attempt than the newest record's",
            ranks.join(", ")
        ));
    }
    let mut dumps: Vec<Dump> = Vec::new();
    for d in this {
        match dumps.iter().any(|k| k.rank == d.rank) {
            true => notes.push(format!("a second record of rank {} in {}: left out", d.rank, dir.display())),
            false => dumps.push(d),
        }
    }
    dumps.sort_by_key(|d| d.rank);
    (dumps, notes)
}

/// What every rank must call alike under one number: op, size and purpose.
fn call(e: &Entry) -> (&str, usize, Option<&str>) {
    (&e.op, e.values, e.tag.as_deref())
}

/// What the ranks' records say together, a line per finding: collectives that ranks called differently
/// (another op, size or purpose under one number), the first collective that not every recorded rank
/// completed with the ranks waiting in it (and for how long) and those that never entered it (the ones
/// to look at), and the ranks without a record.
pub fn diagnose(dumps: &[Dump]) -> Vec<String> {
    diagnose_beside(dumps, &[])
}

/// [`diagnose`] where the ranks `exited` ended by themselves with an exit code of their own (their
/// failure is the report's root cause): that they wrote no record needs no explaining.
pub fn diagnose_beside(dumps: &[Dump], exited: &[usize]) -> Vec<String> {
    let Some(world) = dumps.iter().map(|d| d.world).max() else { return Vec::new() };
    let mut lines = Vec::new();
    // the same number, another collective: the ranks' code took different paths
    let mut seen: BTreeMap<u64, Vec<(usize, &Entry)>> = BTreeMap::new();
    for d in dumps {
        for e in &d.entries {
            seen.entry(e.seq).or_default().push((d.rank, e));
        }
    }
    if let Some((seq, calls)) = seen.iter().find(|(_, c)| c.iter().any(|(_, e)| call(e) != call(c[0].1))) {
        let each: Vec<String> = calls.iter().map(|(r, e)| format!("rank {r} {}", e.what())).collect();
        lines.push(format!(
            "the ranks called different collectives as #{seq}: {} (their code took different paths: a collective \
             on some ranks only, buffers of other sizes, or one call for two purposes)",
            each.join(", ")
        ));
    }
    // (a record holds the last collectives only: windows that do not overlap cannot be compared)
    let windows: Vec<(usize, u64, u64)> =
        dumps.iter().filter_map(|d| Some((d.rank, d.entries.first()?.seq, d.entries.last()?.seq))).collect();
    let (latest_start, earliest_end) = windows.iter().fold((0, u64::MAX), |(s, e), w| (s.max(w.1), e.min(w.2)));
    if windows.len() >= 2 && latest_start > earliest_end {
        let each: Vec<String> = windows.iter().map(|(r, a, b)| format!("rank {r} #{a}..#{b}")).collect();
        lines.push(format!(
            "the ranks' records share no collective ({}): their counts drifted apart by more than a record holds (a \
             rank that made collectives the others did not)",
            each.join(", ")
        ));
    }
    if let Some(open) = first_open(dumps) {
        let waiting: Vec<String> = (open.waiting.iter())
            .map(|(r, e, backend)| format!("rank {r} ({}, {:.0} s)", state_word(e.state, backend), e.seconds))
            .collect();
        let mut line =
            format!("collective #{} ({}): waited in by {}", open.entry.seq, open.entry.what(), waiting.join(", "));
        if !open.absent.is_empty() {
            let absent: Vec<String> = (open.absent.iter())
                .map(|(r, last)| match last {
                    Some(seq) => format!("rank {r} (its last: #{seq})"),
                    None => format!("rank {r} (none yet)"),
                })
                .collect();
            line += &format!("; never entered by {}: look there first", absent.join(", "));
        }
        lines.push(line);
    }
    let missing: Vec<String> = (0..world)
        .filter(|r| !dumps.iter().any(|d| d.rank == *r) && !exited.contains(r))
        .map(|r| r.to_string())
        .collect();
    if !missing.is_empty() {
        let s = if missing.len() == 1 { "" } else { "s" };
        lines.push(format!(
            "no flight record from rank{s} {}: frozen, killed first, not yet in the group, or with records in another \
             node's log folder (a rank busy outside the collectives writes one when the launcher asks)",
            missing.join(", ")
        ));
    }
    lines
}

/// The first collective that not every recorded rank completed: the ranks waiting in it (with their
/// entry and backend) and the recorded ranks that never entered it (with their last collective's number).
struct Open<'a> {
    entry: &'a Entry,
    waiting: Vec<(usize, &'a Entry, &'a str)>,
    absent: Vec<(usize, Option<u64>)>,
}

fn first_open(dumps: &[Dump]) -> Option<Open<'_>> {
    let entry =
        dumps.iter().filter_map(|d| d.entries.iter().find(|e| e.state != State::Completed)).min_by_key(|e| e.seq)?;
    let (mut waiting, mut absent) = (Vec::new(), Vec::new());
    for d in dumps {
        match d.entries.iter().find(|e| e.seq == entry.seq) {
            Some(e) if e.state != State::Completed => waiting.push((d.rank, e, d.backend.as_str())),
            Some(_) => {}
            // its record starts after it: it went past
            None if d.entries.first().is_some_and(|e| e.seq > entry.seq) => {}
            None => absent.push((d.rank, d.entries.last().map(|e| e.seq))),
        }
    }
    Some(Open { entry, waiting, absent })
}

/// The recorded ranks that never entered the first collective the others wait in ([`diagnose`]'s
/// "look there first"): the root cause of a collective's timeout, where the records name one.
pub fn never_entered(dumps: &[Dump]) -> Vec<usize> {
    first_open(dumps).map_or_else(Vec::new, |open| open.absent.iter().map(|(r, _)| *r).collect())
}

fn state_word(s: State, backend: &str) -> &'static str {
    match (s, backend) {
        (State::Started, "nccl") => "enqueued, unfinished",
        (State::Started, _) => "unfinished",
        (State::Completed, _) => "completed",
        (State::Failed, _) => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::super::FlightRecorder;
    use super::*;
    use State::*;

    fn dump(rank: usize, world: usize, entries: &[(u64, &str, usize, State)]) -> Dump {
        let entries = entries
            .iter()
            .map(|&(seq, op, values, state)| Entry {
                seq,
                op: op.into(),
                values,
                state,
                started_s: seq as f64,
                seconds: if state == Completed { 0.01 } else { 30.0 },
                tag: None,
                step: None,
            })
            .collect();
        let (backend, host, run_id, attempt) = ("ring".into(), None, None, None);
        Dump { rank, world, backend, host, run_id, attempt, reason: "test".into(), unix_time: 0, entries }
    }

    #[test]
    fn the_rank_that_never_entered_the_collective_is_named() {
        let dumps = [
            dump(0, 3, &[(10, "all_reduce", 8, Completed), (11, "all_reduce", 1000, Failed)]),
            dump(1, 3, &[(10, "all_reduce", 8, Completed), (11, "all_reduce", 1000, Started)]),
            dump(2, 3, &[(9, "broadcast", 2, Completed), (10, "all_reduce", 8, Completed)]),
        ];
        let lines = diagnose(&dumps);
        assert_eq!(
            lines,
            ["collective #11 (all_reduce of 1000 values): waited in by rank 0 (failed, 30 s), rank 1 (unfinished, \
              30 s); never entered by rank 2 (its last: #10): look there first"]
        );
        assert_eq!(never_entered(&dumps), [2]);
        let lines = diagnose(&dumps[..2]);
        assert!(lines[1].starts_with("no flight record from rank 2: frozen, killed first"), "{lines:?}");
        // (a rank that exited with a code of its own, the root cause, wrote none for want of a failed collective)
        assert_eq!(diagnose_beside(&dumps[..2], &[2]).len(), 1);
        // NCCL's unfinished collectives are enqueued ones
        let mut nccl = dumps[1].clone();
        nccl.backend = "nccl".into();
        assert!(diagnose(&[nccl])[0].contains("waited in by rank 1 (enqueued, unfinished, 30 s)"));
    }

    #[test]
    fn ranks_calling_different_collectives_are_named() {
        let dumps = [
            dump(0, 2, &[(4, "all_reduce", 8, Completed), (5, "all_reduce", 1000, Failed)]),
            dump(1, 2, &[(4, "all_reduce", 8, Completed), (5, "broadcast", 2, Failed)]),
        ];
        let lines = diagnose(&dumps);
        let want = "the ranks called different collectives as #5: rank 0 all_reduce of 1000 values, rank 1 broadcast \
                    of 2 values";
        assert!(lines[0].starts_with(want), "{lines:?}");
        assert_eq!(lines.len(), 2, "{lines:?}");
        // one op and size for two purposes: a barrier on one rank, a stop check on the other
        let tagged = |rank, tag: &str| {
            let mut d = dump(rank, 2, &[(4, "all_reduce", 8, Completed), (5, "all_reduce", 1, Failed)]);
            d.entries[1].tag = Some(tag.into());
            d.entries[1].step = Some(3);
            d
        };
        let lines = diagnose(&[tagged(0, "checkpoint barrier"), tagged(1, "resume step agreement")]);
        let want = "the ranks called different collectives as #5: rank 0 checkpoint barrier: all_reduce of 1 value, \
                    step 3, rank 1 resume step agreement: all_reduce of 1 value, step 3";
        assert!(lines[0].starts_with(want), "{lines:?}");
    }

    /// A rank whose record starts past the stalled collective went through it; records that share no
    /// number (counts drifted apart by more than a record holds) are said to.
    #[test]
    fn records_that_hold_other_stretches_are_read_as_such() {
        let dumps = [
            dump(0, 2, &[(2000, "all_reduce", 8, Completed), (2001, "all_reduce", 8, Failed)]),
            dump(1, 2, &[(5, "all_reduce", 8, Completed), (6, "all_reduce", 8, Failed)]),
        ];
        let lines = diagnose(&dumps);
        assert!(lines[0].starts_with("the ranks' records share no collective (rank 0 #2000..#2001, rank 1 #5..#6)"));
        assert!(
            lines[1].starts_with("collective #6 (all_reduce of 8 values): waited in by rank 1 (failed"),
            "{lines:?}"
        );
        assert!(!lines[1].contains("never entered"), "{lines:?}");
    }

    /// A damaged record (a world of 10^18 ranks, a rank outside its world), a second record of one rank
    /// and a record of another attempt are set aside with a note.
    #[test]
    fn damaged_and_foreign_records_are_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |name: &str, d: &Dump| std::fs::write(tmp.path().join(name), serde_json::to_string(d).unwrap());
        let mut d = dump(0, 2, &[(1, "all_reduce", 8, Failed)]);
        (d.run_id, d.attempt, d.unix_time) = (Some("r".into()), Some(1), 100);
        write("flight-rank0.json", &d).unwrap();
        write("flight-rank0-copy.json", &d).unwrap();
        let mut old = dump(1, 2, &[(1, "all_reduce", 8, Failed)]);
        (old.run_id, old.attempt, old.unix_time) = (Some("r".into()), Some(0), 50);
        write("flight-rank1.json", &old).unwrap();
        std::fs::write(tmp.path().join("flight-rank2.json"), r#"{"rank": 2, "world": 1000000000000000000}"#).unwrap();
        let mut outside = dump(7, 2, &[]);
        outside.unix_time = 1;
        write("flight-rank7.json", &outside).unwrap();
        std::fs::write(tmp.path().join("flight-rank3.json"), "not json").unwrap();
        let (dumps, notes) = read_dumps(tmp.path());
        assert_eq!(dumps.iter().map(|d| d.rank).collect::<Vec<_>>(), [0]);
        let notes = notes.join("\n");
        for want in
            ["not a flight record", "rank 7 in a world of 2", "another run or attempt", "a second record of rank 0"]
        {
            assert!(notes.contains(want), "{want}: {notes}");
        }
        // a world too large to be a group (the file above fails to parse without its other fields)
        let mut huge = dump(0, 2, &[]);
        huge.world = 1 << 40;
        let tmp2 = tempfile::tempdir().unwrap();
        std::fs::write(tmp2.path().join("flight-rank0.json"), serde_json::to_string(&huge).unwrap()).unwrap();
        let (dumps, notes) = read_dumps(tmp2.path());
        assert!(dumps.is_empty() && notes[0].contains("a world of 1099511627776 ranks"), "{notes:?}");
        // (the recorder's own records read back)
        let f = FlightRecorder::new(1, 2, "ring", Some(tmp2.path().to_path_buf()));
        f.record("broadcast", 2, || Err::<(), _>("x")).unwrap_err();
        assert_eq!(read_dumps(tmp2.path()).0.len(), 1);
    }
}
