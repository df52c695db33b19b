//! Where an inference request goes, decided in one place for every surface
//! (issue 17, item 6): here, a peer, the escalation policy's upstream
//! (issue 20), or nowhere with the reason. The OpenAI, Ollama and gRPC
//! modules parse their wire format into an [`InferenceRequest`], call
//! [`run`] and encode what comes back; none of them decides routing.
//!
//! The order, for a generation:
//! 1. A request the policy escalates on its face (a trigger model name such
//!    as `auto`, the escalate header, a feature kept off the local model)
//!    goes upstream. If the upstream fails, the local model answers and the
//!    response says so (`x-flotilla-escalation: failed`).
//! 2. Where the policy has a self-check, the local model is asked first
//!    whether it can answer; below the threshold, as 1.
//! 3. A model this node serves is run here; one it does not goes to the
//!    peers serving it ([`Dispatched::Forward`]), which the surface relays
//!    over its own protocol (`forward`).
//! 4. When the local model cannot take it, a full queue goes first to a
//!    peer with room, then upstream where the policy says `on_overload`,
//!    else it is refused (429); a prompt over the context or a failure
//!    before the first token goes upstream where the policy says so.
//!
//! A request that arrived from a peer is not forwarded again (hops), but
//! may escalate: the node that answers applies its own policy.

use std::sync::Arc;

use super::ask_local;
use super::escalate::{self, Escalation, Reason};
use super::generation::Generation;
use super::models::ServedModel;
use super::request::InferenceRequest;
use super::{ServeError, Serving};
use crate::reconcile::policy::AssignedPolicy;
use crate::routing::{Peer, Surface, may_forward};

/// How a request arrived, besides its body.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    /// Nodes it has passed through (`x-flotilla-hops`).
    pub hops: u32,
    /// The client asked for escalation (`x-flotilla-escalate: true`).
    pub escalate: bool,
    pub surface: Surface,
}

/// Why a request this node does not answer goes to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forwarding {
    /// This node does not serve the model: to any peer that does.
    NotServedHere,
    /// This node's queue is full: to a peer that had room at its latest
    /// heartbeat. A peer that is full as well is skipped, and when none
    /// takes the request the client gets this node's own refusal (429 /
    /// RESOURCE_EXHAUSTED with its retry advice), not a gateway error.
    Overflow,
}

/// A request to relay to peers, best first.
#[derive(Debug)]
pub(super) struct Forward {
    pub model: String,
    pub peers: Vec<Peer>,
    pub why: Forwarding,
    /// This node's own answer, for when no peer takes the request.
    pub local: ServeError,
}

/// What became of a generation request.
#[derive(Debug)]
pub(super) enum Dispatched {
    /// Answered here or upstream: chunks for the surface to encode.
    Generated(Generation),
    /// For peers: the surface relays it over its own protocol.
    Forward(Forward),
    /// Not answered: the error to send.
    Refused(ServeError),
}

/// Routes and runs a generation request (see the module docs).
pub(super) async fn run(
    serving: &Serving,
    request: InferenceRequest,
    arrival: Arrival,
) -> Dispatched {
    // Before anything leaves the node: a malformed request is refused here,
    // not sent upstream.
    if let Err(error) = request.validate() {
        return Dispatched::Refused(error);
    }
    let policy = serving.policy.current();
    if let Some(escalation) = Escalation::on_request(policy.as_ref(), &request, arrival.escalate) {
        return escalate_else_local(serving, &escalation, request).await;
    }
    let local = match serving.slot.get(&request.model) {
        Ok(local) => local,
        Err(not_here) => return elsewhere(serving, &request.model, arrival, not_here),
    };
    if let Some(escalation) = self_check(serving, policy.as_ref(), &local, &request).await {
        return escalate_else_local(serving, &escalation, request).await;
    }
    let model = request.model.clone();
    // The request itself is needed after a local refusal only to send it
    // upstream: copied only where the policy may do that.
    let retained = Escalation::may_follow_local(policy.as_ref()).then(|| request.clone());
    let refused = match Generation::start(local, &serving.config, request).await {
        Ok(generation) => return Dispatched::Generated(generation),
        Err(refused) => refused,
    };
    let refused = match overflow(serving, &model, arrival, refused) {
        Ok(forward) => return Dispatched::Forward(forward),
        Err(refused) => refused,
    };
    let escalation = Escalation::after_local(policy.as_ref(), &refused);
    match (escalation, retained) {
        // The local answer failed already: the client hears the local
        // reason when the upstream fails too.
        (Some(escalation), Some(request)) => {
            match start_upstream(serving, &escalation, &request).await {
                Ok(generation) => Dispatched::Generated(generation),
                Err(upstream) => {
                    tracing::debug!(%upstream, "the upstream failed after the local model did");
                    Dispatched::Refused(refused)
                }
            }
        }
        _ => Dispatched::Refused(refused),
    }
}

/// The policy's self-check: escalates when the local model's confidence
/// that it can answer is below the policy's threshold. A check that fails
/// (a full queue, say) leaves the request to the usual path.
async fn self_check(
    serving: &Serving,
    policy: Option<&Arc<AssignedPolicy>>,
    local: &Arc<ServedModel>,
    request: &InferenceRequest,
) -> Option<Escalation> {
    let policy = escalate::allowing_egress(policy)?;
    let threshold = policy.spec.triggers.self_check_threshold_percent?;
    match ask_local::self_check(local.clone(), &serving.config, request).await {
        Ok(Some(confidence)) => {
            metrics::histogram!("flotilla_inference_self_check_confidence_percent")
                .record(f64::from(confidence));
            (confidence < threshold).then(|| Escalation {
                policy: policy.clone(),
                reason: Reason::SelfCheck,
            })
        }
        Ok(None) => None,
        Err(error) => {
            tracing::debug!(%error, "the self-check failed; the request takes the usual path");
            None
        }
    }
}

/// For a model not served here: the peers serving it, or `not_here`.
fn elsewhere(serving: &Serving, model: &str, arrival: Arrival, not_here: ServeError) -> Dispatched {
    if !matches!(not_here, ServeError::ModelNotFound { .. }) || !may_forward(arrival.hops) {
        return Dispatched::Refused(not_here);
    }
    let peers = serving.routes.candidates(model, arrival.surface);
    if peers.is_empty() {
        return Dispatched::Refused(not_here);
    }
    Dispatched::Forward(Forward {
        model: model.to_owned(),
        peers,
        why: Forwarding::NotServedHere,
        local: not_here,
    })
}

/// What a request for a model that is not generated from (embeddings, a
/// preload) does when `local` says it cannot be answered here: peers, or
/// `local` itself.
pub(super) fn forward_instead(
    serving: &Serving,
    model: &str,
    arrival: Arrival,
    local: ServeError,
) -> Result<Forward, ServeError> {
    match local {
        ServeError::ModelNotFound { .. } => match elsewhere(serving, model, arrival, local) {
            Dispatched::Forward(forward) => Ok(forward),
            Dispatched::Refused(error) => Err(error),
            Dispatched::Generated(_) => Err(ServeError::Internal(
                "routing produced a generation for a forward".to_owned(),
            )),
        },
        ServeError::Overloaded { .. } => overflow(serving, model, arrival, local),
        other => Err(other),
    }
}

/// A request the full local queue refused (`local`), for the peers serving
/// the model that had room at their latest heartbeat; `local` back when
/// none had or the request may not be forwarded.
fn overflow(
    serving: &Serving,
    model: &str,
    arrival: Arrival,
    local: ServeError,
) -> Result<Forward, ServeError> {
    if !matches!(local, ServeError::Overloaded { .. }) || !may_forward(arrival.hops) {
        return Err(local);
    }
    let peers: Vec<Peer> = serving
        .routes
        .candidates(model, arrival.surface)
        .into_iter()
        .filter(Peer::has_room)
        .collect();
    if peers.is_empty() {
        return Err(local);
    }
    Ok(Forward {
        model: model.to_owned(),
        peers,
        why: Forwarding::Overflow,
        local,
    })
}

/// Escalates a request the policy sends upstream on its face; if the
/// upstream fails, the model served here answers, marked as such.
async fn escalate_else_local(
    serving: &Serving,
    escalation: &Escalation,
    request: InferenceRequest,
) -> Dispatched {
    let upstream_error = match start_upstream(serving, escalation, &request).await {
        Ok(generation) => return Dispatched::Generated(generation),
        Err(error) => error,
    };
    // The client may have asked for a trigger name (`auto`) rather than the
    // local model's: the fallback is whatever this node serves.
    let Some(local) = local_fallback(serving, &request) else {
        return Dispatched::Refused(upstream_error);
    };
    tracing::warn!(reason = escalation.reason.as_str(), error = %upstream_error,
        "escalation failed; answering with the local model");
    match Generation::start(local, &serving.config, request).await {
        Ok(mut generation) => {
            generation.escalation_failed = Some(upstream_error.to_string());
            Dispatched::Generated(generation)
        }
        Err(local_error) => Dispatched::Refused(local_error),
    }
}

/// The model to answer with when escalation failed.
fn local_fallback(serving: &Serving, request: &InferenceRequest) -> Option<Arc<ServedModel>> {
    serving
        .slot
        .get(&request.model)
        .ok()
        .or_else(|| serving.slot.current())
}

async fn start_upstream(
    serving: &Serving,
    escalation: &Escalation,
    request: &InferenceRequest,
) -> Result<Generation, ServeError> {
    escalate::start(
        &serving.upstream_client,
        &serving.config,
        serving.slot.current(),
        escalation,
        request,
    )
    .await
}
