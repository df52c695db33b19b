//! Fleet enrolment against a real controller on loopback, on both stores:
//! operators create bootstrap tokens over REST, agents enrol over gRPC with
//! a real tonic client, operators list and approve nodes over REST. Refused
//! enrolments (forged, expired, used-up tokens; taken names) change nothing.

use std::time::Duration;

use flotilla_api_types as dto;
use flotilla_controller::auth::Role;
use flotilla_controller::domain::BootstrapSecret;
use flotilla_controller::store::{self, NewBootstrapToken};
use flotilla_controller::testing::{TestController, TestStore, api_error, enroll_request};
use flotilla_proto::fleet::v1 as pb;
use flotilla_proto::fleet::v1::fleet_client::FleetClient;
use reqwest::StatusCode;
use tonic::Code;

flotilla_controller::on_both_stores!(
    token_enrol_list_show,
    refused_enrolments_change_nothing,
    approval_flow,
    node_endpoints_need_the_right_roles,
);

/// The controller, and the gRPC client agents enrol with.
struct Fleet {
    controller: TestController,
    grpc: FleetClient<tonic::transport::Channel>,
}

impl Fleet {
    async fn start(store: TestStore, require_approval: bool) -> anyhow::Result<Self> {
        let controller = TestController::builder(store)
            .require_node_approval(require_approval)
            .start()
            .await?;
        let grpc = controller.fleet_client().await?;
        Ok(Self { controller, grpc })
    }

    async fn bootstrap_token(&self, uses: u32) -> anyhow::Result<dto::BootstrapTokenInfo> {
        Ok(self
            .controller
            .client()
            .create_bootstrap_token(&dto::CreateBootstrapTokenRequest {
                ttl_seconds: Some(600),
                uses: Some(uses),
                ..Default::default()
            })
            .await?)
    }

    async fn enroll(
        &self,
        token: &str,
        name: &str,
        replace: bool,
    ) -> Result<pb::EnrollResponse, tonic::Status> {
        let request = pb::EnrollRequest {
            replace_existing: replace,
            ..enroll_request(token, name)
        };
        self.grpc
            .clone()
            .enroll(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn nodes(&self) -> anyhow::Result<dto::Page<dto::NodeInfo>> {
        Ok(self.controller.client().list_nodes(100, None).await?)
    }
}

async fn token_enrol_list_show(store: TestStore) -> anyhow::Result<()> {
    let fleet = Fleet::start(store, false).await?;
    let token = fleet.bootstrap_token(1).await?;
    assert!(token.token.starts_with(&format!("flt_{}_", token.id)));
    assert_eq!(token.uses, 1);

    let enrolled = fleet.enroll(&token.token, "edge-1", false).await?;
    assert_eq!(enrolled.node_name, "edge-1");
    assert_eq!(enrolled.status(), pb::NodeStatus::Active);
    let principal = fleet
        .controller
        .authenticator()?
        .verify(&enrolled.credential)?;
    assert_eq!(
        (principal.subject.as_str(), principal.role),
        ("edge-1", Role::Node)
    );
    assert_eq!(
        principal.expires_at.unix_timestamp(),
        enrolled.credential_expires_at_unix
    );
    // The node credential is not an operator's: it reads no REST endpoint.
    let response = fleet
        .controller
        .client_as(&enrolled.credential)?
        .list_nodes(100, None)
        .await;
    assert_eq!(api_error(response)?.0, StatusCode::FORBIDDEN);

    let nodes = fleet.nodes().await?;
    assert_eq!(nodes.items.len(), 1);
    let node = &nodes.items[0];
    assert_eq!(
        (node.name.as_str(), node.status.as_str()),
        ("edge-1", "active")
    );
    assert_eq!(node.labels.get("site").map(String::as_str), Some("berlin"));
    assert_eq!(node.inventory.gpus[0].name, "NVIDIA L4");
    assert_eq!(node.assignment, None);
    // The wire shape itself: no assignment is an explicit null.
    let raw: serde_json::Value = fleet
        .controller
        .raw()
        .get("/api/v1/nodes/edge-1")
        .bearer_auth(&fleet.controller.admin_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(raw["assignment"], serde_json::Value::Null);
    assert_eq!(raw["agent_version"], "0.1.0");
    let missing = fleet.controller.client().node("absent").await;
    assert_eq!(api_error(missing)?.0, StatusCode::NOT_FOUND);
    fleet.controller.stop().await
}

async fn refused_enrolments_change_nothing(store: TestStore) -> anyhow::Result<()> {
    let fleet = Fleet::start(store, false).await?;
    let token = fleet.bootstrap_token(1).await?;
    fleet.enroll(&token.token, "first", false).await?;

    let used_up = fleet
        .enroll(&token.token, "second", false)
        .await
        .expect_err("used up");
    assert_eq!(used_up.code(), Code::Unauthenticated);
    assert!(used_up.message().contains("used up"), "{used_up:?}");

    let forged = format!("flt_{}_{}", token.id, "0".repeat(64));
    let forged = fleet
        .enroll(&forged, "third", false)
        .await
        .expect_err("forged");
    assert_eq!(forged.code(), Code::Unauthenticated);
    assert!(forged.message().contains("unknown or forged"), "{forged:?}");
    let garbage = fleet
        .enroll("hello", "third", false)
        .await
        .expect_err("garbage");
    assert_eq!(garbage.code(), Code::Unauthenticated);

    // An expired token, written straight into the controller's database
    // with a lifetime of zero.
    let url = match fleet.controller.database_url() {
        Some(url) => url.to_owned(),
        None => format!(
            "sqlite://{}",
            fleet
                .controller
                .data_dir
                .path()
                .join("flotilla.db")
                .display()
        ),
    };
    let direct = store::connect(&url).await?;
    let expired = BootstrapSecret::generate();
    direct
        .create_bootstrap_token(&NewBootstrapToken {
            id: expired.id().to_owned(),
            secret_hash: expired.secret_hash(),
            ttl: Duration::ZERO,
            uses: 3,
            created_by: "test".to_owned(),
            node_pattern: None,
            may_replace: false,
        })
        .await?;
    let late = fleet
        .enroll(&expired.expose(), "late", false)
        .await
        .expect_err("expired");
    assert_eq!(late.code(), Code::Unauthenticated);
    assert!(late.message().contains("expired"), "{late:?}");

    // A taken name without replace, and bad input.
    let fresh = fleet.bootstrap_token(5).await?;
    let taken = fleet
        .enroll(&fresh.token, "first", false)
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert!(taken.message().contains("first"), "{taken:?}");
    let bad_name = fleet
        .enroll(&fresh.token, "Bad Name", false)
        .await
        .expect_err("bad");
    assert_eq!(bad_name.code(), Code::InvalidArgument);
    let reserved = fleet
        .enroll(&fresh.token, "tokens", false)
        .await
        .expect_err("reserved");
    assert_eq!(reserved.code(), Code::InvalidArgument);
    assert!(reserved.message().contains("reserved"), "{reserved:?}");

    let names: Vec<_> = fleet
        .nodes()
        .await?
        .items
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["first"]);
    // Replacing needs an operator's approval; refusals took no uses: the
    // fresh token still enrols five nodes, the first of them replacing
    // `first` explicitly once approved.
    let unapproved = fleet
        .enroll(&fresh.token, "first", true)
        .await
        .expect_err("unapproved replacement");
    assert_eq!(unapproved.code(), Code::PermissionDenied);
    fleet
        .controller
        .client()
        .approve_replace_node("first")
        .await?;
    fleet.enroll(&fresh.token, "first", true).await?;
    for index in 0..4 {
        fleet
            .enroll(&fresh.token, &format!("more-{index}"), false)
            .await?;
    }
    let sixth = fleet
        .enroll(&fresh.token, "sixth", false)
        .await
        .expect_err("used up");
    assert_eq!(sixth.code(), Code::Unauthenticated);
    fleet.controller.stop().await
}

async fn approval_flow(store: TestStore) -> anyhow::Result<()> {
    let fleet = Fleet::start(store, true).await?;
    let token = fleet.bootstrap_token(1).await?;
    let enrolled = fleet.enroll(&token.token, "edge-1", false).await?;
    assert_eq!(enrolled.status(), pb::NodeStatus::Pending);
    assert_eq!(fleet.nodes().await?.items[0].status, "pending");
    let approved = fleet.controller.client().approve_node("edge-1").await?;
    assert_eq!(approved.status, "active");
    assert_eq!(fleet.nodes().await?.items[0].status, "active");
    let missing = fleet.controller.client().approve_node("absent").await;
    assert_eq!(api_error(missing)?.0, StatusCode::NOT_FOUND);
    fleet.controller.stop().await
}

async fn node_endpoints_need_the_right_roles(store: TestStore) -> anyhow::Result<()> {
    let fleet = Fleet::start(store, false).await?;
    let admin = fleet.controller.client();
    let viewer_token = fleet.controller.mint_token("vera", "viewer").await?;
    let viewer = fleet.controller.client_as(&viewer_token)?;
    viewer.list_nodes(100, None).await?;
    let create = viewer
        .create_bootstrap_token(&dto::CreateBootstrapTokenRequest::default())
        .await;
    assert_eq!(api_error(create)?.0, StatusCode::FORBIDDEN);
    // Node credentials come only from enrolment.
    let node_role = admin
        .create_token(&dto::CreateTokenRequest {
            subject: "edge-9".to_owned(),
            role: "node".to_owned(),
            ttl_seconds: None,
        })
        .await;
    assert_eq!(api_error(node_role)?.0, StatusCode::BAD_REQUEST);
    let bad = admin
        .create_bootstrap_token(&dto::CreateBootstrapTokenRequest {
            ttl_seconds: Some(0),
            uses: Some(1),
            ..Default::default()
        })
        .await;
    assert_eq!(api_error(bad)?.0, StatusCode::BAD_REQUEST);
    let openapi: serde_json::Value = fleet
        .controller
        .raw()
        .get("/api/v1/openapi.json")
        .bearer_auth(&fleet.controller.admin_token)
        .send()
        .await?
        .json()
        .await?;
    assert!(openapi["paths"]["/api/v1/nodes/{name}/approve"].is_object());
    fleet.controller.stop().await
}
