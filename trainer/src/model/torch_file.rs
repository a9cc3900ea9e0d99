//! PyTorch checkpoints read without PyTorch: the zip format of `torch.save` (PyTorch ≥ 1.6), as
//! upstream's released weights (`infinity_2b_reg.pth`) and its training checkpoints
//! (`ar-ckpt*.pth`, the weights under `trainer.gpt_fsdp`) come.
//!
//! The file's `ARCHIVE/data.pkl` is a pickle whose tensors point at storages `ARCHIVE/data/KEY`
//! (stored, uncompressed). The pickle is read by a small stack machine that builds plain values and
//! never runs code: `collections.OrderedDict` and torch's tensor rebuilders are understood, any other
//! class or call (an argparse namespace, a numpy scalar) becomes an opaque value. Tensors are views
//! (offset, shape, strides) into their storage, decoded to f32 when read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Context, Result};

/// Whether `bytes` start like a zip file (PyTorch's format) rather than a safetensors header.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Element type of a storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDtype {
    F32,
    F16,
    Bf16,
    F64,
    /// A storage of another type (integers, bools): not weights.
    Other,
}

impl TorchDtype {
    fn of_storage(class: &str) -> (TorchDtype, usize) {
        match class {
            "FloatStorage" => (TorchDtype::F32, 4),
            "HalfStorage" => (TorchDtype::F16, 2),
            "BFloat16Storage" => (TorchDtype::Bf16, 2),
            "DoubleStorage" => (TorchDtype::F64, 8),
            "LongStorage" => (TorchDtype::Other, 8),
            "IntStorage" => (TorchDtype::Other, 4),
            "ShortStorage" => (TorchDtype::Other, 2),
            _ => (TorchDtype::Other, 1),
        }
    }
}

/// A storage named by the pickle: its element type and size, and its file `data/KEY`.
#[derive(Clone, Debug)]
struct Storage {
    class: String,
    dtype: TorchDtype,
    elem: usize,
    key: String,
    numel: usize,
}

/// A tensor: a strided view of its storage's bytes in the file.
#[derive(Clone, Debug)]
pub struct TorchTensor {
    pub shape: Vec<usize>,
    pub dtype: TorchDtype,
    storage: Rc<Storage>,
    /// Where the storage's bytes lie in the file (set once the archive is read).
    bytes: Range<usize>,
    offset: usize,
    stride: Vec<usize>,
}

impl TorchTensor {
    /// The values as f32, row-major (`file` is the whole `.pth` file). A view must lie inside its
    /// storage and read no element twice (no stride-0 broadcasts: a state dict holds none).
    pub fn values(&self, file: &[u8]) -> Result<Vec<f32>> {
        let s = &self.storage;
        ensure!(
            self.dtype != TorchDtype::Other,
            "a {} tensor, expected float32, float16, bfloat16 or float64",
            s.class
        );
        let numel =
            self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).context("a shape whose size overflows")?;
        if numel == 0 {
            return Ok(Vec::new());
        }
        // the furthest element the view reads, inside the storage and the storage's bytes inside the entry
        let reach = self
            .shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |at, (&n, &st)| at.checked_add((n - 1).checked_mul(st)?));
        let last = reach.context("a view whose extent overflows")?;
        ensure!(
            last < s.numel && numel <= s.numel,
            "a view of {numel} elements reaching element {last} of a storage of {} (data/{})",
            s.numel,
            s.key
        );
        let data = file.get(self.bytes.clone()).context("a storage outside the file")?;
        let need = (last + 1).checked_mul(s.elem).context("a view whose extent overflows")?;
        ensure!(need <= data.len(), "data/{} holds {} bytes, the view reads {need}", s.key, data.len());
        let decode = |b: &[u8]| -> f32 {
            match self.dtype {
                TorchDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                TorchDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                TorchDtype::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                TorchDtype::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
                TorchDtype::Other => f32::NAN,
            }
        };
        // row-major strides: one run of the storage (a state dict's tensors, nearly always)
        let mut contiguous = true;
        let mut expected = 1usize;
        for (&n, &st) in self.shape.iter().zip(&self.stride).rev() {
            contiguous &= n == 1 || st == expected;
            expected = expected.saturating_mul(n);
        }
        if contiguous {
            let run = &data[self.offset * s.elem..(self.offset + numel) * s.elem];
            return Ok(run.chunks_exact(s.elem).map(decode).collect());
        }
        let mut out = Vec::with_capacity(numel);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..numel {
            let at = self.offset + index.iter().zip(&self.stride).map(|(i, st)| i * st).sum::<usize>();
            out.push(decode(&data[at * s.elem..(at + 1) * s.elem]));
            // the next index, row-major
            for dim in (0..index.len()).rev() {
                index[dim] += 1;
                if index[dim] < self.shape[dim] {
                    break;
                }
                index[dim] = 0;
            }
        }
        Ok(out)
    }
}

/// A value the pickle builds. (Scalars keep their values for the errors that show them.)
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Value {
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
    fn dict() -> Value {
        Value::Dict(Rc::new(RefCell::new(Vec::new())))
    }

    fn is_container(&self) -> bool {
        matches!(self, Value::Tuple(_) | Value::List(_) | Value::Dict(_))
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    fn usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_usize).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }

    /// The value of `key` in a dict with string keys.
    fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(d) = self else { return None };
        d.borrow().iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v.clone())
    }

    fn keys(&self) -> Vec<String> {
        let Value::Dict(d) = self else { return Vec::new() };
        d.borrow().iter().filter_map(|(k, _)| if let Value::Str(s) = k { Some(s.clone()) } else { None }).collect()
    }
}

/// The result of a call (`REDUCE`, `NEWOBJ`) of `callable` with `args`.
fn call(callable: &Value, args: &[Value]) -> Result<Value> {
    let Value::Global(g) = callable else { return Ok(Value::Opaque(Rc::new("a call of a value".into()))) };
    let (module, name) = (g.0.as_str(), g.1.as_str());
    Ok(match (module, name) {
        ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => Value::dict(),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [Value::Storage(storage), offset, size, stride, ..] = args else {
                let given: Vec<String> = args.iter().map(describe).collect();
                bail!("torch._utils.{name} of ({}), expected (storage, offset, size, stride, …)", given.join(", "));
            };
            let (Some(offset), Some(shape), Some(stride)) = (offset.as_usize(), size.usizes(), stride.usizes()) else {
                bail!("torch._utils.{name}: offset, size or stride not integers");
            };
            ensure!(
                shape.len() == stride.len(),
                "torch._utils.{name}: {} sizes and {} strides",
                shape.len(),
                stride.len()
            );
            let (storage, dtype) = (storage.clone(), storage.dtype);
            Value::Tensor(Rc::new(TorchTensor { shape, dtype, storage, bytes: 0..0, offset, stride }))
        }
        // a Parameter pickled as itself: its data
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            args.first().cloned().context("torch._utils._rebuild_parameter without arguments")?
        }
        // a tensor with Python attributes: `func(*args)` rebuilds it
        ("torch._tensor", "_rebuild_from_type_v2") => match args {
            [func, _class, Value::Tuple(inner), ..] => call(func, inner)?,
            _ => bail!("torch._tensor._rebuild_from_type_v2 without (func, type, args, state)"),
        },
        _ => Value::Opaque(Rc::new(format!("{module}.{name}"))),
    })
}

/// The storage a persistent id names: `('storage', torch.XStorage, key, location, numel)`.
fn storage(pid: &Value) -> Result<Value> {
    let Value::Tuple(t) = pid else { bail!("a persistent id that is {}, expected a tuple", describe(pid)) };
    match &t[..] {
        [Value::Str(kind), Value::Global(class), Value::Str(key), _, numel] if kind == "storage" => {
            let numel = numel.as_usize().context("a storage's element count is not an integer")?;
            let (dtype, elem) = TorchDtype::of_storage(&class.1);
            Ok(Value::Storage(Rc::new(Storage { class: class.1.clone(), dtype, elem, key: key.clone(), numel })))
        }
        _ => {
            let given: Vec<String> = t.iter().map(describe).collect();
            bail!("a persistent id ({}), expected ('storage', class, key, location, numel)", given.join(", "))
        }
    }
}

/// The pickle machine: the bytes, the position, the stack with its marks, and the memo.
struct Machine<'a> {
    p: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
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

    /// Push a container built of `items`, refused past [`MAX_DEPTH`] (a crafted pickle could nest
    /// values deep enough to overflow the stack when they are dropped).
    fn push_container(&mut self, items: &[Value], container: Value) -> Result<()> {
        ensure!(!items.iter().any(|v| deeper_than(v, MAX_DEPTH)), "values nested deeper than {MAX_DEPTH}");
        self.stack.push(container);
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
                    ensure!(!items.iter().any(|v| deeper_than(v, MAX_DEPTH)), "values nested deeper than {MAX_DEPTH}");
                    // (appends to an object this reader keeps opaque are dropped)
                    let containers = items.iter().any(Value::is_container);
                    if let Some(Value::List(l)) = self.stack.last() {
                        l.try_borrow_mut().context("a list appended to itself")?.extend(items);
                    }
                    // (a container put into one it holds would make a cycle)
                    ensure!(
                        !containers || !deeper_than(&self.top()?, MAX_DEPTH),
                        "values nested deeper than {MAX_DEPTH}"
                    );
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
                    ensure!(!items.iter().any(|v| deeper_than(v, MAX_DEPTH)), "values nested deeper than {MAX_DEPTH}");
                    let containers = items.iter().any(Value::is_container);
                    let pairs = items.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone()));
                    if op == b'd' {
                        self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs.collect()))));
                    } else if let Some(Value::Dict(d)) = self.stack.last() {
                        d.try_borrow_mut().context("a dict set into itself")?.extend(pairs);
                        ensure!(
                            !containers || !deeper_than(&self.top()?, MAX_DEPTH),
                            "values nested deeper than {MAX_DEPTH}"
                        );
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

/// Whether `v` holds containers nested more than `n` deep (a container that holds itself: yes).
fn deeper_than(v: &Value, n: usize) -> bool {
    let nested = |v: &Value| n == 0 || deeper_than(v, n - 1);
    match v {
        Value::Tuple(t) => t.iter().any(nested),
        Value::List(l) => l.try_borrow().map_or(true, |l| l.iter().any(nested)),
        Value::Dict(d) => d.try_borrow().map_or(true, |d| d.iter().any(|(k, v)| nested(k) || nested(v))),
        _ => false,
    }
}

/// A value as errors name it (its kind, never its contents, which may be large or hold themselves).
fn describe(v: &Value) -> String {
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
fn unpickle(p: &[u8]) -> Result<Value> {
    Machine { p, at: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }.run()
}

/// A PyTorch file's weights: `(name, tensor)` in the file's order.
pub struct TorchWeights {
    pub tensors: Vec<(String, TorchTensor)>,
    /// Where in the file's object they were (`the file's top level`, `trainer.gpt_fsdp`).
    pub found_at: String,
}

/// The state dict of the PyTorch file `bytes` (`path` for errors): the file's object itself where it
/// is a dict of tensors (released weights), else `trainer.gpt_fsdp` or `trainer.gpt_wo_ddp` (upstream's
/// training checkpoints under FSDP or DDP).
pub fn read_weights(bytes: &[u8], path: &Path) -> Result<TorchWeights> {
    let named = || path.display().to_string();
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| anyhow!("{}: not a zip file: {e}", named()))?;
    let names: Vec<String> = zip
        .file_names()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: {e}", named()))?
        .into_iter()
        .map(|n| n.into_owned())
        .collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .with_context(|| format!("{}: a zip file without ARCHIVE/data.pkl: not a PyTorch checkpoint", named()))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let entry = |zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str| -> Result<Range<usize>> {
        let f = zip.by_name(name).map_err(|e| anyhow!("{}: {name}: {e}", named()))?;
        ensure!(
            f.compression() == zip::CompressionMethod::Stored,
            "{}: {name} is compressed ({:?}); torch.save stores its entries uncompressed",
            named(),
            f.compression()
        );
        let start = f.data_start().with_context(|| format!("{}: {name}: no data offset", named()))?;
        let (size, stored) = (f.size(), f.compressed_size());
        let end = start.checked_add(size).filter(|&end| size == stored && end <= bytes.len() as u64);
        let end = end.with_context(|| format!("{}: {name}: {size} bytes at {start}, past the file's end", named()))?;
        Ok(start as usize..end as usize)
    };
    if let Some(order) = names.iter().find(|n| **n == format!("{prefix}byteorder")) {
        let r = entry(&mut zip, order)?;
        let order = String::from_utf8_lossy(&bytes[r]);
        ensure!(order == "little", "{}: byte order {order:?}, expected little", named());
    }
    let root = unpickle(&bytes[entry(&mut zip, pkl)?]).with_context(|| format!("{}: {pkl}", named()))?;
    // the state dict: tensors at the top, or where upstream's trainer keeps them
    let (dict, found_at) = match root.get("trainer") {
        Some(trainer) => ["gpt_fsdp", "gpt_wo_ddp"]
            .iter()
            .find_map(|k| trainer.get(k).map(|d| (d, format!("trainer.{k}"))))
            .with_context(|| {
                format!("{}: `trainer` holds no gpt_fsdp or gpt_wo_ddp (its keys: {:?})", named(), trainer.keys())
            })?,
        None => (root.clone(), "the file's top level".to_string()),
    };
    let Value::Dict(items) = &dict else { bail!("{}: {found_at} is not a dict of tensors", named()) };
    let mut storages: HashMap<String, Range<usize>> = HashMap::new();
    let mut tensors = Vec::new();
    for (k, v) in items.borrow().iter() {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            // a tensor this reader cannot rebuild is named, not left for the model to miss
            if let (Value::Str(name), Value::Opaque(by)) = (k, v) {
                ensure!(
                    !by.starts_with("torch"),
                    "{}: `{name}` is built by {by}, which this reader does not take",
                    named()
                );
            }
            continue;
        };
        let key = format!("{prefix}data/{}", t.storage.key);
        let bytes_of = match storages.get(&key) {
            Some(r) => r.clone(),
            None => {
                let r = entry(&mut zip, &key)?;
                ensure!(
                    t.storage.numel.checked_mul(t.storage.elem).is_some_and(|n| r.len() >= n),
                    "{}: {key} holds {} bytes, its storage {} elements of {} bytes",
                    named(),
                    r.len(),
                    t.storage.numel,
                    t.storage.elem
                );
                storages.insert(key, r.clone());
                r
            }
        };
        tensors.push((name.clone(), TorchTensor { bytes: bytes_of, ..(**t).clone() }));
    }
    ensure!(
        !tensors.is_empty(),
        "{}: no tensors at {found_at} (its keys: {:?}); expected a state dict, or upstream's checkpoint with \
         trainer.gpt_fsdp",
        named(),
        dict.keys().into_iter().take(10).collect::<Vec<_>>()
    );
    Ok(TorchWeights { tensors, found_at })
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
        // a view past its storage's end
        let storage = Rc::new(Storage {
            class: "FloatStorage".into(),
            dtype: TorchDtype::F32,
            elem: 4,
            key: "0".into(),
            numel: 4,
        });
        let t = TorchTensor {
            shape: vec![2, 3],
            dtype: TorchDtype::F32,
            storage,
            bytes: 0..16,
            offset: 0,
            stride: vec![3, 1],
        };
        let e = t.values(&[0u8; 16]).unwrap_err().to_string();
        assert!(e.contains("a view of 6 elements reaching element 5 of a storage of 4"), "{e}");
        // a storage claiming more elements than its entry's bytes hold (one key named twice)
        let storage = Rc::new(Storage { numel: 100, ..(*t.storage).clone() });
        let e = TorchTensor { storage, ..t.clone() }.values(&[0u8; 16]).unwrap_err().to_string();
        assert!(e.contains("data/0 holds 16 bytes, the view reads 24"), "{e}");
        // a stride-0 view repeating its storage's elements
        let e =
            TorchTensor { shape: vec![8], stride: vec![0], ..t.clone() }.values(&[0u8; 16]).unwrap_err().to_string();
        assert!(e.contains("a view of 8 elements"), "{e}");
        // a transposed view reads the values in the tensor's own order
        let bytes: Vec<u8> = [1f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let transposed = TorchTensor { shape: vec![2, 2], stride: vec![1, 2], ..t.clone() };
        assert_eq!(transposed.values(&bytes).unwrap(), [1.0, 3.0, 2.0, 4.0]);
    }

    /// Crafted pickles are errors, never panics or a blown stack: a length past the end (or past
    /// usize), a list that holds itself, tuples nested a hundred deep.
    #[test]
    fn crafted_pickles_are_refused() {
        let huge = [&b"\x80\x02\x8d"[..], &[0xff; 8], b"."].concat();
        let e = unpickle(&huge).unwrap_err().to_string();
        assert!(e.contains("the pickle ends inside an opcode"), "{e}");
        let e = unpickle(b"]q\x00h\x00a.").unwrap_err().to_string();
        assert!(e.contains("nested deeper than 64"), "{e}");
        let deep = [&b"N"[..], &[0x85; 100], b"."].concat();
        let e = unpickle(&deep).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 64"), "{e}");
    }
}
