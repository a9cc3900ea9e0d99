//! The store's wire format: frames of a little-endian u32 length and that many bytes of JSON. A frame
//! longer than [`MAX_FRAME`] is rejected before its body is read or allocated, and JSON that is not a
//! [`Request`] once read, so garbage on the port costs the server one closed connection.

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts (values are small: addresses, ids, counters).
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First message of every connection: the run's token, and who is asking (for error messages).
    Hello {
        token: String,
        who: String,
    },
    Set {
        key: String,
        value: Vec<u8>,
    },
    /// The value of `key`, waiting up to `timeout_ms` for it to be set.
    Get {
        key: String,
        timeout_ms: u64,
    },
    /// Add `delta` to the integer at `key` (0 if unset) and return the result.
    Add {
        key: String,
        delta: i64,
    },
    /// Wait up to `timeout_ms` until every key is set.
    Wait {
        keys: Vec<String>,
        timeout_ms: u64,
    },
    /// Which of `keys` are set, without waiting.
    Check {
        keys: Vec<String>,
    },
    /// The run id an agent was started with: a store serving another run refuses the connection (and
    /// remembers it, for the agents waiting for that node).
    ForRun {
        run_id: String,
    },
    /// The connections the store refused (a wrong token, another run id), for a wait's report.
    Refusals,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Value {
        value: Vec<u8>,
    },
    Int {
        value: i64,
    },
    Present {
        present: Vec<bool>,
    },
    /// The wait ended with these keys still missing.
    Timeout {
        missing: Vec<String>,
    },
    /// One line per refused peer: `agent 1 from 10.0.0.2 (5 s ago): wrong token (…)`.
    Refused {
        refused: Vec<String>,
    },
    Error {
        message: String,
    },
}

/// Encode a message as one frame.
pub fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("store messages serialise");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Check a frame header: the body length, or why it is refused.
pub fn body_len(header: [u8; 4]) -> Result<usize, String> {
    let n = u32::from_le_bytes(header) as usize;
    if n == 0 || n > MAX_FRAME {
        let text: String = header.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }).collect();
        return Err(format!(
            "frame of {n} bytes (expected 1..={MAX_FRAME}; the first bytes read {text:?}: is the peer an infinity \
             rendezvous store?)"
        ));
    }
    Ok(n)
}
