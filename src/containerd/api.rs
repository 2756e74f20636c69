//! The wire side of containerd's `Containers` service: the few messages the stored-spec rewrite
//! exchanges, and a unary gRPC call over containerd's unix socket.
//!
//! The messages are written here by hand as `prost` structs, with the field numbers of
//! `containerd.services.containers.v1` (`api/services/containers/v1/containers.proto`, the same
//! in containerd 1.7 and 2.x), and sent with tonic's generic client and the prost codec. That
//! needs neither `protoc` nor a code generator at build time: a Rust toolchain builds the
//! plugin. The alternative, compiling the upstream proto files with a pure-Rust protobuf
//! compiler in the build script, would vendor those files and a compiler for three messages
//! of which the plugin reads two fields.
//!
//! prost drops the fields a struct does not declare when it decodes, so a [`Container`] read
//! with `Get` is not a faithful copy of what containerd stores and must never be sent back
//! whole. [`update_spec_request`] therefore sends only the id and the new spec, under the
//! field mask `spec`: containerd's metadata store (`containerStore.Update`, 1.x and 2.x) reads
//! the stored record and replaces only the masked fields, so labels, image, runtime,
//! snapshot, extensions, sandbox and any field a later containerd adds stay as they are.

use std::path::Path;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use prost_types::{Any, FieldMask};
use tonic::client::Grpc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

/// gRPC path of `Containers.Get`.
const GET: &str = "/containerd.services.containers.v1.Containers/Get";
/// gRPC path of `Containers.Update`.
const UPDATE: &str = "/containerd.services.containers.v1.Containers/Update";

/// `containerd.services.containers.v1.Container`, reduced to what the rewrite reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    /// The OCI runtime spec, as JSON in an `Any`.
    #[prost(message, optional, tag = "5")]
    pub spec: Option<Any>,
}

/// `containerd.services.containers.v1.GetContainerRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `containerd.services.containers.v1.GetContainerResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerResponse {
    #[prost(message, optional, tag = "1")]
    pub container: Option<Container>,
}

/// `containerd.services.containers.v1.UpdateContainerRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainerRequest {
    #[prost(message, optional, tag = "1")]
    pub container: Option<Container>,
    #[prost(message, optional, tag = "2")]
    pub update_mask: Option<FieldMask>,
}

/// `containerd.services.containers.v1.UpdateContainerResponse`; the rewrite does not read the
/// container it carries, so no field is declared.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainerResponse {}

/// The `Update` that replaces the stored spec of container `id` and nothing else (see the
/// module documentation).
pub fn update_spec_request(id: &str, spec: Any) -> UpdateContainerRequest {
    UpdateContainerRequest {
        container: Some(Container {
            id: id.to_string(),
            spec: Some(spec),
        }),
        update_mask: Some(FieldMask {
            paths: vec!["spec".to_string()],
        }),
    }
}

/// Connects to containerd's gRPC socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI only fills the `:authority` header; the connector ignores it and dials the
    // socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
}

/// The `Containers` service on a connected channel.
pub struct Containers {
    grpc: Grpc<Channel>,
}

impl Containers {
    pub fn new(channel: Channel) -> Containers {
        Containers {
            grpc: Grpc::new(channel),
        }
    }

    pub async fn get(
        &mut self,
        request: Request<GetContainerRequest>,
    ) -> Result<GetContainerResponse, Status> {
        self.unary(GET, request).await
    }

    pub async fn update(
        &mut self,
        request: Request<UpdateContainerRequest>,
    ) -> Result<UpdateContainerResponse, Status> {
        self.unary(UPDATE, request).await
    }

    async fn unary<Req, Resp>(
        &mut self,
        path: &'static str,
        request: Request<Req>,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection to containerd lost: {e}")))?;
        self.grpc
            .unary(
                request,
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
            .map(tonic::Response::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::collections::HashMap;

    /// The whole `Container` message as containerd sends it, every field declared, to stand
    /// for what a `Get` response may carry beyond the fields we read.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FullContainer {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(map = "string, string", tag = "2")]
        labels: HashMap<String, String>,
        #[prost(string, tag = "3")]
        image: String,
        #[prost(message, optional, tag = "4")]
        runtime: Option<FullRuntime>,
        #[prost(message, optional, tag = "5")]
        spec: Option<Any>,
        #[prost(string, tag = "6")]
        snapshotter: String,
        #[prost(string, tag = "7")]
        snapshot_key: String,
        #[prost(message, optional, tag = "8")]
        created_at: Option<prost_types::Timestamp>,
        #[prost(message, optional, tag = "9")]
        updated_at: Option<prost_types::Timestamp>,
        #[prost(map = "string, message", tag = "10")]
        extensions: HashMap<String, Any>,
        #[prost(string, tag = "11")]
        sandbox: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct FullRuntime {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "2")]
        options: Option<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct FullGetResponse {
        #[prost(message, optional, tag = "1")]
        container: Option<FullContainer>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct FullUpdateRequest {
        #[prost(message, optional, tag = "1")]
        container: Option<FullContainer>,
        #[prost(message, optional, tag = "2")]
        update_mask: Option<FieldMask>,
    }

    fn any(type_url: &str, value: &[u8]) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn update_request_has_containerd_field_numbers() {
        let req = update_spec_request("c", any("t", b"{}"));
        // Hand-encoded: container (1) { id (1) "c", spec (5) { type_url (1) "t",
        // value (2) "{}" } }, update_mask (2) { paths (1) "spec" }.
        let want: &[u8] = &[
            0x0a, 12, 0x0a, 1, b'c', 0x2a, 7, 0x0a, 1, b't', 0x12, 2, b'{', b'}', //
            0x12, 6, 0x0a, 4, b's', b'p', b'e', b'c',
        ];
        assert_eq!(req.encode_to_vec(), want);
        assert_eq!(UpdateContainerRequest::decode(want).unwrap(), req);
    }

    #[test]
    fn get_request_has_containerd_field_numbers() {
        let req = GetContainerRequest { id: "abc".into() };
        assert_eq!(req.encode_to_vec(), [0x0a, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn spec_is_read_from_a_full_get_response() {
        let full = FullGetResponse {
            container: Some(FullContainer {
                id: "c1".into(),
                labels: HashMap::from([("io.cri-containerd.kind".into(), "container".into())]),
                image: "docker.io/library/busybox:latest".into(),
                runtime: Some(FullRuntime {
                    name: "io.containerd.runc.v2".into(),
                    options: Some(any("runc.options", b"\x08\x01")),
                }),
                spec: Some(any(
                    "types.containerd.io/opencontainers/runtime-spec/1/Spec",
                    br#"{"process":{"args":["/app"]}}"#,
                )),
                snapshotter: "overlayfs".into(),
                snapshot_key: "c1".into(),
                created_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                updated_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_001,
                    nanos: 0,
                }),
                extensions: HashMap::from([("ext".into(), any("x", b"y"))]),
                sandbox: "s1".into(),
            }),
        };
        let got = GetContainerResponse::decode(full.encode_to_vec().as_slice()).unwrap();
        let container = got.container.unwrap();
        assert_eq!(container.id, "c1");
        assert_eq!(
            container.spec,
            full.container.as_ref().and_then(|c| c.spec.clone())
        );
    }

    #[test]
    fn update_carries_only_id_and_spec_under_the_spec_mask() {
        // Read as containerd reads it, with every field declared: anything but the id and
        // the spec is empty, so containerd has nothing else to apply, and the mask tells it
        // to apply the spec alone.
        let spec = any("t", br#"{"process":{"args":["/gate","--","/app"]}}"#);
        let req = update_spec_request("c1", spec.clone());
        let seen = FullUpdateRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            seen,
            FullUpdateRequest {
                container: Some(FullContainer {
                    id: "c1".into(),
                    spec: Some(spec),
                    ..FullContainer::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["spec".into()],
                }),
            }
        );
    }
}
