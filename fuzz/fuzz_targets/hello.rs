//! The hello: `Hello::decode` never panics; a hello it accepts is within the input,
//! re-encodes to one that decodes the same, and every shorter prefix asks for more bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use easyrpc_proto::Hello;

fuzz_target!(|data: &[u8]| {
    let _ = Hello::is_hello(data);
    if let Ok(Some((hello, n))) = Hello::decode(data) {
        assert!(n <= data.len());
        for cut in 0..n {
            assert_eq!(Hello::decode(&data[..cut]), Ok(None), "cut at {cut}");
        }
        let mut out = Vec::new();
        hello.encode(&mut out);
        assert_eq!(Hello::decode(&out), Ok(Some((hello, out.len()))));
    }
});
