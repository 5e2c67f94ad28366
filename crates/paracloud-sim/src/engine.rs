//! The discrete-event simulation: processor-sharing instances, calls between services, load
//! balancing, holding and dropping, and the policy asked once a simulated second.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::f64::consts::PI;

use paracloud_autoscale::observe::{LatencySummary, EXTERNAL};
use paracloud_autoscale::{
    Call, Decision, History, InstanceSample, Observation, Policy, ScalingConfig, ServiceSample,
};
use rand::rngs::StdRng;
use rand::Rng;

use crate::model::{Distribution, Model};
use crate::outcome::{DecisionRecord, Histogram, Outcome, Second};
use crate::trace::{rng, Arrivals, Trace};
use crate::Options;

const SECOND_US: u64 = 1_000_000;
/// How long a request waits for a ready instance before it is dropped (as the data plane does).
pub const HOLD_US: u64 = 5 * SECOND_US;
const NONE: u32 = u32::MAX;

/// Random streams, kept apart so that a change in one part (say, a policy starting more
/// instances) does not shift the arrivals or the demands drawn elsewhere.
const STREAM_BALANCE: u64 = 2;
const STREAM_STARTUP: u64 = 3;
const STREAM_RESIZE: u64 = 4;
const STREAM_SERVICE: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Arrival,
    CpuDone {
        instance: u32,
        generation: u32,
    },
    Ready {
        instance: u32,
    },
    /// The platform applies the service's CPU to this instance (a delayed in-place resize).
    Resize {
        instance: u32,
    },
    HoldExpiry {
        service: u16,
    },
    Tick,
}

/// An event; ties in time go in the order they were scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    at: u64,
    seq: u64,
    kind: Kind,
}

impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A request's CPU work in progress: done once the instance's attained service reaches `finish`.
#[derive(Debug, Clone, Copy)]
struct Work {
    finish: f64,
    request: u32,
}

impl PartialEq for Work {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Work {}
impl Ord for Work {
    fn cmp(&self, other: &Self) -> Ordering {
        self.finish
            .total_cmp(&other.finish)
            .then(self.request.cmp(&other.request))
    }
}
impl PartialOrd for Work {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Draining,
}

/// An instance: a processor-sharing server of `cpu` cores where a request uses at most one core.
struct Instance {
    service: u16,
    id: String,
    state: State,
    created_us: u64,
    cpu: f64,
    /// Requests computing, by the attained service at which each is done.
    computing: BinaryHeap<Reverse<Work>>,
    /// Service each computing request has received since the instance was last idle, in µs of
    /// one core.
    attained: f64,
    /// Requests assigned and not answered (computing or waiting for calls).
    in_flight: u32,
    last_us: u64,
    /// This second so far: core-µs used, request-µs in flight, completions.
    busy: f64,
    occupancy: f64,
    completions: u64,
    /// Invalidates scheduled completions when the computing set or the CPU changes.
    generation: u32,
    /// When the scheduled completion is due (`u64::MAX`: none).
    due: u64,
}

impl Instance {
    fn rate(&self) -> f64 {
        let n = self.computing.len() as f64;
        if n == 0.0 {
            0.0
        } else {
            (self.cpu / n).min(1.0)
        }
    }

    /// Brings the integrals and the attained service up to `now`.
    fn advance(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last_us) as f64;
        if dt > 0.0 {
            let n = self.computing.len() as f64;
            if n > 0.0 {
                self.busy += n.min(self.cpu) * dt;
                self.attained += self.rate() * dt;
            }
            self.occupancy += f64::from(self.in_flight) * dt;
        }
        self.last_us = now;
    }
}

/// A request at one service.
#[derive(Debug, Clone, Copy)]
struct Request {
    service: u16,
    parent: u32,
    instance: u32,
    arrived_us: u64,
    size: f64,
    /// The call being made: index into the service's calls, and calls left to that child.
    child: u16,
    calls_left: u32,
}

struct Service {
    name: String,
    entry: bool,
    /// (child service, mean calls per request).
    calls: Vec<(u16, f64)>,
    /// (from µs, mean demand in µs); the first entry is from 0.
    demand: Vec<(u64, f64)>,
    distribution: Distribution,
    startup_us: f64,
    max_in_flight: u32,
    min: u32,
    max: u32,
    cpu_min: f64,
    cpu_max: f64,
    wake_instances: u32,
    /// The CPU per instance asked for; under a delayed resize, running instances get it later.
    cpu: f64,
    /// Existing instances (starting, ready, draining), oldest first.
    instances: Vec<u32>,
    /// Ready instances that take requests.
    ready: Vec<u32>,
    held: VecDeque<(u32, u64)>,
    /// When the scheduled hold expiry is due.
    hold_due: Option<u64>,
    next_number: u32,
    rng: StdRng,
    /// Requests arrived and neither answered nor dropped (held ones included).
    in_flight: u32,
    last_us: u64,
    occupancy: f64,
    cost_last_us: u64,
    // This second:
    arrivals: u64,
    completions: u64,
    dropped: u64,
    latency: Histogram,
}

impl Service {
    fn wanted(&self, instances: &[Option<Instance>]) -> u32 {
        self.instances
            .iter()
            .filter(|&&i| {
                instances[i as usize]
                    .as_ref()
                    .is_some_and(|x| x.state != State::Draining)
            })
            .count() as u32
    }

    fn advance(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last_us) as f64;
        self.occupancy += f64::from(self.in_flight) * dt;
        self.last_us = now;
    }

    fn mean_demand_us(&self, now: u64) -> f64 {
        self.demand
            .iter()
            .take_while(|(from, _)| *from <= now)
            .last()
            .map_or(0.0, |(_, d)| *d)
    }
}

/// Per arrival second of entry requests: how many arrived, how many were answered within the SLO.
#[derive(Debug, Clone, Copy, Default)]
struct SloSecond {
    arrivals: u32,
    good: u32,
}

pub(crate) struct Engine<'a> {
    config: ScalingConfig,
    options: &'a Options,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<Event>>,
    services: Vec<Service>,
    instances: Vec<Option<Instance>>,
    requests: Vec<Request>,
    free: Vec<u32>,
    arrivals: Arrivals<'a>,
    pending_arrival: Option<(u64, f64)>,
    balance: StdRng,
    startup: StdRng,
    resize: StdRng,
    /// Calls this second: [caller + 1 (0 is external)][callee].
    calls: Vec<Vec<u64>>,
    history: History,
    slo_latency_us: u64,
    slo: Vec<SloSecond>,
    // Totals.
    entry_hist: Histogram,
    requests_total: u64,
    answered: u64,
    dropped: u64,
    entry_answered_second: u64,
    entry_dropped_second: u64,
    entry_arrived_second: u64,
    instance_us: f64,
    cpu_us: f64,
    actions: u64,
    timeline: Vec<Second>,
    decisions: Vec<DecisionRecord>,
    /// Scratch space for completions popped together.
    done: Vec<u32>,
}

impl<'a> Engine<'a> {
    pub(crate) fn new(model: &Model, trace: &'a Trace, seed: u64, options: &'a Options) -> Self {
        let names: Vec<&String> = model.services.keys().collect();
        let index = |name: &str| names.iter().position(|n| *n == name).unwrap_or(0) as u16;
        let mut services: Vec<Service> = model
            .services
            .iter()
            .enumerate()
            .map(|(i, (name, s))| {
                let mut demand = vec![(0, s.demand_ms * 1000.0)];
                demand.extend(
                    s.phases
                        .iter()
                        .map(|p| (p.at_ms * 1000, p.demand_ms * 1000.0)),
                );
                Service {
                    name: name.clone(),
                    entry: *name == model.entry,
                    calls: s.calls.iter().map(|(to, r)| (index(to), *r)).collect(),
                    demand,
                    distribution: s.distribution,
                    startup_us: s.startup_ms * 1000.0,
                    max_in_flight: s.max_in_flight.unwrap_or(u32::MAX),
                    min: s.min,
                    max: s.max,
                    cpu_min: s.cpu_min,
                    cpu_max: s.cpu_max,
                    wake_instances: s.instances.max(1),
                    cpu: s.cpu,
                    instances: Vec::new(),
                    ready: Vec::new(),
                    held: VecDeque::new(),
                    hold_due: None,
                    next_number: 1,
                    rng: rng(seed, STREAM_SERVICE + i as u64),
                    in_flight: 0,
                    last_us: 0,
                    occupancy: 0.0,
                    cost_last_us: 0,
                    arrivals: 0,
                    completions: 0,
                    dropped: 0,
                    latency: Histogram::default(),
                }
            })
            .collect();
        let mut instances = Vec::new();
        for (i, (_, s)) in model.services.iter().enumerate() {
            for _ in 0..s.instances {
                let service = &mut services[i];
                let id = instances.len() as u32;
                instances.push(Some(new_instance(service, i as u16, 0, State::Ready)));
                service.instances.push(id);
                service.ready.push(id);
            }
        }
        let n = services.len();
        Engine {
            config: model.scaling_config(),
            options,
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            services,
            instances,
            requests: Vec::new(),
            free: Vec::new(),
            arrivals: trace.arrivals(seed),
            pending_arrival: None,
            balance: rng(seed, STREAM_BALANCE),
            startup: rng(seed, STREAM_STARTUP),
            resize: rng(seed, STREAM_RESIZE),
            calls: vec![vec![0; n]; n + 1],
            history: History::with_capacity(options.history_seconds),
            slo_latency_us: (model.slo.latency_ms * 1000.0).round() as u64,
            slo: Vec::new(),
            entry_hist: Histogram::default(),
            requests_total: 0,
            answered: 0,
            dropped: 0,
            entry_answered_second: 0,
            entry_dropped_second: 0,
            entry_arrived_second: 0,
            instance_us: 0.0,
            cpu_us: 0.0,
            actions: 0,
            timeline: Vec::new(),
            decisions: Vec::new(),
            done: Vec::new(),
        }
    }

    fn schedule(&mut self, at: u64, kind: Kind) {
        self.seq += 1;
        self.events.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// Runs the whole trace, then up to `options.drain` more while requests are in flight.
    pub(crate) fn run(mut self, trace: &Trace, policy: &mut dyn Policy, seed: u64) -> Outcome {
        let end_us = trace.duration_us().div_ceil(SECOND_US).max(1) * SECOND_US;
        let drain_us = u64::try_from(self.options.drain.as_micros()).unwrap_or(u64::MAX);
        let last_us = end_us.saturating_add(drain_us);
        self.next_arrival();
        self.schedule(SECOND_US, Kind::Tick);
        while let Some(Reverse(event)) = self.events.pop() {
            self.now = event.at;
            match event.kind {
                Kind::Arrival => self.arrive_external(),
                Kind::CpuDone {
                    instance,
                    generation,
                } => self.cpu_done(instance, generation),
                Kind::Ready { instance } => self.ready(instance),
                Kind::Resize { instance } => self.resize(instance),
                Kind::HoldExpiry { service } => self.hold_expiry(service),
                Kind::Tick => {
                    self.tick(policy);
                    let busy = self.services.iter().any(|s| s.in_flight > 0);
                    if self.now >= last_us || (self.now >= end_us && !busy) {
                        break;
                    }
                    self.schedule(self.now + SECOND_US, Kind::Tick);
                }
            }
        }
        self.finish(policy.name(), seed)
    }

    fn next_arrival(&mut self) {
        self.pending_arrival = self.arrivals.next();
        if let Some((at, _)) = self.pending_arrival {
            self.schedule(at.max(self.now), Kind::Arrival);
        }
    }

    fn alloc(&mut self, request: Request) -> u32 {
        match self.free.pop() {
            Some(id) => {
                self.requests[id as usize] = request;
                id
            }
            None => {
                self.requests.push(request);
                (self.requests.len() - 1) as u32
            }
        }
    }

    fn entry_index(&self) -> u16 {
        self.services.iter().position(|s| s.entry).unwrap_or(0) as u16
    }

    fn arrive_external(&mut self) {
        let Some((_, size)) = self.pending_arrival.take() else {
            return;
        };
        let entry = self.entry_index();
        self.requests_total += 1;
        self.entry_arrived_second += 1;
        let second = (self.now / SECOND_US) as usize;
        if self.slo.len() <= second {
            self.slo.resize(second + 1, SloSecond::default());
        }
        self.slo[second].arrivals += 1;
        self.calls[0][entry as usize] += 1;
        let id = self.alloc(Request {
            service: entry,
            parent: NONE,
            instance: NONE,
            arrived_us: self.now,
            size,
            child: 0,
            calls_left: 0,
        });
        self.arrive(id);
        self.next_arrival();
    }

    /// A request reaches its service: sent to an instance, held, or dropped.
    fn arrive(&mut self, id: u32) {
        let s = self.requests[id as usize].service as usize;
        let now = self.now;
        let service = &mut self.services[s];
        service.advance(now);
        service.in_flight += 1;
        service.arrivals += 1;
        if service.ready.is_empty() {
            service.held.push_back((id, now));
            if service.hold_due.is_none() {
                service.hold_due = Some(now + HOLD_US);
                self.schedule(now + HOLD_US, Kind::HoldExpiry { service: s as u16 });
            }
            self.wake(s);
            return;
        }
        self.dispatch(id);
    }

    /// Sends a request that has arrived to a ready instance (power of two choices on in-flight),
    /// or drops it when every ready instance is at its limit.
    fn dispatch(&mut self, id: u32) {
        let s = self.requests[id as usize].service as usize;
        let service = &self.services[s];
        let ready = &service.ready;
        let in_flight = |i: u32| {
            self.instances[i as usize]
                .as_ref()
                .map_or(u32::MAX, |x| x.in_flight)
        };
        let mut chosen = match ready.len() {
            0 => None,
            1 => Some(ready[0]),
            n => {
                let a = self.balance.random_range(0..n);
                let mut b = self.balance.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (ready[a], ready[b]);
                Some(if in_flight(b) < in_flight(a) { b } else { a })
            }
        };
        if chosen.is_some_and(|c| in_flight(c) >= service.max_in_flight) {
            chosen = ready
                .iter()
                .copied()
                .min_by_key(|&i| in_flight(i))
                .filter(|&i| in_flight(i) < service.max_in_flight);
        }
        match chosen {
            Some(instance) => self.assign(id, instance),
            None => self.give_up(id),
        }
    }

    fn assign(&mut self, id: u32, instance: u32) {
        let now = self.now;
        self.requests[id as usize].instance = instance;
        if let Some(x) = self.instances[instance as usize].as_mut() {
            x.advance(now);
            x.in_flight += 1;
        }
        self.start_cpu(id);
    }

    /// Draws the request's CPU work and adds it to its instance's processor sharing.
    fn start_cpu(&mut self, id: u32) {
        let request = self.requests[id as usize];
        let service = &mut self.services[request.service as usize];
        let mean = service.mean_demand_us(self.now) * request.size;
        let work = match service.distribution {
            Distribution::Constant => mean,
            Distribution::Exponential => {
                let u: f64 = service.rng.random();
                -mean * (1.0 - u).ln()
            }
            Distribution::Lognormal { cv } => {
                let sigma2 = (1.0 + cv * cv).ln();
                let u1: f64 = service.rng.random();
                let u2: f64 = service.rng.random();
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * PI * u2).cos();
                if mean > 0.0 {
                    (mean.ln() - sigma2 / 2.0 + sigma2.sqrt() * z).exp()
                } else {
                    0.0
                }
            }
        };
        let instance = request.instance;
        let Some(x) = self.instances[instance as usize].as_mut() else {
            return;
        };
        x.advance(self.now);
        x.computing.push(Reverse(Work {
            finish: x.attained + work.max(0.0),
            request: id,
        }));
        self.reschedule(instance);
    }

    /// Schedules the instance's next completion, after its computing set or CPU changed.
    fn reschedule(&mut self, instance: u32) {
        let now = self.now;
        let Some(x) = self.instances[instance as usize].as_mut() else {
            return;
        };
        let Some(Reverse(first)) = x.computing.peek() else {
            x.due = u64::MAX;
            x.attained = 0.0;
            return;
        };
        let rate = x.rate();
        let left = (first.finish - x.attained).max(0.0);
        let due = if rate > 0.0 {
            now.saturating_add((left / rate).ceil() as u64)
        } else {
            u64::MAX
        };
        if due == x.due {
            return;
        }
        x.due = due;
        x.generation = x.generation.wrapping_add(1);
        let generation = x.generation;
        if due != u64::MAX {
            self.schedule(
                due,
                Kind::CpuDone {
                    instance,
                    generation,
                },
            );
        }
    }

    fn cpu_done(&mut self, instance: u32, generation: u32) {
        let now = self.now;
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        {
            let Some(x) = self.instances[instance as usize].as_mut() else {
                return;
            };
            if x.generation != generation {
                return;
            }
            x.advance(now);
            x.due = u64::MAX;
            // Completion times were rounded up to the µs: whatever is within a hair is done.
            while let Some(Reverse(w)) = x.computing.peek() {
                if w.finish <= x.attained + 1e-6 {
                    done.push(w.request);
                    x.computing.pop();
                } else {
                    break;
                }
            }
        }
        self.reschedule(instance);
        for &id in &done {
            self.after_cpu(id);
        }
        self.done = done;
    }

    /// The request's own work is done: make its calls, one after another, then answer.
    fn after_cpu(&mut self, id: u32) {
        let request = &mut self.requests[id as usize];
        request.child = 0;
        request.calls_left = 0;
        let s = request.service as usize;
        if let Some(&(_, ratio)) = self.services[s].calls.first() {
            let n = draw_calls(&mut self.services[s].rng, ratio);
            self.requests[id as usize].calls_left = n;
        }
        self.next_call(id);
    }

    fn next_call(&mut self, id: u32) {
        loop {
            let request = self.requests[id as usize];
            let s = request.service as usize;
            let Some(&(child, _)) = self.services[s].calls.get(request.child as usize) else {
                self.complete(id);
                return;
            };
            if request.calls_left > 0 {
                self.requests[id as usize].calls_left -= 1;
                self.calls[s + 1][child as usize] += 1;
                let call = self.alloc(Request {
                    service: child,
                    parent: id,
                    instance: NONE,
                    arrived_us: self.now,
                    size: request.size,
                    child: 0,
                    calls_left: 0,
                });
                self.arrive(call);
                return;
            }
            let next = request.child + 1;
            let calls_left = match self.services[s].calls.get(next as usize) {
                Some(&(_, ratio)) => draw_calls(&mut self.services[s].rng, ratio),
                None => 0,
            };
            let r = &mut self.requests[id as usize];
            r.child = next;
            r.calls_left = calls_left;
        }
    }

    /// Takes a request off its instance; removes a draining instance left empty.
    fn release(&mut self, id: u32) {
        let instance = self.requests[id as usize].instance;
        let now = self.now;
        let Some(x) = self
            .instances
            .get_mut(instance as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        x.advance(now);
        x.in_flight -= 1;
        if x.state == State::Draining && x.in_flight == 0 {
            self.remove_instance(instance);
        }
    }

    fn complete(&mut self, id: u32) {
        let request = self.requests[id as usize];
        if let Some(x) = self.instances[request.instance as usize].as_mut() {
            x.completions += 1;
        }
        self.release(id);
        let latency = self.now - request.arrived_us;
        let service = &mut self.services[request.service as usize];
        service.advance(self.now);
        service.in_flight -= 1;
        service.completions += 1;
        service.latency.record(latency);
        self.free.push(id);
        if request.parent != NONE {
            self.next_call(request.parent);
            return;
        }
        self.answered += 1;
        self.entry_answered_second += 1;
        self.entry_hist.record(latency);
        if latency <= self.slo_latency_us {
            let second = (request.arrived_us / SECOND_US) as usize;
            if let Some(s) = self.slo.get_mut(second) {
                s.good += 1;
            }
        }
    }

    /// A request ends without an answer (held too long, every instance full, or a call of its
    /// own failed); its caller fails with it, and so on up to the entry.
    fn give_up(&mut self, id: u32) {
        let mut id = id;
        loop {
            let request = self.requests[id as usize];
            if request.instance != NONE {
                self.release(id);
            }
            let service = &mut self.services[request.service as usize];
            service.advance(self.now);
            service.in_flight -= 1;
            service.dropped += 1;
            self.free.push(id);
            if request.parent == NONE {
                self.dropped += 1;
                self.entry_dropped_second += 1;
                return;
            }
            id = request.parent;
        }
    }

    fn hold_expiry(&mut self, s: u16) {
        let s = s as usize;
        if self.services[s].hold_due != Some(self.now) {
            return;
        }
        self.services[s].hold_due = None;
        while let Some(&(id, since)) = self.services[s].held.front() {
            if since + HOLD_US > self.now {
                let due = since + HOLD_US;
                self.services[s].hold_due = Some(due);
                self.schedule(due, Kind::HoldExpiry { service: s as u16 });
                return;
            }
            self.services[s].held.pop_front();
            self.give_up(id);
        }
    }

    /// A request found a service with no instance at all: start it, as the platform's follower
    /// does for services that scale to zero.
    fn wake(&mut self, s: usize) {
        let service = &self.services[s];
        if service.min > 0 || service.wanted(&self.instances) > 0 {
            return;
        }
        let count = service.wake_instances.min(service.max.max(1));
        for _ in 0..count {
            self.start_instance(s);
        }
        let service = &self.services[s];
        self.decisions.push(DecisionRecord {
            at_ms: self.now / 1000,
            service: service.name.clone(),
            instances: count,
            cpu: service.cpu,
            reason: format!(
                "platform: a request arrived while {} had no instance; starting {count}",
                service.name
            ),
        });
    }

    fn ready(&mut self, instance: u32) {
        let now = self.now;
        let Some(x) = self.instances[instance as usize].as_mut() else {
            return;
        };
        if x.state != State::Starting {
            return;
        }
        x.advance(now);
        x.state = State::Ready;
        let s = x.service as usize;
        self.services[s].ready.push(instance);
        while let Some((id, _)) = self.services[s].held.pop_front() {
            self.dispatch(id);
        }
    }

    /// Adds the cost of the service's instances since the last change.
    fn account_cost(&mut self, s: usize) {
        let service = &mut self.services[s];
        let dt = self.now.saturating_sub(service.cost_last_us) as f64;
        let n = service.instances.len() as f64;
        // What each instance has now (equal to the service's CPU unless a resize is pending).
        let cpu: f64 = service
            .instances
            .iter()
            .filter_map(|&i| self.instances[i as usize].as_ref())
            .map(|x| x.cpu)
            .sum();
        self.instance_us += n * dt;
        self.cpu_us += cpu * dt;
        service.cost_last_us = self.now;
    }

    fn start_instance(&mut self, s: usize) {
        self.account_cost(s);
        let mean = self.services[s].startup_us;
        let u: f64 = self.startup.random();
        let mut startup = (mean / 2.0 - mean / 2.0 * (1.0 - u).ln()).max(0.0);
        // What the platform adds (scheduling, container start, readiness probe); the local
        // profile adds nothing and draws nothing.
        let platform = &self.options.platform;
        if platform.start_draws() > 0 {
            let (u1, u2, u3): (f64, f64, f64) = (
                self.startup.random(),
                self.startup.random(),
                self.startup.random(),
            );
            startup += platform.start_overhead_ms(u1, u2, u3) * 1000.0;
        }
        let id = self.instances.len() as u32;
        let x = new_instance(&mut self.services[s], s as u16, self.now, State::Starting);
        self.instances.push(Some(x));
        self.services[s].instances.push(id);
        self.schedule(
            self.now + startup.round() as u64,
            Kind::Ready { instance: id },
        );
    }

    fn remove_instance(&mut self, instance: u32) {
        let Some(s) = self.instances[instance as usize]
            .as_ref()
            .map(|x| x.service as usize)
        else {
            return;
        };
        self.account_cost(s);
        let service = &mut self.services[s];
        service.instances.retain(|&i| i != instance);
        service.ready.retain(|&i| i != instance);
        self.instances[instance as usize] = None;
    }

    /// Stops `count` instances: starting ones first (newest first), then drains the ready ones
    /// with the fewest requests in flight.
    fn stop_instances(&mut self, s: usize, mut count: u32) {
        let starting: Vec<u32> = self.services[s]
            .instances
            .iter()
            .rev()
            .copied()
            .filter(|&i| {
                self.instances[i as usize]
                    .as_ref()
                    .is_some_and(|x| x.state == State::Starting)
            })
            .collect();
        for i in starting {
            if count == 0 {
                return;
            }
            self.remove_instance(i);
            count -= 1;
        }
        while count > 0 {
            let Some(i) = self.services[s]
                .ready
                .iter()
                .rev()
                .copied()
                .min_by_key(|&i| {
                    self.instances[i as usize]
                        .as_ref()
                        .map_or(0, |x| x.in_flight)
                })
            else {
                return;
            };
            self.services[s].ready.retain(|&r| r != i);
            let now = self.now;
            if let Some(x) = self.instances[i as usize].as_mut() {
                x.advance(now);
                x.state = State::Draining;
                if x.in_flight == 0 {
                    self.remove_instance(i);
                }
            }
            count -= 1;
        }
    }

    fn set_cpu(&mut self, s: usize, cpu: f64) {
        self.account_cost(s);
        self.services[s].cpu = cpu;
        if self.options.platform.resize_delayed() {
            // Each instance's resize is applied on its own, a little later (the kubelet's sync).
            for i in self.services[s].instances.clone() {
                let u: f64 = self.resize.random();
                let delay_us = (self.options.platform.resize_delay_ms(u) * 1000.0).round() as u64;
                self.schedule(self.now + delay_us, Kind::Resize { instance: i });
            }
            return;
        }
        let now = self.now;
        for i in self.services[s].instances.clone() {
            if let Some(x) = self.instances[i as usize].as_mut() {
                x.advance(now);
                x.cpu = cpu;
            }
            self.reschedule(i);
        }
    }

    /// A delayed resize reaches an instance: it gets its service's CPU as asked for now (a later
    /// change overtakes an earlier one still pending, as the kubelet applies the latest spec).
    fn resize(&mut self, instance: u32) {
        let Some(s) = self.instances[instance as usize]
            .as_ref()
            .map(|x| x.service as usize)
        else {
            return;
        };
        let cpu = self.services[s].cpu;
        if self.instances[instance as usize]
            .as_ref()
            .is_some_and(|x| (x.cpu - cpu).abs() <= 1e-12)
        {
            return;
        }
        self.account_cost(s);
        let now = self.now;
        if let Some(x) = self.instances[instance as usize].as_mut() {
            x.advance(now);
            x.cpu = cpu;
        }
        self.reschedule(instance);
    }

    fn apply(&mut self, decision: Decision) {
        let Some(s) = self
            .services
            .iter()
            .position(|x| x.name == decision.service)
        else {
            return;
        };
        let service = &self.services[s];
        let instances = decision.instances.clamp(service.min, service.max);
        let cpu = if decision.cpu.is_finite() {
            decision.cpu.clamp(service.cpu_min, service.cpu_max)
        } else {
            service.cpu
        };
        let wanted = service.wanted(&self.instances);
        let cpu_changed = (cpu - service.cpu).abs() > 1e-9;
        if instances == wanted && !cpu_changed {
            return;
        }
        self.actions += 1;
        if cpu_changed {
            self.set_cpu(s, cpu);
        }
        if instances > wanted {
            for _ in wanted..instances {
                self.start_instance(s);
            }
        } else if instances < wanted {
            self.stop_instances(s, wanted - instances);
        }
        self.decisions.push(DecisionRecord {
            at_ms: self.now / 1000,
            service: decision.service,
            instances,
            cpu,
            reason: decision.reason,
        });
    }

    /// The end of a second: observe, ask the policy, apply its decisions.
    fn tick(&mut self, policy: &mut dyn Policy) {
        let now = self.now;
        let mut observation = Observation {
            at: now / 1000,
            services: BTreeMap::new(),
            calls: Vec::new(),
        };
        let mut entry_p95 = 0.0;
        for s in 0..self.services.len() {
            let mut samples = Vec::new();
            for &i in &self.services[s].instances {
                let Some(x) = self.instances[i as usize].as_mut() else {
                    continue;
                };
                x.advance(now);
                samples.push(InstanceSample {
                    id: x.id.clone(),
                    ready: x.state == State::Ready,
                    age_ms: (now - x.created_us) / 1000,
                    cpu_used: x.busy / SECOND_US as f64,
                    cpu_limit: x.cpu,
                    completions: x.completions,
                    concurrency: x.occupancy / SECOND_US as f64,
                    reported: None,
                });
                x.busy = 0.0;
                x.occupancy = 0.0;
                x.completions = 0;
            }
            let service = &mut self.services[s];
            service.advance(now);
            let latency = &service.latency;
            let summary = LatencySummary {
                mean_ms: latency.mean_ms(),
                p50_ms: latency.quantile_ms(0.50),
                p95_ms: latency.quantile_ms(0.95),
                p99_ms: latency.quantile_ms(0.99),
            };
            if service.entry {
                entry_p95 = summary.p95_ms;
            }
            observation.services.insert(
                service.name.clone(),
                ServiceSample {
                    arrivals: service.arrivals,
                    completions: service.completions,
                    dropped: service.dropped,
                    latency: summary,
                    concurrency: service.occupancy / SECOND_US as f64,
                    in_flight: service.in_flight,
                    instances: samples,
                },
            );
            service.arrivals = 0;
            service.completions = 0;
            service.dropped = 0;
            service.occupancy = 0.0;
            service.latency.clear();
        }
        for (from, row) in self.calls.iter_mut().enumerate() {
            for (to, count) in row.iter_mut().enumerate() {
                if *count > 0 {
                    observation.calls.push(Call {
                        from: if from == 0 {
                            EXTERNAL.to_owned()
                        } else {
                            self.services[from - 1].name.clone()
                        },
                        to: self.services[to].name.clone(),
                        count: *count,
                    });
                    *count = 0;
                }
            }
        }
        self.history.push(observation);
        let decisions = policy.decide(now / 1000, &self.history, &self.config);
        for decision in decisions {
            self.apply(decision);
        }
        if self.options.record_timeline {
            let second = Second {
                t: now / SECOND_US,
                arrivals: self.entry_arrived_second,
                answered: self.entry_answered_second,
                dropped: self.entry_dropped_second,
                p95_ms: entry_p95,
                violation: false,
                instances: self
                    .services
                    .iter()
                    .map(|s| s.instances.len() as u32)
                    .collect(),
                ready: self.services.iter().map(|s| s.ready.len() as u32).collect(),
                cpu: self.services.iter().map(|s| s.cpu).collect(),
            };
            self.timeline.push(second);
        }
        self.entry_arrived_second = 0;
        self.entry_answered_second = 0;
        self.entry_dropped_second = 0;
    }

    fn finish(mut self, policy: &str, seed: u64) -> Outcome {
        for s in 0..self.services.len() {
            self.account_cost(s);
        }
        let percentile = self.config.slo.percentile;
        let violated = |s: &SloSecond| {
            s.arrivals > 0 && f64::from(s.good) < (percentile * f64::from(s.arrivals) - 1e-9).ceil()
        };
        for row in &mut self.timeline {
            // Row t covers arrivals of second t - 1.
            let second = (row.t as usize).wrapping_sub(1);
            row.violation = self.slo.get(second).is_some_and(violated);
        }
        let entry = self.entry_index() as usize;
        Outcome {
            policy: policy.to_owned(),
            seed,
            services: self.services.iter().map(|s| s.name.clone()).collect(),
            seconds: self.now / SECOND_US,
            slo_violation_seconds: self.slo.iter().filter(|s| violated(s)).count() as u64,
            seconds_with_arrivals: self.slo.iter().filter(|s| s.arrivals > 0).count() as u64,
            instance_seconds: self.instance_us / SECOND_US as f64,
            cpu_seconds: self.cpu_us / SECOND_US as f64,
            p95_ms: self.entry_hist.quantile_ms(0.95),
            p99_ms: self.entry_hist.quantile_ms(0.99),
            mean_ms: self.entry_hist.mean_ms(),
            requests: self.requests_total,
            answered: self.answered,
            dropped: self.dropped,
            in_flight: u64::from(self.services[entry].in_flight),
            actions: self.actions,
            timeline: self.timeline,
            decisions: self.decisions,
        }
    }
}

fn new_instance(service: &mut Service, index: u16, now: u64, state: State) -> Instance {
    let number = service.next_number;
    service.next_number += 1;
    Instance {
        service: index,
        id: format!("{}.{number}", service.name),
        state,
        created_us: now,
        cpu: service.cpu,
        computing: BinaryHeap::new(),
        attained: 0.0,
        in_flight: 0,
        last_us: now,
        busy: 0.0,
        occupancy: 0.0,
        completions: 0,
        generation: 0,
        due: u64::MAX,
    }
}

/// Calls made for a mean of `ratio`: its whole part, plus one with the probability of its fraction.
fn draw_calls(rng: &mut StdRng, ratio: f64) -> u32 {
    let whole = ratio.floor();
    let fraction = ratio - whole;
    let extra = fraction > 0.0 && rng.random::<f64>() < fraction;
    whole as u32 + u32::from(extra)
}
