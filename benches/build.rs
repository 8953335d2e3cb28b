//! Generates the gRPC (tonic 0.14) code for `proto/bench.proto` with the protoc shipped by
//! `protoc-bin-vendored`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // prost-build runs the program named by PROTOC.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // `bytes` fields as `bytes::Bytes`: the client sends the same payload every call
        // without copying it, as the other systems do.
        .bytes(".bench")
        .compile_protos(&["proto/bench.proto"], &["proto"])?;
    Ok(())
}
