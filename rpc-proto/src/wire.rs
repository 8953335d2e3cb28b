//! Low-level MessagePack headers and integers, written and read by hand: the pieces that
//! the message envelope (`message.rs`) and the codecs (`codec.rs`, `codec/scalar.rs`) both
//! use. Nothing here knows about messages or codecs, so those modules depend on this one
//! and no longer on each other for these.

/// Read a msgpack array header: the count and the header's length.
pub(crate) fn read_array_len(b: &[u8]) -> Option<(usize, usize)> {
    match *b.first()? {
        m @ 0x90..=0x9f => Some((usize::from(m & 0x0f), 1)),
        0xdc => b
            .get(1..3)
            .map(|l| (usize::from(u16::from_be_bytes([l[0], l[1]])), 3)),
        0xdd => b
            .get(1..5)
            .map(|l| (u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize, 5)),
        _ => None,
    }
}

// The writers below are `#[inline]` with their common case first: they are called for
// every call on both sides, from other crates too, where a call would cost more than the
// byte it writes.

#[inline]
pub(crate) fn write_array_len(out: &mut Vec<u8>, n: u32) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= u32::from(u16::MAX) {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

#[inline]
pub(crate) fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        write_wide_uint(out, v);
    }
}

fn write_wide_uint(out: &mut Vec<u8>, v: u64) {
    // Marker and bytes in one append each.
    if let Ok(v) = u8::try_from(v) {
        out.extend_from_slice(&[0xcc, v]);
    } else if let Ok(v) = u16::try_from(v) {
        let [a, b] = v.to_be_bytes();
        out.extend_from_slice(&[0xcd, a, b]);
    } else if let Ok(v) = u32::try_from(v) {
        let [a, b, c, d] = v.to_be_bytes();
        out.extend_from_slice(&[0xce, a, b, c, d]);
    } else {
        let [a, b, c, d, e, f, g, h] = v.to_be_bytes();
        out.extend_from_slice(&[0xcf, a, b, c, d, e, f, g, h]);
    }
}

/// A msgpack str (at most 4 GiB: longer ones are the caller's to refuse).
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() < 32 {
        out.push(0xa0 | s.len() as u8);
        out.extend_from_slice(s);
    } else {
        write_sized(out, s, Some(0xa0), [0xd9, 0xda, 0xdb]);
    }
}

/// A msgpack bin (at most 4 GiB: longer ones are the caller's to refuse).
pub(crate) fn write_bin(out: &mut Vec<u8>, b: &[u8]) {
    write_sized(out, b, None, [0xc4, 0xc5, 0xc6]);
}

/// A str or bin: the fix form (str only), then 8, 16 and 32-bit lengths.
fn write_sized(out: &mut Vec<u8>, bytes: &[u8], fix: Option<u8>, markers: [u8; 3]) {
    let n = bytes.len();
    match (n, fix) {
        (0..=31, Some(fix)) => out.push(fix | n as u8),
        (0..=0xff, _) => out.extend_from_slice(&[markers[0], n as u8]),
        (0x100..=0xffff, _) => {
            out.push(markers[1]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(markers[2]);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    // A blob shared during this encode goes beside the buffer (`crate::blob`).
    if !crate::blob::take_shared(out, bytes) {
        out.extend_from_slice(bytes);
    }
}
