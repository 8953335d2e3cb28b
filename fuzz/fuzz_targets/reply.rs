//! The client's reply path: frame the bytes as the client does, parse a response, decode
//! its error with `decode_error` or its result with `Codec::decode` / `decode_framed`.
//!
//! Input: a control byte (its low bit picks the codec), then the stream from the server.
#![no_main]

use libfuzzer_sys::fuzz_target;
use easyrpc_proto::{decode_error, Framer, Message};
use serde_bytes::ByteBuf;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let codec = rpc_fuzz::codec(ctl);
    let frame = match Framer::new(codec, 1 << 20).decode(data) {
        Ok(Some(n)) => &data[..n],
        _ => data,
    };
    let Ok(Message::Response { outcome, .. }) = Message::parse(codec, frame) else {
        return;
    };
    match outcome {
        Ok(result) => {
            let _ = codec.decode_framed::<String>(result);
            let _ = codec.decode_framed::<ByteBuf>(result);
            let _ = codec.decode_framed::<Vec<i64>>(result);
            let _ = codec.decode_framed::<rpc_fuzz::Outer>(result);
            let _ = codec.decode::<rmpv::Value>(result);
            let _ = codec.decode::<(rpc_fuzz::Choice, Option<String>)>(result);
        }
        Err(error) => {
            let e = decode_error(codec, error);
            let _ = e.kind();
        }
    }
});
