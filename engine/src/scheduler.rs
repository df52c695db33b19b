//! The request scheduler the agent talks to: a bounded queue in front of one worker
//! thread that decodes every active sequence together, one batched forward pass per
//! step (weights are read once per step for all sequences, which is where CPU decode
//! throughput comes from).
//!
//! Back-pressure is explicit: `submit` fails with [`EngineError::QueueFull`] instead of
//! queueing unboundedly. A request ends when it finishes, when its [`CancellationFlag`] is
//! set, or when its event receiver is dropped (the client went away). New requests are
//! prefilled whole when admitted, which pauses the others for that prompt's duration;
//! interleaving prompt chunks with decode steps is a known next step.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;

use crate::EngineError;
use crate::generate::{
    CancellationFlag, Engine, GenerationOutput, GenerationRequest, Sequence, TokenEvent,
};
use crate::model::SequenceInput;

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
}

fn run_worker(engine: &Engine, jobs: &Receiver<Job>, max_batch: usize) {
    let mut active: Vec<Active> = Vec::new();
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
        step(engine, &mut active);
    }
}

/// Prefills a new request and emits its first token; `None` if it already ended.
fn admit(engine: &Engine, job: Job) -> Option<Active> {
    let mut sequence = match Sequence::start(engine, &job.request) {
        Ok(sequence) => sequence,
        Err(error) => {
            let _ = job.events.send(GenerationEvent::Failed(error));
            return None;
        }
    };
    let prompt = sequence.prompt.clone();
    let mut logits = match engine.prefill(&mut sequence.cache, &prompt) {
        Ok(logits) => logits,
        Err(error) => {
            let _ = job.events.send(GenerationEvent::Failed(error));
            return None;
        }
    };
    let mut admitted = Active {
        sequence,
        events: job.events,
    };
    deliver(engine, &mut admitted, &mut logits).then_some(admitted)
}

/// Samples for one sequence and sends its events; `false` when it has ended.
fn deliver(engine: &Engine, active: &mut Active, logits: &mut [f32]) -> bool {
    if let Some(event) = active.sequence.accept_logits(engine, logits)
        && active.events.send(GenerationEvent::Token(event)).is_err()
    {
        // The receiver is gone: the client stopped listening.
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

/// One batched decode step over every active sequence.
fn step(engine: &Engine, active: &mut Vec<Active>) {
    let pending: Vec<[u32; 1]> = active
        .iter()
        .map(|entry| [entry.sequence.pending_token()])
        .collect();
    let result = {
        let mut inputs: Vec<SequenceInput<'_>> = active
            .iter_mut()
            .zip(&pending)
            .map(|(entry, token)| SequenceInput {
                cache: &mut entry.sequence.cache,
                tokens: token,
            })
            .collect();
        engine.forward(&mut inputs)
    };
    match result {
        Ok(mut logits) => {
            let mut index = 0;
            active.retain_mut(|entry| {
                let keep = deliver(engine, entry, &mut logits[index]);
                index += 1;
                keep
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
