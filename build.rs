//! Generates the Loggregator v2 messages from proto/ with the pure-Rust parser (no protoc).

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .inputs([
            "proto/loggregator-api/v2/envelope.proto",
            "proto/loggregator-api/v2/ingress.proto",
        ])
        .cargo_out_dir("proto")
        .run_from_script();
}
