//! Argument decoding with both codecs into representative types (strings, bytes, vectors,
//! maps, nested structs, enums, dynamic values), through every decode entry point.
//!
//! Input: a control byte (its low bit picks the codec), then the value's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc_proto::Codec;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let codec = if ctl & 1 == 0 {
        Codec::Msgpack
    } else {
        Codec::Bincode
    };
    rpc_fuzz::decode_all(codec, data);
});
