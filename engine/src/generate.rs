//! The engine facade and the per-sequence decoding state machine shared by single-request
//! generation ([`Engine::generate`]) and the batching [`crate::Scheduler`].
//!
//! A sequence owns its KV cache, sampler, stop-sequence matcher and UTF-8 assembly; the
//! engine owns the model, tokenizer, chat template and the thread pool the kernels run on.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use flotilla_gguf::{GgufFile, GgufHeader};

use crate::EngineError;
use crate::chat::{ChatMessage, ChatTemplate};
use crate::constraint::{Constraints, Grammar, OutputConstraint};
use crate::model::{KvCache, LlamaModel, SequenceInput};
use crate::placement::{DeviceRequest, Placement};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{TokenId, Tokenizer, Utf8Stream};
use crate::tools::ToolSpec;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Worker threads for the kernels (default: all cores).
    pub threads: Option<usize>,
    /// Where the model runs (default: the CPU kernels).
    pub device: DeviceRequest,
}

/// A cooperative cancellation flag, checked before every token.
#[derive(Debug, Clone, Default)]
pub struct CancellationFlag(Arc<AtomicBool>);

impl CancellationFlag {
    pub fn new() -> CancellationFlag {
        CancellationFlag::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Raw text; special tokens written in it (like `<|im_start|>`) are parsed.
    Text(String),
    /// A conversation rendered with the model's chat template plus the assistant header.
    Chat(Vec<ChatMessage>),
    /// A conversation in which the model may call these tools (see [`crate::tools`]).
    ToolChat(Vec<ChatMessage>, Vec<ToolSpec>),
    /// Pre-tokenized input.
    Tokens(Vec<TokenId>),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Generation ends before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// A grammar the output must match (structured output, tool calls); generation ends
    /// when the output is complete.
    pub grammar: Option<Grammar>,
    /// Report each token's log probability and this many likeliest alternatives.
    pub logprobs: Option<usize>,
    pub cancel: CancellationFlag,
}

impl GenerationRequest {
    pub fn new(prompt: Prompt) -> GenerationRequest {
        GenerationRequest {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
            grammar: None,
            logprobs: None,
            cancel: CancellationFlag::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence or end-of-turn token.
    EndOfSequence,
    /// A stop sequence appeared (it is not part of the text).
    StopSequence,
    /// `max_tokens` were generated or the context is full.
    Length,
    Cancelled,
}

/// A streamed piece of output.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub token: TokenId,
    /// Text that became final with this token (may be empty while UTF-8 or a possible stop
    /// sequence is incomplete).
    pub text: String,
    /// The token's log probability and the most likely alternatives, when asked for
    /// ([`GenerationRequest::logprobs`]).
    pub logprobs: Option<TokenLogprobs>,
}

/// Log probabilities (natural log) of one generated token and its likeliest
/// alternatives, from the distribution the sampler drew from before temperature and
/// truncation: the model's logits after the presence and frequency penalties and any
/// output constraint, as OpenAI reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// Most likely first; as many as asked for (fewer when fewer tokens are possible).
    pub top: Vec<(TokenId, f32)>,
}

impl TokenLogprobs {
    /// Log-softmax of `logits` at `token`, and the `top` likeliest tokens.
    fn of(logits: &[f32], token: TokenId, top: usize) -> TokenLogprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits
            .iter()
            .filter(|logit| logit.is_finite())
            .map(|&logit| f64::from(logit - max).exp())
            .sum();
        let log_total = max + sum.ln() as f32;
        let logprob = |logit: f32| logit - log_total;
        let mut best: Vec<(TokenId, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (index, &logit) in logits.iter().enumerate() {
                if !logit.is_finite() {
                    continue;
                }
                if best.len() < top || logit > best[best.len() - 1].1 {
                    let at = best.partition_point(|&(_, other)| other >= logit);
                    best.insert(at, (index as TokenId, logit));
                    best.truncate(top);
                }
            }
        }
        TokenLogprobs {
            logprob: logits
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |&logit| logprob(logit)),
            top: best
                .into_iter()
                .map(|(token, logit)| (token, logprob(logit)))
                .collect(),
        }
    }
}

/// The result of a finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    pub text: String,
    pub tokens: Vec<TokenId>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
    /// Prompt processing time (includes the first token's logits).
    pub time_to_first_token: Duration,
    pub total_time: Duration,
}

/// A loaded model ready to serve requests.
pub struct Engine {
    model: LlamaModel,
    /// The model's weights on a burn device, when it runs there rather than on the CPU
    /// kernels (`EngineOptions::device`).
    #[cfg(feature = "burn")]
    device: Option<crate::device::DeviceModel>,
    placement: Placement,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    pool: rayon::ThreadPool,
    /// The grammar compiler over this vocabulary, built by the first constrained request.
    constraints: OnceLock<Result<Constraints, String>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Engine")
            .field("config", self.model.config())
            .field("threads", &self.pool.current_num_threads())
            .finish_non_exhaustive()
    }
}

/// The kernels' worker threads (also used by tokenizing and sampling around the device).
fn thread_pool(options: &EngineOptions) -> Result<rayon::ThreadPool, EngineError> {
    let mut pool =
        rayon::ThreadPoolBuilder::new().thread_name(|index| format!("flotilla-engine-{index}"));
    if let Some(threads) = options.threads {
        pool = pool.num_threads(threads.max(1));
    }
    pool.build()
        .map_err(|error| EngineError::ThreadPool(error.to_string()))
}

/// Prompt tokens processed per forward pass (bounds activation memory on long prompts).
const PREFILL_CHUNK: usize = 128;

impl Engine {
    /// Maps and loads a GGUF model, on the device `options` asks for.
    pub fn load(path: impl AsRef<Path>, options: EngineOptions) -> Result<Engine, EngineError> {
        let (model, tokenizer, template) = Engine::open(Arc::new(GgufFile::open(path)?))?;
        let pool = thread_pool(&options)?;
        let cpu_name = format!(
            "{:?} kernels, {} threads",
            model.kernel(),
            pool.current_num_threads()
        )
        .to_lowercase();
        #[cfg(feature = "burn")]
        let (device, placement) = crate::device::place(&model, options.device, &cpu_name)?;
        #[cfg(not(feature = "burn"))]
        let placement = match options.device {
            DeviceRequest::Cpu | DeviceRequest::Auto => Placement {
                kind: "cpu".into(),
                name: cpu_name,
                note: None,
            },
            DeviceRequest::Gpu(_) => {
                return Err(EngineError::Device(
                    "this build has no GPU support (built without the engine's `gpu` feature)"
                        .into(),
                ));
            }
        };
        Ok(Engine {
            model,
            #[cfg(feature = "burn")]
            device,
            placement,
            tokenizer,
            template,
            pool,
            constraints: OnceLock::new(),
        })
    }

    /// Loads a model onto a given burn device (tests run the device graph on burn's CPU
    /// `flex` backend this way, with no GPU).
    #[cfg(feature = "burn")]
    pub fn load_on_burn_device(
        path: impl AsRef<Path>,
        options: EngineOptions,
        device: burn::tensor::Device,
        description: &str,
    ) -> Result<Engine, EngineError> {
        let (model, tokenizer, template) = Engine::open(Arc::new(GgufFile::open(path)?))?;
        let pool = thread_pool(&options)?;
        let device = crate::device::upload(&model, device, description.to_string())?;
        Ok(Engine {
            model,
            placement: Placement {
                kind: "gpu".into(),
                name: description.to_string(),
                note: None,
            },
            device: Some(device),
            tokenizer,
            template,
            pool,
            constraints: OnceLock::new(),
        })
    }

    /// Where the model runs.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Device memory the weights occupy, when the model runs on a device.
    pub fn device_weight_bytes(&self) -> Option<usize> {
        #[cfg(feature = "burn")]
        if let Some(device) = &self.device {
            return Some(device.weight_bytes());
        }
        None
    }

    /// An empty KV cache for one sequence, where this engine keeps them (host memory for
    /// the CPU kernels, device memory for the device graph).
    pub fn new_cache(&self) -> KvCache {
        #[cfg(feature = "burn")]
        if let Some(device) = &self.device {
            return device.new_cache();
        }
        self.model.new_cache()
    }

    /// Whether this engine can serve the file that `header` describes, judged from the
    /// header alone: the same checks as [`Engine::load`] (architecture, every tensor's
    /// name, shape and type, tokenizer, chat template), run over zero-filled tensor data
    /// that is never allocated beyond the small vectors the loader reads. The controller
    /// runs it at upload, so an artifact no node can load is known before any rollout.
    pub fn check(header: GgufHeader) -> Result<(), EngineError> {
        let file = GgufFile::zero_filled(header, "the uploaded file")?;
        Engine::open(Arc::new(file)).map(drop)
    }

    /// The model, tokenizer and chat template of an opened file.
    fn open(file: Arc<GgufFile>) -> Result<(LlamaModel, Tokenizer, ChatTemplate), EngineError> {
        let model = LlamaModel::load(Arc::clone(&file))?;
        let tokenizer = Tokenizer::from_gguf(file.header())?;
        let token_text = |token: Option<TokenId>| {
            token
                .and_then(|token| tokenizer.token_text(token))
                .unwrap_or("")
                .to_string()
        };
        let source = file
            .header()
            .metadata
            .get_str("tokenizer.chat_template")
            .unwrap_or_else(|| crate::chat::fallback_template(&tokenizer));
        let template = ChatTemplate::new(
            source,
            &token_text(tokenizer.bos_token()),
            &token_text(tokenizer.eos_token()),
        )?;
        Ok((model, tokenizer, template))
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// Whether the model can chat (its own template, or ChatML for a vocabulary that has
    /// its tokens); a base model without either serves text completions only.
    pub fn chats(&self) -> bool {
        self.template.chats()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The model's context window.
    pub fn context_length(&self) -> usize {
        self.model.config().context_length
    }

    /// Renders a conversation with the model's chat template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        self.template.render(messages, add_generation_prompt)
    }

    /// Compiles `grammar` for this model's vocabulary, as a request carrying it would be:
    /// lets a server refuse a bad schema before it queues the request.
    pub fn check_grammar(&self, grammar: &Grammar) -> Result<(), EngineError> {
        self.start_constraint(grammar).map(drop)
    }

    fn start_constraint(&self, grammar: &Grammar) -> Result<OutputConstraint, EngineError> {
        self.constraints
            .get_or_init(|| Constraints::new(&self.tokenizer).map_err(|error| error.to_string()))
            .as_ref()
            .map_err(|message| EngineError::InvalidRequest(message.clone()))?
            .start(grammar)
    }

    /// Tokenizes a prompt.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<TokenId>, EngineError> {
        Ok(match prompt {
            Prompt::Text(text) => self.tokenizer.encode(text, true, None),
            Prompt::Chat(messages) => {
                self.tokenizer
                    .encode(&self.render_chat(messages, true)?, true, None)
            }
            Prompt::ToolChat(messages, tools) => self.tokenizer.encode(
                &self.template.render_tool_chat(messages, tools, true)?,
                true,
                None,
            ),
            Prompt::Tokens(tokens) => tokens.clone(),
        })
    }

    /// Runs one batched forward pass inside the engine's thread pool.
    pub fn forward(
        &self,
        sequences: &mut [SequenceInput<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        #[cfg(feature = "burn")]
        if let Some(device) = &self.device {
            return crate::device::guarded("decoding", || device.forward(sequences))?;
        }
        self.pool.install(|| self.model.forward(sequences))
    }

    /// Runs one batched forward pass inside the engine's thread pool and returns every
    /// new position's hidden state after the output norm (see [`LlamaModel::forward_hidden`]).
    pub fn forward_hidden(
        &self,
        sequences: &mut [SequenceInput<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        #[cfg(feature = "burn")]
        if let Some(device) = &self.device {
            return crate::device::guarded("decoding", || device.forward_hidden(sequences))?;
        }
        self.pool.install(|| self.model.forward_hidden(sequences))
    }

    /// Feeds a whole prompt into a fresh cache, in chunks; returns the last logits.
    pub fn prefill(
        &self,
        cache: &mut KvCache,
        tokens: &[TokenId],
    ) -> Result<Vec<f32>, EngineError> {
        let mut logits = Vec::new();
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            let mut batch = [SequenceInput {
                cache: &mut *cache,
                tokens: chunk,
            }];
            logits = self.forward(&mut batch)?.pop().unwrap_or_default();
        }
        if logits.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        Ok(logits)
    }

    /// Generates for one request on the calling thread, calling `on_token` per token.
    pub fn generate(
        &self,
        request: &GenerationRequest,
        mut on_token: impl FnMut(&TokenEvent),
    ) -> Result<GenerationOutput, EngineError> {
        let mut sequence = Sequence::start(self, request)?;
        let mut logits = self.prefill(&mut sequence.cache, &sequence.prompt.clone())?;
        loop {
            if let Some(event) = sequence.accept_logits(self, &mut logits) {
                on_token(&event);
            }
            if let Some(error) = sequence.take_failure() {
                return Err(error);
            }
            if sequence.finished.is_some() {
                return Ok(sequence.finish());
            }
            let token = sequence.pending_token();
            let mut batch = [SequenceInput {
                cache: &mut sequence.cache,
                tokens: &[token],
            }];
            logits = self.forward(&mut batch)?.pop().unwrap_or_default();
        }
    }
}

/// Decoding state of one request.
pub(crate) struct Sequence {
    pub(crate) cache: KvCache,
    pub(crate) prompt: Vec<TokenId>,
    sampler: Sampler,
    logprobs: Option<usize>,
    constraint: Option<OutputConstraint>,
    /// Set when constrained decoding failed; the sequence is then finished.
    failure: Option<EngineError>,
    history: Vec<TokenId>,
    generated: Vec<TokenId>,
    utf8: Utf8Stream,
    text: String,
    emitted: usize,
    stop: Vec<String>,
    max_tokens: usize,
    cancel: CancellationFlag,
    pub(crate) finished: Option<FinishReason>,
    started: Instant,
    first_token_at: Option<Instant>,
}

impl Sequence {
    pub(crate) fn start(
        engine: &Engine,
        request: &GenerationRequest,
    ) -> Result<Sequence, EngineError> {
        request
            .sampling
            .validate()
            .map_err(EngineError::InvalidRequest)?;
        let prompt = engine.prompt_tokens(&request.prompt)?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let context = engine.context_length();
        if prompt.len() >= context {
            return Err(EngineError::ContextOverflow {
                prompt: prompt.len(),
                max_tokens: request.max_tokens,
                context,
            });
        }
        Ok(Sequence {
            cache: engine.new_cache(),
            sampler: Sampler::new(request.sampling.clone()),
            logprobs: request.logprobs,
            constraint: request
                .grammar
                .as_ref()
                .map(|grammar| engine.start_constraint(grammar))
                .transpose()?,
            failure: None,
            history: prompt.clone(),
            prompt,
            generated: Vec::new(),
            utf8: Utf8Stream::default(),
            text: String::new(),
            emitted: 0,
            stop: request
                .stop
                .iter()
                .filter(|stop| !stop.is_empty())
                .cloned()
                .collect(),
            max_tokens: request.max_tokens,
            cancel: request.cancel.clone(),
            finished: None,
            started: Instant::now(),
            first_token_at: None,
        })
    }

    /// Whether the caller asked to stop.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The last sampled token, which the next forward pass must consume.
    pub(crate) fn pending_token(&self) -> TokenId {
        self.generated.last().copied().unwrap_or(0)
    }

    /// Samples from `logits`, updates the text and stop state, returns the streamed event.
    pub(crate) fn accept_logits(
        &mut self,
        engine: &Engine,
        logits: &mut [f32],
    ) -> Option<TokenEvent> {
        if self.cancel.is_cancelled() {
            self.finished = Some(FinishReason::Cancelled);
            return None;
        }
        if self.generated.len() >= self.max_tokens {
            self.finished = Some(FinishReason::Length);
            return None;
        }
        self.sampler.penalize(logits, &self.generated);
        if let Some(constraint) = &mut self.constraint
            && let Err(error) = constraint.mask(logits)
        {
            return self.fail(error);
        }
        // Before sampling: the sampler may change the logits (its repetition penalty).
        let reported = self.logprobs.map(|top| (logits.to_vec(), top));
        let token = self.sampler.sample(logits, &self.history);
        let logprobs = reported.map(|(logits, top)| TokenLogprobs::of(&logits, token, top));
        if let Some(constraint) = &mut self.constraint
            && let Err(error) = constraint.accept(token)
        {
            return self.fail(error);
        }
        self.first_token_at.get_or_insert_with(Instant::now);
        self.history.push(token);
        self.generated.push(token);
        if engine.tokenizer.is_end_of_generation(token) {
            self.finished = Some(FinishReason::EndOfSequence);
            let text = self.take_final_text();
            return Some(TokenEvent {
                token,
                text,
                logprobs,
            });
        }
        let piece = self.utf8.push(&engine.tokenizer.token_bytes(token, false));
        self.text.push_str(&piece);
        let mut safe_end = self.text.len();
        if let Some(position) = self
            .stop
            .iter()
            .filter_map(|stop| self.text.find(stop.as_str()))
            .min()
        {
            self.text.truncate(position);
            self.finished = Some(FinishReason::StopSequence);
            safe_end = position;
        } else {
            // Hold back a tail that could still grow into a stop sequence.
            for stop in &self.stop {
                for (boundary, _) in self.text.char_indices().rev().take(stop.chars().count()) {
                    if boundary >= self.emitted && stop.starts_with(&self.text[boundary..]) {
                        safe_end = safe_end.min(boundary);
                    }
                }
            }
        }
        if self.finished.is_none()
            && self
                .constraint
                .as_ref()
                .is_some_and(OutputConstraint::is_stopped)
        {
            // The grammar admits nothing more: the output is complete.
            self.finished = Some(FinishReason::EndOfSequence);
        }
        if self.finished.is_none()
            && (self.generated.len() >= self.max_tokens
                || self.cache.len() + 1 >= engine.context_length())
        {
            self.finished = Some(FinishReason::Length);
        }
        let text = if self.finished.is_some() {
            self.take_final_text()
        } else {
            let text = self.text[self.emitted..safe_end].to_string();
            self.emitted = safe_end;
            text
        };
        Some(TokenEvent {
            token,
            text,
            logprobs,
        })
    }

    /// Ends the sequence because its constraint failed; the caller reports the error.
    fn fail(&mut self, error: EngineError) -> Option<TokenEvent> {
        self.failure = Some(error);
        self.finished = Some(FinishReason::Cancelled);
        None
    }

    /// The error that ended the sequence, if one did.
    pub(crate) fn take_failure(&mut self) -> Option<EngineError> {
        self.failure.take()
    }

    fn take_final_text(&mut self) -> String {
        if self.finished != Some(FinishReason::StopSequence) {
            let rest = self.utf8.finish();
            self.text.push_str(&rest);
        }
        let text = self.text[self.emitted.min(self.text.len())..].to_string();
        self.emitted = self.text.len();
        text
    }

    /// An ended, empty sequence (what a finished slot is swapped with).
    pub(crate) fn placeholder(engine: &Engine) -> Sequence {
        Sequence {
            cache: engine.new_cache(),
            prompt: Vec::new(),
            sampler: Sampler::new(SamplingParams::greedy()),
            logprobs: None,
            constraint: None,
            failure: None,
            history: Vec::new(),
            generated: Vec::new(),
            utf8: Utf8Stream::default(),
            text: String::new(),
            emitted: 0,
            stop: Vec::new(),
            max_tokens: 0,
            cancel: CancellationFlag::new(),
            finished: Some(FinishReason::Cancelled),
            started: Instant::now(),
            first_token_at: None,
        }
    }

    pub(crate) fn finish(self) -> GenerationOutput {
        let now = Instant::now();
        GenerationOutput {
            text: self.text,
            tokens: self.generated,
            prompt_tokens: self.prompt.len(),
            finish_reason: self.finished.unwrap_or(FinishReason::Length),
            time_to_first_token: self.first_token_at.unwrap_or(now) - self.started,
            total_time: now - self.started,
        }
    }
}
