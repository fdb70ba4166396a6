//! `metrum route`: a minimal HTTP router in front of Metrum (or any server exposing vLLM's
//! `vllm:num_requests_{running,waiting}` gauges) with the routing policies of
//! [`metrum_scheduler::routing`], Venn's contention-aware IRS among them; the same code
//! `metrum simulate-routing` measured (docs/results/routing.md).
//!
//! Why a command of its own and not a scorer for SMG or the EPP: SMG's policies are compiled
//! into its Rust binary and the EPP's scorers are Go plugins, neither of which builds here;
//! this router reads exactly what they read (each replica's `/metrics`), so IRS can be tried
//! beside them and later ported as a scorer. The Kubernetes path stays GIE + llm-d.
//!
//! A request's eligibility class is its `x-metrum-class` header, else its `model` when that
//! names a class, else the implicit class of every replica. A replica's load is the larger of
//! the requests this router has in flight there and the running + waiting it last scraped.
//! Requests stream through unchanged (SSE included); the response names the replica in
//! `x-metrum-replica`. No retries: a replica that cannot be reached answers 503 with an
//! OpenAI-style body, and reads as infinitely loaded until its `/metrics` answers again.

use super::units::parse_duration;
use crate::error::ApiError;
use anyhow::{Context, Result, bail};
use axum::Router as Http;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use metrum_scheduler::routing::{ClassId, ReplicaId, Router, RoutingPolicy, prefix_hash};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, clap::Args)]
pub struct RouteArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A replica's base URL (e.g. http://10.0.0.5:8000), repeatable; replicas are numbered
    /// 0, 1, ... in this order.
    #[arg(long = "replica", required = true)]
    pub replicas: Vec<String>,
    /// An eligibility class, repeatable: NAME=REPLICAS with REPLICAS like 0+1, the replicas
    /// that may serve it. Requests of no named class may go to every replica.
    #[arg(long = "class")]
    pub classes: Vec<String>,
    /// round-robin, least-loaded, prefix-affinity or irs.
    #[arg(long, default_value = "irs")]
    pub policy: String,
    /// How often each replica's /metrics is read.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
}

impl RouteArgs {
    pub fn run(self) -> Result<()> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("cannot listen on {}:{}", self.host, self.port))?;
            tracing::info!(addr = %listener.local_addr()?, "routing");
            self.serve(listener).await
        })
    }

    /// Routes on `listener` until the process ends (tests run it on an ephemeral port).
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<()> {
        let state = Arc::new(self.state()?);
        tokio::spawn(poll_loads(state.clone(), self.poll_interval));
        let app = Http::new()
            .route("/v1/chat/completions", post(proxy))
            .route("/v1/completions", post(proxy))
            .route("/v1/models", get(models))
            .with_state(state);
        axum::serve(listener, app).await?;
        Ok(())
    }

    fn state(&self) -> Result<RouterState> {
        let policy = RoutingPolicy::parse(&self.policy).with_context(|| {
            format!(
                "--policy {}: expected round-robin, least-loaded, prefix-affinity or irs",
                self.policy
            )
        })?;
        let n = self.replicas.len();
        let mut names = HashMap::new();
        let mut sets = Vec::new();
        for spec in &self.classes {
            let (name, ids) = parse_class(spec, n)?;
            if names.insert(name.clone(), ClassId(sets.len())).is_some() {
                bail!("--class {spec}: class {name} is given twice");
            }
            sets.push(ids);
        }
        let everyone = ClassId(sets.len());
        sets.push((0..n).map(ReplicaId).collect());
        let replicas = self
            .replicas
            .iter()
            .map(|url| Replica {
                url: url.trim_end_matches('/').to_string(),
                in_flight: AtomicUsize::new(0),
                scraped: AtomicU64::new(0f64.to_bits()),
            })
            .collect();
        Ok(RouterState {
            router: Mutex::new(Router::new(policy, sets)),
            classes: names,
            everyone,
            replicas,
            client: reqwest::Client::new(),
        })
    }
}

/// `NAME=0+1` → the name and its replicas, each below `replicas`.
fn parse_class(spec: &str, replicas: usize) -> Result<(String, Vec<ReplicaId>)> {
    let Some((name, ids)) = spec.split_once('=') else {
        bail!("--class {spec}: expected NAME=REPLICAS, e.g. adapter=0+1");
    };
    let mut set = Vec::new();
    for id in ids.split('+') {
        let r: usize = id
            .trim()
            .parse()
            .with_context(|| format!("--class {spec}: `{id}` is not a replica number"))?;
        if r >= replicas {
            bail!("--class {spec}: replica {r} does not exist (there are {replicas})");
        }
        set.push(ReplicaId(r));
    }
    if name.is_empty() {
        bail!("--class {spec}: the class needs a name");
    }
    Ok((name.to_string(), set))
}

struct Replica {
    url: String,
    in_flight: AtomicUsize,
    /// f64 bits: running + waiting from the last scrape, infinity while unreachable.
    scraped: AtomicU64,
}

impl Replica {
    fn load(&self) -> f64 {
        let scraped = f64::from_bits(self.scraped.load(Ordering::Relaxed));
        scraped.max(self.in_flight.load(Ordering::Relaxed) as f64)
    }
}

struct RouterState {
    router: Mutex<Router>,
    classes: HashMap<String, ClassId>,
    everyone: ClassId,
    replicas: Vec<Replica>,
    client: reqwest::Client,
}

/// Reads every replica's running + waiting gauges, forever.
async fn poll_loads(state: Arc<RouterState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for r in &state.replicas {
            let load = scrape(&state.client, &r.url).await.unwrap_or(f64::INFINITY);
            r.scraped.store(load.to_bits(), Ordering::Relaxed);
        }
    }
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<f64> {
    let text = client
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(queue_from_metrics(&text))
}

/// `vllm:num_requests_running` + `vllm:num_requests_waiting` from a Prometheus text page,
/// summed over their series (0 for a page without them).
fn queue_from_metrics(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            ["vllm:num_requests_running", "vllm:num_requests_waiting"]
                .iter()
                .any(|name| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with([' ', '{']))
                })
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn models(State(state): State<Arc<RouterState>>) -> Response {
    forward(&state, ReplicaId(0), "/v1/models", None, &HeaderMap::new()).await
}

async fn proxy(
    State(state): State<Arc<RouterState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let class = match headers.get("x-metrum-class").map(|v| v.to_str()) {
        Some(Ok(name)) => match state.classes.get(name) {
            Some(&c) => c,
            None => {
                return ApiError::param("x-metrum-class", format!("unknown class `{name}`"))
                    .into_response();
            }
        },
        Some(Err(_)) => {
            return ApiError::param("x-metrum-class", "not visible ASCII").into_response();
        }
        None => json
            .as_ref()
            .and_then(|j| j.get("model")?.as_str())
            .and_then(|m| state.classes.get(m).copied())
            .unwrap_or(state.everyone),
    };
    // The prompt's first bytes stand for its first block of tokens (no tokenizer here).
    let prompt = json
        .as_ref()
        .and_then(|j| j.get("messages").or_else(|| j.get("prompt")))
        .map(|p| p.to_string())
        .unwrap_or_default();
    let prefix = prefix_hash(
        prompt
            .as_bytes()
            .chunks(8)
            .map(|c| c.iter().fold(0u64, |h, &b| (h << 8) | u64::from(b))),
    );
    let replica = {
        let mut router = state.router.lock().unwrap_or_else(|e| e.into_inner());
        router.route(class, prefix, |r| state.replicas[r.0].load())
    };
    forward(&state, replica, uri.path(), Some(body), &headers).await
}

/// Sends the request to `replica` and streams its answer back; counts it in flight until
/// the body is done or the client goes away.
async fn forward(
    state: &Arc<RouterState>,
    replica: ReplicaId,
    path: &str,
    body: Option<Bytes>,
    headers: &HeaderMap,
) -> Response {
    let target = &state.replicas[replica.0];
    let url = format!("{}{path}", target.url);
    let mut request = match &body {
        Some(b) => state.client.post(&url).body(b.clone()),
        None => state.client.get(&url),
    };
    for name in ["content-type", "authorization", "accept"] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v);
        }
    }
    let in_flight = InFlight::new(state.clone(), replica);
    let upstream = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            return ApiError::Unavailable(format!(
                "replica {} ({}) could not be reached: {e}",
                replica.0, target.url
            ))
            .into_response();
        }
    };
    let status = upstream.status();
    let content_type = upstream.headers().get("content-type").cloned();
    let retry_after = upstream.headers().get("retry-after").cloned();
    let stream = upstream.bytes_stream().map(move |chunk| {
        let _held = &in_flight; // dropped with the stream: the request is done
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    if let Some(v) = content_type {
        h.insert("content-type", v);
    }
    if let Some(v) = retry_after {
        h.insert("retry-after", v);
    }
    h.insert("x-metrum-replica", HeaderValue::from(replica.0));
    response
}

/// One request in flight at a replica, for the router's own load count.
struct InFlight {
    state: Arc<RouterState>,
    replica: ReplicaId,
}

impl InFlight {
    fn new(state: Arc<RouterState>, replica: ReplicaId) -> InFlight {
        state.replicas[replica.0]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight { state, replica }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.replicas[self.replica.0]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_running_plus_waiting_over_every_series() {
        let page = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n\
                    vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:num_requests_waiting_x 9\n\
                    metrum_requests_running 3\n";
        assert_eq!(queue_from_metrics(page), 5.0);
        assert_eq!(queue_from_metrics(""), 0.0);
    }

    #[test]
    fn classes_name_existing_replicas() {
        assert_eq!(
            parse_class("adapter=0+1", 2).unwrap(),
            ("adapter".to_string(), vec![ReplicaId(0), ReplicaId(1)])
        );
        for bad in ["adapter", "adapter=2", "adapter=x", "=0"] {
            assert!(parse_class(bad, 2).is_err(), "{bad}");
        }
    }
}
