//! The rendezvous store: operations, tokens, rendezvous errors that name ranks, and garbage that must
//! not bring the server down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use infinity_launcher::store::wire::{frame, Request, MAX_FRAME};
use infinity_launcher::store::{StoreClient, StoreServer, MAX_HELLO};
use rand::{Rng, SeedableRng};

const T: Duration = Duration::from_secs(5);

fn server(token: &str) -> (StoreServer, String) {
    let s = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), token.into()).unwrap();
    let addr = s.addr.to_string();
    (s, addr)
}

#[test]
fn set_get_add_wait_check() {
    let (_s, addr) = server("tok");
    let mut a = StoreClient::connect(&addr, "tok", "a", T).unwrap();
    let mut b = StoreClient::connect(&addr, "tok", "b", T).unwrap();
    a.set("k", b"v1").unwrap();
    assert_eq!(b.get("k", T).unwrap(), b"v1");
    assert_eq!(a.add("n", 2).unwrap(), 2);
    assert_eq!(b.add("n", 3).unwrap(), 5);
    assert_eq!(a.check(&["k".into(), "nope".into()]).unwrap(), [true, false]);
    assert!(format!("{:#}", a.add("k", 1).unwrap_err()).contains("does not hold an integer"));
    // a blocked get wakes up when another client sets the key
    let addr2 = addr.clone();
    let waiter = std::thread::spawn(move || {
        let mut c = StoreClient::connect(&addr2, "tok", "c", T).unwrap();
        c.get("later", T).unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    a.set("later", b"x").unwrap();
    assert_eq!(waiter.join().unwrap(), b"x");
    let t0 = Instant::now();
    assert_eq!(a.wait(&["k".into(), "never".into()], Duration::from_millis(300)).unwrap(), Err(vec!["never".into()]));
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[test]
fn a_wrong_token_is_refused() {
    let (_s, addr) = server("secret");
    let e = StoreClient::connect(&addr, "guess", "intruder", T).err().unwrap();
    assert!(format!("{e:#}").contains("wrong token"), "{e:#}");
    assert!(StoreClient::connect(&addr, "secret", "ok", T).is_ok());
    // a rank (started without the agent, which hands its ranks its token) is told of its own settings
    let e = format!("{:#}", StoreClient::connect(&addr, "guess", "rank 3", T).err().unwrap());
    assert!(e.contains("refused rank 3: wrong token: INFINITY_RDZV_TOKEN differs from the one rank 0"), "{e}");
    assert!(e.contains("MASTER_PORT or INFINITY_STORE_PORT") && !e.contains("--rdzv"), "{e}");
}

#[test]
fn rendezvous_names_missing_and_duplicate_ranks_and_world_mismatches() {
    let (_s, addr) = server("t");
    let mut r0 = StoreClient::connect(&addr, "t", "r0", T).unwrap();
    let mut r2 = StoreClient::connect(&addr, "t", "r2", T).unwrap();
    // (timeouts with room for the thread to start on a loaded machine: rank 2 arrives within rank 0's)
    let h = std::thread::spawn(move || r2.rendezvous("job", 2, 4, Duration::from_secs(3)));
    let e = format!("{:#}", r0.rendezvous("job", 0, 4, Duration::from_secs(2)).unwrap_err());
    assert!(e.contains("ranks [1, 3] of 4 never arrived"), "{e}");
    assert!(h.join().unwrap().is_err());

    let mut dup = StoreClient::connect(&addr, "t", "dup", T).unwrap();
    let e = format!("{:#}", dup.rendezvous("job", 2, 4, T).unwrap_err());
    assert!(e.contains("rank 2 joined twice"), "{e}");
    let mut other = StoreClient::connect(&addr, "t", "other", T).unwrap();
    let e = format!("{:#}", other.rendezvous("job", 1, 8, T).unwrap_err());
    assert!(e.contains("WORLD_SIZE 8, rank 0 has 4"), "{e}");
    let e = format!("{:#}", other.rendezvous("job2", 5, 4, T).unwrap_err());
    assert!(e.contains("outside a world of 4"), "{e}");

    // the members waiting are told too (at their next report, or their timeout): both sides are named
    for (world, want) in [(3, "rank 1 has WORLD_SIZE 3, rank 0 has 2"), (1, "rank 1 is outside a world of 1")] {
        let job = format!("job-{world}");
        let mut r1 = StoreClient::connect(&addr, "t", "r1", T).unwrap();
        let h = std::thread::spawn(move || r1.rendezvous(&job, 1, world, T).unwrap_err());
        let e = format!("{:#}", r0.rendezvous(&format!("job-{world}"), 0, 2, Duration::from_secs(2)).unwrap_err());
        assert!(e.contains(want) && e.contains("the group cannot form"), "{e}");
        assert!(format!("{:#}", h.join().unwrap()).contains(want));
    }
}

/// Send raw bytes, read whatever comes back until the server closes or a short timeout.
fn poke(addr: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let _ = s.write_all(bytes);
    let mut sink = [0u8; 4096];
    let _ = s.read(&mut sink);
}

#[test]
fn garbage_never_brings_the_store_down() {
    let (_s, addr) = server("tok");
    let mut good = StoreClient::connect(&addr, "tok", "good", T).unwrap();
    good.set("alive", b"1").unwrap();
    let hello = frame(&Request::Hello { token: "tok".into(), who: "fuzz".into() });
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        (u32::MAX).to_le_bytes().to_vec(),                           // absurd length
        ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec(),             // just over the limit
        0u32.to_le_bytes().to_vec(),                                 // empty frame
        [&5u32.to_le_bytes()[..], b"{{{{{"].concat(),                // malformed JSON
        frame(&serde_json::json!({"op": "set", "key": 3})),          // wrong types
        frame(&Request::Get { key: "alive".into(), timeout_ms: 1 }), // no hello first
        [hello.clone(), frame(&Request::Hello { token: "tok".into(), who: "x".into() })].concat(),
        [hello.clone(), vec![1, 2, 3]].concat(), // truncated frame after hello
        [hello.clone(), 9u32.to_le_bytes().to_vec(), b"not json!".to_vec()].concat(),
    ];
    for _ in 0..300 {
        let n = rng.random_range(0..64);
        let mut bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) {
            bytes = [hello.clone(), bytes].concat();
        }
        cases.push(bytes);
    }
    for c in &cases {
        poke(&addr, c);
    }
    // the server still answers, and its state is intact
    assert_eq!(good.get("alive", T).unwrap(), b"1");
    let mut fresh = StoreClient::connect(&addr, "tok", "fresh", T).unwrap();
    assert_eq!(fresh.add("count", 1).unwrap(), 1);
}

/// Before its token is checked a connection may send a hello of a few KiB, not a frame's megabyte: a
/// first message longer than that closes the connection at once, without waiting for its body.
/// Connections that never say hello take at most 256 places: a flood beyond that is closed at once
/// (the store host keeps its file descriptors), and clients get in again once the silent ones go.
#[test]
fn a_flood_of_silent_connections_is_capped() {
    // (both ends of 257 connections in this process, beside the other tests': its soft limit raised)
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) and setrlimit(2) on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < 4096 {
            limit.rlim_cur = limit.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    let (_s, addr) = server("tok");
    let silent: Vec<TcpStream> = (0..256).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(&addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(extra.read(&mut [0u8; 1]).unwrap(), 0, "closed at once");
    drop(silent);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = StoreClient::connect(&addr, "tok", "late", T).unwrap();
    c.set("k", b"v").unwrap();
}

#[test]
fn a_long_first_message_is_refused_before_its_body_arrives() {
    let (_s, addr) = server("tok");
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&((MAX_HELLO + 1) as u32).to_le_bytes()).unwrap();
    let t0 = Instant::now();
    let mut sink = [0u8; 64];
    assert_eq!(s.read(&mut sink).expect("closed, not left waiting for the body"), 0);
    assert!(t0.elapsed() < Duration::from_secs(5));
    // a client says so before sending one (a long token would otherwise read as a store gone away)
    let e = format!("{:#}", StoreClient::connect(&addr, &"t".repeat(MAX_HELLO), "r", T).err().unwrap());
    assert!(e.contains("a shorter INFINITY_RDZV_TOKEN"), "{e}");
    // a hello of MAX_HELLO bytes or less is read as ever
    let who = "x".repeat(MAX_HELLO - 100);
    let mut c = StoreClient::connect(&addr, "tok", &who, T).unwrap();
    c.set("k", b"v").unwrap();
}

/// A client that reaches another service (an HTTP server on the store's port) says so.
#[test]
fn a_peer_that_is_not_a_store_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.read(&mut [0u8; 256]);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let e = match StoreClient::connect(&addr, "tok", "x", T) {
        Ok(_) => panic!("an HTTP server was taken for a store"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("\"HTTP\"") && e.contains("is the peer an infinity rendezvous store?"), "{e}");
}

/// A host that does not resolve (yet: a Kubernetes Service appears with its pod) is retried until the
/// timeout, then named with it.
#[test]
fn an_unresolvable_host_is_retried_until_the_timeout() {
    let t0 = Instant::now();
    let e = match StoreClient::connect("no-such-host.invalid:29400", "tok", "x", Duration::from_millis(1500)) {
        Ok(_) => panic!("connected to a host that does not exist"),
        Err(e) => format!("{e:#}"),
    };
    assert!(t0.elapsed() >= Duration::from_millis(1400), "gave up after {:?}: {e}", t0.elapsed());
    assert!(e.contains("no-such-host.invalid:29400 not reachable within 2 s") && e.contains("resolve"), "{e}");
}

/// A silent peer on the store's port (another service, or a frozen host) fails the connect within its
/// timeout, saying so.
#[test]
fn a_silent_peer_fails_within_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t0 = Instant::now();
    let e = match StoreClient::connect(&addr, "tok", "x", Duration::from_secs(2)) {
        Ok(_) => panic!("a silent listener was taken for a store"),
        Err(e) => format!("{e:#}"),
    };
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert!(
        e.contains(&format!(
            "no answer from {addr} within 2 s (its host frozen or overloaded, or not an infinity store)"
        )),
        "{e}"
    );
    drop(listener);
}

/// A store that stops answering fails a call within the reply timeout, and the connection is not used
/// again (a late reply would be taken for the next call's).
#[test]
fn an_unanswered_call_fails_within_the_reply_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // answers the hello, then nothing
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut header = [0u8; 4];
        s.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
        s.read_exact(&mut body).unwrap();
        s.write_all(&frame(&infinity_launcher::store::wire::Response::Ok)).unwrap();
        std::thread::sleep(Duration::from_secs(20));
    });
    let mut c = StoreClient::connect(&addr, "tok", "x", T).unwrap();
    c.set_reply_timeout(Duration::from_secs(1));
    let t0 = Instant::now();
    let e = format!("{:#}", c.check(&["k".into()]).unwrap_err());
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    assert!(e.contains("no answer from store") && e.contains("within 1 s"), "{e}");
    assert!(c.is_broken());
    assert!(format!("{:#}", c.check(&["k".into()]).unwrap_err()).contains("no longer used"));
}

/// Agents meeting: their errors name node ranks and `--nnodes`, and only missing nodes get the hint.
#[test]
fn agents_meeting_name_node_ranks() {
    use infinity_launcher::store::{JoinedTwice, Members};
    let (_s, addr) = server("t");
    let mut n0 = StoreClient::connect(&addr, "t", "n0", T).unwrap();
    let e = format!("{:#}", n0.meet("run/agents", 0, 2, Duration::from_millis(300), Members::Nodes, &[]).unwrap_err());
    assert!(e.contains("node ranks [1] of 2 never arrived within 0 s (start `infinity launch` there)"), "{e}");
    let mut dup = StoreClient::connect(&addr, "t", "dup", T).unwrap();
    let e = dup.meet("run/agents", 0, 2, T, Members::Nodes, &[]).unwrap_err();
    assert!(e.downcast_ref::<JoinedTwice>().is_some());
    let e = format!("{e:#}");
    assert!(e.contains("node rank 0 joined twice (two agents with --node-rank 0?)") && !e.contains("start"), "{e}");
    let e = format!("{:#}", dup.meet("run/agents", 1, 3, T, Members::Nodes, &[]).unwrap_err());
    assert!(e.contains("node rank 1 has --nnodes 3, node rank 0 has 2") && !e.contains("start"), "{e}");
}

/// A meeting ends within a second when a member that left posts who it is under any of its stop keys
/// (this attempt's, or the one before's), naming it, instead of waiting out its timeout.
#[test]
fn a_meeting_ends_when_a_member_posts_that_it_left() {
    use infinity_launcher::store::{MeetingStopped, Members};
    let (_s, addr) = server("t");
    for (run, posted) in [("a", 1), ("b", 0)] {
        let stops = [format!("{run}/attempt-2/signal"), format!("{run}/attempt-1/signal")];
        let key = stops[posted].clone();
        let mut waiting = StoreClient::connect(&addr, "t", "n0", T).unwrap();
        let mut leaving = StoreClient::connect(&addr, "t", "n1", T).unwrap();
        let prefix = format!("{run}/attempt-2/agents");
        let meeting =
            std::thread::spawn(move || waiting.meet(&prefix, 0, 3, Duration::from_secs(30), Members::Nodes, &stops));
        std::thread::sleep(Duration::from_millis(300));
        leaving.set(&key, b"node 1 (SIGTERM)").unwrap();
        let t0 = std::time::Instant::now();
        let e = meeting.join().unwrap().unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
        assert_eq!(e.downcast_ref::<MeetingStopped>().map(|m| m.0.as_str()), Some("node 1 (SIGTERM)"), "{e:#}");
    }
}

/// A store that refused a wrong token or an agent of another run says so to the agents waiting for
/// that node, instead of only "never arrived (start `infinity launch` there)"; the refused side's error
/// says plainly what differs.
#[test]
fn refused_agents_are_named_to_the_agents_waiting_for_them() {
    use infinity_launcher::store::{Members, Refused};
    let s = StoreServer::spawn_for("127.0.0.1:0".parse().unwrap(), "t".into(), Some("a".into())).unwrap();
    let addr = s.addr.to_string();
    let mut n0 = StoreClient::connect(&addr, "t", "agent 0", T).unwrap();
    n0.for_run("a").unwrap();

    let e = StoreClient::connect(&addr, "u", "agent 1", T).err().unwrap();
    assert!(e.downcast_ref::<Refused>().is_some(), "{e:#}");
    assert!(format!("{e:#}").contains("refused agent 1: wrong token: INFINITY_RDZV_TOKEN (or --token) differs"));
    let mut other = StoreClient::connect(&addr, "t", "agent 2", T).unwrap();
    let e = other.for_run("b").unwrap_err();
    assert!(e.downcast_ref::<Refused>().is_some(), "{e:#}");
    let e = format!("{e:#}");
    assert!(
        e.contains("refused agent 2: it serves run \"a\", not \"b\": start every node with the same --run-id"),
        "{e}"
    );

    let e = format!(
        "{:#}",
        n0.meet("a/attempt-0/agents", 0, 3, Duration::from_millis(300), Members::Nodes, &[]).unwrap_err()
    );
    assert!(e.contains("node ranks [1, 2] of 3 never arrived within 0 s; the store refused "), "{e}");
    // ("just now" or "1 s ago" on a loaded machine)
    let names = |agent: &str, why: &str| e.split("; ").any(|s| s.contains(agent) && s.contains(why));
    assert!(names("agent 1 from 127.0.0.1 (", "): wrong token (its INFINITY_RDZV_TOKEN or --token differs)"), "{e}");
    assert!(names("agent 2 from 127.0.0.1 (", "): it asked for run id \"b\", this group is \"a\""), "{e}");
    assert!(!e.contains("start `infinity launch` there"), "{e}");
}

/// A store whose host exits while a call waits: the error says the store closed the connection (it
/// said "no reply: failed to fill whole buffer").
#[test]
fn a_store_gone_mid_call_is_named() {
    let (s, addr) = server("t");
    let mut c = StoreClient::connect(&addr, "t", "x", T).unwrap();
    let waiter = std::thread::spawn(move || c.wait(&["never".into()], T).unwrap_err());
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    let e = format!("{:#}", waiter.join().unwrap());
    assert!(e.contains(&format!("store {addr} closed the connection (did its host")), "{e}");
}
