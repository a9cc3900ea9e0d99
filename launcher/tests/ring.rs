//! The TCP ring: every collective against its definition for 2, 3 and 4 ranks (odd sizes, lengths not
//! divisible by the world), identical bytes on every rank, and a timeout instead of a hang.

use std::time::{Duration, Instant};

use infinity_launcher::comm::{CommError, Communicator, TcpRing};

mod common;

fn ring_group<F, R>(world: usize, timeout: Duration, f: F) -> Vec<R>
where
    F: Fn(TcpRing) -> R + Send + Sync + Copy + 'static,
    R: Send + 'static,
{
    common::on_ranks(world, move |rank, c| {
        f(TcpRing::connect(c, "test", rank, world, "127.0.0.1", false, timeout).unwrap())
    })
}

#[test]
fn collectives_match_their_definitions() {
    for world in [2, 3, 4] {
        let n = 1001; // not divisible by 2, 3 or 4
        let results = ring_group(world, Duration::from_secs(10), move |mut r| common::run_collectives(&mut r, n));
        common::check_collectives(world, n, &results);
    }
}

#[test]
fn a_silent_peer_is_a_timeout_not_a_hang() {
    // (built with time to spare, then a short timeout for the collective)
    let results = ring_group(2, Duration::from_secs(10), |mut r| {
        r.set_timeout(Duration::from_millis(500)).unwrap();
        if r.rank() == 1 {
            std::thread::sleep(Duration::from_secs(3)); // never joins the collective in time
            return None;
        }
        let t0 = Instant::now();
        let e = r.all_reduce_sum(&mut [1.0; 16]).unwrap_err();
        Some((e, t0.elapsed()))
    });
    let (e, took) = results[0].as_ref().unwrap();
    assert!(matches!(e, CommError::Timeout { peer: 1, .. }), "{e}");
    assert!(*took < Duration::from_secs(2), "took {took:?}");
}

/// A peer that stops reading (a hung rank, or one stuck outside the collective) makes the sender's
/// send time out: a timeout waiting for that peer, which the launcher blames, not an error of the
/// sender's own (exit 1, which it would take for the root cause). 64 MiB outgrow any socket buffer.
#[test]
fn a_peer_that_stops_reading_is_a_timeout_waiting_for_it() {
    let results = ring_group(2, Duration::from_secs(10), |mut r| {
        r.set_timeout(Duration::from_millis(500)).unwrap();
        if r.rank() == 1 {
            std::thread::sleep(Duration::from_secs(3)); // reads nothing meanwhile
            return None;
        }
        Some(r.broadcast(&mut vec![1.0; 16 << 20], 0).unwrap_err())
    });
    let e = results[0].as_ref().unwrap();
    assert!(matches!(e, CommError::Timeout { op: "broadcast", peer: 1, .. }), "{e}");
}

/// Rank 2 stops taking part after the first collective: ranks 0 and 1 fail in the second and write their
/// flight records, which name the collective they waited in and the rank without a record.
#[test]
fn the_ranks_that_time_out_write_their_flight_records() {
    use infinity_launcher::comm::flight::{self, State};
    let tmp = tempfile::tempdir().unwrap();
    // (on_ranks takes a Copy closure)
    let dir: &'static std::path::Path = Box::leak(tmp.path().to_path_buf().into_boxed_path());
    common::on_ranks(3, move |rank, c| {
        let mut r = TcpRing::connect(c, "test", rank, 3, "127.0.0.1", false, Duration::from_secs(10)).unwrap();
        r.flight().unwrap().set_dir(dir.to_path_buf());
        r.broadcast(&mut [1.0, 2.0], 0).unwrap();
        r.set_timeout(Duration::from_millis(500)).unwrap();
        match rank {
            2 => std::thread::sleep(Duration::from_secs(2)),
            _ => assert!(r.all_reduce_sum(&mut [1.0; 16]).is_err()),
        }
    });
    let (dumps, unreadable) = flight::read_dumps(tmp.path());
    assert!(unreadable.is_empty(), "{unreadable:?}");
    assert_eq!(dumps.iter().map(|d| d.rank).collect::<Vec<_>>(), [0, 1]);
    for d in &dumps {
        let ops: Vec<(u64, &str, usize, State)> =
            d.entries.iter().map(|e| (e.seq, e.op.as_str(), e.values, e.state)).collect();
        assert_eq!(ops, [(0, "broadcast", 2, State::Completed), (1, "all_reduce", 16, State::Failed)]);
        assert!(d.reason.contains("all_reduce"), "{}", d.reason);
    }
    let lines = flight::diagnose(&dumps);
    assert!(lines[0].starts_with("collective #1 (all_reduce of 16 values): waited in by rank 0 (failed"), "{lines:?}");
    assert!(lines[1].starts_with("no flight record from rank 2: "), "{lines:?}");
}

/// Broadcast forwards a block at a time: buffers of several blocks (and a part) arrive whole from every
/// root, on 2, 3 and 4 ranks, and the ring stays in step for the collective after.
#[test]
fn broadcast_of_several_blocks_from_every_root() {
    for world in [2, 3, 4] {
        let n = 2 * (1 << 18) + 7;
        let results = ring_group(world, Duration::from_secs(20), move |mut r| {
            let mut out = Vec::new();
            for root in 0..world {
                let mut v: Vec<f32> =
                    (0..n).map(|i| if r.rank() == root { (root * n + i) as f32 } else { -1.0 }).collect();
                r.broadcast(&mut v, root).unwrap();
                out.push(v.iter().enumerate().all(|(i, &x)| x == (root * n + i) as f32));
            }
            let mut after = [r.rank() as f32];
            r.all_reduce_sum(&mut after).unwrap();
            (out, after[0])
        });
        for (rank, (ok, after)) in results.iter().enumerate() {
            assert!(ok.iter().all(|&b| b), "world {world}, rank {rank}: {ok:?}");
            assert_eq!(*after, (0..world).sum::<usize>() as f32, "world {world}: the ring out of step after");
        }
    }
}

#[test]
fn tiny_and_empty_buffers() {
    // fewer values than ranks leaves some chunks empty
    let results = ring_group(4, Duration::from_secs(10), |mut r| {
        let mut out = Vec::new();
        for n in [0usize, 1, 2, 3, 5] {
            let mut v: Vec<f32> = (0..n).map(|i| (r.rank() * 10 + i) as f32).collect();
            r.all_reduce_sum(&mut v).unwrap();
            out.push(v);
        }
        out
    });
    for per_rank in &results {
        for (k, n) in [0usize, 1, 2, 3, 5].iter().enumerate() {
            let expect: Vec<f32> = (0..*n).map(|i| (0..4).map(|r| (r * 10 + i) as f32).sum()).collect();
            assert_eq!(per_rank[k], expect, "n = {n}");
        }
    }
}

/// Ranks that call different collectives (a bug in the caller) fail on the first that differs, naming
/// both, instead of reading each other's values: rank 1 broadcasts where the others all-reduce.
#[test]
fn ranks_in_different_collectives_fail_and_name_both() {
    let results = ring_group(3, Duration::from_secs(10), |mut r| {
        r.all_reduce_sum(&mut [1.0; 4]).unwrap(); // in step first
        r.set_timeout(Duration::from_secs(2)).unwrap();
        let mut v = [1.0; 16];
        let e = if r.rank() == 1 { r.broadcast(&mut v, 0) } else { r.all_reduce_sum(&mut v) };
        e.unwrap_err()
    });
    // rank 1 and the rank after it read a header that is not theirs; rank 0 read rank 2's (alike) and
    // then lost rank 2 (gone) or timed out
    let text = |rank: usize| results[rank].to_string();
    assert!(matches!(results[1], CommError::Peer { peer: 0, .. }), "{}", text(1));
    assert!(
        text(1).contains(
            "it is in collective #1 `all_reduce` of 16 values, this rank in collective #1 `broadcast` of 16 values \
             from rank 0"
        ),
        "{}",
        text(1)
    );
    assert!(matches!(results[2], CommError::Peer { peer: 1, .. }), "{}", text(2));
    assert!(text(2).contains("it is in collective #1 `broadcast`"), "{}", text(2));
    assert!(matches!(results[0], CommError::Peer { peer: 2, .. } | CommError::Timeout { .. }), "{}", text(0));
}

/// A connection whose hello is of another run or attempt (a stale rank, a port reused) is refused, and
/// the error when the real predecessor never comes says so. Rank 1 here is played by hand.
#[test]
fn a_hello_of_another_group_is_refused() {
    use infinity_launcher::comm::ring_wire::Hello;
    use std::io::Write;
    let results = common::on_ranks(2, |rank, c| {
        if rank == 0 {
            let e = TcpRing::connect(c, "run-a", 0, 2, "127.0.0.1", false, Duration::from_secs(2)).err().unwrap();
            return Some(format!("{e:#}"));
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        c.set("run-a/ring/1", listener.local_addr().unwrap().to_string().as_bytes()).unwrap();
        let addr = String::from_utf8(c.get("run-a/ring/0", Duration::from_secs(10)).unwrap()).unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(bytemuck::cast_slice(&Hello::new(c.token(), "run-b", 1, 2).encode())).unwrap();
        // (and one of this run that does not know the group's token)
        let mut t =
            std::net::TcpStream::connect(String::from_utf8(c.get("run-a/ring/0", Duration::ZERO).unwrap()).unwrap())
                .unwrap();
        t.write_all(bytemuck::cast_slice(&Hello::new("not-the-token", "run-a", 1, 2).encode())).unwrap();
        let _held = listener.accept().unwrap(); // rank 0's connection to its next rank
        std::thread::sleep(Duration::from_secs(3));
        None
    });
    let e = results[0].as_ref().unwrap();
    assert!(e.contains("rank 1 never connected to rank 0"), "{e}");
    assert!(e.contains("a rank of another run or attempt (or a connection without the group's token)"), "{e}");
}

/// A connection that says nothing (a port scanner, a stuck client) before the real predecessor is
/// given 2 s, not the 5 s it once was (a flood of them held the ring past its deadline).
#[test]
fn silent_connections_do_not_hold_up_the_ring() {
    let results = common::on_ranks(2, |rank, c| {
        let mut strangers = Vec::new();
        if rank == 1 {
            let addr = String::from_utf8(c.get("silent/ring/0", Duration::from_secs(10)).unwrap()).unwrap();
            strangers = (0..1).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
        }
        let t0 = std::time::Instant::now();
        let ring = TcpRing::connect(c, "silent", rank, 2, "127.0.0.1", false, Duration::from_secs(8));
        let took = t0.elapsed();
        if rank == 1 {
            // (held while rank 0 accepts: closed, it would end its wait at once)
            std::thread::sleep(Duration::from_secs(6));
        }
        drop(strangers);
        match ring {
            Err(e) => Some(format!("{e:#}")),
            Ok(_) if took >= Duration::from_millis(4500) => Some(format!("rank {rank} took {took:?}")),
            Ok(_) => None,
        }
    });
    assert!(results.iter().all(Option::is_none), "{results:?}");
}
