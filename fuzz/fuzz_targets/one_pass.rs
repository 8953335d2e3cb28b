//! The one-pass parsers against the general path: whatever a one-pass parser accepts, the
//! framer delimits to the same length and `Message::parse` reads as the same message.
//!
//! Input: a control byte (the size limit), then the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use easyrpc_proto::fuzzing::{
    parse_bincode_request_prefix, parse_bincode_response_prefix, parse_request_prefix, parse_response_prefix,
};
use easyrpc_proto::{Codec, Framer, Message};

fn agrees(codec: Codec, fast: Option<(Message<'_>, usize)>, data: &[u8], max: usize) {
    let Some((message, n)) = fast else {
        return;
    };
    assert!(n <= max && n <= data.len(), "{n} bytes");
    assert_eq!(Framer::new(codec, max).decode(data), Ok(Some(n)));
    assert_eq!(Message::parse(codec, &data[..n]), Ok(message));
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let max = [8usize, 32, 256, 1 << 20][usize::from(ctl & 3)];
    let m = Codec::Msgpack;
    let b = Codec::Bincode;
    agrees(m, parse_request_prefix(data, max), data, max);
    agrees(m, parse_response_prefix(data, max), data, max);
    agrees(b, parse_bincode_request_prefix(data, max), data, max);
    agrees(b, parse_bincode_response_prefix(data, max), data, max);
    if let Some((Message::Request { params, .. }, _)) = parse_request_prefix(data, max) {
        assert!(easyrpc_proto::fuzzing::value_len(params).is_ok());
    }
});
