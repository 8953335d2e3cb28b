//! Argument decoding with both codecs into representative types (strings, bytes, vectors,
//! maps, nested structs, enums, dynamic values), through every decode entry point.
//!
//! Input: a control byte (its low bit picks the codec), then the value's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let codec = rpc_fuzz::codec(ctl);
    rpc_fuzz::decode_all(codec, data);
});
