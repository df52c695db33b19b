//! The model this node serves, and how a verified artifact becomes it.
//!
//! [`ModelSlot`] holds at most one [`ServedModel`] behind a lock that is only
//! ever held to clone or replace an `Arc`: a request takes the current model
//! once and keeps it for its whole life, so a swap never disturbs requests in
//! flight, and requests after the swap see only the new model.
//!
//! [`EngineActivator`] is the reconciler's [`Activator`]: blue/green (DESIGN.md
//! §5). It loads the new artifact on a blocking thread, starts its scheduler
//! and warms it up with a short generation while the old model keeps serving,
//! then replaces the slot's content in one step. Any failure leaves the old
//! model in place and is returned as the reason the reconciler reports. The
//! old model's scheduler finishes the requests it admitted on a thread of its
//! own, then stops.
//!
//! Everything here lives in memory; what is served is reported to the
//! controller through the observed state (`serving_digest`).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use flotilla_engine::chat::ChatTemplate;
use flotilla_engine::tools::ToolSpec;
use flotilla_engine::{
    ChatMessage, Engine, EngineOptions, GenerationEvent, GenerationRequest, Prompt, SamplingParams,
    Scheduler, SchedulerConfig,
};
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ServeConfig;
use super::card::ModelCard;
use super::error::ServeError;
use super::request::{Input, Message, Role};
use crate::cache::Digest;
use crate::reconcile::{Activation, Activator, Assignment, SystemPromptPolicy};

/// What the APIs list about a served model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The registry name, which clients ask for.
    pub name: String,
    /// Other names the assignment lets clients use.
    pub aliases: Vec<String>,
    pub version: String,
    pub quantization: String,
    pub digest: Digest,
    pub size_bytes: u64,
    pub context_length: usize,
    /// When this node started serving it.
    pub loaded_at: SystemTime,
    /// What the file says about itself (Ollama's `/api/show`).
    pub card: Arc<ModelCard>,
}

/// The assigned system prompt, ready to apply.
struct PromptPolicy {
    system_prompt: Option<String>,
    policy: SystemPromptPolicy,
    /// The assignment's chat template, compiled; `None`: the model's own.
    template: Option<ChatTemplate>,
}

/// A loaded, warmed-up model with its scheduler and admission limit.
pub struct ServedModel {
    info: ModelInfo,
    engine: Arc<Engine>,
    /// `Some` until dropped; see the `Drop` impl. Shared with the model
    /// that replaced this one when only the assignment's prompt or names
    /// changed ([`ServedModel::reassigned`]).
    scheduler: Option<Arc<Scheduler>>,
    prompt: PromptPolicy,
    admission: Arc<Semaphore>,
    capacity: usize,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServedModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// How many requests a model admits (queued or decoding), and its
/// scheduler's limits. Admission (a semaphore) is the one limit; the
/// scheduler's own queue holds as many requests, so that an admitted request
/// is never refused because the scheduler had not yet moved earlier ones
/// into its batch (a burst arriving mid-step was refused at 17 or 18 of the
/// 20 places a node advertised).
fn queue_limits(config: &ServeConfig) -> (usize, SchedulerConfig) {
    let capacity = config.queue_capacity.max(1) + config.max_batch.max(1);
    let scheduler = SchedulerConfig {
        queue_capacity: capacity,
        max_batch: config.max_batch,
    };
    (capacity, scheduler)
}

/// The card of `engine`'s file as `assignment` serves it: the chat template
/// shown is the assignment's when it sets one, else the one the engine
/// renders with.
fn card(assignment: &Assignment, engine: &Engine) -> ModelCard {
    let header = engine.model().file().header();
    let template = assignment
        .system_prompt
        .as_ref()
        .and_then(|prompt| prompt.chat_template.as_deref())
        .or_else(|| header.metadata.get_str("tokenizer.chat_template"))
        .unwrap_or_else(|| flotilla_engine::chat::fallback_template(engine.tokenizer()));
    // A model that cannot chat shows no template, as in Ollama.
    let template = if template == flotilla_engine::chat::NO_CHAT_TEMPLATE {
        ""
    } else {
        template
    };
    ModelCard::from_header(header, template)
}

/// A request admitted into a model's queue; dropping it frees the place.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    fn new(permit: OwnedSemaphorePermit) -> Admission {
        super::stats::global().admitted();
        Admission { _permit: permit }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        super::stats::global().released();
    }
}

impl ServedModel {
    /// Loads `activation`'s artifact and warms it up. Blocking: call it on a
    /// blocking thread.
    pub fn load(activation: &Activation, config: &ServeConfig) -> Result<ServedModel, String> {
        let assignment = &activation.assignment;
        let path = &activation.blob_path;
        let started = Instant::now();
        let engine = Engine::load(
            path,
            EngineOptions {
                threads: config.engine_threads,
                device: config.device,
            },
        )
        .map_err(|error| {
            format!(
                "cannot load {} {} ({}): {error}",
                assignment.model,
                assignment.version,
                assignment.digest.short()
            )
        })?;
        let placement = engine.placement();
        match &placement.note {
            Some(note) => tracing::warn!(
                model = %assignment.model,
                device = %placement,
                reason = %note,
                "serving on the CPU: the GPU was not used"
            ),
            None => tracing::info!(model = %assignment.model, device = %placement, "model placed"),
        }
        let engine = Arc::new(engine);
        let prompt = PromptPolicy::from_assignment(assignment, &engine)?;
        let (capacity, scheduler_config) = queue_limits(config);
        let scheduler = Scheduler::start(engine.clone(), scheduler_config)
            .map_err(|error| format!("cannot start the scheduler: {error}"))?;
        let served = ServedModel {
            info: ModelInfo {
                name: assignment.model.clone(),
                aliases: assignment.aliases.clone(),
                version: assignment.version.clone(),
                quantization: assignment.quantization.clone(),
                digest: assignment.digest,
                size_bytes: assignment.size_bytes,
                context_length: engine.context_length(),
                loaded_at: SystemTime::now(),
                card: Arc::new(card(assignment, &engine)),
            },
            engine,
            scheduler: Some(Arc::new(scheduler)),
            prompt,
            admission: Arc::new(Semaphore::new(capacity)),
            capacity,
        };
        served.warm_up(config.warm_up_timeout)?;
        tracing::info!(
            model = %assignment.model,
            version = %assignment.version,
            digest = %assignment.digest.short(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded and warmed up"
        );
        Ok(served)
    }

    /// The same loaded weights under a new assignment of the same artifact
    /// (another version label, prompt, policy or aliases): shares the
    /// engine, scheduler and queue, so nothing is loaded twice and the
    /// memory stays that of one model. Warmed up with the new prompt like a
    /// fresh load. Blocking: call it on a blocking thread.
    pub fn reassigned(
        &self,
        activation: &Activation,
        config: &ServeConfig,
    ) -> Result<ServedModel, String> {
        let assignment = &activation.assignment;
        if assignment.digest != self.info.digest {
            return Err(format!(
                "cannot reuse {} for artifact {}",
                self.info.digest.short(),
                assignment.digest.short()
            ));
        }
        let served = ServedModel {
            info: ModelInfo {
                name: assignment.model.clone(),
                aliases: assignment.aliases.clone(),
                version: assignment.version.clone(),
                quantization: assignment.quantization.clone(),
                card: Arc::new(card(assignment, &self.engine)),
                ..self.info.clone()
            },
            engine: self.engine.clone(),
            scheduler: self.scheduler.clone(),
            prompt: PromptPolicy::from_assignment(assignment, &self.engine)?,
            admission: self.admission.clone(),
            capacity: self.capacity,
        };
        served.warm_up(config.warm_up_timeout)?;
        tracing::info!(
            model = %assignment.model,
            version = %assignment.version,
            digest = %assignment.digest.short(),
            "same artifact under a new assignment: reused the loaded model"
        );
        Ok(served)
    }

    /// A short greedy generation through the same path requests take
    /// (system prompt, template, scheduler); it must produce a token. A
    /// base model that cannot chat (no template of its own or from the
    /// system prompt, as Gemma 3 270M) is warmed up with a text completion,
    /// the only kind of request it serves.
    fn warm_up(&self, timeout: Duration) -> Result<(), String> {
        let input = if self.prompt.template.is_some() || self.engine.chats() {
            Input::Chat(vec![Message::new(Role::User, "Hello")])
        } else {
            Input::Text("Hello".to_owned())
        };
        let prompt = self
            .prompt(input, None)
            .map_err(|error| format!("warm-up prompt failed: {error}"))?;
        let mut request = GenerationRequest::new(prompt);
        request.sampling = SamplingParams::greedy();
        request.max_tokens = 4;
        let handle = self
            .scheduler()
            .map_err(|error| error.to_string())?
            .submit(request)
            .map_err(|error| format!("warm-up was not accepted: {error}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match handle.events.recv_timeout(remaining) {
                Ok(GenerationEvent::Token(_)) => {}
                Ok(GenerationEvent::Finished(output)) if !output.tokens.is_empty() => {
                    return Ok(());
                }
                Ok(GenerationEvent::Finished(_)) => {
                    return Err("warm-up generation produced no token".to_owned());
                }
                Ok(GenerationEvent::Failed(error)) => {
                    return Err(format!("warm-up generation failed: {error}"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    handle.cancel.cancel();
                    return Err(format!("warm-up generation took longer than {timeout:?}"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the scheduler stopped during warm-up".to_owned());
                }
            }
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn scheduler(&self) -> Result<&Scheduler, ServeError> {
        self.scheduler
            .as_deref()
            .ok_or_else(|| ServeError::Unavailable("the model is being unloaded".to_owned()))
    }

    /// Whether a client asking for `requested` means this model: the
    /// registry name or an alias, optionally with Ollama's `:latest` or
    /// `:<version>` tag.
    pub fn answers_to(&self, requested: &str) -> bool {
        crate::routing::names_match(
            requested,
            &self.info.name,
            &self.info.aliases,
            &self.info.version,
        )
    }

    /// Takes a place in this model's queue, or says it is full.
    pub fn admit(&self, retry_after: Duration) -> Result<Admission, ServeError> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map(Admission::new)
            .map_err(|_| ServeError::Overloaded {
                model: self.info.name.clone(),
                in_flight: self.in_flight(),
                retry_after,
            })
    }

    /// Requests admitted and not finished (queued or decoding).
    pub fn in_flight(&self) -> usize {
        self.capacity
            .saturating_sub(self.admission.available_permits())
    }

    /// How many requests may be admitted at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The engine prompt for `input`: raw text as is; a chat with the
    /// assigned system prompt applied under its policy and rendered with the
    /// assignment's template if it has one.
    /// With `tools`, the model is told it may call them (see `flotilla_engine::tools`).
    pub fn prompt(&self, input: Input, tools: Option<Vec<ToolSpec>>) -> Result<Prompt, ServeError> {
        match input {
            Input::Text(text) => Ok(Prompt::Text(text)),
            Input::Chat(messages) => {
                let messages = self.prompt.apply(messages)?;
                match (&self.prompt.template, tools) {
                    (None, None) => Ok(Prompt::Chat(messages)),
                    (None, Some(tools)) => Ok(Prompt::ToolChat(messages, tools)),
                    (Some(template), tools) => match tools {
                        None => template.render(&messages, true),
                        Some(tools) => template.render_tool_chat(&messages, &tools, true),
                    }
                    .map(Prompt::Text)
                    .map_err(|error| ServeError::InvalidRequest(error.to_string())),
                }
            }
        }
    }
}

impl Drop for ServedModel {
    fn drop(&mut self) {
        // Dropping the last reference to a scheduler waits for the requests
        // it admitted; that may happen on a tokio worker, which must not
        // block.
        if let Some(scheduler) = self.scheduler.take() {
            let spawned = std::thread::Builder::new()
                .name("flotilla-unload".to_owned())
                .spawn(move || drop(scheduler));
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start a thread to unload the previous model");
            }
        }
    }
}

impl PromptPolicy {
    fn from_assignment(assignment: &Assignment, engine: &Engine) -> Result<PromptPolicy, String> {
        let system_prompt = assignment
            .system_prompt
            .as_ref()
            .map(|prompt| prompt.text.clone())
            .filter(|text| !text.trim().is_empty());
        let template = match assignment
            .system_prompt
            .as_ref()
            .and_then(|prompt| prompt.chat_template.as_deref())
        {
            None => None,
            Some(source) => {
                let tokenizer = engine.tokenizer();
                let token_text = |token: Option<flotilla_engine::TokenId>| {
                    token
                        .and_then(|token| tokenizer.token_text(token))
                        .unwrap_or("")
                        .to_owned()
                };
                let template = ChatTemplate::new(
                    source,
                    &token_text(tokenizer.bos_token()),
                    &token_text(tokenizer.eos_token()),
                )
                .map_err(|error| format!("the assigned chat template is invalid: {error}"))?;
                Some(template)
            }
        };
        Ok(PromptPolicy {
            system_prompt,
            policy: assignment.system_prompt_policy,
            template,
        })
    }

    /// The conversation the model sees.
    fn apply(&self, messages: Vec<Message>) -> Result<Vec<ChatMessage>, ServeError> {
        if !messages.iter().any(|message| message.role != Role::System) {
            return Err(ServeError::InvalidRequest(
                "a chat needs at least one message that is not a system message".to_owned(),
            ));
        }
        let has_system = messages.iter().any(|message| message.role == Role::System);
        if has_system && self.policy == SystemPromptPolicy::Forbid {
            return Err(ServeError::InvalidRequest(
                "system messages are not allowed for this model: its assignment sets the system prompt"
                    .to_owned(),
            ));
        }
        let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
        let mut messages = messages.into_iter().peekable();
        match (&self.system_prompt, self.policy) {
            (Some(assigned), SystemPromptPolicy::Prepend) => {
                // One system message at the start: many templates accept no
                // other, so the request's own first system message is merged.
                let mut text = assigned.clone();
                if let Some(first) = messages.next_if(|message| message.role == Role::System) {
                    text.push_str("\n\n");
                    text.push_str(&first.content);
                }
                out.push(ChatMessage::new("system", text));
            }
            (Some(assigned), SystemPromptPolicy::Replace | SystemPromptPolicy::Forbid) => {
                if !has_system {
                    out.push(ChatMessage::new("system", assigned.clone()));
                }
            }
            (None, _) => {}
        }
        out.extend(messages.map(|message| {
            let mut chat = ChatMessage::new(message.role.as_str(), message.content);
            chat.tool_calls = message.tool_calls;
            chat
        }));
        Ok(out)
    }
}

/// Holds the served model; see the module docs.
#[derive(Debug, Default)]
pub struct ModelSlot {
    current: RwLock<Option<Arc<ServedModel>>>,
}

impl ModelSlot {
    pub fn new() -> ModelSlot {
        ModelSlot::default()
    }

    /// The model served now, if any.
    pub fn current(&self) -> Option<Arc<ServedModel>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The served model if it is the one `requested`, else why not.
    pub fn get(&self, requested: &str) -> Result<Arc<ServedModel>, ServeError> {
        if requested.trim().is_empty() {
            return Err(ServeError::InvalidRequest("model is required".to_owned()));
        }
        match self.current() {
            Some(model) if model.answers_to(requested) => Ok(model),
            current => Err(ServeError::ModelNotFound {
                requested: requested.to_owned(),
                served: current.map(|model| model.info.name.clone()),
            }),
        }
    }

    /// Puts `next` in place in one step and returns what was there.
    pub fn replace(&self, next: Option<Arc<ServedModel>>) -> Option<Arc<ServedModel>> {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *current, next)
    }
}

/// The reconciler's [`Activator`] backed by the inference engine.
#[derive(Debug, Clone)]
pub struct EngineActivator {
    slot: Arc<ModelSlot>,
    config: Arc<ServeConfig>,
}

impl EngineActivator {
    pub fn new(slot: Arc<ModelSlot>, config: Arc<ServeConfig>) -> EngineActivator {
        EngineActivator { slot, config }
    }
}

impl Activator for EngineActivator {
    fn activate(&self, activation: Activation) -> BoxFuture<'static, Result<(), String>> {
        let slot = self.slot.clone();
        let config = self.config.clone();
        let span = tracing::info_span!("activate", model = %activation.assignment.model, version = %activation.assignment.version);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let model = activation.assignment.model.clone();
                // The same artifact (only the prompt, policy, aliases or version
                // label changed) keeps its loaded weights.
                let current = slot
                    .current()
                    .filter(|current| current.info.digest == activation.assignment.digest);
                // If this future is dropped (a newer desired state), the load
                // still finishes on its thread and is then dropped, unserved.
                let loaded = tokio::task::spawn_blocking(move || match current {
                    Some(current) => current.reassigned(&activation, &config),
                    None => ServedModel::load(&activation, &config),
                })
                .await
                .map_err(|error| format!("loading {model} panicked: {error}"))??;
                super::stats::global().activated(Some(loaded.info.digest), loaded.capacity());
                super::stats::global().serving_on(Some(loaded.engine().placement().to_string()));
                let previous = slot.replace(Some(Arc::new(loaded)));
                if let Some(previous) = previous {
                    tracing::info!(
                        previous = %previous.info.name,
                        previous_version = %previous.info.version,
                        in_flight = previous.in_flight(),
                        "switched to the new model; the previous one finishes its requests"
                    );
                }
                Ok(())
            },
            span,
        ))
    }

    fn deactivate(&self) -> BoxFuture<'static, ()> {
        let slot = self.slot.clone();
        Box::pin(async move {
            super::stats::global().activated(None, 0);
            super::stats::global().serving_on(None);
            if let Some(previous) = slot.replace(None) {
                tracing::info!(model = %previous.info.name, "stopped serving");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduler_queues_every_request_admission_lets_in() {
        let config = ServeConfig {
            queue_capacity: 16,
            max_batch: 4,
            ..ServeConfig::default()
        };
        let (capacity, scheduler) = queue_limits(&config);
        assert_eq!(capacity, 20, "the places a node advertises");
        assert_eq!(scheduler.queue_capacity, capacity);
        assert_eq!(scheduler.max_batch, 4);
    }
}
