//! Compiling a route's contracts into a descriptor pool: `.proto` files by protox (no
//! `protoc`), with `google/protobuf/*` and the bundled `google/api` and `google/rpc`
//! files, or a compiled `FileDescriptorSet`.

use std::path::Path;

use prost_reflect::DescriptorPool;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::config::grpc::GrpcSpec;

/// The bundled googleapis files.
const BUNDLED: [(&str, &str); 5] = [
    (
        "google/api/http.proto",
        include_str!("google/api/http.proto"),
    ),
    (
        "google/api/annotations.proto",
        include_str!("google/api/annotations.proto"),
    ),
    (
        "google/api/httpbody.proto",
        include_str!("google/api/httpbody.proto"),
    ),
    (
        "google/rpc/status.proto",
        include_str!("google/rpc/status.proto"),
    ),
    (
        "google/rpc/error_details.proto",
        include_str!("google/rpc/error_details.proto"),
    ),
];

struct Bundled;

impl FileResolver for Bundled {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match BUNDLED.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => File::from_source(n, text),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The pool of a `grpc` block; on failure, the field to blame and why.
pub(super) fn pool(spec: &GrpcSpec, base: &Path) -> Result<DescriptorPool, (String, String)> {
    if let Some(set) = &spec.descriptor_set {
        let path = base.join(set);
        let bytes = std::fs::read(&path).map_err(|e| {
            (
                "descriptor_set".to_string(),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        return DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
            (
                "descriptor_set".to_string(),
                format!("{} is not a FileDescriptorSet: {e}", path.display()),
            )
        });
    }
    let mut chain = ChainFileResolver::new();
    for dir in &spec.include {
        chain.add(IncludeFileResolver::new(base.join(dir)));
    }
    chain.add(IncludeFileResolver::new(base.to_path_buf()));
    chain.add(Bundled);
    chain.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true);
    for (i, file) in spec.protos.iter().enumerate() {
        compiler
            .open_file(file)
            .map_err(|e| (format!("protos[{i}]"), format!("does not compile: {e}")))?;
    }
    for extra in ["google/rpc/status.proto", "google/rpc/error_details.proto"] {
        compiler
            .open_file(extra)
            .map_err(|e| ("protos".to_string(), e.to_string()))?;
    }
    Ok(compiler.descriptor_pool())
}

/// The pool of one `.proto` given as text (with the bundled and well-known imports).
pub(crate) fn pool_from_source(name: &str, text: &str) -> Result<DescriptorPool, String> {
    struct One(String, String);
    impl FileResolver for One {
        fn open_file(&self, name: &str) -> Result<File, protox::Error> {
            if name == self.0 {
                File::from_source(name, &self.1)
            } else {
                Err(protox::Error::file_not_found(name))
            }
        }
    }
    let mut chain = ChainFileResolver::new();
    chain.add(One(name.to_string(), text.to_string()));
    chain.add(Bundled);
    chain.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true);
    compiler.open_file(name).map_err(|e| e.to_string())?;
    Ok(compiler.descriptor_pool())
}

/// `google.protobuf.Any`, as the details of a status carry it.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.Status`, the `grpc-status-details-bin` trailer.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}
