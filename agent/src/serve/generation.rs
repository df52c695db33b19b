//! One running generation, shared by every API surface: admission into the
//! model's queue, submission to the engine's scheduler, and a bridge thread
//! that carries the engine's blocking event channel into an async one.
//!
//! The bridge is also where the per-request rules live: it cancels the
//! generation when the client goes away (the async receiver is dropped) or
//! when the per-request timeout passes, and it records the metrics (queue
//! depth, tokens, time to first token).

use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use flotilla_engine::tools::{ToolCall, parse_tool_calls};
use flotilla_engine::{
    EngineError, GenerationEvent, GenerationRequest, RequestHandle, TokenId, TokenLogprobs,
};
use futures::Stream;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::ServeConfig;
use super::error::ServeError;
use super::metrics;
use super::models::{Admission, ModelInfo, ServedModel};
use super::request::InferenceRequest;

/// How often the bridge looks for a departed client while the engine is
/// silent (queued, or prefilling a long prompt).
const DISCONNECT_POLL: Duration = Duration::from_millis(100);

/// Chunks buffered between the bridge and a slow client.
const CHANNEL_CAPACITY: usize = 64;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn.
    Stop,
    /// A stop sequence appeared (it is not part of the text).
    StopSequence,
    /// `max_tokens` or the context window was reached.
    Length,
    Cancelled,
}

impl FinishReason {
    /// The reason as OpenAI and Ollama name it (`stop` or `length`); a
    /// cancelled generation has no client left to tell otherwise.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopSequence | FinishReason::Cancelled => "stop",
            FinishReason::Length => "length",
        }
    }
}

impl From<flotilla_engine::FinishReason> for FinishReason {
    fn from(reason: flotilla_engine::FinishReason) -> Self {
        match reason {
            flotilla_engine::FinishReason::EndOfSequence => FinishReason::Stop,
            flotilla_engine::FinishReason::StopSequence => FinishReason::StopSequence,
            flotilla_engine::FinishReason::Length => FinishReason::Length,
            flotilla_engine::FinishReason::Cancelled => FinishReason::Cancelled,
        }
    }
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From admission (queue wait included) to the first generated token.
    pub time_to_first_token: Duration,
    pub total_time: Duration,
}

/// A piece of a generation's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// Text that became final (never empty), with the log probabilities of the tokens
    /// that made it when the request asked for them.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// The last chunk.
    Finished(Finished),
}

/// One generated token's log probability (natural log) and its likeliest alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: Alternative,
    pub top: Vec<Alternative>,
}

/// A token as the logprob APIs show it: its text (invalid UTF-8 of a partial
/// character lossily), its bytes, and its log probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Alternative {
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

impl TokenLogprob {
    fn new(engine: &flotilla_engine::Engine, token: TokenId, logprobs: TokenLogprobs) -> Self {
        let alternative = |token: TokenId, logprob: f32| {
            let bytes = engine.tokenizer().token_bytes(token, true);
            Alternative {
                text: String::from_utf8_lossy(&bytes).into_owned(),
                bytes,
                logprob,
            }
        };
        TokenLogprob {
            token: alternative(token, logprobs.logprob),
            top: logprobs
                .top
                .into_iter()
                .map(|(token, logprob)| alternative(token, logprob))
                .collect(),
        }
    }
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finished: Finished,
    /// Per token, when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

impl Completion {
    /// The answer's text and the tool calls in it; calls are parsed out only when the
    /// request offered tools (an answer to one that did not is all text).
    pub fn text_and_calls(&self, offered_tools: bool) -> (String, Vec<ToolCall>) {
        if offered_tools {
            parse_tool_calls(&self.text)
        } else {
            (self.text.clone(), Vec::new())
        }
    }
}

/// Who answered a generation.
#[derive(Debug, Clone)]
pub enum AnsweredBy {
    /// The model served here.
    Local(ModelInfo),
    /// The escalation policy's upstream (issue 20).
    Upstream {
        /// The upstream's model.
        model: String,
        /// Why the request escalated (`model_name`, `overload`, …).
        reason: &'static str,
    },
}

impl AnsweredBy {
    /// The registry version that answered; empty for an upstream.
    pub fn version(&self) -> &str {
        match self {
            AnsweredBy::Local(model) => &model.version,
            AnsweredBy::Upstream { .. } => "",
        }
    }
}

/// A generation that started, here or upstream: its first chunk (or error)
/// is already known, so a surface can still choose its status code.
#[derive(Debug)]
pub struct Generation {
    pub answered_by: AnsweredBy,
    /// Set when the request was to escalate and the upstream failed, so it
    /// was answered here instead: why (said in a response header).
    pub escalation_failed: Option<String>,
    first: Option<Result<Chunk, ServeError>>,
    events: mpsc::Receiver<Result<Chunk, ServeError>>,
}

impl Generation {
    /// Admits `request` (validated by `dispatch`) into `served`'s queue and
    /// waits for its first output. Errors before any output (a full queue,
    /// a prompt too long, a template that cannot render it) come back here. Which model serves it was
    /// decided before (`dispatch`).
    ///
    /// The `inference` span lasts until the engine is done with the request
    /// (it travels with the bridge), so that it can carry the token counts
    /// and the time to first token (OTel's GenAI conventions where they
    /// have a name, `flotilla.*` where they have none).
    pub async fn start(
        served: Arc<ServedModel>,
        config: &ServeConfig,
        request: InferenceRequest,
    ) -> Result<Generation, ServeError> {
        let span = tracing::info_span!(
            "inference",
            gen_ai.operation.name = "chat",
            gen_ai.request.model = %request.model,
            gen_ai.response.model = tracing::field::Empty,
            flotilla.model.version = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            flotilla.time_to_first_token_ms = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let started = Self::start_in(served, config, request, span.clone())
            .instrument(span.clone())
            .await;
        if let Err(error) = &started {
            record_error(&span, error);
        }
        started
    }

    async fn start_in(
        served: Arc<ServedModel>,
        config: &ServeConfig,
        request: InferenceRequest,
        span: tracing::Span,
    ) -> Result<Generation, ServeError> {
        let (handle, admission) = Self::submit(&served, config, request).inspect_err(|error| {
            // Failures after this point are counted by the bridge.
            metrics::request_finished(&served.info().name, error.code());
        })?;
        let model = served.info().clone();
        span.record("gen_ai.response.model", model.name.as_str());
        span.record("flotilla.model.version", model.version.as_str());
        metrics::queue_depth(&model.name, served.in_flight());
        let (sender, mut events) = mpsc::channel(CHANNEL_CAPACITY);
        let bridge = Bridge {
            served,
            handle,
            sender,
            deadline: Instant::now() + config.request_timeout,
            timeout: config.request_timeout,
            started: Instant::now(),
            admission: Some(admission),
            span,
        };
        tokio::task::spawn_blocking(move || bridge.run());
        let first = events.recv().await.unwrap_or_else(|| {
            Err(ServeError::Internal(
                "the generation ended without output".to_owned(),
            ))
        })?;
        Ok(Generation {
            answered_by: AnsweredBy::Local(model),
            escalation_failed: None,
            first: Some(Ok(first)),
            events,
        })
    }

    /// The response headers (HTTP) or metadata (gRPC) saying who answered:
    /// the local model's version and artifact digest, or that the policy's
    /// upstream did (`x-flotilla-served-by: upstream`, its model and the
    /// reason), and whether an escalation failed and the answer is local.
    pub fn answer_headers(&self) -> Vec<(&'static str, String)> {
        use super::headers::{
            ESCALATION_ERROR_HEADER, ESCALATION_HEADER, ESCALATION_REASON_HEADER, SERVED_BY_HEADER,
            SERVED_BY_UPSTREAM, UPSTREAM_MODEL_HEADER,
        };
        let mut headers = match &self.answered_by {
            AnsweredBy::Local(model) => super::headers::served_model(model),
            AnsweredBy::Upstream { model, reason } => vec![
                (SERVED_BY_HEADER, SERVED_BY_UPSTREAM.to_owned()),
                (UPSTREAM_MODEL_HEADER, header_safe(model)),
                (ESCALATION_REASON_HEADER, (*reason).to_owned()),
            ],
        };
        if let Some(why) = &self.escalation_failed {
            headers.push((ESCALATION_HEADER, "failed".to_owned()));
            headers.push((ESCALATION_ERROR_HEADER, header_safe(why)));
        }
        headers
    }

    /// A generation produced elsewhere (the escalation upstream) whose first
    /// chunk has arrived.
    pub(super) fn relayed(
        answered_by: AnsweredBy,
        first: Chunk,
        events: mpsc::Receiver<Result<Chunk, ServeError>>,
    ) -> Generation {
        Generation {
            answered_by,
            escalation_failed: None,
            first: Some(Ok(first)),
            events,
        }
    }

    /// Takes a place in the queue and hands the request to the engine. A
    /// client's request was validated by `dispatch` before it was routed
    /// (it may have gone upstream instead); the agent's own questions
    /// (`ask_local`) are built valid.
    fn submit(
        served: &ServedModel,
        config: &ServeConfig,
        request: InferenceRequest,
    ) -> Result<(RequestHandle, Admission), ServeError> {
        let grammar = request.grammar();
        let tools = request.tools.map(|tools| tools.specs);
        let mut engine_request = GenerationRequest::new(served.prompt(request.input, tools)?);
        engine_request.grammar = grammar;
        engine_request.logprobs = request.logprobs;
        engine_request.sampling = request.params.sampling();
        engine_request.max_tokens = request
            .params
            .max_tokens
            .map_or(config.default_max_tokens, |max| max as usize);
        engine_request.stop = request.params.stop;
        let admission = served.admit(config.retry_after)?;
        let handle = match served.scheduler()?.submit(engine_request) {
            Ok(handle) => handle,
            Err(EngineError::QueueFull { .. }) => {
                return Err(ServeError::Overloaded {
                    model: served.info().name.clone(),
                    in_flight: served.in_flight(),
                    retry_after: config.retry_after,
                });
            }
            Err(error) => return Err(ServeError::from_engine(error)),
        };
        Ok((handle, admission))
    }

    /// The next chunk; `None` after the `Finished` chunk or an error.
    pub async fn next(&mut self) -> Option<Result<Chunk, ServeError>> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        self.events.recv().await
    }

    /// Collects the whole answer.
    pub async fn complete(mut self) -> Result<Completion, ServeError> {
        let mut text = String::new();
        let mut all_logprobs = Vec::new();
        while let Some(chunk) = self.next().await {
            match chunk? {
                Chunk::Text {
                    text: piece,
                    logprobs,
                } => {
                    text.push_str(&piece);
                    all_logprobs.extend(logprobs);
                }
                Chunk::Finished(finished) => {
                    return Ok(Completion {
                        text,
                        finished,
                        logprobs: all_logprobs,
                    });
                }
            }
        }
        Err(ServeError::Internal(
            "the generation ended without a result".to_owned(),
        ))
    }

    /// The remaining chunks as a stream; dropping it cancels the generation.
    pub fn into_stream(self) -> impl Stream<Item = Result<Chunk, ServeError>> + Send + 'static {
        futures::stream::unfold(self, |mut generation| async move {
            generation.next().await.map(|chunk| (chunk, generation))
        })
    }
}

/// `text` as a header value: printable ASCII, at most 200 characters.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

/// Carries one request's engine events to its async receiver.
struct Bridge {
    served: Arc<ServedModel>,
    handle: RequestHandle,
    sender: mpsc::Sender<Result<Chunk, ServeError>>,
    deadline: Instant,
    timeout: Duration,
    started: Instant,
    /// Released as soon as the engine is done with the request.
    admission: Option<Admission>,
    /// The request's `inference` span, closed when the bridge is done.
    span: tracing::Span,
}

/// Marks `span` failed with the error's code (OTel's `error.type`).
fn record_error(span: &tracing::Span, error: &ServeError) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error.code());
}

impl Bridge {
    fn run(mut self) {
        let model = self.served.info().name.clone();
        let outcome = self.forward(&model);
        // The request left the engine: free its place before telling anyone.
        self.admission.take();
        metrics::queue_depth(&model, self.served.in_flight());
        let code = match &outcome {
            Ok(Some(_)) => "ok",
            Ok(None) => "cancelled",
            Err(error) => error.code(),
        };
        metrics::request_finished(&model, code);
        match &outcome {
            Ok(Some(finished)) => {
                let span = &self.span;
                span.record("gen_ai.usage.input_tokens", finished.prompt_tokens);
                span.record("gen_ai.usage.output_tokens", finished.completion_tokens);
                span.record(
                    "gen_ai.response.finish_reasons",
                    finished.reason.as_openai(),
                );
                span.record(
                    "flotilla.time_to_first_token_ms",
                    finished.time_to_first_token.as_secs_f64() * 1000.0,
                );
            }
            Ok(None) => {
                self.span
                    .record("gen_ai.response.finish_reasons", "cancelled");
            }
            Err(error) => record_error(&self.span, error),
        }
        match outcome {
            Ok(Some(finished)) => {
                let _ = self.sender.blocking_send(Ok(Chunk::Finished(finished)));
            }
            Ok(None) => {}
            Err(error) => {
                let _ = self.sender.blocking_send(Err(error));
            }
        }
    }

    /// Forwards text until the end; `Ok(None)` when the client went away.
    fn forward(&mut self, model: &str) -> Result<Option<Finished>, ServeError> {
        let mut first_token_at: Option<Instant> = None;
        let mut previous_token_at: Option<Instant> = None;
        // Log probabilities of tokens whose text is not final yet.
        let mut pending_logprobs: Vec<TokenLogprob> = Vec::new();
        loop {
            if self.sender.is_closed() {
                self.handle.cancel.cancel();
                return Ok(None);
            }
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                self.handle.cancel.cancel();
                return Err(ServeError::Timeout(self.timeout));
            }
            match self
                .handle
                .events
                .recv_timeout(remaining.min(DISCONNECT_POLL))
            {
                Ok(GenerationEvent::Token(token)) => {
                    if first_token_at.is_none() {
                        let now = Instant::now();
                        first_token_at = Some(now);
                        metrics::time_to_first_token(model, now - self.started);
                    }
                    let now = Instant::now();
                    metrics::token_generated(
                        model,
                        previous_token_at.replace(now).map(|at| now - at),
                    );
                    let engine = self.served.engine();
                    if let Some(logprobs) = token.logprobs
                        && !engine.tokenizer().is_end_of_generation(token.token)
                    {
                        pending_logprobs.push(TokenLogprob::new(engine, token.token, logprobs));
                    }
                    if !token.text.is_empty()
                        && self
                            .sender
                            .blocking_send(Ok(Chunk::Text {
                                text: token.text,
                                logprobs: std::mem::take(&mut pending_logprobs),
                            }))
                            .is_err()
                    {
                        self.handle.cancel.cancel();
                        return Ok(None);
                    }
                }
                Ok(GenerationEvent::Finished(output)) => {
                    metrics::prompt_tokens(model, output.prompt_tokens);
                    return Ok(Some(Finished {
                        reason: output.finish_reason.into(),
                        prompt_tokens: output.prompt_tokens,
                        completion_tokens: output.tokens.len(),
                        time_to_first_token: first_token_at
                            .map_or(output.time_to_first_token, |at| at - self.started),
                        total_time: self.started.elapsed(),
                    }));
                }
                Ok(GenerationEvent::Failed(error)) => return Err(ServeError::from_engine(error)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ServeError::Unavailable(
                        "the model was unloaded during the request; retry".to_owned(),
                    ));
                }
            }
        }
    }
}
