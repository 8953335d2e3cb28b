//! Message parsing: `Message::parse` and `peek_msgid` never panic on any frame, and the
//! params of what they accept decode (or fail) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use easyrpc_proto::fuzzing::peek_msgid;
use easyrpc_proto::{decode_error, Codec, Message};

fuzz_target!(|data: &[u8]| {
    for codec in [Codec::Msgpack, Codec::Bincode] {
        let _ = peek_msgid(codec, data);
        match Message::parse(codec, data) {
            Ok(Message::Request { method, params, .. } | Message::Notification { method, params }) => {
                assert!(method.len() <= data.len() && params.len() <= data.len());
                rpc_fuzz::decode_args(codec, params);
            }
            Ok(Message::Response { outcome, .. }) => match outcome {
                Ok(result) => {
                    let _ = codec.decode_framed::<rmpv::Value>(result);
                }
                Err(error) => {
                    let _ = decode_error(codec, error);
                }
            },
            Err(e) => {
                let _ = e.to_server_error();
            }
        }
    }
});
