//! Online mode: requests go through the [`Engine`] (admission, queue, continuous batching), as a
//! server's would, and each request's latency is measured from its arrival to its answer.
//!
//! - Closed loop (`Load::Concurrency(c)`): `c` clients, each submitting its next request as soon
//!   as the previous one is answered. Latency counts from the submit call.
//! - Open loop (`Load::Rate(r)`): requests arrive at Poisson times (the first at the start, then
//!   exponential gaps of mean `1/r` s, drawn from a seeded rng) whether or not earlier ones were
//!   answered. Latency counts from the scheduled arrival, so a submitter running late does not
//!   hide queueing (no coordinated omission).
//!
//! Inputs are token ids ([`Input::Ids`]): the engine validates them but does not tokenize, so
//! the measurement covers admission, queueing, batching, the forward pass and answer routing.
//! One thread submits and collects: every ticket is polled with a waker that reports the
//! instant the answer arrived, so latencies do not depend on the order answers are collected.
//! An answer that comes before a ticket's first poll is stamped at that poll (an upper bound).

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::engine::{Admission, Engine, Input, Request, Response, Ticket};
use crate::rng::SplitMix64;
use crate::tokenize::Truncation;
use crate::{Error, Result};

/// How requests arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Everything queued at once, straight on the backend (no engine).
    Offline,
    /// Closed loop: this many clients, each with one request in flight.
    Concurrency(usize),
    /// Open loop: Poisson arrivals at this many requests per second.
    Rate(f64),
}

/// One measured pass of a request list through the engine.
#[derive(Clone, Debug)]
pub struct OnlineRun {
    /// From the first arrival to the last answer.
    pub seconds: f64,
    /// Per request, arrival to answer, in request order.
    pub latencies: Vec<f64>,
    /// Requests answered with an embedding for every input.
    pub answered: usize,
}

/// Split sequences into requests of `per_request` inputs (the last may hold fewer).
pub fn requests_of(sequences: &[Vec<u32>], per_request: usize, dimensions: usize) -> Vec<Request> {
    sequences
        .chunks(per_request.max(1))
        .map(|chunk| Request {
            inputs: chunk.iter().map(|ids| Input::Ids(ids.clone())).collect(),
            dimensions,
            truncation: Truncation::Refuse,
            normalize: true,
        })
        .collect()
}

/// The latest arrival an open-loop schedule may hold: a day.
const MAX_SCHEDULE_SECONDS: f64 = 86_400.0;

/// Arrival offsets of `n` requests from the start of an open-loop run: the first at once, then
/// cumulative exponential gaps of mean `1 / rate` seconds. Fails when the schedule runs past
/// [`MAX_SCHEDULE_SECONDS`] (a rate so small that the run would seem to hang, or overflow).
pub fn poisson_arrivals(n: usize, rate: f64, rng: &mut SplitMix64) -> Result<Vec<Duration>> {
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 {
                // 53 random bits -> u in (0, 1]: ln(u) is finite.
                let u = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
                t += -u.ln() / rate;
            }
            if t > MAX_SCHEDULE_SECONDS {
                return Err(Error::Bench(format!(
                    "--rate {rate:e}: request {i} would arrive {t:e} s after the start (more \
                     than a day): raise the rate"
                )));
            }
            Ok(Duration::from_secs_f64(t))
        })
        .collect()
}

/// News of ticket `index`: when its answer woke it, or `None` for the poll right after its
/// submission (an answer already there then came at some instant before the poll).
type TicketEvent = (usize, Option<Instant>);

/// Tells the collector which ticket has news, and when.
struct TicketWaker {
    index: usize,
    events: Sender<TicketEvent>,
}

impl Wake for TicketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The collector outlives every ticket it polls; a send can only fail after it is done.
        let _ = self.events.send((self.index, Some(Instant::now())));
    }
}

struct InFlight {
    ticket: Ticket,
    waker: Waker,
    /// Arrival time (scheduled arrival in an open loop, submit call in a closed loop).
    arrived: Instant,
    inputs: usize,
}

/// Run `requests` through `engine` under `load` (a [`Load::Concurrency`] or [`Load::Rate`]);
/// `arrivals` are the open-loop offsets from [`poisson_arrivals`]. Fails on the first request
/// that is not answered with an embedding of `dimensions` values for every input.
pub fn run_requests(
    engine: &Engine,
    requests: Vec<Request>,
    load: Load,
    arrivals: &[Duration],
) -> Result<OnlineRun> {
    let n = requests.len();
    let (events, receiver) = mpsc::channel();
    let mut pending: Vec<Option<Request>> = requests.into_iter().map(Some).collect();
    let mut in_flight: Vec<Option<InFlight>> = (0..n).map(|_| None).collect();
    let mut latencies = vec![0.0; n];
    let (mut next, mut answered) = (0, 0);
    let start = Instant::now();
    let mut last_answer = start;

    let submit = |i: usize, pending: &mut Vec<Option<Request>>| -> Result<InFlight> {
        let request = pending[i].take().expect("each request is submitted once");
        let arrived = match load {
            Load::Rate(_) => start + arrivals[i],
            _ => Instant::now(),
        };
        let inputs = request.inputs.len();
        let ticket = engine.submit(request, Admission::Wait)?;
        let waker = Waker::from(Arc::new(TicketWaker {
            index: i,
            events: events.clone(),
        }));
        // The first poll registers the waker: ask for it now.
        let _ = events.send((i, None));
        Ok(InFlight {
            ticket,
            waker,
            arrived,
            inputs,
        })
    };

    let initial = match load {
        Load::Concurrency(c) => c.min(n),
        Load::Rate(_) => 0,
        Load::Offline => {
            return Err(Error::Bench(
                "an online run needs a concurrency or a rate".into(),
            ))
        }
    };
    while next < initial {
        in_flight[next] = Some(submit(next, &mut pending)?);
        next += 1;
    }
    while answered < n {
        let wait = match load {
            Load::Rate(_) if next < n => {
                let due = start + arrivals[next];
                let now = Instant::now();
                if now >= due {
                    in_flight[next] = Some(submit(next, &mut pending)?);
                    next += 1;
                    continue;
                }
                due - now
            }
            _ => Duration::from_secs(3600),
        };
        let (i, woke_at) = match receiver.recv_timeout(wait) {
            Ok(event) => event,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("`events` is held here"),
        };
        let Some(flight) = in_flight[i].as_mut() else {
            continue; // a late wake of a request already answered
        };
        let mut cx = Context::from_waker(&flight.waker);
        let response = match Pin::new(&mut flight.ticket).poll(&mut cx) {
            Poll::Pending => continue,
            Poll::Ready(response) => response?,
        };
        // An answer that came before the first poll registered the waker woke nothing; it came
        // by now, the latest instant it can have (a latency never under-reported).
        let woke_at = woke_at.unwrap_or_else(Instant::now);
        let flight = in_flight[i].take().expect("polled above");
        check_response(i, flight.inputs, &response)?;
        latencies[i] = woke_at
            .saturating_duration_since(flight.arrived)
            .as_secs_f64();
        last_answer = last_answer.max(woke_at);
        answered += 1;
        if matches!(load, Load::Concurrency(_)) && next < n {
            in_flight[next] = Some(submit(next, &mut pending)?);
            next += 1;
        }
    }
    Ok(OnlineRun {
        seconds: (last_answer - start).as_secs_f64(),
        latencies,
        answered,
    })
}

fn check_response(request: usize, inputs: usize, response: &Response) -> Result<()> {
    if response.outputs.len() != inputs {
        return Err(Error::Bench(format!(
            "request {request}: {} answers for {inputs} inputs",
            response.outputs.len()
        )));
    }
    for (input, output) in response.outputs.iter().enumerate() {
        if let Err(err) = output {
            return Err(Error::Bench(format!(
                "request {request}, input {input} failed: {err}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_group_inputs_in_order() {
        let seqs: Vec<Vec<u32>> = (0..5).map(|i| vec![i; i as usize + 1]).collect();
        let requests = requests_of(&seqs, 2, 8);
        let sizes: Vec<usize> = requests.iter().map(|r| r.inputs.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(requests[1].inputs[1], Input::Ids(vec![3; 4]));
        assert!(requests.iter().all(|r| r.dimensions == 8));
    }

    #[test]
    fn poisson_arrivals_increase_with_the_requested_mean_gap() {
        let mut rng = SplitMix64::new(3);
        let arrivals = poisson_arrivals(20_001, 50.0, &mut rng).unwrap();
        assert_eq!(arrivals[0], Duration::ZERO);
        assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
        // Mean gap 1/50 s: 20000 gaps take about 400 s (the sum of n exponentials has a
        // standard deviation of sqrt(n)/rate = 2.8 s).
        let total = arrivals.last().unwrap().as_secs_f64();
        assert!((total - 400.0).abs() < 15.0, "{total}");
    }

    #[test]
    fn a_rate_too_small_for_its_schedule_is_an_error() {
        let mut rng = SplitMix64::new(3);
        let err = poisson_arrivals(3, 1e-300, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--rate 1e-300"), "{err}");
    }
}
