//! The framer: never panics, never returns a frame longer than the input or the limit, and
//! the same answer whether the input arrives whole or in pieces.
//!
//! Input: a control byte (codec, limit, step size), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use easyrpc_proto::{Framer, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let codec = rpc_fuzz::codec(ctl);
    let max = [16usize, 64, 1024, 1 << 20][usize::from((ctl >> 1) & 3)];
    let step = usize::from(ctl >> 3) + 1;

    let whole = Framer::new(codec, max).decode(data);
    let mut framer = Framer::new(codec, max);
    let mut n = 0;
    let split = loop {
        n = (n + step).min(data.len());
        let r = framer.decode(&data[..n]);
        let _ = framer.needed(&data[..n]);
        if n == data.len() || !matches!(r, Ok(None)) {
            break r;
        }
    };
    assert_eq!(whole, split, "split in steps of {step}");
    if let Ok(Some(len)) = whole {
        assert!(len <= data.len() && len <= max);
        let _ = Message::parse(codec, &data[..len]);
    }
});
