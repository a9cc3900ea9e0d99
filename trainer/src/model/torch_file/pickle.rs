//! The pickle machine of [`super`]: Python's pickle opcodes (protocols 2 to 5, as `torch.save` and
//! `pickle.dumps` write them) run on a stack of plain values. It never runs code: the calls it knows
//! are [`super::call`]'s (an `OrderedDict`, torch's tensor rebuilders), any other builds an opaque
//! value; persistent ids are storages ([`super::storage`]). Values nest at most [`MAX_DEPTH`] deep, so
//! a crafted file cannot build a cycle or a stack-deep chain: a container, once put into another, may
//! not change (a pickler fills each before it places it), so its depth is known from then on, and a
//! container grows only by items of known depth. Each container is so walked once however often it is
//! shared (a tuple holding the one before it twice, thirty times over), and all checks together walk at
//! most [`MAX_WALK`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{call, storage, Storage, TorchTensor};

/// A value the pickle builds. (Scalars keep their values for the errors that show them.)
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A class or function named by module and name.
    Global(Rc<(String, String)>),
    Storage(Rc<Storage>),
    Tensor(Rc<TorchTensor>),
    /// What a call or class this reader does not model built (named by its callable).
    Opaque(Rc<String>),
}

impl Value {
    pub(super) fn dict() -> Value {
        Value::Dict(Rc::new(RefCell::new(Vec::new())))
    }

    pub(super) fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    pub(super) fn usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_usize).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }

    /// The value of `key` in a dict with string keys.
    pub(super) fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(d) = self else { return None };
        d.borrow().iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v.clone())
    }

    pub(super) fn keys(&self) -> Vec<String> {
        let Value::Dict(d) = self else { return Vec::new() };
        d.borrow().iter().filter_map(|(k, _)| if let Value::Str(s) = k { Some(s.clone()) } else { None }).collect()
    }
}

/// The pickle machine: the bytes, the position, the stack with its marks, and the memo.
struct Machine<'a> {
    p: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Containers put into another, by address, with their depth: they may not change any more, and
    /// each keeps its value alive here, so no other container takes its address.
    placed: HashMap<usize, (usize, Value)>,
    /// What the nesting checks may still walk ([`MAX_WALK`] at the start).
    walk_left: u64,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let at = self.at;
        let s = at
            .checked_add(n)
            .and_then(|end| self.p.get(at..end))
            .ok_or_else(|| anyhow!("the pickle ends inside an opcode at byte {at}"))?;
        self.at += n;
        Ok(s)
    }

    /// Push a container built of `items` ([`Self::place`]).
    fn push_container(&mut self, items: &[Value], container: Value) -> Result<()> {
        self.place(items, None)?;
        self.stack.push(container);
        Ok(())
    }

    /// Put `items` into a container, a new one or `into` (which grows): each at most [`MAX_DEPTH`] − 1
    /// deep, so the container is at most [`MAX_DEPTH`] (a crafted pickle could nest values deep enough to
    /// overflow the stack when they are dropped), and from now on placed. A container `into` that is
    /// placed itself may not grow: it would deepen what holds it, or hold itself.
    fn place(&mut self, items: &[Value], into: Option<&Value>) -> Result<()> {
        let mut known = HashMap::new();
        let mut depths = Vec::with_capacity(items.len());
        for v in items {
            depths.push(nesting(v, 1, &self.placed, &mut known, &mut self.walk_left)?);
        }
        for (v, depth) in items.iter().zip(depths) {
            if let Some(a) = address(v) {
                self.placed.entry(a).or_insert_with(|| (depth, v.clone()));
            }
        }
        if let Some(a) = into.and_then(address) {
            ensure!(
                !self.placed.contains_key(&a),
                "a container changed after it was put into another, or put into itself (a crafted file?): not a \
                 state dict"
            );
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }

    /// A text line (GLOBAL's module and name).
    fn line(&mut self) -> Result<String> {
        let end = self.p[self.at..].iter().position(|&b| b == b'\n').context("GLOBAL without a line end")?;
        let s = text(&self.p[self.at..self.at + end])?;
        self.at += end + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().context("the pickle's stack is empty")
    }

    fn top(&self) -> Result<Value> {
        self.stack.last().cloned().context("the pickle's stack is empty")
    }

    fn since_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().context("no mark on the pickle's stack")?;
        ensure!(m <= self.stack.len(), "a mark above the pickle's stack");
        Ok(self.stack.split_off(m))
    }

    /// Run to STOP; the result.
    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => drop(self.take(1)?), // PROTO
                0x95 => drop(self.take(8)?), // FRAME
                b'.' => return self.pop(),   // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'0' => drop(self.pop()?),
                b'1' => drop(self.since_mark()?),
                b'2' => self.stack.push(self.top()?),
                b'q' | b'r' | 0x94 => {
                    // BINPUT, LONG_BINPUT, MEMOIZE
                    let id = match op {
                        b'q' => self.byte()? as u32,
                        b'r' => self.u32()?,
                        _ => self.memo.len() as u32,
                    };
                    let top = self.top()?;
                    self.memo.insert(id, top);
                }
                b'h' | b'j' => {
                    let id = if op == b'h' { self.byte()? as u32 } else { self.u32()? };
                    let v = self.memo.get(&id).cloned().with_context(|| format!("memo {id} read before it was set"))?;
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Bool(op == 0x88)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into()?);
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    // LONG1, LONG4: little-endian two's complement (beyond i64: opaque)
                    let n = if op == 0x8a { self.byte()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    let v = match n {
                        0 => Value::Int(0),
                        1..=8 => {
                            let mut w = [if b[n - 1] & 0x80 != 0 { 0xff } else { 0 }; 8];
                            w[..n].copy_from_slice(b);
                            Value::Int(i64::from_le_bytes(w))
                        }
                        _ => Value::Opaque(Rc::new("a long integer".into())),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                    self.stack.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                    // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8, SHORT_BINSTRING, BINSTRING
                    let n = match op {
                        0x8c | b'U' => self.byte()? as usize,
                        0x8d => self.u64()? as usize,
                        _ => self.u32()? as usize,
                    };
                    let s = text(self.take(n)?)?;
                    self.stack.push(Value::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                    let n = match op {
                        b'C' => self.byte()? as usize,
                        b'B' => self.u32()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    ensure!(self.stack.len() >= n, "TUPLE{n} of a stack of {}", self.stack.len());
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_container(&items.clone(), Value::Tuple(Rc::new(items)))?;
                }
                b't' => {
                    let items = self.since_mark()?;
                    self.push_container(&items.clone(), Value::Tuple(Rc::new(items)))?;
                }
                b']' => self.stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.since_mark()?;
                    self.push_container(&items.clone(), Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.since_mark()? };
                    let target = self.top()?;
                    self.place(&items, Some(&target))?;
                    // (appends to an object this reader keeps opaque are dropped)
                    if let Value::List(l) = target {
                        l.try_borrow_mut().context("a list appended to itself")?.extend(items);
                    }
                }
                b'}' => self.stack.push(Value::dict()),
                b'd' | b's' | b'u' => {
                    let items = match op {
                        b's' => {
                            let v = self.pop()?;
                            vec![self.pop()?, v]
                        }
                        _ => self.since_mark()?,
                    };
                    ensure!(items.len() % 2 == 0, "an odd number of a dict's keys and values");
                    let target = if op == b'd' { None } else { Some(self.top()?) };
                    self.place(&items, target.as_ref())?;
                    let pairs = items.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone()));
                    match target {
                        None => self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs.collect())))),
                        Some(Value::Dict(d)) => d.try_borrow_mut().context("a dict set into itself")?.extend(pairs),
                        // (set into an object this reader keeps opaque: dropped)
                        Some(_) => {}
                    }
                }
                0x8f => self.stack.push(Value::Opaque(Rc::new("a set".into()))), // EMPTY_SET
                0x90 => drop(self.since_mark()?),                                // ADDITEMS
                0x91 => {
                    self.since_mark()?;
                    self.stack.push(Value::Opaque(Rc::new("a frozenset".into())));
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.stack.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        bail!("STACK_GLOBAL of values that are not strings");
                    };
                    self.stack.push(Value::Global(Rc::new((module, name))));
                }
                b'R' | 0x81 => {
                    // REDUCE (callable, args), NEWOBJ (class, args)
                    let (args, callable) = (self.pop()?, self.pop()?);
                    let Value::Tuple(args) = args else {
                        bail!("a call's arguments are {}, expected a tuple", describe(&args))
                    };
                    self.stack.push(call(&callable, &args)?);
                }
                0x92 => {
                    // NEWOBJ_EX: class, args, kwargs
                    let (_kwargs, _args, class) = (self.pop()?, self.pop()?, self.pop()?);
                    self.stack.push(call(&class, &[])?);
                }
                b'b' => drop(self.pop()?), // BUILD: an object's state (kept opaque)
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(storage(&pid)?);
                }
                other => bail!(
                    "opcode 0x{other:02x} at byte {} of the pickle, which this reader does not take (torch.save \
                     writes protocol 2)",
                    self.at - 1
                ),
            }
        }
    }
}

/// A pickled string (Python writes lone surrogates and Python 2 byte strings too: kept, not refused,
/// as they are names and metadata the weights do not need).
fn text(b: &[u8]) -> Result<String> {
    Ok(String::from_utf8_lossy(b).into_owned())
}

/// How deep containers may nest: a state dict is a few levels deep.
const MAX_DEPTH: usize = 64;

/// How many containers the nesting checks of one pickle may walk in all: each is walked once (where it
/// is placed), so a state dict's take a few per tensor; past this, a crafted pickle's are cut short.
const MAX_WALK: u64 = 50_000_000;

/// The address of a container's value (`None`: no container).
fn address(v: &Value) -> Option<usize> {
    match v {
        Value::Tuple(t) => Some(Rc::as_ptr(t) as *const () as usize),
        Value::List(l) => Some(Rc::as_ptr(l) as *const () as usize),
        Value::Dict(d) => Some(Rc::as_ptr(d) as *const () as usize),
        _ => None,
    }
}

/// The depth of the containers within `v` (0: none), `v` at `level` below the container it goes into:
/// an error past [`MAX_DEPTH`]. A `placed` container's depth is known; others are walked, their depths
/// kept in `known` for this check (a value shared is walked once), each step counted against `left`.
fn nesting(
    v: &Value,
    level: usize,
    placed: &HashMap<usize, (usize, Value)>,
    known: &mut HashMap<usize, usize>,
    left: &mut u64,
) -> Result<usize> {
    let Some(addr) = address(v) else { return Ok(0) };
    let deep = || anyhow!("values nested deeper than {MAX_DEPTH} (or a container that holds itself)");
    const WALKING: usize = usize::MAX;
    match placed.get(&addr).map(|(d, _)| d).or(known.get(&addr)) {
        Some(&WALKING) => return Err(deep()),
        Some(&d) if level + d > MAX_DEPTH => return Err(deep()),
        Some(&d) => return Ok(d),
        None if level >= MAX_DEPTH => return Err(deep()),
        None => {}
    }
    known.insert(addr, WALKING);
    let mut walk = |items: &mut dyn Iterator<Item = &Value>| -> Result<usize> {
        let mut below = 0;
        for item in items {
            *left = left.checked_sub(1).ok_or_else(|| {
                anyhow!("its containers take more than {MAX_WALK} steps to check (a crafted file?): not a state dict")
            })?;
            below = below.max(nesting(item, level + 1, placed, known, left)?);
        }
        Ok(below)
    };
    // (one borrowed mutably is being built: a container that holds itself)
    let below = match v {
        Value::Tuple(t) => walk(&mut t.iter())?,
        Value::List(l) => walk(&mut l.try_borrow().map_err(|_| deep())?.iter())?,
        Value::Dict(d) => walk(&mut d.try_borrow().map_err(|_| deep())?.iter().flat_map(|(k, v)| [k, v]))?,
        _ => 0,
    };
    known.insert(addr, below + 1);
    Ok(below + 1)
}

/// A value as errors name it (its kind, never its contents, which may be large or hold themselves).
pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(_) | Value::Int(_) | Value::Float(_) => "a number".into(),
        Value::Str(s) => format!("the string {:?}", s.chars().take(40).collect::<String>()),
        Value::Bytes(b) => format!("{} bytes", b.len()),
        Value::Tuple(t) => format!("a tuple of {}", t.len()),
        Value::List(_) => "a list".into(),
        Value::Dict(_) => "a dict".into(),
        Value::Global(g) => format!("{}.{}", g.0, g.1),
        Value::Storage(_) => "a storage".into(),
        Value::Tensor(_) => "a tensor".into(),
        Value::Opaque(what) => format!("a value built by {what}"),
    }
}

/// Run the pickle `p`; its result.
pub(super) fn unpickle(p: &[u8]) -> Result<Value> {
    let (stack, marks, memo, placed) = (Vec::new(), Vec::new(), HashMap::new(), HashMap::new());
    Machine { p, at: 0, stack, marks, memo, placed, walk_left: MAX_WALK }.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps({'x': (1, -300, 2**40, -2**70), 'y': ['s', b'b', 1.5, None, True]}, protocol=4)`:
    /// framing, memoizing, short strings and bytes, small and long integers, a float, appends.
    const PROTOCOL_4: &[u8] = b"\x80\x04\x95\x41\x00\x00\x00\x00\x00\x00\x00\x7d\x94\x28\x8c\x01\x78\x94\x28\x4b\x01\
        \x4a\xd4\xfe\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc0\x74\x94\x8c\
        \x01\x79\x94\x5d\x94\x28\x8c\x01\x73\x94\x43\x01\x62\x94\x47\x3f\xf8\x00\x00\x00\x00\x00\x00\x4e\x88\x65\x75\x2e";

    #[test]
    fn the_machine_builds_plain_values() {
        let v = unpickle(PROTOCOL_4).unwrap();
        assert_eq!(v.keys(), ["x", "y"]);
        let Some(Value::Tuple(x)) = v.get("x") else { panic!("{v:?}") };
        let ints: Vec<Option<i64>> = x.iter().map(|v| if let Value::Int(i) = v { Some(*i) } else { None }).collect();
        assert_eq!(ints, [Some(1), Some(-300), Some(1 << 40), None], "-2**70 is beyond i64: opaque");
        let Some(Value::List(y)) = v.get("y") else { panic!("{v:?}") };
        let y = y.borrow();
        assert!(matches!((&y[0], &y[1], &y[2], &y[3], &y[4]),
            (Value::Str(s), Value::Bytes(b), Value::Float(f), Value::None, Value::Bool(true))
                if s == "s" && b == b"b" && *f == 1.5));
    }

    #[test]
    fn what_it_does_not_take_is_named() {
        let e = unpickle(b"I7\n.").unwrap_err().to_string();
        assert!(e.contains("opcode 0x49 at byte 0") && e.contains("protocol 2"), "{e}");
        let e = unpickle(&PROTOCOL_4[..40]).unwrap_err().to_string();
        assert!(e.contains("the pickle ends inside an opcode"), "{e}");
    }

    /// Crafted pickles are errors, never panics or a blown stack: a length past the end (or past
    /// usize), a list that holds itself, tuples nested past the bound (64 deep is a value, 65 is not), and
    /// a container grown after it was put into another (which could deepen a chain without bound).
    #[test]
    fn crafted_pickles_are_refused() {
        let huge = [&b"\x80\x02\x8d"[..], &[0xff; 8], b"."].concat();
        let e = unpickle(&huge).unwrap_err().to_string();
        assert!(e.contains("the pickle ends inside an opcode"), "{e}");
        let e = unpickle(b"]q\x00h\x00a.").unwrap_err().to_string();
        assert!(e.contains("a container changed after it was put into another, or put into itself"), "{e}");
        let e = unpickle(&[&b"N"[..], &[0x85; 65], b"."].concat()).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 64"), "{e}");
        assert!(unpickle(&[&b"N"[..], &[0x85; 64], b"."].concat()).is_ok());
        // a list put 62 tuples deep into the root, then grown by the next (the memo brings it back)
        let wrap = [0x85; 62];
        let grown = [&b"\x80\x02]q\x00h\x00]q\x01"[..], &wrap, b"a0", b"h\x01]q\x02", &wrap, b"a0."].concat();
        let e = unpickle(&grown).unwrap_err().to_string();
        assert!(e.contains("a container changed after it was put into another"), "{e}");
    }

    /// Shared values are walked once: a tuple holding the one before it twice, sixty times over (2^60
    /// paths), is checked at once; a list of 200,000 appends and a dict of 200,000 entries set in batches
    /// of 1000 (as a pickler writes them) are read in one pass, not walked again at every batch.
    #[test]
    fn large_and_shared_values_are_checked_once() {
        let shared = [&b"\x80\x02N"[..], &b"q\x00h\x00\x86".repeat(60), b"."].concat();
        assert!(unpickle(&shared).is_ok(), "sixty levels of pairs, each within the depth bound, are a value");
        let appends = [&b"\x80\x02]"[..], &b")a".repeat(200_000), b"."].concat();
        let Value::List(l) = unpickle(&appends).unwrap() else { panic!("not a list") };
        assert_eq!(l.borrow().len(), 200_000);
        let mut dict = b"\x80\x02}".to_vec();
        for batch in 0..200u32 {
            dict.push(b'(');
            for i in batch * 1000..(batch + 1) * 1000 {
                // (key i: [1, 2])
                dict.push(b'J');
                dict.extend(i.to_le_bytes());
                dict.extend(b"(K\x01K\x02l");
            }
            dict.push(b'u');
        }
        dict.push(b'.');
        let Value::Dict(d) = unpickle(&dict).unwrap() else { panic!("not a dict") };
        assert_eq!(d.borrow().len(), 200_000);
    }
}
