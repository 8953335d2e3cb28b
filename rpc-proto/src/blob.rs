//! [`Blob`]: a byte string that large messages carry without copying it.
//!
//! A `Vec<u8>` or `serde_bytes::ByteBuf` argument is copied out of the message it came in,
//! and a result of that type is copied into the write buffer: for a 64 MiB echo that is two
//! copies of the payload on each side, and as many fresh 64 MiB allocations. A [`Blob`]
//! (a [`bytes::Bytes`]) of at least [`SHARE_MIN`] bytes is neither:
//!
//! - **decoding**: the connection hands a large message to the decoder as `Bytes`
//!   ([`with_frame`]), and a `Blob` in it becomes a slice of that message (it keeps the
//!   message's buffer alive while it lives, as any `Bytes` slice does);
//! - **encoding**: when a connection encodes a message into its write buffer with sharing
//!   on ([`Outbox::encode_shared`]), a `Blob` leaves only its header in the buffer and its
//!   `Bytes` beside it, and the transport writes the buffer and the blobs in order,
//!   vectored.
//!
//! Serde has no way to pass anything but plain values between a type and its
//! (de)serializer, so the two halves meet through this thread's state: the connection sets
//! it around one encode or decode on the same thread, and `Blob`'s `Serialize` and
//! `Deserialize` look at it. Anything else that (de)serializes a `Blob` (serde_json, a
//! dedup cache's copy of a reply, a compressed message) sees an ordinary byte string and
//! copies it: sharing is an optimisation that is never needed for correctness.
//!
//! On the wire a `Blob` is exactly what a `ByteBuf` is: a msgpack bin, or bincode's
//! length-prefixed bytes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io::IoSlice;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

/// The smallest blob that is shared rather than copied (64 KiB): below it a copy costs less
/// than a separate piece to write, and a slice would keep a whole message alive for a few
/// bytes.
pub const SHARE_MIN: usize = 64 * 1024;

/// A byte string carried without a copy when it is large; see the [module](self).
///
/// Use it for an argument or result that may be large (files, images, tensors): on the
/// wire it is a msgpack bin (bincode: a byte string), like `serde_bytes::ByteBuf`, so a
/// peer sees no difference. A `Blob` decoded from a large message is a slice of that
/// message's buffer and keeps it alive: call [`Blob::detach`] before keeping a small part
/// of a large message for long.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(Bytes);

impl Blob {
    /// An empty blob.
    pub const fn new() -> Blob {
        Blob(Bytes::new())
    }

    /// The bytes, as `Bytes`.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The bytes, as `Bytes`.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// A copy of the bytes that shares no buffer with a message.
    #[must_use]
    pub fn detach(&self) -> Blob {
        Blob(Bytes::copy_from_slice(&self.0))
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Blob {
        Blob(b)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob(Bytes::from(v))
    }
}

impl From<&'static [u8]> for Blob {
    fn from(s: &'static [u8]) -> Blob {
        Blob(Bytes::from_static(s))
    }
}

impl From<Blob> for Bytes {
    fn from(b: Blob) -> Bytes {
        b.0
    }
}

impl From<Blob> for Vec<u8> {
    fn from(b: Blob) -> Vec<u8> {
        b.0.into()
    }
}

/// Whether a large blob has been serialized in this process: until then connections encode
/// without looking for blobs (one relaxed load per message, instead of the thread-local
/// flag's writes), and that first blob is copied.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Whether connections look for blobs when they encode (see [`IN_USE`]).
#[inline(always)]
pub(crate) fn in_use() -> bool {
    IN_USE.load(Ordering::Relaxed)
}

#[cold]
#[inline(never)]
fn mark_in_use() {
    IN_USE.store(true, Ordering::Relaxed);
}

thread_local! {
    /// A connection is encoding into its write buffer and can send blobs beside it.
    static SHARING: Cell<bool> = const { Cell::new(false) };
    /// The blob being serialized, for the writer to recognise by its address.
    static PENDING: RefCell<Option<Bytes>> = const { RefCell::new(None) };
    /// Blobs left out of the write buffer by the current encode: where they go, and what.
    static PLACED: RefCell<Vec<(usize, Bytes)>> = const { RefCell::new(Vec::new()) };
    /// Their total length (a bincode frame's length prefix counts them).
    static PLACED_LEN: Cell<usize> = const { Cell::new(0) };
    /// The large message being decoded, for a blob in it to slice.
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.len() < SHARE_MIN {
            return serializer.serialize_bytes(&self.0);
        }
        if !SHARING.get() {
            if !in_use() {
                mark_in_use();
            }
            return serializer.serialize_bytes(&self.0);
        }
        PENDING.set(Some(self.0.clone()));
        let r = serializer.serialize_bytes(&self.0);
        // Still there when the serializer copied it (a writer that does not know blobs).
        PENDING.take();
        r
    }
}

/// Called by our writers with the payload of a byte string about to be appended to `out`:
/// when it is the blob being serialized during a shared encode, it is recorded as placed at
/// `out.len()` and must not be copied (returns `true`).
#[inline]
pub(crate) fn take_shared(out: &[u8], data: &[u8]) -> bool {
    data.len() >= SHARE_MIN && place(out.len(), data)
}

#[cold]
#[inline(never)]
fn place(at: usize, data: &[u8]) -> bool {
    let taken = PENDING.with_borrow_mut(|p| match p {
        Some(b) if b.as_ptr() == data.as_ptr() && b.len() == data.len() => p.take(),
        _ => None,
    });
    match taken {
        Some(b) => {
            PLACED_LEN.set(PLACED_LEN.get() + b.len());
            PLACED.with_borrow_mut(|placed| placed.push((at, b)));
            true
        }
        None => false,
    }
}

/// Bytes of blobs placed so far in the current shared encode (0 outside one).
#[inline]
pub(crate) fn placed_len() -> usize {
    PLACED_LEN.get()
}

/// An [`std::io::Write`] into a `Vec` that leaves out the blob being serialized during a
/// shared encode (serde serializers of other crates write byte strings through it).
pub(crate) struct Sink<'a>(pub(crate) &'a mut Vec<u8>);

impl std::io::Write for Sink<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if !take_shared(self.0, buf) {
            self.0.extend_from_slice(buf);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob(
            slice_of_frame(v).unwrap_or_else(|| Bytes::copy_from_slice(v)),
        ))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob(Bytes::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
        self.visit_bytes(v.as_bytes())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Blob, E> {
        Ok(Blob(Bytes::from(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        // Bounded by what the decoder has: each element is at least one byte of input.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Blob(Bytes::from(v)))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        deserializer.deserialize_byte_buf(BlobVisitor)
    }
}

/// `v` as a slice of the message being decoded, when it is large and lies inside it.
#[inline]
fn slice_of_frame(v: &[u8]) -> Option<Bytes> {
    if v.len() < SHARE_MIN {
        return None;
    }
    FRAME.with_borrow(|f| {
        let f = f.as_ref()?;
        let (start, end) = (f.as_ptr() as usize, f.as_ptr() as usize + f.len());
        let (a, b) = (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
        (start <= a && b <= end).then(|| f.slice_ref(v))
    })
}

/// Run `f`, a decode of values from `frame`, so that a large [`Blob`] in it is a slice of
/// `frame` instead of a copy.
pub fn with_frame<R>(frame: &Bytes, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FRAME.set(self.0.take());
        }
    }
    let _restore = Restore(FRAME.replace(Some(frame.clone())));
    f()
}

/// A shared encode in progress on this thread ([`Outbox::encode_shared`]): begun by
/// setting the thread's flag, ended by collecting what was placed.
#[must_use]
pub(crate) struct Shared {
    /// Already inside a shared encode: the outer one collects.
    nested: bool,
}

impl Shared {
    #[inline(always)]
    pub(crate) fn begin() -> Shared {
        Shared {
            nested: SHARING.replace(true),
        }
    }

    #[inline(always)]
    pub(crate) fn end(self, out: &mut Outbox, ok: bool) {
        if !self.nested {
            SHARING.set(false);
            if PLACED_LEN.get() != 0 {
                out.collect(ok);
            }
        }
    }
}

/// A write buffer with the blobs that go between its bytes: what a connection has to
/// write, in order. Without blobs it is the buffer alone, and costs nothing more.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The encoded bytes, blobs left out.
    pub(crate) buf: Vec<u8>,
    /// Bytes of `buf` written.
    written: usize,
    /// The blobs waiting beside the buffer, if any (boxed: a connection without them
    /// carries one pointer for them).
    blobs: Option<Box<Blobs>>,
}

/// The blobs of an [`Outbox`]; never empty.
#[derive(Debug, Clone)]
struct Blobs {
    /// Blobs, by the offset in the buffer they go before, in order.
    extents: VecDeque<(usize, Bytes)>,
    /// Bytes of `extents` not written yet.
    unwritten: usize,
    /// Bytes of the first extent written.
    first_written: usize,
}

impl Outbox {
    /// Bytes waiting to be written, blobs included.
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len() - self.written + self.blob_bytes()
    }

    #[inline(always)]
    fn blob_bytes(&self) -> usize {
        self.blobs.as_ref().map_or(0, |b| b.unwritten)
    }

    /// The buffer's length (written bytes included, until it is cleared) and the blobs
    /// not written yet: what the write buffer's high-water mark is compared with.
    #[inline(always)]
    pub(crate) fn queued(&self) -> usize {
        self.buf.len() + self.blob_bytes()
    }

    /// Nothing waits to be written.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.written == self.buf.len() && self.blobs.is_none()
    }

    /// Whether blobs wait beside the buffer (then [`Outbox::slices`] is worth using).
    #[inline]
    pub fn has_blobs(&self) -> bool {
        self.blobs.is_some()
    }

    /// The next contiguous bytes to write, if any.
    #[inline]
    pub fn chunk(&self) -> Option<&[u8]> {
        let Some(blobs) = &self.blobs else {
            return (self.written < self.buf.len()).then(|| &self.buf[self.written..]);
        };
        // Never empty.
        let (at, b) = &blobs.extents[0];
        if *at == self.written {
            return Some(&b[blobs.first_written..]);
        }
        Some(&self.buf[self.written..*at])
    }

    /// Fill `dst` with the bytes to write, in order, for a vectored write; returns how
    /// many slices it filled.
    pub fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut pos = self.written;
        if let Some(blobs) = &self.blobs {
            let mut first = blobs.first_written;
            for (at, b) in &blobs.extents {
                if n == dst.len() {
                    return n;
                }
                if *at > pos {
                    dst[n] = IoSlice::new(&self.buf[pos..*at]);
                    n += 1;
                    pos = *at;
                    if n == dst.len() {
                        return n;
                    }
                }
                dst[n] = IoSlice::new(&b[first..]);
                first = 0;
                n += 1;
            }
        }
        if n < dst.len() && pos < self.buf.len() {
            dst[n] = IoSlice::new(&self.buf[pos..]);
            n += 1;
        }
        n
    }

    /// `n` bytes were written (of [`Outbox::chunk`] or [`Outbox::slices`]). Once all is
    /// written the buffer is cleared, and a buffer larger than `keep` bytes given back.
    #[inline]
    pub fn advance(&mut self, n: usize, keep: usize) {
        if self.blobs.is_none() {
            self.written += n;
            if self.written >= self.buf.len() {
                self.written = 0;
                self.buf.clear();
                if self.buf.capacity() > keep {
                    self.buf = Vec::new();
                }
            }
            return;
        }
        self.advance_pieces(n, keep);
    }

    #[cold]
    #[inline(never)]
    fn advance_pieces(&mut self, mut n: usize, keep: usize) {
        while n > 0 {
            let Some(blobs) = self.blobs.as_mut() else {
                self.written += n;
                break;
            };
            let (at, b) = &blobs.extents[0];
            if *at > self.written {
                let k = n.min(*at - self.written);
                self.written += k;
                n -= k;
                continue;
            }
            let k = n.min(b.len() - blobs.first_written);
            blobs.first_written += k;
            blobs.unwritten -= k;
            n -= k;
            if blobs.first_written == b.len() {
                blobs.extents.pop_front();
                blobs.first_written = 0;
                if blobs.extents.is_empty() {
                    self.blobs = None;
                }
            }
        }
        debug_assert!(self.written <= self.buf.len());
        if self.is_empty() {
            self.buf.clear();
            self.written = 0;
            if self.buf.capacity() > keep {
                self.buf = Vec::new();
            }
        }
    }

    /// Run `encode`, which appends to the buffer, with blob sharing on: a large [`Blob`] it
    /// serializes is placed beside the buffer instead of copied into it. On error the
    /// encode's blobs are dropped (the encode is expected to have truncated the buffer).
    #[inline(always)]
    pub fn encode_shared<E>(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        if !in_use() {
            return encode(&mut self.buf);
        }
        let scope = Shared::begin();
        let r = encode(&mut self.buf);
        scope.end(self, r.is_ok());
        r
    }

    #[cold]
    #[inline(never)]
    fn collect(&mut self, keep: bool) {
        PLACED_LEN.set(0);
        let placed = PLACED.take();
        if keep {
            for (at, b) in placed {
                self.push_blob(at, b);
            }
        }
    }

    fn push_blob(&mut self, at: usize, b: Bytes) {
        let blobs = self.blobs.get_or_insert_with(|| {
            Box::new(Blobs {
                extents: VecDeque::new(),
                unwritten: 0,
                first_written: 0,
            })
        });
        blobs.unwritten += b.len();
        blobs.extents.push_back((at, b));
    }

    /// Drop everything queued.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.written = 0;
        self.blobs = None;
    }

    /// A copy of everything waiting to be written, blobs in place.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        let mut rest = self.clone_cursor();
        while let Some(c) = rest.chunk() {
            v.extend_from_slice(c);
            let n = c.len();
            rest.advance(n, usize::MAX);
        }
        v
    }

    fn clone_cursor(&self) -> Outbox {
        Outbox {
            buf: self.buf.clone(),
            written: self.written,
            blobs: self.blobs.clone(),
        }
    }

    /// Queue what `other` holds after what this one holds, leaving `other` empty.
    pub fn append(&mut self, other: &mut Outbox) {
        if self.is_empty() {
            std::mem::swap(self, other);
            other.clear();
            return;
        }
        // `other`'s unwritten part only; its offsets move to the end of this buffer.
        let base = self.buf.len();
        let from = other.written;
        self.buf.extend_from_slice(&other.buf[from..]);
        if let Some(blobs) = other.blobs.take() {
            for (i, (at, b)) in blobs.extents.into_iter().enumerate() {
                let b = if i == 0 { b.slice(blobs.first_written..) } else { b };
                self.push_blob(base + at - from, b);
            }
        }
        other.clear();
    }

    /// Write everything to a blocking writer, vectored when blobs wait beside the buffer.
    ///
    /// # Errors
    ///
    /// The writer's; what was not written stays queued.
    pub fn write_to(&mut self, w: &mut impl std::io::Write, keep: usize) -> std::io::Result<()> {
        while !self.is_empty() {
            let n = if self.has_blobs() {
                let mut slices = [IoSlice::new(&[]); 16];
                let k = self.slices(&mut slices);
                w.write_vectored(&slices[..k])
            } else {
                match self.chunk() {
                    Some(c) => w.write(c),
                    None => break,
                }
            };
            match n {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n, keep),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The buffer, for encoding into (without sharing).
    #[inline]
    pub fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

/// Turn sharing on now rather than at the first large blob (tests).
#[cfg(test)]
pub(crate) fn start_sharing() {
    mark_in_use();
}

#[cfg(test)]
mod tests;
