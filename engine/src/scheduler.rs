//! The request scheduler the agent talks to: a bounded queue in front of one worker
//! thread that decodes every active sequence together, one batched forward pass per
//! step (weights are read once per step for all sequences, which is where CPU decode
//! throughput comes from).
//!
//! Back-pressure is explicit: `submit` fails with [`EngineError::QueueFull`] instead of
//! queueing unboundedly. A request ends when it finishes, when its [`CancellationFlag`] is
//! set, or when its event receiver is dropped (the client went away).
//!
//! # Fair prefill: prompts are read in chunks between decode steps
//! A new request's prompt is not read whole when it is admitted: every step feeds the
//! model one chunk of one waiting prompt together with the next token of every sequence
//! that is already decoding, in the same batched forward pass. So a 7,000-token prompt,
//! which takes minutes to read on a small CPU, no longer stops the node: the others keep
//! decoding, a step at a time, and a short prompt that arrives meanwhile is read in the
//! next step, because the prompt with the fewest tokens left goes first.
//!
//! The chunk is sized by time, not by a fixed count: after each step the scheduler
//! measures what one token cost and sizes the next chunk so that a step lasts about
//! [`TARGET_STEP`] (between [`MIN_CHUNK`] and [`MAX_CHUNK`] tokens). A fixed count would
//! be too coarse on a slow box (a short request would wait behind seconds of someone
//! else's prompt) and needlessly fine on a fast one, and the cost per token grows with the
//! context already in the cache, which a measurement follows and a constant does not.
//! A short request's time to first token is thus about two steps: the one in flight when
//! it arrives and its own.
//!
//! Memory: each sequence's KV cache grows with what it has read, up to the model's
//! context window (a prompt that does not fit is refused at admission, see
//! `Sequence::start`), and the activations of a step are bounded by [`MAX_CHUNK`] plus
//! the batch.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::EngineError;
use crate::generate::{
    CancellationFlag, Engine, GenerationOutput, GenerationRequest, Sequence, TokenEvent,
};
use crate::model::SequenceInput;
use crate::tokenizer::TokenId;

/// How long one step (a forward pass) should last while a prompt is being read.
pub const TARGET_STEP: Duration = Duration::from_millis(150);
/// The fewest prompt tokens a step reads, so that a long prompt always progresses.
pub const MIN_CHUNK: usize = 8;
/// The most prompt tokens a step reads (bounds activation memory).
pub const MAX_CHUNK: usize = 256;
/// The chunk before anything has been measured.
const INITIAL_CHUNK: usize = 32;

/// Limits of a scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Requests that may wait for a slot before `submit` reports the queue full.
    pub queue_capacity: usize,
    /// Sequences decoded together in one forward pass.
    pub max_batch: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            queue_capacity: 64,
            max_batch: 8,
        }
    }
}

/// What a request's stream carries.
#[derive(Debug)]
pub enum GenerationEvent {
    Token(TokenEvent),
    Finished(GenerationOutput),
    Failed(EngineError),
}

/// The caller's side of a submitted request.
#[derive(Debug)]
pub struct RequestHandle {
    pub events: Receiver<GenerationEvent>,
    pub cancel: CancellationFlag,
}

impl RequestHandle {
    /// Blocks until the request ends, returning its output (tokens are discarded).
    pub fn wait(self) -> Result<GenerationOutput, EngineError> {
        for event in self.events.iter() {
            match event {
                GenerationEvent::Token(_) => {}
                GenerationEvent::Finished(output) => return Ok(output),
                GenerationEvent::Failed(error) => return Err(error),
            }
        }
        Err(EngineError::ShutDown)
    }
}

struct Job {
    request: GenerationRequest,
    events: Sender<GenerationEvent>,
}

/// A running scheduler; dropping it lets queued and active requests finish, then stops.
pub struct Scheduler {
    queue: Option<SyncSender<Job>>,
    capacity: usize,
    worker: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the worker thread.
    pub fn start(engine: Arc<Engine>, config: SchedulerConfig) -> Result<Scheduler, EngineError> {
        let capacity = config.queue_capacity.max(1);
        let (queue, jobs) = mpsc::sync_channel(capacity);
        let max_batch = config.max_batch.max(1);
        let worker = std::thread::Builder::new()
            .name("flotilla-scheduler".into())
            .spawn(move || run_worker(&engine, &jobs, max_batch))
            .map_err(|error| EngineError::ThreadPool(error.to_string()))?;
        Ok(Scheduler {
            queue: Some(queue),
            capacity,
            worker: Some(worker),
        })
    }

    /// Queues a request; its tokens arrive on the returned handle's `events`.
    pub fn submit(&self, request: GenerationRequest) -> Result<RequestHandle, EngineError> {
        let queue = self.queue.as_ref().ok_or(EngineError::ShutDown)?;
        let (events, receiver) = mpsc::channel();
        let cancel = request.cancel.clone();
        match queue.try_send(Job { request, events }) {
            Ok(()) => Ok(RequestHandle {
                events: receiver,
                cancel,
            }),
            Err(TrySendError::Full(_)) => Err(EngineError::QueueFull {
                capacity: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::ShutDown),
        }
    }

    /// Stops accepting requests, lets the admitted ones finish and joins the worker.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.queue.take();
        if let Some(worker) = self.worker.take() {
            // A panicked worker has already failed its requests' channels; nothing to add.
            let _ = worker.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Active {
    sequence: Sequence,
    events: Sender<GenerationEvent>,
    /// Prompt tokens fed to the model so far; the sequence decodes once all are in.
    prefilled: usize,
}

impl Active {
    fn prompt_left(&self) -> usize {
        self.sequence.prompt.len() - self.prefilled
    }
}

/// The prefill chunk size, adapted to the measured cost of a token.
struct ChunkSizer {
    chunk: usize,
}

impl ChunkSizer {
    fn new() -> ChunkSizer {
        ChunkSizer {
            chunk: INITIAL_CHUNK,
        }
    }

    /// Learns from a step that read `prompt_tokens` prompt tokens plus `decode_tokens`
    /// single decode tokens in `elapsed`.
    fn observe(&mut self, prompt_tokens: usize, decode_tokens: usize, elapsed: Duration) {
        if prompt_tokens == 0 {
            return;
        }
        let per_token = elapsed.as_secs_f64() / (prompt_tokens + decode_tokens) as f64;
        let fits = (TARGET_STEP.as_secs_f64() / per_token.max(1e-6)) as usize;
        let wanted = fits
            .saturating_sub(decode_tokens)
            .clamp(MIN_CHUNK, MAX_CHUNK);
        // Halfway towards the measurement: one noisy step does not swing the size.
        // Rounded towards the measurement, so that the size can reach it.
        let halfway = if wanted > self.chunk {
            (self.chunk + wanted).div_ceil(2)
        } else {
            (self.chunk + wanted) / 2
        };
        self.chunk = halfway.clamp(MIN_CHUNK, MAX_CHUNK);
    }
}

fn run_worker(engine: &Engine, jobs: &Receiver<Job>, max_batch: usize) {
    let mut active: Vec<Active> = Vec::new();
    let mut sizer = ChunkSizer::new();
    let mut open = true;
    loop {
        // Admit new work: block only when there is nothing else to do.
        while open && active.len() < max_batch {
            let job = if active.is_empty() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            };
            if let Some(admitted) = admit(engine, job) {
                active.push(admitted);
            }
        }
        if active.is_empty() {
            if open {
                continue;
            }
            return;
        }
        step(engine, &mut active, &mut sizer);
    }
}

/// Validates and tokenizes a new request; its prompt is read by later steps. `None`
/// when it was refused (the error has been sent).
fn admit(engine: &Engine, job: Job) -> Option<Active> {
    match Sequence::start(engine, &job.request) {
        Ok(sequence) => Some(Active {
            sequence,
            events: job.events,
            prefilled: 0,
        }),
        Err(error) => {
            let _ = job.events.send(GenerationEvent::Failed(error));
            None
        }
    }
}

/// Samples for one sequence and sends its events; `false` when it has ended.
fn deliver(engine: &Engine, active: &mut Active, logits: &mut [f32]) -> bool {
    if let Some(event) = active.sequence.accept_logits(engine, logits)
        && active.events.send(GenerationEvent::Token(event)).is_err()
    {
        // The receiver is gone: the client stopped listening.
        return false;
    }
    if let Some(error) = active.sequence.take_failure() {
        let _ = active.events.send(GenerationEvent::Failed(error));
        return false;
    }
    if active.sequence.finished.is_some() {
        let sequence = std::mem::replace(&mut active.sequence, Sequence::placeholder(engine));
        let _ = active
            .events
            .send(GenerationEvent::Finished(sequence.finish()));
        return false;
    }
    true
}

/// One batched forward pass: the next token of every decoding sequence, plus one chunk
/// of the prompt with the fewest tokens left to read (see the module docs).
fn step(engine: &Engine, active: &mut Vec<Active>, sizer: &mut ChunkSizer) {
    // A prompt still being read has no token to check cancellation against; check here,
    // so that cancelling a long prompt frees the worker at once.
    active.retain_mut(|entry| {
        if entry.prompt_left() == 0 || !entry.sequence.is_cancelled() {
            return true;
        }
        entry.sequence.finished = Some(crate::generate::FinishReason::Cancelled);
        let sequence = std::mem::replace(&mut entry.sequence, Sequence::placeholder(engine));
        let _ = entry
            .events
            .send(GenerationEvent::Finished(sequence.finish()));
        false
    });
    if active.is_empty() {
        return;
    }
    let reading = active
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.prompt_left() > 0)
        .min_by_key(|(index, entry)| (entry.prompt_left(), *index))
        .map(|(index, entry)| (index, entry.prompt_left().min(sizer.chunk)));
    // What each entry feeds this step: its pending token, a prompt chunk, or nothing.
    let feeds: Vec<Option<Vec<TokenId>>> = active
        .iter()
        .enumerate()
        .map(|(index, entry)| match reading {
            _ if entry.prompt_left() == 0 => Some(vec![entry.sequence.pending_token()]),
            Some((reader, chunk)) if reader == index => {
                Some(entry.sequence.prompt[entry.prefilled..entry.prefilled + chunk].to_vec())
            }
            _ => None,
        })
        .collect();
    let decode_tokens = active
        .iter()
        .filter(|entry| entry.prompt_left() == 0)
        .count();
    let started = Instant::now();
    let result = {
        let mut inputs: Vec<SequenceInput<'_>> = active
            .iter_mut()
            .zip(&feeds)
            .filter_map(|(entry, feed)| {
                feed.as_deref().map(|tokens| SequenceInput {
                    cache: &mut entry.sequence.cache,
                    tokens,
                })
            })
            .collect();
        engine.forward(&mut inputs)
    };
    let prompt_tokens = reading.map_or(0, |(_, chunk)| chunk);
    sizer.observe(prompt_tokens, decode_tokens, started.elapsed());
    match result {
        Ok(logits) => {
            let mut logits = logits.into_iter();
            let mut feeds = feeds.into_iter();
            active.retain_mut(|entry| {
                let Some(Some(feed)) = feeds.next() else {
                    // Not fed this step: waiting for its turn to read its prompt.
                    return true;
                };
                let Some(mut entry_logits) = logits.next() else {
                    return false;
                };
                if entry.prompt_left() > 0 {
                    entry.prefilled += feed.len();
                    if entry.prompt_left() > 0 {
                        return true;
                    }
                }
                deliver(engine, entry, &mut entry_logits)
            });
        }
        Err(error) => {
            for entry in active.drain(..) {
                let _ = entry
                    .events
                    .send(GenerationEvent::Failed(EngineError::InvalidRequest(
                        error.to_string(),
                    )));
            }
        }
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn chunks_follow_the_measured_cost_within_bounds() {
        let mut sizer = ChunkSizer::new();
        // 1 ms per token: a 150 ms step holds about 150 tokens.
        for _ in 0..20 {
            sizer.observe(sizer.chunk, 0, Duration::from_millis(sizer.chunk as u64));
        }
        assert!((140..=150).contains(&sizer.chunk), "{}", sizer.chunk);
        // Very slow tokens: never below the minimum, so a prompt always progresses.
        for _ in 0..20 {
            sizer.observe(8, 4, Duration::from_secs(5));
        }
        assert_eq!(sizer.chunk, MIN_CHUNK);
        // Very fast tokens: never above the maximum.
        for _ in 0..20 {
            sizer.observe(8, 0, Duration::from_micros(1));
        }
        assert_eq!(sizer.chunk, MAX_CHUNK);
    }
}
