//! The controller's gRPC edge (tonic): the standard `grpc.health.v1` service,
//! server reflection (so `grpcurl` works without .proto files), and
//! `flotilla.controller.v1.ControllerInfo` and `flotilla.fleet.v1.Fleet`
//! (enrolment, credential renewal and the agents' sync streams). Conversion between prost and
//! domain types happens in this module only.

mod fleet;

use flotilla_proto::controller::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::fleet::Fleet;
use crate::store::StoreBackend;
use fleet::FleetService;
use flotilla_proto::fleet::v1::fleet_server::FleetServer;

/// Wire protocol revisions this controller speaks.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];

struct ControllerInfoService {
    backend: StoreBackend,
}

#[tonic::async_trait]
impl pb::controller_info_server::ControllerInfo for ControllerInfoService {
    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        Ok(Response::new(pb::GetInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_versions: PROTOCOL_VERSIONS.to_vec(),
            store_backend: self.backend.as_str().to_owned(),
        }))
    }
}

/// Serves gRPC on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Option<flotilla_tls::ServerTls>,
    backend: StoreBackend,
    fleet: Fleet,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::controller_info_server::ControllerInfoServer<ControllerInfoService>>()
        .await;
    health_reporter
        .set_serving::<FleetServer<FleetService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Where the fleet has TLS, peers verify each other's node
    // certificates, so a node without a valid one is no peer.
    fleet.hub().set_require_certificates(tls.is_some());
    let router = tonic::transport::Server::builder()
        .layer(crate::telemetry::grpc_layer())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(pb::controller_info_server::ControllerInfoServer::new(
            ControllerInfoService { backend },
        ))
        .add_service(FleetServer::new(FleetService {
            fleet,
            shutdown: shutdown.clone(),
            require_https_peers: tls.is_some(),
        }));
    flotilla_tls::serve_grpc(router, listener, tls, shutdown).await?;
    Ok(())
}
