//! `flotilla.fleet.v1.Fleet`: enrolment of agents. Converts the wire request
//! into validated domain types once, on the way in (a bad name or label is
//! `InvalidArgument`), calls [`Fleet`], and maps its errors through
//! [`ApiError`] so that REST and gRPC report a failure alike. Nothing is kept
//! in memory here; the `Sync` stream will join this service.

use std::collections::BTreeMap;

use flotilla_proto::fleet::v1 as pb;
use tonic::{Request, Response, Status};

use crate::domain::{Labels, NewNode, NodeGpu, NodeInventory, NodeName, NodeStatus};
use crate::error::ApiError;
use crate::fleet::Fleet;

pub(super) struct FleetService {
    pub(super) fleet: Fleet,
}

/// A field of a request that is missing or does not validate.
#[derive(Debug, thiserror::Error)]
enum ProtocolError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid field {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl From<ProtocolError> for Status {
    fn from(error: ProtocolError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

/// The enrolment a request asks for, validated.
struct EnrollArgs {
    bootstrap_token: String,
    node: NewNode,
    replace_existing: bool,
}

impl TryFrom<pb::EnrollRequest> for EnrollArgs {
    type Error = ProtocolError;

    fn try_from(request: pb::EnrollRequest) -> Result<Self, Self::Error> {
        if request.bootstrap_token.is_empty() {
            return Err(ProtocolError::Missing("bootstrap_token"));
        }
        if request.node_name.is_empty() {
            return Err(ProtocolError::Missing("node_name"));
        }
        let name: NodeName =
            request
                .node_name
                .parse()
                .map_err(|error: crate::domain::InvalidName| ProtocolError::Invalid {
                    field: "node_name",
                    message: error.to_string(),
                })?;
        let labels = Labels::new(request.labels.into_iter().collect::<BTreeMap<_, _>>()).map_err(
            |error| ProtocolError::Invalid {
                field: "labels",
                message: error.to_string(),
            },
        )?;
        let inventory = request
            .inventory
            .map(inventory_from_wire)
            .unwrap_or_default();
        Ok(Self {
            bootstrap_token: request.bootstrap_token,
            node: NewNode {
                name,
                labels,
                inventory,
                agent_version: request.agent_version,
            },
            replace_existing: request.replace_existing,
        })
    }
}

fn inventory_from_wire(inventory: pb::Inventory) -> NodeInventory {
    NodeInventory {
        cpu_model: inventory.cpu_model,
        cpu_cores: inventory.cpu_cores,
        memory_total_bytes: inventory.memory_total_bytes,
        disk_total_bytes: inventory.disk_total_bytes,
        os: inventory.os,
        gpus: inventory
            .gpus
            .into_iter()
            .map(|gpu| NodeGpu {
                index: gpu.index,
                name: gpu.name,
                memory_total_bytes: gpu.memory_total_bytes,
                driver_version: gpu.driver_version,
            })
            .collect(),
    }
}

fn status_to_wire(status: NodeStatus) -> pb::NodeStatus {
    match status {
        NodeStatus::Pending => pb::NodeStatus::Pending,
        NodeStatus::Active => pb::NodeStatus::Active,
        NodeStatus::Cordoned => pb::NodeStatus::Cordoned,
    }
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let args = EnrollArgs::try_from(request.into_inner())?;
        let enrolled = self
            .fleet
            .enroll(&args.bootstrap_token, args.node, args.replace_existing)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::EnrollResponse {
            node_name: enrolled.node.name.to_string(),
            credential: enrolled.credential,
            credential_expires_at_unix: enrolled.credential_expires_at.unix_timestamp(),
            status: status_to_wire(enrolled.node.status).into(),
            refresh_secret: String::new(),
        }))
    }

    async fn renew_credential(
        &self,
        _request: Request<pb::RenewCredentialRequest>,
    ) -> Result<Response<pb::RenewCredentialResponse>, Status> {
        Err(Status::unimplemented("credential renewal is being built"))
    }

    type SyncStream = futures::stream::BoxStream<'static, Result<pb::ControllerMessage, Status>>;

    async fn sync(
        &self,
        _request: Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        Err(Status::unimplemented("the sync stream is being built"))
    }
}
