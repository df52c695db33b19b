//! The gRPC edge: `flotilla.inference.v1.Inference`, the standard
//! `grpc.health.v1` service and server reflection (so `grpcurl` works without
//! the .proto files; reflection v1 and v1alpha). Wire messages are
//! converted to domain requests here, once, on the way in; `dispatch`
//! decides where each goes, and a call for a peer is relayed
//! ([`forward::grpc`]).

use std::pin::Pin;

use flotilla_proto::inference::v1 as pb;
use futures::{Stream, StreamExt};
use pb::inference_server::{Inference, InferenceServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{PRINCIPAL_HEADER, admit};
use super::dispatch::{self, Arrival, Dispatched};
use super::embedding::{self, EmbeddingInput, EmbeddingRequest, Overflow};
use super::escalate;
use super::forward::{self, GrpcAnswer, GrpcCall};
use super::headers::{MODEL_DIGEST_HEADER, MODEL_VERSION_HEADER};
use super::request::{OutputFormat, Tools};
use super::scrub;
use super::{
    Chunk, FinishReason, Finished, Generation, InferenceRequest, Input, Message, Params, Reached,
    Role, ServeError, Serving,
};
use crate::routing::Surface;
use flotilla_engine::tools::{ToolCall, ToolChoice, ToolSpec};

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

struct InferenceService {
    serving: Serving,
}

fn params(options: Option<pb::SamplingOptions>) -> Params {
    let options = options.unwrap_or_default();
    Params {
        max_tokens: options.max_tokens,
        temperature: options.temperature,
        top_p: options.top_p,
        top_k: options.top_k,
        min_p: None,
        repetition_penalty: options.repetition_penalty,
        presence_penalty: options.presence_penalty,
        frequency_penalty: options.frequency_penalty,
        seed: options.seed,
        stop: options.stop,
    }
}

impl TryFrom<pb::GenerateRequest> for InferenceRequest {
    type Error = ServeError;

    fn try_from(wire: pb::GenerateRequest) -> Result<Self, ServeError> {
        if wire.prompt.is_empty() {
            return Err(ServeError::InvalidRequest(
                "prompt must not be empty".to_owned(),
            ));
        }
        let mut request =
            InferenceRequest::new(wire.model, Input::Text(wire.prompt), params(wire.options));
        request.format = output_format(wire.format)?;
        Ok(request)
    }
}

impl TryFrom<pb::ChatRequest> for InferenceRequest {
    type Error = ServeError;

    fn try_from(wire: pb::ChatRequest) -> Result<Self, ServeError> {
        if wire.messages.is_empty() {
            return Err(ServeError::InvalidRequest(
                "messages must not be empty".to_owned(),
            ));
        }
        let messages = wire
            .messages
            .into_iter()
            .map(|message| {
                let mut parsed = Message::new(Role::parse(&message.role)?, message.content);
                parsed.tool_calls = message
                    .tool_calls
                    .into_iter()
                    .map(|call| {
                        Ok(ToolCall {
                            arguments: json_text(
                                &call.arguments_json,
                                "tool_calls.arguments_json",
                            )?
                            .unwrap_or_else(|| serde_json::json!({})),
                            name: call.name,
                        })
                    })
                    .collect::<Result<_, ServeError>>()?;
                Ok(parsed)
            })
            .collect::<Result<Vec<_>, ServeError>>()?;
        let specs = wire
            .tools
            .into_iter()
            .map(|tool| {
                Ok(ToolSpec {
                    parameters: json_text(&tool.parameters_json, "tools.parameters_json")?
                        .unwrap_or_else(ToolSpec::no_parameters),
                    description: (!tool.description.is_empty()).then_some(tool.description),
                    name: tool.name,
                })
            })
            .collect::<Result<Vec<_>, ServeError>>()?;
        let choice = match wire.tool_choice.as_str() {
            "none" => None,
            "" | "auto" => (!specs.is_empty()).then_some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Required),
            name => Some(ToolChoice::Function(name.to_owned())),
        };
        let mut request =
            InferenceRequest::new(wire.model, Input::Chat(messages), params(wire.options));
        request.format = output_format(wire.format)?;
        request.tools = choice.map(|choice| Tools {
            specs,
            choice,
            parallel: !wire.single_tool_call,
        });
        Ok(request)
    }
}

/// JSON text from a wire field; `None` when empty.
fn json_text(text: &str, field: &str) -> Result<Option<serde_json::Value>, ServeError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|error| ServeError::InvalidRequest(format!("{field} is not JSON: {error}")))
}

fn output_format(format: Option<pb::OutputFormat>) -> Result<OutputFormat, ServeError> {
    Ok(match format.and_then(|format| format.kind) {
        None | Some(pb::output_format::Kind::JsonObject(false)) => OutputFormat::Text,
        Some(pb::output_format::Kind::JsonObject(true)) => OutputFormat::JsonObject,
        Some(pb::output_format::Kind::JsonSchema(schema)) => {
            match json_text(&schema, "format.json_schema")? {
                Some(schema @ serde_json::Value::Object(_)) => OutputFormat::JsonSchema(schema),
                _ => {
                    return Err(ServeError::InvalidRequest(
                        "format.json_schema must be a JSON Schema object".to_owned(),
                    ));
                }
            }
        }
    })
}

impl TryFrom<pb::EmbedRequest> for EmbeddingRequest {
    type Error = ServeError;

    fn try_from(wire: pb::EmbedRequest) -> Result<Self, ServeError> {
        if wire.inputs.is_empty() {
            return Err(ServeError::InvalidRequest(
                "inputs must not be empty".to_owned(),
            ));
        }
        if wire.inputs.iter().any(String::is_empty) {
            return Err(ServeError::InvalidRequest(
                "inputs must not contain an empty string".to_owned(),
            ));
        }
        Ok(EmbeddingRequest {
            model: wire.model,
            inputs: wire.inputs.into_iter().map(EmbeddingInput::Text).collect(),
            overflow: if wire.truncate {
                Overflow::Truncate
            } else {
                Overflow::Refuse
            },
            dimensions: None,
        })
    }
}

fn finish_reason(reason: FinishReason) -> pb::FinishReason {
    match reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::StopSequence => pb::FinishReason::StopSequence,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
    }
}

fn saturating_u32(value: u128) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn usage(finished: &Finished) -> pb::Usage {
    pb::Usage {
        prompt_tokens: saturating_u32(finished.prompt_tokens as u128),
        completion_tokens: saturating_u32(finished.completion_tokens as u128),
        total_tokens: saturating_u32((finished.prompt_tokens + finished.completion_tokens) as u128),
        time_to_first_token_ms: saturating_u32(finished.time_to_first_token.as_millis()),
        total_time_ms: saturating_u32(finished.total_time.as_millis()),
    }
}

/// A message of text that became final.
fn text_message(model: &str, text: String) -> pb::GenerateResponse {
    pb::GenerateResponse {
        model: model.to_owned(),
        text,
        ..pb::GenerateResponse::default()
    }
}

/// The last message: done, why, the usage, and the version once (which one
/// answered).
fn final_message(model: &str, finished: &Finished, version: &str) -> pb::GenerateResponse {
    pb::GenerateResponse {
        model: model.to_owned(),
        done: true,
        finish_reason: finish_reason(finished.reason).into(),
        usage: Some(usage(finished)),
        version: version.to_owned(),
        ..pb::GenerateResponse::default()
    }
}

impl InferenceService {
    /// Answers where `dispatch` says: here or upstream, or relays `call` to
    /// a peer.
    async fn answer(
        &self,
        request: InferenceRequest,
        metadata: &tonic::metadata::MetadataMap,
        hops: u32,
        call: GrpcCall,
    ) -> Result<Response<ResponseStream>, Status> {
        let model = request.model.clone();
        let calls_tools = request.tools.is_some();
        let arrival = Arrival {
            hops,
            escalate: escalate::header_asks(
                metadata
                    .get(escalate::ESCALATE_HEADER)
                    .map(tonic::metadata::MetadataValue::as_encoded_bytes),
            )?,
            surface: Surface::Grpc,
        };
        let generation = match dispatch::run(&self.serving, request, arrival).await {
            Dispatched::Generated(generation) => generation,
            Dispatched::Forward(forward) => {
                let relayed =
                    forward::grpc(&self.serving.routes, forward, metadata, hops, call).await?;
                let (answered, relayed, _) = relayed.into_parts();
                let GrpcAnswer::Stream(stream) = relayed else {
                    return Err(ServeError::Internal(
                        "a peer answered a generation with an embedding".to_owned(),
                    )
                    .into());
                };
                let stream: ResponseStream = Box::pin(stream);
                return Ok(Response::from_parts(answered, stream, Default::default()));
            }
            Dispatched::Refused(error) => return Err(error.into()),
        };
        // As the HTTP API's headers: who answered (a forwarding peer checks
        // the digest).
        let headers = generation.answer_headers();
        let stream = if calls_tools {
            Self::whole_with_calls(generation, model).await?
        } else {
            Self::stream(generation, model)
        };
        let mut response = Response::new(stream);
        let answered = response.metadata_mut();
        for (name, value) in headers {
            if let Ok(value) = value.parse() {
                answered.insert(name, value);
            }
        }
        Ok(response)
    }

    /// An answer that may call tools, whole: its text in one message, then
    /// the final one with the calls (a call is known only once complete).
    async fn whole_with_calls(
        generation: Generation,
        requested: String,
    ) -> Result<ResponseStream, Status> {
        let version = generation.answered_by.version().to_owned();
        let completion = generation.complete().await?;
        let (text, calls) = completion.text_and_calls(true);
        let mut last = final_message(&requested, &completion.finished, &version);
        if !calls.is_empty() {
            last.finish_reason = pb::FinishReason::ToolCalls.into();
            last.tool_calls = calls
                .into_iter()
                .map(|call| pb::ToolCall {
                    name: call.name,
                    arguments_json: call.arguments.to_string(),
                })
                .collect();
        }
        let messages = [text_message(&requested, text), last];
        Ok(Box::pin(futures::stream::iter(messages.map(Ok))))
    }

    /// The generation's messages, naming the model as the request did
    /// (`requested`: an alias, or a `name:tag`).
    fn stream(generation: Generation, requested: String) -> ResponseStream {
        let model = requested;
        let version = generation.answered_by.version().to_owned();
        let stream = generation.into_stream().map(move |item| match item {
            Ok(Chunk::Text { text, .. }) => Ok(text_message(&model, text)),
            Ok(Chunk::Finished(finished)) => Ok(final_message(&model, &finished, &version)),
            Err(error) => Err(error.to_grpc_status()),
        });
        Box::pin(stream)
    }
}

#[tonic::async_trait]
impl Inference for InferenceService {
    type GenerateStream = ResponseStream;
    type ChatStream = ResponseStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let hops = forward::grpc_hops(request.metadata())?;
        let metadata = request.metadata().clone();
        let wire = request.into_inner();
        let parsed = InferenceRequest::try_from(wire.clone())?;
        self.answer(parsed, &metadata, hops, GrpcCall::Generate(wire))
            .await
    }

    async fn chat(
        &self,
        request: Request<pb::ChatRequest>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let hops = forward::grpc_hops(request.metadata())?;
        let metadata = request.metadata().clone();
        let wire = request.into_inner();
        let parsed = InferenceRequest::try_from(wire.clone())?;
        self.answer(parsed, &metadata, hops, GrpcCall::Chat(wire))
            .await
    }

    /// Answered here, or re-called on a peer serving the model.
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let hops = forward::grpc_hops(request.metadata())?;
        let metadata = request.metadata().clone();
        let wire = request.into_inner();
        let request = EmbeddingRequest::try_from(wire.clone())?;
        let model = request.model.clone();
        let embeddings =
            match embedding::embed(&self.serving.slot, &self.serving.config, request).await {
                Ok(embeddings) => embeddings,
                Err(local) => {
                    let arrival = Arrival {
                        hops,
                        escalate: false,
                        surface: Surface::Grpc,
                    };
                    let forward = dispatch::forward_instead(&self.serving, &model, arrival, local)?;
                    let relayed = forward::grpc(
                        &self.serving.routes,
                        forward,
                        &metadata,
                        hops,
                        GrpcCall::Embed(wire),
                    )
                    .await?;
                    let (answered, relayed, extensions) = relayed.into_parts();
                    let GrpcAnswer::Embed(answer) = relayed else {
                        return Err(ServeError::Internal(
                            "a peer answered an embedding with a stream".to_owned(),
                        )
                        .into());
                    };
                    return Ok(Response::from_parts(answered, answer, extensions));
                }
            };
        let mut response = Response::new(pb::EmbedResponse {
            model,
            prompt_tokens: saturating_u32(embeddings.prompt_tokens as u128),
            version: embeddings.model.version.clone(),
            embeddings: embeddings
                .vectors
                .into_iter()
                .map(|mut values| {
                    flotilla_engine::normalize(&mut values);
                    pb::Embedding { values }
                })
                .collect(),
        });
        let answered = response.metadata_mut();
        if let Ok(value) = embeddings.model.version.parse() {
            answered.insert(MODEL_VERSION_HEADER, value);
        }
        if let Ok(value) = embeddings.model.digest.to_hex().parse() {
            answered.insert(MODEL_DIGEST_HEADER, value);
        }
        Ok(response)
    }

    /// The scrubber on its own, as `POST /v1/flotilla/scrub`.
    async fn scrub(
        &self,
        request: Request<pb::ScrubRequest>,
    ) -> Result<Response<pb::ScrubResponse>, Status> {
        let request = request.into_inner();
        let kinds = (!request.kinds.is_empty()).then_some(request.kinds.as_slice());
        let scrubbed = scrub::scrub_text(&self.serving, &request.text, kinds).await?;
        Ok(Response::new(pb::ScrubResponse {
            text: scrubbed.text,
            placeholders: scrubbed
                .placeholders
                .into_iter()
                .map(|info| pb::Placeholder {
                    placeholder: info.placeholder,
                    kind: info.kind.to_owned(),
                    original: info.original,
                })
                .collect(),
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .serving
            .catalogue()
            .into_iter()
            .map(|listed| match listed.reached {
                Reached::Local(info) => pb::Model {
                    name: listed.name,
                    aliases: listed.aliases,
                    version: listed.version,
                    quantization: info.quantization,
                    digest: info.digest.to_hex(),
                    size_bytes: info.size_bytes,
                    local: true,
                    context_length: saturating_u32(info.context_length as u128),
                    node: String::new(),
                },
                Reached::Peer(peer) => pb::Model {
                    name: listed.name,
                    aliases: listed.aliases,
                    version: listed.version,
                    quantization: peer.quantization,
                    digest: peer.digest,
                    size_bytes: peer.size_bytes,
                    local: false,
                    // Known only where the model is loaded.
                    context_length: 0,
                    node: peer.node,
                },
            })
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}

pub(super) async fn serve(
    listener: TcpListener,
    serving: Serving,
    tls: Option<flotilla_tls::ServerTls>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<InferenceServer<InferenceService>>()
        .await;
    // Both reflection versions (grpcurl speaks v1; older grpcurl and
    // Python's grpcio-reflection speak v1alpha), each describing exactly
    // what this process serves: the inference service, health and both
    // reflection services (a builder would list only its own).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(flotilla_proto::INFERENCE_FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let router = tonic::transport::Server::builder()
        .layer(crate::telemetry::grpc_layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InferenceServer::with_interceptor(
            InferenceService {
                serving: serving.clone(),
            },
            // As the HTTP API's `authorize`: a node's forwarded call by its
            // verified client certificate, anyone else by key or token; the
            // admitted principal replaces what the call said.
            move |mut request: Request<()>| {
                let from_node = request
                    .peer_certs()
                    .is_some_and(|certificates| !certificates.is_empty());
                let claimed = request
                    .metadata_mut()
                    .remove(PRINCIPAL_HEADER)
                    .map(|value| value.as_encoded_bytes().to_vec());
                let admitted = admit(
                    serving.config.auth.as_deref(),
                    request
                        .metadata()
                        .get("authorization")
                        .map(tonic::metadata::MetadataValue::as_encoded_bytes),
                    from_node,
                    claimed.as_deref(),
                );
                match admitted {
                    Ok(principal) => {
                        if let Ok(value) = principal.parse() {
                            request.metadata_mut().insert(PRINCIPAL_HEADER, value);
                        }
                        Ok(request)
                    }
                    Err(error) => {
                        if matches!(error, ServeError::Unauthenticated) {
                            metrics::counter!("flotilla_inference_unauthenticated_total")
                                .increment(1);
                        }
                        Err(error.into())
                    }
                }
            },
        ));
    flotilla_tls::serve_grpc(router, listener, tls, shutdown).await?;
    Ok(())
}
